"""``joint_epoch="segmentation"``: the saliency loader of joint training (SSNet) draws as many batches as the
segmentation loader, from a fresh random subset each epoch (``EpochSubset``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.data import Dataset

from wsss_lightning.data.datamodule import WSSSDataModule
from wsss_lightning.data.sampling import EpochSubset, SeededIndex


class _Numbers(Dataset):
    def __init__(self, size: int) -> None:
        self.size = size
        self.keys: list = []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        self.keys.append(key)
        return key.index if isinstance(key, SeededIndex) else int(key)


def test_epoch_subset_draws_distinct_items_a_fresh_subset_each_epoch_and_passes_the_seed_on() -> None:
    source = _Numbers(10)
    subset = EpochSubset(source, 4, seed=3)
    assert len(subset) == 4
    epoch0 = [subset[SeededIndex(i, 100 + i, 0)] for i in range(4)]
    epoch1 = [subset[SeededIndex(i, 200 + i, 1)] for i in range(4)]
    assert len(set(epoch0)) == 4 and set(epoch0) <= set(range(10))  # a permutation's prefix: no repeats
    assert epoch0 != epoch1  # a new subset (seeded: this pair differs)
    assert [subset[SeededIndex(i, 0, 0)] for i in range(4)] == epoch0  # the same epoch, the same items
    assert EpochSubset(_Numbers(10), 4, seed=3)[SeededIndex(2, 0, 0)] == epoch0[2]  # another worker agrees
    assert source.keys[0] == SeededIndex(epoch0[0], 100, 0)  # the augmentation seed is the sampler's
    assert subset[1] == epoch0[1]  # a plain index reads epoch 0
    with pytest.raises(ValueError, match="num_samples must be in 1..10"):
        EpochSubset(source, 11)


def _loader_lengths(demo: Path, joint_epoch: str) -> tuple[int, int, int]:
    data = WSSSDataModule(
        str(demo / "VOCdevkit" / "VOC2012"), augmentation="rotate_crop_resize", crop_size=32,
        saliency_train_root="../../DUTS-TR", batch_size=8, saliency_batch_size=2, num_workers=0,
        joint_epoch=joint_epoch,
    )  # fmt: skip
    combined = data.train_dataloader()
    iter(combined)
    loaders = combined.iterables
    return len(loaders["seg"]), len(loaders["sal"]), len(combined)


def test_segmentation_epoch_matches_the_saliency_batches_to_the_segmentation_ones(tiny_demo: Path) -> None:
    # tiny demo: 24 train_aug images at batch 8 = 3 batches; 12 DUTS-TR pairs at batch 2 = 6 batches
    assert _loader_lengths(tiny_demo, "longest") == (3, 6, 6)
    assert _loader_lengths(tiny_demo, "segmentation") == (3, 3, 3)  # 3 x 2 = 6 pairs a epoch
