"""Test-time inference protocols shared by the methods: single scale, multi-scale (+flip), + dense CRF.

A *mode* is a string naming its parts: ``ss`` (single scale), ``ms`` (multi-scale), ``ms_flip``, and any of
them with ``_crf`` (dense CRF on the fused probabilities). Multi-scale follows the AuxSegNet author's protocol
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

    @classmethod
    def parse(cls, name: str) -> InferenceMode:
        parts = set(name.split("_"))
        unknown = parts - {"ss", "ms", "flip", "crf"}
        if unknown or not parts & {"ss", "ms"}:
            raise ValueError(f"unknown inference mode '{name}'; use ss, ss_flip, ms, ms_flip, with optional _crf")
        return cls(name, "ms" in parts, "flip" in parts, "crf" in parts)

    @property
    def base(self) -> str:
        """The mode without CRF (its probabilities can be shared)."""
        return self.name.replace("_crf", "")

    @property
    def label(self) -> str:
        """Human-readable description for result tables."""
        text = "multi-scale" if self.multiscale else "single-scale"
        if self.flip:
            text += " + flip"
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
    labels = []
    for image, prob, (height, width) in zip(images, probs, sizes.tolist()):
        raw = denormalize_image(image[:, :height, :width], mean, std)  # uint8 (h, w, 3) numpy
        p = prob[:, :height, :width].float()
        p = p / p.sum(0, keepdim=True).clamp_min(1e-8)
        if crf.runs_in_pool:
            marginals = torch.from_numpy(np.asarray(crf.refine_inference(raw, p.cpu().numpy())))
        else:
            marginals = crf.refine_inference(torch.from_numpy(raw).to(p.device), p)
        labels.append(marginals.argmax(0).to(device=probs.device, dtype=torch.uint8))
    return labels
