"""A guard against SSNet's saliency collapse: a saliency map that no longer depends on the image.

SSNet's saliency is ``S = Σ_{c≥1} v_c P_c`` (class saliency weights ``v`` times the segmentation softmax ``P``).
The official code optimises the *linear* loss ``-mean[g·S + (1 - g)·P_0]`` (docs/method_notes.md §1.4). Its
gradient with respect to a foreground logit is proportional to ``P_c``: once the softmax saturates towards
background (``P_0 → 1`` everywhere, which the ``(1 - g)·P_0`` term on the mostly non-salient pixels rewards), the
gradient vanishes and nothing pulls the map back. The run then trains on, the loss stays negative and the map
stays constant — test maxF near the foreground ratio, all-background segmentation, empty pseudo-labels. The log
form ``-mean[g·log S + (1 - g)·log(1 - S)]`` has a gradient ``∝ 1/S`` that grows as ``S → 0`` instead.

:class:`SaliencyCollapseGuard` measures the pixel standard deviation of ``S`` on every training batch of
saliency images and, at the end of each training epoch, compares its epoch mean with a threshold. A collapsed
map stops the run (default) with the cause and the fixes, or warns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

__all__ = ["SaliencyCollapseError", "SaliencyCollapseGuard", "collapse_message"]

log = logging.getLogger(__name__)


class SaliencyCollapseError(RuntimeError):
    """The saliency map has become (nearly) constant: the method no longer learns saliency."""


def collapse_message(mean_std: float, epoch: int, threshold: float, loss_form: str) -> str:
    """The cause and the fixes of a collapsed saliency map, for the error or the warning."""
    cause = (
        "with the official linear saliency loss, a segmentation softmax saturated towards background has no "
        "gradient left to recover: "
        if loss_form == "linear"
        else ""
    )
    return (
        f"SSNet's saliency map has collapsed to a constant: its pixel standard deviation averaged "
        f"{mean_std:.4f} over training epoch {epoch} (threshold {threshold}); the segmentation outputs background "
        f"everywhere and every pseudo-label would be empty. {cause}use --model.init_args.saliency_loss log, lower "
        "--model.init_args.lr, or load pretrained backbone weights (pretrained: true). "
        "--model.init_args.collapse_check warn carries on regardless"
    )


@dataclass
class SaliencyCollapseGuard:
    """Epoch-level check of the saliency map's spread.

    Args:
        action: ``error`` raises :class:`SaliencyCollapseError`, ``warn`` logs a warning, ``off`` only measures.
        min_std: an epoch whose mean per-batch pixel standard deviation of ``S`` (in [0, 0.5]) falls below this
            counts as collapsed (0.01: a DUTS-TR mask has a standard deviation of about 0.4).
    """

    action: Literal["error", "warn", "off"] = "error"
    min_std: float = 0.01
    _sum: float = field(default=0.0, init=False)
    _count: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.action not in ("error", "warn", "off"):
            raise ValueError(f"collapse_check must be 'error', 'warn' or 'off', got {self.action!r}")

    def update(self, saliency: Tensor) -> Tensor:
        """Record one batch: ``saliency`` ``(B, H, W)`` in [0, 1]. Returns its pixel standard deviation (0-d)."""
        std = saliency.detach().float().std()
        self._sum += float(std)
        self._count += 1
        return std

    def epoch_mean(self) -> float | None:
        """Mean of the recorded standard deviations (None without batches); the record starts over."""
        if self._count == 0:
            return None
        mean = self._sum / self._count
        self._sum, self._count = 0.0, 0
        return mean

    def check(self, mean_std: float, epoch: int, loss_form: str) -> str | None:
        """Raise or warn when ``mean_std`` says collapsed (per ``action``); the message, or None when healthy."""
        if mean_std >= self.min_std or self.action == "off":
            return None
        message = collapse_message(mean_std, epoch, self.min_std, loss_form)
        if self.action == "error":
            raise SaliencyCollapseError(message)
        log.warning(message)
        return message


def reduce_mean(value: float, strategy) -> float:  # noqa: ANN001 (a Lightning Strategy)
    """Mean of ``value`` over the processes of ``strategy`` (identity in a single process)."""
    return float(strategy.reduce(torch.tensor(value, dtype=torch.float64), reduce_op="mean"))
