"""Scoring a pseudo-label folder against ground truth (precision / recall / mIoU, method_notes §4.2)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from wsss_lightning.data.io import read_label
from wsss_lightning.metrics import PseudoLabelQuality


def score_label_dir(
    label_dir: str | Path,
    gt_dir: str | Path,
    ids: Iterable[str],
    num_classes: int,
    metric: PseudoLabelQuality | None = None,
) -> PseudoLabelQuality:
    """Update (or create) a :class:`PseudoLabelQuality` with ``label_dir/<id>.png`` vs ``gt_dir/<id>.png``.

    Ids without a GT file are skipped (only ids with ground truth are scored). Call ``compute()`` on the
    returned metric; under DDP give each rank its share of the ids and ``compute()`` on every rank.
    """
    metric = metric if metric is not None else PseudoLabelQuality(num_classes)
    label_dir, gt_dir = Path(label_dir), Path(gt_dir)
    for identifier in ids:
        gt_path = gt_dir / f"{identifier}.png"
        if not gt_path.is_file():
            continue
        label = read_label(label_dir / f"{identifier}.png")
        gt = read_label(gt_path)
        if label.shape != gt.shape:
            raise ValueError(f"{label_dir / (identifier + '.png')} is {label.shape}, its GT {gt_path} is {gt.shape}")
        metric.update(torch.from_numpy(label.astype(np.int64)), torch.from_numpy(gt.astype(np.int64)))
    return metric


def quality_summary(metric: PseudoLabelQuality) -> dict[str, float]:
    """The headline numbers of a computed metric as plain floats (``nan`` when nothing was scored)."""
    values = metric.compute()
    return {
        "precision": float(values["precision"]),
        "recall": float(values["recall"]),
        "mIoU": float(values["mIoU"]),
        "ignored_fraction": float(values["ignored_fraction"]),
    }
