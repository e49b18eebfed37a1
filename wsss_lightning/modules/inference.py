"""Test-time inference protocols shared by the methods: single scale, multi-scale (+flip), + dense CRF.

A *mode* is a string naming its parts: ``ss`` (single scale), ``ms`` (multi-scale), ``ms_flip``, and any of
them with ``_gate`` (classes the network's own multi-label classifier scores below a threshold are removed before
the argmax; not in either paper, see :func:`gate_absent_classes`) and ``_crf`` (dense CRF on the fused
probabilities). Multi-scale follows the AuxSegNet author's protocol
(MCTformer ``seg/infer_seg.py``): resize the input bilinearly (align_corners=True), forward, upsample the
logits to the input size, softmax, then fuse the scales element-wise by ``max`` (default) or ``mean``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize_image
from wsss_lightning.pseudo.dense_crf import DenseCRF

ScaleFusion = Literal["max", "mean"]
SegmentationFn = Callable[[Tensor], Tensor]  # (B,3,H,W) -> logits (B,C,h,w)


@dataclass(frozen=True)
class InferenceMode:
    """Parsed mode string: which scales, flip and CRF."""

    name: str
    multiscale: bool
    flip: bool
    crf: bool
    gate: bool = False

    @classmethod
    def parse(cls, name: str) -> InferenceMode:
        parts = name.split("_")
        unknown = set(parts) - {"ss", "ms", "flip", "crf", "gate"}
        if unknown or len(set(parts) & {"ss", "ms"}) != 1 or len(set(parts)) != len(parts):
            raise ValueError(
                f"unknown inference mode '{name}'; use ss, ss_flip, ms, ms_flip, each with optional _gate and _crf"
            )
        return cls(name, "ms" in parts, "flip" in parts, "crf" in parts, "gate" in parts)

    @property
    def base(self) -> str:
        """The mode without CRF and class gate (its probabilities are shared by the modes built on it)."""
        return ("ms" if self.multiscale else "ss") + ("_flip" if self.flip else "")

    @property
    def probabilities_key(self) -> str:
        """The mode without CRF: modes that differ only by the CRF share these probabilities."""
        return self.base + ("_gate" if self.gate else "")

    @property
    def label(self) -> str:
        """Human-readable description for result tables."""
        text = "multi-scale" if self.multiscale else "single-scale"
        if self.flip:
            text += " + flip"
        if self.gate:
            text += " + class gate"
        return text + (" + CRF" if self.crf else "")


def segmentation_probabilities(
    seg_fn: SegmentationFn,
    images: Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    fusion: ScaleFusion = "max",
) -> Tensor:
    """Class probabilities ``(B, C, H, W)`` in [0, 1] at the input's size, fused over scales and flips."""
    height, width = images.shape[-2:]
    fused: Tensor | None = None
    count = 0
    for scale in scales:
        if scale == 1.0:
            scaled = images
        else:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=True)
        batch = torch.cat([scaled, scaled.flip(-1)]) if flip else scaled
        logits = seg_fn(batch).float()
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        probs = logits.softmax(dim=1)
        views = [probs[: len(images)]]
        if flip:
            views.append(probs[len(images) :].flip(-1))
        for view in views:
            count += 1
            if fused is None:
                fused = view.clone()
            elif fusion == "max":
                fused = torch.maximum(fused, view)
            else:
                fused += view
    assert fused is not None
    return fused if fusion == "max" else fused / count


def gate_absent_classes(probs: Tensor, presence: Tensor, threshold: float) -> Tensor:
    """Zero the probabilities of the foreground classes the image-level classifier calls absent.

    Aimed at test-time class confusion, the largest loss of the demo network; on the demo it measured *worse*
    than no gate with multi-scale and CRF (docs/results.md, "Inference: the class gate"), so no default mode uses
    it. Background is always kept, and so is each image's highest-scoring class (a VOC image holds at least one
    object), so no image loses every foreground class.

    Args:
        probs: ``(B, C, H, W)`` class probabilities (background first), in [0, 1].
        presence: ``(B, C-1)`` classifier probabilities of the foreground classes, in [0, 1].
        threshold: a class is kept where ``presence >= threshold``.

    Returns:
        ``(B, C, H, W)``: ``probs`` with the removed classes' maps set to 0 (not renormalised: the argmax and
        the CRF, which renormalises, need no more).
    """
    if presence.shape != (probs.shape[0], probs.shape[1] - 1):
        raise ValueError(f"presence {tuple(presence.shape)} does not match probabilities {tuple(probs.shape)}")
    keep = presence >= threshold
    keep[torch.arange(len(presence), device=presence.device), presence.argmax(1)] = True
    keep = torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1).to(probs.dtype)
    return probs * keep[:, :, None, None]


def crf_refine(
    images: Tensor,
    probs: Tensor,
    sizes: Tensor,
    crf: DenseCRF,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> list[Tensor]:
    """The run's dense CRF (its ``inference`` preset) per image on its true (un-padded) extent.

    ``probs`` may be max-fused (not summing to 1); they are renormalised before the CRF. A pool CRF (pydensecrf)
    runs on numpy copies in this process; a device CRF (torch) on the tensors' device.

    Returns:
        label maps ``uint8 (h_i, w_i)`` on ``probs``' device.
    """
    raws, normalised = [], []
    for image, prob, (height, width) in zip(images, probs, sizes.tolist()):
        raws.append(denormalize_image(image[:, :height, :width], mean, std))  # uint8 (h, w, 3) numpy
        p = prob[:, :height, :width].float()
        normalised.append(p / p.sum(0, keepdim=True).clamp_min(1e-8))
    if crf.runs_in_pool:
        marginals = [
            torch.from_numpy(np.asarray(crf.refine_inference(raw, p.cpu().numpy())))
            for raw, p in zip(raws, normalised, strict=True)
        ]
    else:  # a device CRF filters the whole batch through one lattice per kernel
        marginals = crf.refine_inference_batch([torch.from_numpy(raw).to(probs.device) for raw in raws], normalised)
    return [m.argmax(0).to(device=probs.device, dtype=torch.uint8) for m in marginals]
