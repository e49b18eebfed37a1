"""A working resolution: every image shrunk so its long side is at most ``max_side`` pixels, outputs mapped back.

A recipe sized for small images (the CPU demo crops 128 px from 128–176 px images) sees a different problem on
500×375 VOC photographs: its crops cover a tenth of the image instead of three quarters, so most crops miss the
objects their image-level labels name. ``WSSSDataModule(max_image_side=N)`` shrinks every image (training, label
updates, evaluation, prediction) before anything else, which keeps the recipe's crop-to-image ratio on any data,
while everything written or scored stays at the file's own size:

* pseudo-labels (and the saliency pseudo-labels) are fused at the working size and written at the full size
  (``pseudo/jobs.py``), so label sets keep the published convention "a map has its image's size";
* test and validation predictions are upsampled to the full size (probabilities bilinearly before the argmax;
  CRF labels nearest) and scored against the full-size ground truth (``modules/base.py``).

Images already within ``max_side`` are untouched, so a recipe's numbers on its own data do not move.
"""

from __future__ import annotations

import cv2
import numpy as np

from wsss_lightning.data.transforms import IGNORE_SALIENCY


def working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """``(h, w)`` with the aspect ratio kept and ``max(h, w) <= max_side``; the input size when it fits already."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``uint8 (H, W, 3)`` -> ``(h, w, 3)``, area-averaged (no aliasing on a downscale)."""
    if image.shape[:2] == size:
        return image
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``uint8 (H, W)`` class indices (255 = ignore) -> ``(h, w)``, nearest neighbour (no invented classes)."""
    if labels.shape[:2] == size:
        return labels
    return cv2.resize(labels, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def resize_saliency(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``float32 (H, W)`` in [0, 1] (255 = ignore) -> ``(h, w)``: area on a shrink, bilinear on an enlargement,
    nearest where a 255 marks "ignore" (averaging it into real values would invent saliency)."""
    if saliency.shape[:2] == size:
        return saliency
    if np.any(saliency == IGNORE_SALIENCY):
        mode = cv2.INTER_NEAREST
    else:
        mode = cv2.INTER_AREA if size[0] * size[1] < saliency.shape[0] * saliency.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(saliency.astype(np.float32), (size[1], size[0]), interpolation=mode)


def resize_scores(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``float32 (H, W)`` continuous scores (e.g. a CAM peak) -> ``(h, w)``, bilinear."""
    if scores.shape[:2] == size:
        return scores
    return cv2.resize(scores.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
