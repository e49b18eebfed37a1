"""Pseudo-label quality: precision, recall and IoU of pseudo-labels that may leave pixels unlabelled (255).

AuxSegNet Fig. 6 reports precision / recall / mIoU of its pseudo-labels on VOC train; the released code does
not compute them. Protocol (method_notes §4.2, UNCONFIRMED there, the author's ``Evaluator(ignore=True)`` mode):
a pseudo-label 255 becomes an extra predicted class ``C``, so an unlabelled pixel is a miss of its GT class
(it lowers recall, never precision). IRN instead maps 255 to background, and ToCo drops those pixels; we do
neither (ecosystem §2.3).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from wsss_lightning.metrics.segmentation import check_class_arguments, check_target_values, confusion_counts

__all__ = ["PseudoLabelQuality"]


class PseudoLabelQuality(Metric):
    """Precision / recall / IoU per class of pseudo-labels against GT, with unlabelled pixels counted as misses.

    ``update(preds, target)``: integer tensors of the same shape, ``(B, H, W)`` or ``(H, W)``. ``preds`` (the
    pseudo-labels) hold classes in ``[0, C)`` or ``ignore_index`` (= "unlabelled", mapped to an extra column
    ``C``); any other predicted value raises ``ValueError``. ``target`` holds classes in ``[0, C)`` or
    ``ignore_index`` (GT-ignored pixels are skipped entirely).

    State: a ``(C+1) x (C+1)`` int64 confusion matrix (rows GT, columns pseudo-label; the last row stays zero
    since GT 255 is skipped). ``compute()`` returns, per real class c:
    ``precision_c = TP / pixels labelled c``, ``recall_c = TP / valid GT pixels of c`` (unlabelled ones included,
    so they count as misses), ``IoU_c = TP / (GT_c + labelled_c - TP)``; keys ``precision``, ``recall``,
    ``mIoU`` (nanmeans over the C classes; a class with a zero denominator is NaN and excluded),
    ``precision_per_class``, ``recall_per_class``, ``IoU`` ((C,) each), ``ignored_fraction`` (share of valid GT
    pixels labelled ``ignore_index``) and ``confmat`` ((C+1, C+1)).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    confmat: Tensor

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_class_arguments(num_classes, ignore_index)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        size = num_classes + 1
        self.add_state("confmat", torch.zeros(size, size, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add pseudo-labels ``preds`` and GT ``target`` (integer class maps of the same shape)."""
        for name, value in (("preds", preds), ("target", target)):
            if value.is_floating_point() or value.dtype == torch.bool:
                raise TypeError(f"{name} must hold integer class indices, got {value.dtype}")
        if preds.shape != target.shape:
            raise ValueError(f"pseudo-label shape {tuple(preds.shape)} differs from target shape {tuple(target.shape)}")
        preds, target = preds.long(), target.long()
        check_target_values(target, self.num_classes, self.ignore_index)
        check_target_values(preds, self.num_classes, self.ignore_index, name="pseudo-label")
        # an unlabelled pixel (255) lands in column C: a miss of its GT class; row C (GT never C) stays 0
        counts = confusion_counts(target, preds, self.num_classes, self.ignore_index)
        self.confmat[: self.num_classes] += counts.to(self.confmat.device)

    def compute(self) -> dict[str, Tensor]:
        """Means over the C real classes, per-class vectors, ``ignored_fraction`` and ``confmat``."""
        classes = self.num_classes
        confmat = self.confmat.double()
        true_positive = confmat.diagonal()[:classes]
        labelled = confmat.sum(dim=0)[:classes]  # pixels the pseudo-label assigns to c (valid GT only)
        gt_area = confmat.sum(dim=1)[:classes]  # includes GT-c pixels left unlabelled
        union = gt_area + labelled - true_positive
        nan = torch.full_like(true_positive, torch.nan)
        precision = torch.where(labelled > 0, true_positive / labelled.clamp(min=1), nan)
        recall = torch.where(gt_area > 0, true_positive / gt_area.clamp(min=1), nan)
        iou = torch.where(union > 0, true_positive / union.clamp(min=1), nan)
        total = gt_area.sum()
        ignored = confmat[:classes, classes].sum()
        return {
            "mIoU": iou.nanmean(),
            "precision": precision.nanmean(),
            "recall": recall.nanmean(),
            "ignored_fraction": torch.where(total > 0, ignored / total.clamp(min=1), nan[0]),
            "IoU": iou,
            "precision_per_class": precision,
            "recall_per_class": recall,
            "confmat": self.confmat.clone(),
        }
