"""Paired augmentation: image, seg and sal share one geometry; padding, seeds, per-batch scale, collation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from wsss_lightning.data.collate import BatchScaleCollate, pad_collate
from wsss_lightning.data.palette import voc_palette
from wsss_lightning.data.transforms import (
    IGNORE_SALIENCY,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResizeOnly,
    RotateCropResize,
    ScaleCropFlip,
    denormalize_image,
    normalize_image,
)

PALETTE = voc_palette()
MEAN_COLOUR = np.array([round(m * 255) for m in IMAGENET_MEAN], np.uint8)  # (124, 116, 104)


def _scene(height: int = 40, width: int = 48, block: int = 8, seed: int = 0):
    """Blocks of random classes 0..5; the image colour encodes the class (VOC palette) and sal = class * 0.15."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 6, (height // block + 1, width // block + 1))
    seg = np.kron(cells, np.ones((block, block), np.int64))[:height, :width].astype(np.uint8)
    return PALETTE[seg].copy(), seg, (seg * 0.15).astype(np.float32)


def _interior(seg: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose (2r+1)^2 window holds one label and lies inside the array."""
    height, width = seg.shape
    padded = np.pad(seg.astype(np.int64), radius, constant_values=-1)
    same = np.ones(seg.shape, dtype=bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= padded[dy : dy + height, dx : dx + width] == seg
    return same


# ------------------------------------------------------------------------------------------------ ScaleCropFlip


@pytest.mark.parametrize("seed", range(6))
def test_scale_crop_flip_at_scale_one_keeps_every_pixel_aligned(seed: int) -> None:
    image, seg, sal = _scene()
    transform = ScaleCropFlip(crop_size=32, scale_range=(0.5, 1.5))
    out_image, out_seg, out_sal = transform(image, seg, sal, scale=1.0, seed=seed)
    assert out_image.shape == (32, 32, 3) and out_image.dtype == np.uint8
    assert out_seg.shape == (32, 32) and out_seg.dtype == np.uint8
    assert out_sal.shape == (32, 32) and out_sal.dtype == np.float32
    np.testing.assert_array_equal(out_image, PALETTE[out_seg])  # no padding at this size: every pixel
    np.testing.assert_allclose(out_sal, out_seg * np.float32(0.15), atol=1e-6)
    # and the crop is a window of the input (or of its mirror image)
    windows = [seg[y : y + 32, x : x + 32] for y in range(9) for x in range(17)]
    mirrored = [w[:, ::-1] for w in windows]
    assert any(np.array_equal(out_seg, w) for w in windows + mirrored)


@pytest.mark.parametrize("scale", [0.75, 2.0])
def test_scale_crop_flip_keeps_alignment_when_resizing(scale: float) -> None:
    image, seg, sal = _scene(block=10)
    out_image, out_seg, out_sal = ScaleCropFlip(crop_size=48)(image, seg, sal, scale=scale, seed=3)
    valid = out_seg != 255
    inside = _interior(out_seg, 1) & valid  # away from class edges, where bilinear colours blend
    assert inside.mean() > 0.3
    np.testing.assert_array_equal(out_image[inside], PALETTE[out_seg[inside]])
    # saliency is resized bilinearly: exact inside blocks, and between class levels elsewhere
    np.testing.assert_allclose(out_sal[inside], out_seg[inside] * np.float32(0.15), atol=1e-5)
    assert np.all((out_sal[valid] >= 0) & (out_sal[valid] <= 0.75 + 1e-6))
    np.testing.assert_array_equal(out_sal[~valid], IGNORE_SALIENCY)


def test_padding_is_bottom_right_with_the_mean_colour_and_the_pad_values() -> None:
    image, seg, sal = _scene(height=20, width=28)
    transform = ScaleCropFlip(crop_size=40, flip=False, seg_pad_value=255, sal_pad_value=255.0)
    out_image, out_seg, out_sal = transform(image, seg, sal, scale=1.0, seed=0)
    # the crop equals the padded canvas: content top-left, padding below and to the right (official code)
    np.testing.assert_array_equal(out_seg[:20, :28], seg)
    np.testing.assert_array_equal(out_image[:20, :28], image)
    np.testing.assert_array_equal(out_sal[:20, :28], sal)
    pad = np.ones((40, 40), dtype=bool)
    pad[:20, :28] = False
    assert np.all(out_seg[pad] == 255) and np.all(out_sal[pad] == 255.0)
    assert np.all(out_image[pad] == MEAN_COLOUR)
    # the official AuxSegNet padding: background label and zero saliency
    official = ScaleCropFlip(crop_size=40, flip=False, seg_pad_value=0, sal_pad_value=0.0)
    _, seg0, sal0 = official(image, seg, sal, scale=1.0, seed=0)
    assert np.all(seg0[pad] == 0) and np.all(sal0[pad] == 0.0)
    np.testing.assert_array_equal(seg0[:20, :28], seg)
    # the mean colour is 0 after normalisation, as in the official code
    normalised = normalize_image(out_image)
    assert normalised[:, pad].abs().max() < 0.01


def test_flips_are_shared_and_happen() -> None:
    image, seg, sal = _scene(height=24, width=24)
    transform = ScaleCropFlip(crop_size=24)
    flipped = 0
    for seed in range(12):
        out_image, out_seg, out_sal = transform(image, seg, sal, scale=1.0, seed=seed)
        if np.array_equal(out_seg, seg[:, ::-1]):
            flipped += 1
            np.testing.assert_array_equal(out_image, image[:, ::-1])
            np.testing.assert_array_equal(out_sal, sal[:, ::-1])
        else:
            np.testing.assert_array_equal(out_seg, seg)
            np.testing.assert_array_equal(out_image, image)
            np.testing.assert_array_equal(out_sal, sal)
    assert 0 < flipped < 12
    no_flip = ScaleCropFlip(crop_size=24, flip=False)
    assert all(np.array_equal(no_flip(image, seg, sal, scale=1.0, seed=s)[1], seg) for s in range(12))


@pytest.mark.parametrize("scale", [0.5, 0.8, 1.25])
def test_a_given_scale_is_honoured(scale: float) -> None:
    image, seg, sal = _scene(height=30, width=44)
    transform = ScaleCropFlip(crop_size=64, scale_range=(0.9, 1.1), flip=False)
    _, out_seg, out_sal = transform(image, seg, sal, scale=scale, seed=1)
    rows, cols = np.nonzero(out_sal != 255)  # padding reveals the scaled size
    assert (rows.max() + 1, cols.max() + 1) == (round(30 * scale), round(44 * scale))
    assert np.all(out_seg[round(30 * scale) :] == 255)


def test_random_scale_stays_in_range_and_same_seed_gives_same_output() -> None:
    image, seg, sal = _scene(height=30, width=44)
    transform = ScaleCropFlip(crop_size=64, scale_range=(0.5, 1.0), color_jitter=(0.4, 0.4, 0.4, 0.1))
    first = transform(image, seg, sal, seed=1234)
    again = transform(image, seg, sal, seed=1234)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    heights = set()
    for seed in range(10):
        _, out_seg, _ = transform(image, seg, sal, seed=seed)
        rows = np.nonzero((out_seg != 255).any(axis=1))[0]
        heights.add(int(rows.max()) + 1)
    assert len(heights) > 2 and all(15 <= h <= 30 for h in heights)
    # the seed comes from torch's generator when none is given (Lightning seeds it per worker)
    torch.manual_seed(7)
    a = transform(image, seg, sal)
    torch.manual_seed(7)
    b = transform(image, seg, sal)
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError, match="scale_range"):
        ScaleCropFlip(scale_range=(1.2, 0.8))


# ------------------------------------------------------------------------------------------------ per-batch scale


def _finish(arrays: dict[str, Any]) -> dict[str, Any]:
    return {
        "seg": torch.from_numpy(arrays["seg"]),
        "sal": torch.from_numpy(arrays["sal"]),
        "ori_size": torch.tensor(arrays["ori_size"]),
    }


def _scale_interval(size: int, scaled: int) -> tuple[float, float]:
    """Scales s with round(size * s) == scaled."""
    return (scaled - 0.5) / size, (scaled + 0.5) / size


def _feasible_scales(batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Intersection over the batch of the scales that explain every sample's unpadded size."""
    low, high = 0.0, np.inf
    for sal, (height, width) in zip(batch["sal"], batch["ori_size"].tolist()):
        rows, cols = np.nonzero(sal.numpy() != 255)
        for size, scaled in ((height, rows.max() + 1), (width, cols.max() + 1)):
            a, b = _scale_interval(size, int(scaled))
            low, high = max(low, a), min(high, b)
    return low, high


def test_batch_scale_collate_gives_one_scale_to_the_whole_batch() -> None:
    sizes = [(23, 31), (37, 19), (29, 41), (17, 17)]
    samples = []
    for height, width in sizes:
        image, seg, sal = _scene(height, width)
        samples.append({"image": image, "seg": seg, "sal": sal, "ori_size": (height, width)})
    # a crop larger than any scaled image: nothing is cut, the padding reveals each scaled size
    transform = ScaleCropFlip(crop_size=72, scale_range=(0.6, 1.6), flip=False)
    collate = BatchScaleCollate(transform, _finish)
    torch.manual_seed(0)
    scales_seen = []
    for _ in range(4):
        batch = collate(samples)
        assert batch["seg"].shape == (4, 72, 72) and batch["sal"].shape == (4, 72, 72)
        low, high = _feasible_scales(batch)
        assert low <= high, "the samples of one batch were scaled differently"
        assert low >= 0.6 - 0.05 and high <= 1.6 + 0.05
        scales_seen.append((low + high) / 2)
    assert max(scales_seen) - min(scales_seen) > 0.05  # but batches differ


def test_per_image_scales_differ_within_a_batch() -> None:
    """The contrast to the test above: scale_mode "image" draws a scale per sample."""
    image, seg, sal = _scene(37, 41)
    transform = ScaleCropFlip(crop_size=72, scale_range=(0.6, 1.6), flip=False)
    outs = [transform(image, seg, sal, seed=seed) for seed in range(4)]
    batch = {
        "sal": torch.stack([torch.from_numpy(o[2]) for o in outs]),
        "ori_size": torch.tensor([(37, 41)] * 4),
    }
    low, high = _feasible_scales(batch)
    assert low > high


# ------------------------------------------------------------------------------------------------ SSNet transforms


@pytest.mark.parametrize("seed", range(4))
def test_rotate_crop_resize_gives_size_squared_and_keeps_alignment(seed: int) -> None:
    image, seg, sal = _scene(height=72, width=64, block=12, seed=seed)
    transform = RotateCropResize(size=56, max_rotation=10.0, crop_fraction=0.9)
    out_image, out_seg, out_sal = transform(image, seg, sal, seed=seed)
    assert out_image.shape == (56, 56, 3) and out_seg.shape == (56, 56) and out_sal.shape == (56, 56)
    assert out_seg.dtype == np.uint8 and out_sal.dtype == np.float32
    assert set(np.unique(out_seg)) <= set(range(6))  # nearest resampling: only the input's labels
    inside = _interior(out_seg, 2)
    assert inside.mean() > 0.3
    # nearest palette colour of every interior pixel is its label's colour (bilinear images blend slightly)
    distance = np.abs(out_image[inside][:, None, :].astype(int) - PALETTE[:6][None].astype(int)).sum(-1)
    np.testing.assert_array_equal(distance.argmin(1), out_seg[inside])
    np.testing.assert_allclose(out_sal, out_seg * np.float32(0.15), atol=1e-5)
    again = transform(image, seg, sal, seed=seed)
    for a, b in zip((out_image, out_seg, out_sal), again):
        np.testing.assert_array_equal(a, b)


def test_rotate_crop_resize_without_rotation_is_a_crop_and_resize() -> None:
    image, seg, sal = _scene(height=40, width=40, block=8)
    transform = RotateCropResize(size=36, max_rotation=0.0, crop_fraction=0.9, flip=False)
    _, out_seg, _ = transform(image, seg, sal, seed=5)
    # a 36 x 36 crop of a 40 x 40 input resized to 36 x 36 is the crop itself
    windows = [seg[y : y + 36, x : x + 36] for y in range(5) for x in range(5)]
    assert any(np.array_equal(out_seg, w) for w in windows)


def test_resize_only_is_deterministic_and_nearest_for_labels() -> None:
    image, seg, sal = _scene(height=20, width=30, block=10)
    out_image, out_seg, out_sal = ResizeOnly(40)(image, seg, sal)
    assert out_image.shape == (40, 40, 3) and out_seg.shape == (40, 40) and out_sal.shape == (40, 40)
    # OpenCV's nearest neighbour takes source pixel floor(dst * src / dst_size)
    rows, cols = np.arange(40) * 20 // 40, np.arange(40) * 30 // 40
    np.testing.assert_array_equal(out_seg, seg[rows][:, cols])
    again = ResizeOnly(40)(image, seg, sal)
    np.testing.assert_array_equal(again[0], out_image)


# ------------------------------------------------------------------------------------------------ collation


def _sample(height: int, width: int, name: str) -> dict[str, Any]:
    return {
        "image": torch.full((3, height, width), 1.5),
        "seg": torch.full((height, width), 3, dtype=torch.uint8),
        "sal": torch.full((height, width), 0.25),
        "cls_label": torch.tensor([0.0, 1.0]),
        "name": name,
        "ori_size": torch.tensor([height, width]),
        "raw": torch.full((height, width, 3), 9, dtype=torch.uint8),
    }


def test_pad_collate_pads_bottom_right_and_keeps_ori_size() -> None:
    batch = pad_collate([_sample(4, 6, "a"), _sample(5, 3, "b")])
    assert batch["image"].shape == (2, 3, 5, 6) and batch["seg"].shape == (2, 5, 6)
    assert batch["raw"].shape == (2, 5, 6, 3)
    assert batch["name"] == ["a", "b"]
    assert batch["ori_size"].tolist() == [[4, 6], [5, 3]]
    assert batch["seg"].dtype == torch.uint8
    # sample a: one padded row at the bottom; sample b: three padded columns at the right
    assert torch.all(batch["seg"][0, :4] == 3) and torch.all(batch["seg"][0, 4] == 255)
    assert torch.all(batch["seg"][1, :, :3] == 3) and torch.all(batch["seg"][1, :, 3:] == 255)
    assert torch.all(batch["sal"][0, 4] == 255.0) and torch.all(batch["sal"][1, :, 3:] == 255.0)
    assert torch.all(batch["sal"][1, :, :3] == 0.25)
    assert torch.all(batch["image"][0, :, 4] == 0.0) and torch.all(batch["image"][0, :, :4] == 1.5)
    assert torch.all(batch["raw"][1, :, 3:] == 0) and torch.all(batch["raw"][1, :, :3] == 9)
    torch.testing.assert_close(batch["cls_label"], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


def _crop_back(batch: dict[str, torch.Tensor], index: int) -> torch.Tensor:
    height, width = batch["ori_size"][index].tolist()
    return batch["seg"][index, :height, :width]


def test_pad_collate_crops_back_to_the_original_samples() -> None:
    samples: Sequence[dict[str, Any]] = [_sample(2, 7, "x"), _sample(6, 1, "y"), _sample(3, 3, "z")]
    batch = pad_collate(samples)
    for index, sample in enumerate(samples):
        torch.testing.assert_close(_crop_back(batch, index), sample["seg"])


def test_normalise_and_denormalise_are_inverse() -> None:
    image, _, _ = _scene(height=8, width=8)
    tensor = normalize_image(image)
    assert tensor.shape == (3, 8, 8) and tensor.dtype == torch.float32
    expected = (image[0, 0, 0] / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert tensor[0, 0, 0].item() == pytest.approx(expected, abs=1e-6)
    np.testing.assert_array_equal(denormalize_image(tensor), image)
