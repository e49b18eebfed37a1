"""CAM + saliency fusion into pseudo-labels (AuxSegNet) and absent-class logit masking (SSNet).

* :func:`fuse_cam_saliency` is AuxSegNet's heuristic fusion (``tool/imutils.py::fusion_cam``,
  docs/method_notes.md §2.7).
  The official code uses **strict** comparisons: ``cam_max > 0.2`` and ``saliency > 0.06``, so a pixel
  exactly at a threshold does not fire.
* :func:`mask_absent_class_logits` is SSNet's class masking before softmax + CRF (``syn_stage1.py``,
  docs/method_notes.md §1.5): absent foreground logits are multiplied by 0 in the code.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["CAM_THRESHOLD", "SALIENCY_THRESHOLD", "fuse_cam_saliency", "fuse_peak_saliency", "mask_absent_class_logits"]

#: AuxSegNet fusion thresholds (identical in the initial commit and at HEAD of xulianuwa/AuxSegNet).
CAM_THRESHOLD = 0.2
SALIENCY_THRESHOLD = 0.06


def fuse_cam_saliency(
    cam: Tensor,
    saliency: Tensor,
    labels: Tensor,
    cam_threshold: float = CAM_THRESHOLD,
    saliency_threshold: float = SALIENCY_THRESHOLD,
    ignore_index: int = 255,
) -> Tensor:
    """AuxSegNet heuristic fusion of a CAM and a saliency map into a segmentation pseudo-label.

    With ``K' = labels * cam``, ``m = max_c K'``, ``k = argmax_c K'`` (first index on ties, as ``torch.argmax``):

    * ``cam_obj = m > cam_threshold`` and ``sal_obj = saliency > saliency_threshold`` (strict, as the code);
    * label ``k + 1`` where both fire, ``ignore_index`` where exactly one fires, 0 (background) where neither.

    Args:
        cam: (B, K, H, W) foreground CAM in [0, 1] (no background channel), at the saliency's resolution.
        saliency: (B, H, W) or (B, 1, H, W) saliency in [0, 1] (soft; not binarised).
        labels: (B, K) multi-hot image labels; a class is present where its entry is > 0.
        cam_threshold: CAM object threshold (0.2 in the code).
        saliency_threshold: saliency object threshold (0.06 in the code).
        ignore_index: value of the uncertain pixels; must exceed every class index ``K``.

    Returns:
        (B, H, W) uint8 label map on ``cam``'s device: 0 background, 1..K objects, ``ignore_index`` uncertain.
    """
    if cam.dim() != 4:
        raise ValueError(f"cam must be (B, K, H, W), got shape {tuple(cam.shape)}")
    batch, num_fg, height, width = cam.shape
    if saliency.dim() == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    if tuple(saliency.shape) != (batch, height, width):
        raise ValueError(f"saliency must be (B, H, W) = {(batch, height, width)}, got {tuple(saliency.shape)}")
    if tuple(labels.shape) != (batch, num_fg):
        raise ValueError(f"labels must be (B, K) = {(batch, num_fg)}, got {tuple(labels.shape)}")
    if not num_fg < ignore_index <= 255:
        raise ValueError(f"ignore_index must be in ({num_fg}, 255] for {num_fg} foreground classes, got {ignore_index}")

    present = (labels > 0).to(device=cam.device)
    masked = torch.where(present[:, :, None, None], cam, torch.zeros((), dtype=cam.dtype, device=cam.device))
    peak = masked.amax(dim=1)
    cls = masked.argmax(dim=1)  # first index on ties, as the official torch.argmax

    cam_obj = peak > cam_threshold
    sal_obj = saliency.to(cam.device) > saliency_threshold

    out = torch.where(cam_obj & sal_obj, cls + 1, torch.zeros_like(cls))
    out = torch.where(cam_obj ^ sal_obj, torch.full_like(cls, ignore_index), out)
    return out.to(torch.uint8)


def mask_absent_class_logits(
    logits: Tensor,
    labels: Tensor,
    mode: Literal["zero", "neg_inf"] = "zero",
) -> Tensor:
    """Mask the logits of foreground classes absent from the image label (SSNet pseudo-label synthesis).

    The background channel (index 0) and present classes are untouched. ``mode="zero"`` reproduces the
    official code (absent logits multiplied by 0, so they still take softmax mass ``exp(0)``);
    ``mode="neg_inf"`` removes them from the softmax entirely.

    Args:
        logits: (B, C, ...) segmentation logits, channel 0 = background (usually (B, C, H, W)).
        labels: (B, C - 1) multi-hot image labels without background; present where > 0.
        mode: ``"zero"`` (the code) or ``"neg_inf"``.

    Returns:
        A new tensor shaped and typed like ``logits``.
    """
    if logits.dim() < 2:
        raise ValueError(f"logits must be (B, C, ...), got shape {tuple(logits.shape)}")
    batch, num_classes = logits.shape[:2]
    if tuple(labels.shape) != (batch, num_classes - 1):
        raise ValueError(f"labels must be (B, C - 1) = {(batch, num_classes - 1)}, got {tuple(labels.shape)}")
    if mode == "zero":
        fill = 0.0
    elif mode == "neg_inf":
        fill = float("-inf")
    else:
        raise ValueError(f"mode must be 'zero' or 'neg_inf', got {mode!r}")

    present_fg = (labels > 0).to(device=logits.device)
    keep = torch.cat([torch.ones_like(present_fg[:, :1]), present_fg], dim=1)
    keep = keep.reshape(batch, num_classes, *([1] * (logits.dim() - 2)))
    return torch.where(keep, logits, torch.full((), fill, dtype=logits.dtype, device=logits.device))


def fuse_peak_saliency(
    peak: np.ndarray,
    peak_class: np.ndarray,
    saliency: np.ndarray,
    cam_threshold: float = CAM_THRESHOLD,
    saliency_threshold: float = SALIENCY_THRESHOLD,
    ignore_index: int = 255,
) -> np.ndarray:
    """:func:`fuse_cam_saliency` from a precomputed CAM peak, in numpy (for CPU workers).

    Args:
        peak: (H, W) float, max over the present classes of the CAM (``m``), in [0, 1].
        peak_class: (H, W) int, the argmax foreground index ``k`` in 0..K-1.
        saliency: (H, W) float saliency in [0, 1].

    Returns:
        (H, W) uint8: ``k + 1`` where both fire, ``ignore_index`` where exactly one fires, 0 elsewhere.
    """
    cam_obj = peak > cam_threshold
    sal_obj = saliency > saliency_threshold
    out = np.where(cam_obj & sal_obj, peak_class.astype(np.int64) + 1, 0)
    out[cam_obj ^ sal_obj] = ignore_index
    return out.astype(np.uint8)
