"""Class activation maps: normalisation and the PSA multi-scale + flip protocol.

Two CAM recipes are used by the methods (docs/method_notes.md §2.6):

* the **initial** CAM (stage-0 pseudo-labels), PSA's ``infer_cls.py`` protocol: sum the ReLU'd CAMs over
  scales (1.0, 0.5, 1.5, 2.0) x {identity, horizontal flip} at image resolution, zero absent classes and
  divide each class by its spatial max (+1e-5) -> :func:`multiscale_cam`;
* the **stage-s** CAM (AuxSegNet ``gen_pgt.py``): one forward at full size, ``ReLU`` then per-class max
  normalisation -> :func:`normalize_cam`.

Everything is batched, device- and dtype-agnostic, and knows nothing about Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["multiscale_cam", "normalize_cam", "upsample_cam"]


def normalize_cam(cam: Tensor, eps: float = 1e-5) -> Tensor:
    """ReLU, then divide every channel by its own spatial maximum (+ ``eps``).

    Args:
        cam: raw CAM, shape (B, K, h, w), any real values.
        eps: added to the per-channel max, so an all-zero channel stays all zero (0 / eps = 0).

    Returns:
        Tensor of the same shape and dtype, values in [0, 1) (the peak of each non-empty channel is
        ``max / (max + eps)``, just below 1).
    """
    if cam.dim() != 4:
        raise ValueError(f"cam must be (B, K, h, w), got shape {tuple(cam.shape)}")
    cam = F.relu(cam)
    peak = cam.amax(dim=(-2, -1), keepdim=True)
    return cam / (peak + eps)


def upsample_cam(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of a (B, K, h, w) map to ``size = (H, W)`` (``align_corners=False``, as PSA / AuxSegNet).

    Returns the input unchanged when it already has that size.
    """
    if tuple(cam.shape[-2:]) == tuple(size):
        return cam
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)


def _scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    # PSA rounds the target size with Python's round(); keep at least one pixel for tiny test images.
    return max(1, round(height * scale)), max(1, round(width * scale))


def multiscale_cam(
    cam_fn: Callable[[Tensor], Tensor],
    images: Tensor,
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    flip: bool = True,
    labels: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """PSA multi-scale (+ flip) CAM at image resolution, per-class max-normalised.

    For every scale ``s``: resize ``images`` bilinearly to ``round(H*s) x round(W*s)``, stack the horizontal
    flip behind it in the same batch (one ``cam_fn`` call per scale), ``ReLU`` the raw CAM, upsample it
    bilinearly to ``H x W``, flip the second half back and add both halves to the running sum. Finally zero
    the absent classes and divide each class by its spatial max + ``eps``.

    PSA resizes the uint8 image with PIL bicubic before normalisation; we resize the (normalised) tensor
    bilinearly, which keeps the whole protocol on the accelerator.

    Args:
        cam_fn: maps a (N, 3, h, w) image batch to its raw CAM (N, K, h', w') (any stride). Called under
            the caller's grad mode; wrap the call in ``torch.no_grad()`` for inference.
        images: (B, 3, H, W) normalised images.
        scales: resize factors; the sum is over all of them.
        flip: also run the horizontally flipped image at every scale.
        labels: optional multi-hot image labels (B, K), no background entry; classes with label <= 0 are
            zeroed. ``None`` keeps every class.
        eps: see :func:`normalize_cam`.

    Returns:
        (B, K, H, W) float tensor (at least float32) in [0, 1); absent classes are exactly 0.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if len(scales) == 0:
        raise ValueError("scales must not be empty")
    batch, _, height, width = images.shape

    total: Tensor | None = None
    for scale in scales:
        size = _scaled_size(height, width, scale)
        x = images
        if size != (height, width):
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        cam = cam_fn(x)
        if cam.dim() != 4 or cam.shape[0] != x.shape[0]:
            raise ValueError(
                f"cam_fn must return (N, K, h, w) for an input of batch {x.shape[0]}, got {tuple(cam.shape)}"
            )
        # Sum in at least float32: under autocast cam_fn may hand back float16.
        cam = F.relu(cam.to(torch.promote_types(cam.dtype, torch.float32)))
        cam = upsample_cam(cam, (height, width))
        if flip:
            cam = cam[:batch] + cam[batch:].flip(-1)
        total = cam if total is None else total + cam

    assert total is not None
    if labels is not None:
        if labels.shape != total.shape[:2]:
            raise ValueError(f"labels must be (B, K) = {tuple(total.shape[:2])}, got {tuple(labels.shape)}")
        total = total * (labels > 0).to(total.dtype)[:, :, None, None]
    return normalize_cam(total, eps=eps)
