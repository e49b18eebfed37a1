"""SegmentationIoU and PseudoLabelQuality against hand-computed confusion matrices."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from wsss_lightning.metrics import PseudoLabelQuality, SegmentationIoU

# Two images, 3 classes, 255 = ignore. (gt, pred) pairs, read left to right:
# image 1: (0,0) (0,1) (1,1) (1,1) / (2,2) (2,0) (255,2: skipped) (0,255: a miss of class 0)
# image 2: (1,1) (2,2) (2,1) (0,0)
TARGET_1 = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 0]]])
PRED_1 = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 255]]])
TARGET_2 = torch.tensor([[[1, 2, 2, 0]]])
PRED_2 = torch.tensor([[[1, 2, 1, 0]]])
# rows = GT, columns = prediction
CONFMAT = torch.tensor([[2, 1, 0], [0, 3, 0], [1, 1, 2]])
# GT areas (rows + misses) 4, 3, 4; predicted areas (columns) 3, 5, 2; TP 2, 3, 2
IOU = [2 / (4 + 3 - 2), 3 / (3 + 5 - 3), 2 / (4 + 2 - 2)]  # 0.4, 0.6, 0.5


def test_hand_confusion_matrix() -> None:
    metric = SegmentationIoU(num_classes=3)
    metric.update(PRED_1, TARGET_1)
    metric.update(PRED_2[0], TARGET_2[0])  # unbatched (H, W) works too
    result = metric.compute()
    assert torch.equal(result["confmat"], CONFMAT)
    assert metric.missed.tolist() == [1, 0, 0]
    assert result["IoU"].tolist() == pytest.approx(IOU)
    assert float(result["mIoU"]) == pytest.approx(0.5)
    assert float(result["pixel_accuracy"]) == pytest.approx(7 / 11)
    assert float(result["mean_accuracy"]) == pytest.approx((2 / 4 + 3 / 3 + 2 / 4) / 3)


def test_class_absent_from_gt_and_prediction_is_nan_and_excluded() -> None:
    metric = SegmentationIoU(num_classes=4)
    metric.update(PRED_1, TARGET_1)
    metric.update(PRED_2, TARGET_2)
    result = metric.compute()
    assert result["IoU"][:3].tolist() == pytest.approx(IOU)
    assert math.isnan(float(result["IoU"][3]))
    assert float(result["mIoU"]) == pytest.approx(0.5)
    assert float(result["mean_accuracy"]) == pytest.approx(2 / 3)


def test_class_only_predicted_has_iou_zero() -> None:
    metric = SegmentationIoU(num_classes=3)
    metric.update(torch.tensor([[0, 2]]), torch.tensor([[0, 0]]))
    result = metric.compute()
    assert result["IoU"][0].item() == pytest.approx(0.5)
    assert math.isnan(result["IoU"][1].item()) and result["IoU"][2].item() == 0.0
    assert float(result["mIoU"]) == pytest.approx(0.25)


def test_logits_are_reduced_by_argmax() -> None:
    logits = torch.nn.functional.one_hot(PRED_2, 3).permute(0, 3, 1, 2).float() * 5 + torch.randn(1, 3, 1, 4) * 0.1
    from_logits, from_indices = SegmentationIoU(3), SegmentationIoU(3)
    from_logits.update(logits, TARGET_2)
    from_indices.update(PRED_2, TARGET_2)
    assert torch.equal(from_logits.compute()["confmat"], from_indices.compute()["confmat"])
    with pytest.raises(ValueError, match="scores of shape"):
        from_logits.update(logits[:, :2], TARGET_2)


def test_equals_multiclass_jaccard_when_predictions_are_valid() -> None:
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 9, 11), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.2] = 255
    preds = torch.randint(0, 5, (3, 9, 11), generator=generator)
    ours, reference = SegmentationIoU(5), MulticlassJaccardIndex(num_classes=5, ignore_index=255, average=None)
    ours.update(preds, target)
    reference.update(preds, target)
    assert ours.compute()["IoU"].float().tolist() == pytest.approx(reference.compute().tolist(), abs=1e-6)


def test_invalid_target_values_are_named() -> None:
    metric = SegmentationIoU(num_classes=3)
    with pytest.raises(ValueError, match=r"\[3, 7\]"):
        metric.update(torch.tensor([[0, 1, 2]]), torch.tensor([[3, 7, 255]]))
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationIoU(num_classes=3, ignore_index=2)


def test_merge_state_equals_one_metric_on_all_data() -> None:
    whole, first, second = SegmentationIoU(3), SegmentationIoU(3), SegmentationIoU(3)
    for metric, (pred, target) in ((first, (PRED_1, TARGET_1)), (second, (PRED_2, TARGET_2))):
        metric.update(pred, target)
        whole.update(pred, target)
    first.merge_state(second)
    merged, expected = first.compute(), whole.compute()
    assert torch.equal(merged["confmat"], CONFMAT) and first.missed.tolist() == [1, 0, 0]
    assert float(merged["mIoU"]) == float(expected["mIoU"]) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------- pseudo-label quality

# (gt, pseudo) pairs: (0,0) (0,255) (1,1) (2,1) / (2,2) (2,255) (255,255: skipped) (1,0)
PSEUDO = torch.tensor([[[0, 255, 1, 1], [2, 255, 255, 0]]])
GT = torch.tensor([[[0, 0, 1, 2], [2, 2, 255, 1]]])
PSEUDO_CONFMAT = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]])


def test_pseudo_label_hand_values() -> None:
    metric = PseudoLabelQuality(num_classes=3)
    metric.update(PSEUDO, GT)
    result = metric.compute()
    assert torch.equal(result["confmat"], PSEUDO_CONFMAT)
    # TP 1, 1, 1; labelled as c: 2, 2, 1; GT c (unlabelled included): 2, 2, 3
    assert result["precision_per_class"].tolist() == pytest.approx([1 / 2, 1 / 2, 1 / 1])
    assert result["recall_per_class"].tolist() == pytest.approx([1 / 2, 1 / 2, 1 / 3])
    assert result["IoU"].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert float(result["precision"]) == pytest.approx(2 / 3)
    assert float(result["recall"]) == pytest.approx(4 / 9)
    assert float(result["mIoU"]) == pytest.approx(1 / 3)
    assert float(result["ignored_fraction"]) == pytest.approx(2 / 7)


def test_pseudo_label_never_labelled_class_is_excluded_from_precision() -> None:
    metric = PseudoLabelQuality(num_classes=2)
    metric.update(torch.tensor([[0, 255, 255]]), torch.tensor([[0, 1, 1]]))
    result = metric.compute()
    assert math.isnan(result["precision_per_class"][1].item())
    assert float(result["precision"]) == 1.0  # class 1 never labelled: excluded, not 0
    assert float(result["recall"]) == pytest.approx((1 + 0) / 2)
    assert float(result["ignored_fraction"]) == pytest.approx(2 / 3)


def test_pseudo_label_invalid_values_and_merge() -> None:
    with pytest.raises(ValueError, match=r"pseudo-label holds class values \[7\]"):
        PseudoLabelQuality(3).update(torch.tensor([[7, 0]]), torch.tensor([[0, 0]]))
    whole, first, second = PseudoLabelQuality(3), PseudoLabelQuality(3), PseudoLabelQuality(3)
    whole.update(PSEUDO, GT)
    first.update(PSEUDO[:, :1], GT[:, :1])
    second.update(PSEUDO[:, 1:], GT[:, 1:])
    first.merge_state(second)
    assert torch.equal(first.compute()["confmat"], whole.compute()["confmat"])
    assert float(first.compute()["recall"]) == pytest.approx(4 / 9)
