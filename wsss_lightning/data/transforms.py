"""Paired augmentation: the image, the segmentation label and the saliency map share one geometry.

Arrays in, arrays out (tensors are made by the dataset):

* ``image``: ``uint8 (H, W, 3)`` RGB;
* ``seg``:   ``uint8 (H, W)`` class indices, 255 = ignore;
* ``sal``:   ``float32 (H, W)`` saliency in [0, 1], 255 = ignore (e.g. padding, or no map available).

Geometry runs through one albumentations ``Compose`` whose "mask" target is the 2-channel stack
``[seg, sal]``, so both get nearest-neighbour resampling and their own padding value. All randomness comes
from a seed drawn from torch's generator, which Lightning seeds per worker (``seed_everything(workers=True)``),
so runs are reproducible and workers never share an augmentation stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IGNORE_SALIENCY = 255.0


def draw_seed() -> int:
    """A 31-bit seed from torch's (per-worker seeded) generator."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def normalize_image(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """``uint8 (H, W, 3)`` -> ``float32 (3, H, W)``, RGB/255 then (x - mean) / std."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean_t) / std_t


def denormalize_image(
    image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """Inverse of :func:`normalize_image` for one ``(3, H, W)`` tensor -> ``uint8 (H, W, 3)``."""
    mean_t = torch.tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    rgb = (image * std_t + mean_t).clamp_(0, 1).mul_(255).round_()
    return rgb.permute(1, 2, 0).to(torch.uint8).cpu().numpy()


def _resize(image: np.ndarray, seg: np.ndarray, sal: np.ndarray, height: int, width: int):
    size = (width, height)
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    seg = cv2.resize(seg, size, interpolation=cv2.INTER_NEAREST)
    # Bilinear for real saliency values (as the AuxSegNet code does); nearest where 255 marks "ignore".
    sal_mode = cv2.INTER_NEAREST if np.any(sal == IGNORE_SALIENCY) else cv2.INTER_LINEAR
    sal = cv2.resize(sal, size, interpolation=sal_mode)
    return image, seg, sal


def _color_jitter(jitter: Sequence[float] | None) -> list[A.BasicTransform]:
    if not jitter:
        return []
    brightness, contrast, saturation, hue = jitter
    return [A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=1.0)]


def _split_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return mask[:, :, 0].round().astype(np.uint8), mask[:, :, 1].astype(np.float32)


class ScaleCropFlip:
    """AuxSegNet / PSA training augmentation: random scale, pad to the crop, random crop, flip, colour jitter.

    Args:
        crop_size: square crop side (321 in AuxSegNet).
        scale_range: random scale factor range; one factor per image, or given per batch by the caller
            (the official code draws one factor per batch: ``scale_mode="batch"`` in the DataModule).
        flip: horizontal flip with p = 0.5.
        color_jitter: ``(brightness, contrast, saturation, hue)`` or None (the official code has none; the
            paper says colour jittering).
        seg_pad_value: label of padded pixels: 255 (ignored, recommended) or 0 (background, the official
            AuxSegNet code).
        sal_pad_value: saliency of padded pixels: 255 (ignored) or 0 (the official code).
        mean: padding colour of the image (the normalisation mean, i.e. 0 after normalisation, as the code).
    """

    def __init__(
        self,
        crop_size: int = 321,
        scale_range: tuple[float, float] = (0.7, 1.3),
        flip: bool = True,
        color_jitter: Sequence[float] | None = None,
        seg_pad_value: int = 255,
        sal_pad_value: float = IGNORE_SALIENCY,
        mean: Sequence[float] = IMAGENET_MEAN,
    ) -> None:
        if scale_range[0] <= 0 or scale_range[0] > scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
        self.crop_size = crop_size
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        fill = tuple(int(round(m * 255)) for m in mean)
        self.compose = A.Compose(
            [
                A.PadIfNeeded(
                    crop_size,
                    crop_size,
                    position="top_left",
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=fill,
                    fill_mask=(float(seg_pad_value), float(sal_pad_value)),
                ),
                A.RandomCrop(crop_size, crop_size),
                A.HorizontalFlip(p=0.5 if flip else 0.0),
                *_color_jitter(color_jitter),
            ]
        )

    def sample_scale(self, generator: np.random.Generator) -> float:
        return float(generator.uniform(*self.scale_range))

    def __call__(
        self, image: np.ndarray, seg: np.ndarray, sal: np.ndarray, scale: float | None = None, seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        seed = draw_seed() if seed is None else seed
        if scale is None:
            scale = self.sample_scale(np.random.default_rng(seed))
        height, width = image.shape[:2]
        new_h, new_w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
        if (new_h, new_w) != (height, width):
            image, seg, sal = _resize(image, seg, sal, new_h, new_w)
        self.compose.set_random_seed(seed)
        out = self.compose(image=image, mask=np.stack([seg.astype(np.float32), sal], axis=2))
        seg_out, sal_out = _split_mask(out["mask"])
        return out["image"], seg_out, sal_out


class RotateCropResize:
    """SSNet (jsws) training augmentation: rotate, crop a fraction, flip, resize to a fixed square.

    Rotation by an angle in [-max_rotation, max_rotation] degrees, cropped to the largest inscribed
    rectangle; a random crop of ``crop_fraction`` of height and width; horizontal flip (p = 0.5); resize to
    ``size`` x ``size`` (aspect ratio not preserved, as in the official code).
    """

    def __init__(
        self,
        size: int = 256,
        max_rotation: float = 10.0,
        crop_fraction: float = 0.9,
        flip: bool = True,
        color_jitter: Sequence[float] | None = None,
    ) -> None:
        self.size = size
        self.crop_fraction = crop_fraction
        self.rotate = A.Compose([A.Rotate(limit=max_rotation, crop_border=True, p=1.0 if max_rotation > 0 else 0.0)])
        self.finish = A.Compose(
            [
                A.HorizontalFlip(p=0.5 if flip else 0.0),
                A.Resize(size, size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST),
                *_color_jitter(color_jitter),
            ]
        )

    def __call__(
        self, image: np.ndarray, seg: np.ndarray, sal: np.ndarray, scale: float | None = None, seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        seed = draw_seed() if seed is None else seed
        generator = np.random.default_rng(seed)
        mask = np.stack([seg.astype(np.float32), sal], axis=2)
        self.rotate.set_random_seed(seed)
        rotated = self.rotate(image=image, mask=mask)
        image, mask = rotated["image"], rotated["mask"]
        height, width = image.shape[:2]
        crop_h, crop_w = max(1, int(height * self.crop_fraction)), max(1, int(width * self.crop_fraction))
        top = int(generator.integers(0, height - crop_h + 1))
        left = int(generator.integers(0, width - crop_w + 1))
        image = image[top : top + crop_h, left : left + crop_w]
        mask = mask[top : top + crop_h, left : left + crop_w]
        self.finish.set_random_seed(seed + 1)
        out = self.finish(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(mask))
        seg_out, sal_out = _split_mask(out["mask"])
        return out["image"], seg_out, sal_out


class ResizeOnly:
    """Deterministic resize to a fixed square (no augmentation); e.g. SSNet's stage-2 or parity evaluation."""

    def __init__(self, size: int = 256) -> None:
        self.size = size

    def __call__(
        self, image: np.ndarray, seg: np.ndarray, sal: np.ndarray, scale: float | None = None, seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _resize(image, seg, sal, self.size, self.size)
