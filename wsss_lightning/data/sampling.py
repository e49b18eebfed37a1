"""Training batches that an interrupted run can resume exactly: epoch-seeded order, per-sample seeds, a position.

Three pieces make the batch stream a pure function of ``(seed, epoch, position)``, whatever happened before:

* :class:`EpochSampler` shuffles with a generator seeded by ``(seed, epoch)`` — not torch's global RNG, so neither a
  resume nor anything else that draws random numbers moves it (Lightning's ``DistributedSampler`` replaces it under
  DDP and is seeded the same way);
* :class:`SeededBatchSampler` gives every sample the seed of its augmentation, ``hash(seed, epoch, dataset index)``,
  instead of letting a worker's generator draw it (a worker's stream depends on which samples it served before);
* :class:`ResumableDataLoader` reports its position (``state_dict``: the epoch and the batches trained on in it) and,
  restored (``load_state_dict``, which Lightning calls before it iterates), skips the batches already trained on
  without loading them.

With the model's RNG states restored at the next training step (``modules/base.py``), a run killed mid-epoch and
resumed from its checkpoint trains on exactly the batches, augmentations and dropout masks of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sized
from typing import Any, NamedTuple

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler
from torch.utils.data.distributed import DistributedSampler

__all__ = [
    "EpochSampler",
    "EpochSubset",
    "ResumableDataLoader",
    "SeededBatchSampler",
    "SeededIndex",
    "global_seed",
    "mix_seed",
]


def global_seed() -> int:
    """The run's seed: ``seed_everything``'s (``PL_GLOBAL_SEED``), 0 without one."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def mix_seed(*parts: int) -> int:
    """A 31-bit seed that depends only on ``parts`` (stable across processes and platforms)."""
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") % (2**31 - 2)  # the transforms also use seed + 1


class SeededIndex(NamedTuple):
    """What the batch sampler yields per sample: the dataset index, the seed of that sample's augmentation and the
    epoch it is drawn in (an :class:`EpochSubset` draws a different subset each epoch)."""

    index: int
    seed: int
    epoch: int = 0


class EpochSampler(RandomSampler):
    """A shuffling sampler whose order depends only on ``(seed, epoch)``.

    A ``RandomSampler`` subclass, so Lightning treats it as shuffled (and swaps in a ``DistributedSampler`` under
    DDP); ``set_epoch`` is called by Lightning at every epoch start.
    """

    def __init__(self, data_source: Sized, seed: int | None = None) -> None:
        super().__init__(data_source)
        self.seed = global_seed() if seed is None else int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


def _sampler_epoch(sampler: Sampler) -> int:
    """The epoch Lightning last set on the sampler (``EpochSampler`` / ``DistributedSampler``), else 0."""
    return sampler.epoch if isinstance(sampler, EpochSampler | DistributedSampler) else 0


class SeededBatchSampler(BatchSampler):
    """Batches of :class:`SeededIndex`; can skip the first batches of one epoch (a resumed run's).

    Args:
        sampler, batch_size, drop_last: as ``BatchSampler`` (Lightning re-creates it around a ``DistributedSampler``
            under DDP with exactly these arguments).
        seed: the run's seed (default: ``seed_everything``'s).
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool, seed: int | None = None) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.seed = global_seed() if seed is None else int(seed)
        self.skip: tuple[int, int] | None = None  # (epoch, batches) to skip at the next iteration of that epoch

    def __iter__(self) -> Iterator[list[SeededIndex]]:
        epoch = _sampler_epoch(self.sampler)
        skip = self.skip[1] if self.skip is not None and self.skip[0] == epoch else 0
        self.skip = None
        for number, batch in enumerate(super().__iter__()):
            if number >= skip:
                yield [SeededIndex(index, mix_seed(self.seed, epoch, index), epoch) for index in batch]


Position = Callable[[], tuple[int, int]]


class ResumableDataLoader(DataLoader):
    """A training DataLoader with a :class:`SeededBatchSampler` whose position goes into checkpoints.

    Args:
        position: returns ``(epoch, batches trained on in that epoch)``; the DataModule reads it from the trainer's
            progress (a DataLoader cannot count it itself: Lightning fetches ahead).
        **kwargs: DataLoader arguments; ``batch_sampler`` must be a :class:`SeededBatchSampler`.
    """

    def __init__(self, *args: Any, position: Position | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: where a run resumed from this checkpoint continues."""
        epoch, batches = self.position() if self.position is not None else (0, 0)
        if batches >= len(self):  # the epoch is over: the next one starts from its first batch
            epoch, batches = epoch + 1, 0
        return {"epoch": int(epoch), "batches": int(batches)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at ``state``: the sampler takes its epoch (Lightning sets it only after it created the iterator)
        and the batch sampler skips the batches already trained on."""
        epoch, batches = int(state.get("epoch", 0)), int(state.get("batches", 0))
        sampler = self.batch_sampler.sampler if self.batch_sampler is not None else None
        if isinstance(sampler, EpochSampler | DistributedSampler):
            sampler.set_epoch(epoch)
        if isinstance(self.batch_sampler, SeededBatchSampler):
            self.batch_sampler.skip = (epoch, batches)


class EpochSubset(Dataset):
    """``num_samples`` samples of ``dataset`` per epoch, a fresh random subset each epoch.

    Joint training pairs a segmentation loader with a saliency loader, and Lightning's ``max_size_cycle`` makes an
    epoch as long as the longer one: a 400-image VOC subset next to the 10,553 DUTS-TR pairs would train 26 times
    as many steps per epoch as the recipe was measured with. This view has the length the segmentation epoch needs;
    item ``i`` of epoch ``e`` is item ``perm_e[i]`` of the dataset, ``perm_e`` a permutation seeded by
    ``(seed, e)``. The epoch comes with the :class:`SeededIndex` (so workers, resumes and DDP ranks, which split
    ``0..num_samples-1`` between them, all agree on it); a plain integer index reads epoch 0.
    """

    def __init__(self, dataset: Dataset, num_samples: int, seed: int | None = None) -> None:
        size = len(dataset)  # type: ignore[arg-type]
        if not 0 < num_samples <= size:
            raise ValueError(f"num_samples must be in 1..{size}, got {num_samples}")
        self.dataset = dataset
        self.num_samples = int(num_samples)
        self.seed = global_seed() if seed is None else int(seed)
        self._perm: tuple[int, list[int]] | None = None  # (epoch, permutation) of the last epoch served

    def __len__(self) -> int:
        return self.num_samples

    def source_index(self, index: int, epoch: int) -> int:
        """The dataset index behind item ``index`` of ``epoch``."""
        if self._perm is None or self._perm[0] != epoch:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 7))
            self._perm = (epoch, torch.randperm(len(self.dataset), generator=generator).tolist())  # type: ignore[arg-type]
        return self._perm[1][index]

    def __getitem__(self, key: int | SeededIndex) -> Any:
        if isinstance(key, SeededIndex):
            return self.dataset[SeededIndex(self.source_index(key.index, key.epoch), key.seed, key.epoch)]
        return self.dataset[self.source_index(int(key), 0)]
