"""Loss functions shared by SSNet and AuxSegNet (docs/method_notes.md §1.4, §2.5). Pure functions of tensors.

Conventions: ``B`` batch, ``C`` classes including background (index 0), ``K = C - 1`` foreground classes.
Pixel targets use ``255`` (:data:`~wsss_lightning.data.palette.IGNORE_INDEX`) for "ignore". Every pixel loss is
a mean over the *valid* pixels of the whole batch, and is ``0`` (still attached to the graph, so ``backward()``
works and gives zero gradients) when no pixel is valid, instead of ``NaN``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_lightning.data.palette import IGNORE_INDEX

__all__ = [
    "multilabel_soft_margin",
    "gap_classification_loss",
    "ssnet_saliency_loss",
    "saliency_bce_loss",
    "segmentation_ce_loss",
]

SaliencyLossForm = Literal["linear", "log"]
# Clamp of S in the log form of the SSNet saliency loss (docs/method_notes.md §1.4).
LOG_FORM_EPS = 1e-6


def multilabel_soft_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """Multi-label classification loss: BCE-with-logits averaged over classes and batch (AuxSegNet ``L_cls``).

    Equal to ``F.multilabel_soft_margin_loss`` (mean over the ``K`` classes, then over the batch).

    Args:
        logits: ``(B, K)`` unbounded class scores.
        labels: ``(B, K)`` multi-hot targets in {0, 1} (any dtype; soft values in [0, 1] also work).

    Returns:
        scalar loss.
    """
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must have the same shape")
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def gap_classification_loss(seg_logits: Tensor, labels: Tensor) -> Tensor:
    """SSNet ``L_c`` term: BCE-with-logits on the spatial mean of the foreground segmentation logits.

    The background channel 0 is left out; the mean over pixels is taken on logits, not probabilities
    (global average pooling of logits, as ``jsws/weak_seg_full_sal_train.py``). SSNet stage 1 sums this
    term for the full-resolution logits ``Z`` and the coarse logits ``s32``.

    Args:
        seg_logits: ``(B, C, H, W)`` segmentation logits (any resolution).
        labels: ``(B, C - 1)`` multi-hot image labels without background.

    Returns:
        scalar loss.
    """
    if seg_logits.dim() != 4:
        raise ValueError(f"seg_logits must be (B, C, H, W), got {tuple(seg_logits.shape)}")
    batch, channels = seg_logits.shape[:2]
    if tuple(labels.shape) != (batch, channels - 1):
        raise ValueError(
            f"labels must be (B, C-1) = ({batch}, {channels - 1}) for seg_logits {tuple(seg_logits.shape)} "
            f"(no background entry), got {tuple(labels.shape)}"
        )
    return multilabel_soft_margin(seg_logits[:, 1:].mean(dim=(2, 3)), labels)


def ssnet_saliency_loss(
    saliency: Tensor,
    background: Tensor,
    target: Tensor,
    form: SaliencyLossForm = "linear",
    seg_logits: Tensor | None = None,
    sal_scores: Tensor | None = None,
) -> Tensor:
    """SSNet saliency loss ``L_s1`` on the SAM output (docs/method_notes.md §1.3–1.4).

    * ``"linear"`` (default, what the official code optimises: ``nll_loss`` fed with probabilities ``[B, S]``):
      ``-mean_x [ g·S + (1 - g)·B ]``.
    * ``"log"`` (the paper-style cross-entropy, UNCONFIRMED): ``-mean_x [ g·log S + (1 - g)·log(1 - S) ]`` with
      ``S`` clamped to ``[1e-6, 1 - 1e-6]``. This form uses ``1 - S``, not ``B``.

    Args:
        saliency: ``(B, H, W)`` SAM saliency ``S = Σ_{c≥1} v_c P_c`` in [0, 1).
        background: ``(B, H, W)`` background probability ``P_0`` in [0, 1] (used by the linear form only).
        target: ``(B, H, W)`` saliency mask ``g`` in {0, 1} (any dtype), ``255`` = ignore. Values in between are
            used as soft weights (binary masks reproduce the official loss exactly).
        form: ``"linear"`` or ``"log"``.
        seg_logits, sal_scores: the ``(B, C, H, W)`` logits and ``(B, C)`` class saliency weights ``v`` that made
            ``saliency``. With them the log form is computed in log space, ``log S = LSE_c(log v_c + log P_c)``, and
            keeps its gradient where ``S`` underflows the clamp (a saturated softmax: ``modules/collapse.py``).

    Returns:
        scalar loss, mean over valid pixels (linear form lies in [-1, 0]).
    """
    if not saliency.shape == background.shape == target.shape or saliency.dim() != 3:
        raise ValueError(
            "saliency, background and target must all be (B, H, W); got "
            f"{tuple(saliency.shape)}, {tuple(background.shape)}, {tuple(target.shape)}"
        )
    valid = target != IGNORE_INDEX
    g = torch.where(valid, target, torch.zeros_like(target)).to(saliency.dtype)
    if form == "linear":
        per_pixel = -(g * saliency + (1 - g) * background)
    elif form == "log" and seg_logits is not None and sal_scores is not None:
        log_s, log_not_s = _log_saliency(seg_logits, sal_scores)
        per_pixel = -(g * log_s + (1 - g) * log_not_s)
    elif form == "log":
        s = saliency.clamp(LOG_FORM_EPS, 1 - LOG_FORM_EPS)
        per_pixel = -(g * torch.log(s) + (1 - g) * torch.log1p(-s))
    else:
        raise ValueError(f"form must be 'linear' or 'log', got {form!r}")
    return _masked_mean(per_pixel, valid)


def _log_saliency(seg_logits: Tensor, sal_scores: Tensor) -> tuple[Tensor, Tensor]:
    """``log S`` and ``log(1 - S)`` of ``S = Σ_{c≥1} v_c P_c``, ``P = softmax(seg_logits)``, in log space.

    ``1 - S = P_0 + Σ_{c≥1} (1 - v_c) P_c``. Both are log-sum-exps of ``log P`` plus a log weight, so neither
    underflows when the softmax saturates. Returns two ``(B, H, W)`` float32 tensors.
    """
    log_p = torch.log_softmax(seg_logits.float(), dim=1)
    v = sal_scores.float()[:, 1:, None, None]
    tiny = torch.finfo(torch.float32).tiny
    log_s = torch.logsumexp(log_p[:, 1:] + torch.log(v.clamp_min(tiny)), dim=1)
    log_rest = torch.logsumexp(log_p[:, 1:] + torch.log((1 - v).clamp_min(tiny)), dim=1)
    log_not_s = torch.logaddexp(log_p[:, 0], log_rest)
    return log_s, log_not_s


def saliency_bce_loss(logits: Tensor, target: Tensor, threshold: float = 0.5) -> Tensor:
    """AuxSegNet saliency loss (``L_sal1`` / ``L_sal2``, docs/method_notes.md §2.5).

    The logits are upsampled bilinearly (``align_corners=False``) to the target size; the target is binarised
    as ``target > threshold`` (the code's ``> 0.5 -> 1, <= 0.5 -> 0``); BCE-with-logits is averaged over the
    valid pixels.

    Args:
        logits: ``(B, 1, h, w)`` saliency logits.
        target: ``(B, H, W)`` saliency pseudo-label in [0, 1], ``255`` = ignore.
        threshold: binarisation threshold.

    Returns:
        scalar loss.
    """
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must be (B, 1, h, w), got {tuple(logits.shape)}")
    if target.dim() != 3 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target must be (B, H, W) with B={logits.shape[0]}, got {tuple(target.shape)}")
    logits = _resize(logits, target.shape[-2:])[:, 0]
    valid = target != IGNORE_INDEX
    binary = (target > threshold).to(logits.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(logits, binary, reduction="none")
    return _masked_mean(per_pixel, valid)


def segmentation_ce_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Pixel cross-entropy (AuxSegNet ``L_seg``, SSNet stage-2 ``L_s2``).

    The logits are upsampled bilinearly (``align_corners=False``) to the target size when they differ.

    Args:
        logits: ``(B, C, h, w)`` segmentation logits.
        target: ``(B, H, W)`` class indices in ``[0, C)`` or ``ignore_index`` (any integer dtype).
        ignore_index: label excluded from the loss and from the mean.

    Returns:
        scalar loss, mean over valid pixels; ``0`` (with grad) when none is valid.
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be (B, C, h, w), got {tuple(logits.shape)}")
    if target.dim() != 3 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target must be (B, H, W) with B={logits.shape[0]}, got {tuple(target.shape)}")
    logits = _resize(logits, target.shape[-2:])
    target = target.long()
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    count = (target != ignore_index).sum()
    # clamp keeps 0/0 from turning into NaN; the sum is already 0 then. No host sync needed.
    return total / count.clamp(min=1).to(total.dtype)


def _resize(x: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    """Bilinear resize of ``(B, C, h, w)`` to ``size`` (``align_corners=False``); a no-op when equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` over ``valid`` entries; ``0`` with grad when nothing is valid."""
    # where (not multiply) so that a non-finite value at an ignored pixel cannot leak into the sum.
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp(min=1).to(total.dtype)
