"""CAM + saliency fusion and absent-class logit masking (wsss_lightning/pseudo/fusion.py)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from wsss_lightning.pseudo.fusion import fuse_cam_saliency, mask_absent_class_logits


def test_fusion_four_cases_by_hand() -> None:
    # One row of 5 pixels, 2 foreground classes, both present.
    cam = torch.tensor(
        [
            [
                [[0.9, 0.1, 0.9, 0.1, 0.3]],  # class 1
                [[0.5, 0.1, 0.1, 0.1, 0.8]],  # class 2
            ]
        ]
    )
    sal = torch.tensor([[[0.9, 0.9, 0.01, 0.01, 0.5]]])
    labels = torch.tensor([[1.0, 1.0]])
    out = fuse_cam_saliency(cam, sal, labels)
    # both fire -> argmax + 1; only saliency -> 255; only CAM -> 255; neither -> 0; both fire (class 2) -> 2.
    assert out.dtype == torch.uint8
    assert out.tolist() == [[[1, 255, 255, 0, 2]]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fusion_thresholds_are_strict(dtype: torch.dtype) -> None:
    # The official code uses cam_max > 0.2 and sal > 0.06: a value exactly at a threshold does not fire.
    cam = torch.tensor([[[[0.2, 0.2, 0.21, 0.21, 0.2]]]], dtype=dtype)
    sal = torch.tensor([[[0.06, 0.07, 0.06, 0.07, 0.0]]], dtype=dtype)
    out = fuse_cam_saliency(cam, sal, torch.ones(1, 1))
    assert out.tolist() == [[[0, 255, 255, 1, 0]]]


def test_fusion_ignores_absent_classes() -> None:
    # Class 1 is strongest but absent: the label must come from class 2, or from nothing.
    cam = torch.tensor([[[[0.9, 0.9]], [[0.5, 0.1]]]])
    sal = torch.tensor([[[0.5, 0.5]]])
    out = fuse_cam_saliency(cam, sal, torch.tensor([[0, 1]]))
    assert out.tolist() == [[[2, 255]]]  # pixel 2: present-class CAM 0.1 < 0.2 but salient -> uncertain


def test_fusion_custom_thresholds_ignore_index_and_channel_dim() -> None:
    cam = torch.tensor([[[[0.4, 0.6]]]])
    sal = torch.tensor([[[[0.5, 0.5]]]])  # (B, 1, H, W) is accepted
    out = fuse_cam_saliency(cam, sal, torch.ones(1, 1), cam_threshold=0.5, saliency_threshold=0.4, ignore_index=250)
    assert out.tolist() == [[[250, 1]]]


def _official_fusion(cam: Tensor, sal: Tensor, label: Tensor) -> Tensor:
    """The AuxSegNet ``fusion_cam`` logic, written the way the official code does it (mask, bools, loop)."""
    cam = cam * label.unsqueeze(-1).unsqueeze(-1)
    cam_max = torch.max(cam, dim=1)[0]
    cam_obj = cam_max > 0.2
    sal_obj = sal > 0.06
    obj = sal_obj * cam_obj
    unsure = (sal_obj * (~cam_obj)) | ((~sal_obj) * cam_obj)
    gt = (torch.argmax(cam, dim=1) + 1).float() * obj.float()
    for b in range(gt.size(0)):
        gt[b, unsure[b]] = 255
    return gt.long()


def test_fusion_matches_official_logic_on_random_maps() -> None:
    gen = torch.Generator().manual_seed(0)
    cam = torch.rand(3, 20, 9, 11, generator=gen) * 0.3  # max over present classes straddles 0.2
    sal = torch.rand(3, 9, 11, generator=gen) * 0.12  # straddles the 0.06 threshold
    labels = (torch.rand(3, 20, generator=gen) < 0.2).float()
    labels[:, 0] = 1.0
    out = fuse_cam_saliency(cam, sal, labels)
    torch.testing.assert_close(out.long(), _official_fusion(cam, sal, labels))
    values = set(out.unique().tolist())
    assert {0, 255} <= values and len(values - {0, 255}) >= 2  # every rule was exercised


def test_fusion_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="labels"):
        fuse_cam_saliency(torch.rand(1, 3, 2, 2), torch.rand(1, 2, 2), torch.ones(1, 4))
    with pytest.raises(ValueError, match="saliency"):
        fuse_cam_saliency(torch.rand(1, 3, 2, 2), torch.rand(1, 3, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="ignore_index"):
        fuse_cam_saliency(torch.rand(1, 3, 2, 2), torch.rand(1, 2, 2), torch.ones(1, 3), ignore_index=3)


def test_mask_absent_class_logits_zero_is_the_code() -> None:
    logits = torch.tensor([[[[1.5]], [[-2.0]], [[3.0]], [[4.0]]]])  # (1, 4, 1, 1): bg + 3 classes
    labels = torch.tensor([[0.0, 1.0, 0.0]])
    out = mask_absent_class_logits(logits, labels)
    assert out[0, :, 0, 0].tolist() == [1.5, 0.0, 3.0, 0.0]
    assert logits[0, 1, 0, 0] == -2.0  # input untouched
    # A negative absent logit goes *up* to 0: the code's quirk, reproduced on purpose.
    assert torch.softmax(out, 1)[0, 1, 0, 0] > torch.softmax(logits, 1)[0, 1, 0, 0]


def test_mask_absent_class_logits_neg_inf() -> None:
    logits = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1, 0, 0], [0, 0, 1]])
    out = mask_absent_class_logits(logits, labels, mode="neg_inf")
    prob = torch.softmax(out, dim=1)
    assert torch.all(prob[0, 2:] == 0) and torch.all(prob[1, 1:3] == 0)
    torch.testing.assert_close(prob.sum(1), torch.ones(2, 3, 3))
    torch.testing.assert_close(out[:, 0], logits[:, 0])  # background untouched
    torch.testing.assert_close(out[0, 1], logits[0, 1])
    torch.testing.assert_close(out[1, 3], logits[1, 3])


def test_mask_absent_class_logits_errors() -> None:
    with pytest.raises(ValueError, match="labels"):
        mask_absent_class_logits(torch.zeros(1, 4, 2, 2), torch.ones(1, 4))
    with pytest.raises(ValueError, match="mode"):
        mask_absent_class_logits(torch.zeros(1, 4, 2, 2), torch.ones(1, 3), mode="minus")  # type: ignore[arg-type]
