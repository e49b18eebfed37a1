"""Semantic segmentation IoU from one dataset-level confusion matrix (the VOC / COCO WSSS protocol).

Never ``torchmetrics.segmentation.MeanIoU``: it averages per-image IoUs and has no ignore index (design §4,
ecosystem §2.3). This is the computation of jsws ``evaluate_seg.py``, IRN ``eval_sem_seg.py`` and ToCo's
``scores``: sum the confusion matrix over all images, then IoU per class, then the mean over classes present.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["SegmentationIoU", "check_target_values", "class_indices"]


def class_indices(preds: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Predictions as class indices of the target's shape.

    Integer ``preds`` of the target's shape are returned as int64; floating ``preds`` with one more dimension
    (``(B, C, H, W)`` for a ``(B, H, W)`` target, ``(C, H, W)`` for ``(H, W)``) are logits / scores and are
    reduced by argmax over the class dimension.
    """
    if preds.is_floating_point():
        if preds.ndim != target.ndim + 1 or preds.shape[-3] != num_classes:
            raise ValueError(
                f"floating predictions are read as scores of shape (B, {num_classes}, H, W) for a (B, H, W) target; "
                f"got preds {tuple(preds.shape)} and target {tuple(target.shape)}"
            )
        preds = preds.argmax(dim=-3)
    elif preds.dtype == torch.bool:
        raise TypeError("predictions must be class indices (integers) or class scores (floats), not bool")
    if preds.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(preds.shape)} differs from target shape {tuple(target.shape)}")
    return preds.long()


def check_target_values(values: Tensor, num_classes: int, ignore_index: int, name: str = "target") -> None:
    """Raise ``ValueError`` naming the values outside ``[0, num_classes)`` other than ``ignore_index``."""
    bad = (values < 0) | (values >= num_classes)
    bad &= values != ignore_index
    if bool(bad.any()):
        found = torch.unique(values[bad]).tolist()
        shown = ", ".join(str(v) for v in found[:10]) + (", ..." if len(found) > 10 else "")
        raise ValueError(
            f"{name} holds class values [{shown}] outside [0, {num_classes}) that are not the ignore index "
            f"{ignore_index}; check num_classes or the label files"
        )


def check_class_arguments(num_classes: int, ignore_index: int) -> None:
    """``num_classes`` positive and ``ignore_index`` not a real class (the metrics' shared argument rule)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index {ignore_index} is a real class index (num_classes={num_classes})")


def confusion_counts(target: Tensor, preds: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """``int64 (C, C + 1)`` pixel counts: rows = GT class, columns = predicted class, and column ``C`` for every
    prediction outside ``[0, C)`` (a miss of the GT class: no false positive anywhere). GT ``ignore_index`` pixels
    are skipped. ``target`` and ``preds``: integer class maps of one shape."""
    valid = target != ignore_index
    gt, pred = target[valid], preds[valid]
    pred = torch.where((pred < 0) | (pred >= num_classes), num_classes, pred)
    counts = torch.bincount(gt * (num_classes + 1) + pred, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)


class SegmentationIoU(Metric):
    """Per-class IoU and mIoU from a dataset-level confusion matrix, ``ignore_index`` excluded.

    ``update(preds, target)``: ``target`` ``(B, H, W)`` or ``(H, W)`` integer class indices in
    ``[0, num_classes)`` or ``ignore_index`` (those pixels are skipped; any other value raises ``ValueError``
    naming it). ``preds`` are integer class indices of the same shape, or floating scores ``(B, C, H, W)`` /
    ``(C, H, W)`` reduced by argmax. A predicted value outside ``[0, num_classes)`` (e.g. 255 left in a predicted
    mask) counts as a miss of the GT class: a false negative for that class and a false positive for none.

    ``compute()`` returns:

    * ``mIoU``: nanmean of ``IoU`` (classes absent from both GT and prediction are NaN and excluded, the VOC
      protocol);
    * ``IoU``: (C,) ``TP / (TP + FP + FN)``;
    * ``pixel_accuracy``: correct / valid GT pixels; ``mean_accuracy``: nanmean over GT classes of per-class
      recall;
    * ``confmat``: (C, C) int64, rows = GT class, columns = predicted class (misses to values outside
      ``[0, C)`` are in the ``missed`` state, not here).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    confmat: Tensor
    missed: Tensor

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_class_arguments(num_classes, ignore_index)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        # GT pixels of class c predicted as a value outside [0, C): false negatives with no false positive.
        self.add_state("missed", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch (see the class docstring for shapes and value rules)."""
        if target.is_floating_point() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got {target.dtype}")
        preds = class_indices(preds, target, self.num_classes)
        target = target.long()
        check_target_values(target, self.num_classes, self.ignore_index)
        # Column C collects predictions outside [0, C); it becomes the ``missed`` vector.
        counts = confusion_counts(target, preds, self.num_classes, self.ignore_index).to(self.confmat.device)
        self.confmat += counts[:, : self.num_classes]
        self.missed += counts[:, self.num_classes]

    def compute(self) -> dict[str, Tensor]:
        """``mIoU``, ``IoU`` (C,), ``pixel_accuracy``, ``mean_accuracy``, ``confmat`` (C, C) (class docstring)."""
        confmat = self.confmat.double()
        true_positive = confmat.diagonal()
        gt_area = confmat.sum(dim=1) + self.missed.double()
        predicted_area = confmat.sum(dim=0)
        union = gt_area + predicted_area - true_positive
        nan = torch.full_like(true_positive, torch.nan)
        iou = torch.where(union > 0, true_positive / union.clamp(min=1), nan)
        class_accuracy = torch.where(gt_area > 0, true_positive / gt_area.clamp(min=1), nan)
        total = gt_area.sum()
        pixel_accuracy = torch.where(total > 0, true_positive.sum() / total.clamp(min=1), nan[0])
        return {
            "mIoU": iou.nanmean(),
            "IoU": iou,
            "pixel_accuracy": pixel_accuracy,
            "mean_accuracy": class_accuracy.nanmean(),
            "confmat": self.confmat.clone(),
        }
