"""Loss functions against hand computations and PyTorch reference implementations (small tensors, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsss_lightning.losses import (
    gap_classification_loss,
    multilabel_soft_margin,
    saliency_bce_loss,
    segmentation_ce_loss,
    ssnet_saliency_loss,
)

LN2 = math.log(2.0)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# --- multilabel_soft_margin ------------------------------------------------------------------------------------


def test_multilabel_soft_margin_hand_value() -> None:
    # BCE(0, y=1) = ln 2; BCE(ln 3, y=0) = ln(1 + 3) = 2 ln 2; mean = 1.5 ln 2.
    logits = torch.tensor([[0.0, math.log(3.0)]])
    labels = torch.tensor([[1, 0]])
    assert multilabel_soft_margin(logits, labels).item() == pytest.approx(1.5 * LN2, abs=1e-6)


def test_multilabel_soft_margin_matches_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 20, generator=gen)
    labels = (torch.rand(3, 20, generator=gen) > 0.7).float()
    expected = F.multilabel_soft_margin_loss(logits, labels)
    assert torch.allclose(multilabel_soft_margin(logits, labels), expected, atol=1e-6)


def test_multilabel_soft_margin_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="same shape"):
        multilabel_soft_margin(torch.zeros(2, 20), torch.zeros(2, 21))


# --- gap_classification_loss ---------------------------------------------------------------------------------


def test_gap_classification_loss_hand_value_ignores_background() -> None:
    # channel 1: mean of [0, 2, -2, 0] = 0, label 1 -> ln 2; channel 2: mean ln 3, label 0 -> 2 ln 2.
    seg = torch.zeros(1, 3, 2, 2)
    seg[0, 0] = 100.0  # background: must not matter
    seg[0, 1] = torch.tensor([[0.0, 2.0], [-2.0, 0.0]])
    seg[0, 2] = math.log(3.0)
    labels = torch.tensor([[1.0, 0.0]])
    assert gap_classification_loss(seg, labels).item() == pytest.approx(1.5 * LN2, abs=1e-6)
    seg[0, 0] = -7.0
    assert gap_classification_loss(seg, labels).item() == pytest.approx(1.5 * LN2, abs=1e-6)


def test_gap_classification_loss_labels_without_background() -> None:
    with pytest.raises(ValueError, match="C-1"):
        gap_classification_loss(torch.zeros(2, 21, 4, 4), torch.zeros(2, 21))


# --- ssnet_saliency_loss -------------------------------------------------------------------------------------

S = torch.tensor([[[0.8, 0.3], [0.5, 0.9]]])
B = torch.tensor([[[0.1, 0.6], [0.2, 0.05]]])
G = torch.tensor([[[1, 0], [255, 1]]], dtype=torch.uint8)  # one ignored pixel


def test_ssnet_saliency_loss_linear_hand_value() -> None:
    # valid pixels: (g=1, S=0.8), (g=0, B=0.6), (g=1, S=0.9) -> -(0.8 + 0.6 + 0.9) / 3
    assert ssnet_saliency_loss(S, B, G).item() == pytest.approx(-2.3 / 3, abs=1e-6)


def test_ssnet_saliency_loss_linear_equals_official_nll_on_probabilities() -> None:
    # The official code: F.nll_loss(cat([P0, S]), g) on probabilities (with 255 ignored here).
    gen = torch.Generator().manual_seed(1)
    prob = torch.softmax(torch.randn(2, 4, 5, 6, generator=gen), dim=1)
    v = torch.rand(2, 4, generator=gen)
    sal = (prob[:, 1:] * v[:, 1:, None, None]).sum(1)
    bg = prob[:, 0]
    target = (torch.rand(2, 5, 6, generator=gen) > 0.5).long()
    target[0, 0, :3] = 255
    expected = F.nll_loss(torch.stack([bg, sal], dim=1), target, ignore_index=255)
    assert torch.allclose(ssnet_saliency_loss(sal, bg, target), expected, atol=1e-6)


def test_ssnet_saliency_loss_log_hand_value() -> None:
    # -(ln 0.8 + ln(1 - 0.3) + ln 0.9) / 3; the log form uses 1 - S, not B.
    expected = -(math.log(0.8) + math.log(0.7) + math.log(0.9)) / 3
    assert ssnet_saliency_loss(S, B, G, form="log").item() == pytest.approx(expected, abs=1e-6)


def test_ssnet_saliency_loss_log_clamps_extremes() -> None:
    sal = torch.tensor([[[0.0, 1.0]]], requires_grad=True)
    target = torch.tensor([[[1.0, 0.0]]])
    loss = ssnet_saliency_loss(sal, torch.zeros(1, 1, 2), target, form="log")
    # both pixels are clamped to 1e-6 away from the wrong end: about -ln(1e-6) each (float32 rounds 1 - 1e-6)
    assert loss.item() == pytest.approx(-math.log(1e-6), rel=1e-3)
    loss.backward()
    assert torch.isfinite(sal.grad).all()


def test_ssnet_saliency_loss_linear_and_log_differ_and_both_decrease_with_better_saliency() -> None:
    target = torch.tensor([[[1.0, 0.0]]])
    good_s, good_b = torch.tensor([[[0.9, 0.1]]]), torch.tensor([[[0.05, 0.85]]])
    bad_s, bad_b = torch.tensor([[[0.2, 0.7]]]), torch.tensor([[[0.7, 0.2]]])
    for form in ("linear", "log"):
        good = ssnet_saliency_loss(good_s, good_b, target, form=form)
        bad = ssnet_saliency_loss(bad_s, bad_b, target, form=form)
        assert good < bad
    linear = ssnet_saliency_loss(good_s, good_b, target, form="linear").item()
    log = ssnet_saliency_loss(good_s, good_b, target, form="log").item()
    assert linear == pytest.approx(-(0.9 + 0.85) / 2, abs=1e-6)
    assert log == pytest.approx(-(math.log(0.9) + math.log(0.9)) / 2, abs=1e-6)


def test_ssnet_saliency_loss_all_ignored_is_zero_with_grad() -> None:
    sal = torch.rand(1, 3, 3, requires_grad=True)
    loss = ssnet_saliency_loss(sal, torch.rand(1, 3, 3), torch.full((1, 3, 3), 255.0))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(sal.grad, torch.zeros_like(sal))


def test_ssnet_saliency_loss_rejects_unknown_form_and_shapes() -> None:
    with pytest.raises(ValueError, match="form"):
        ssnet_saliency_loss(S, B, G, form="bce")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        ssnet_saliency_loss(S, B, G[:, :1])


# --- saliency_bce_loss ---------------------------------------------------------------------------------------


def test_saliency_bce_loss_upsamples_binarises_and_ignores() -> None:
    # logits [2, -2] upsampled (align_corners=False) from width 2 to 4 -> [2, 1, -1, -2].
    logits = torch.tensor([[[[2.0, -2.0]]]])
    target = torch.tensor([[[0.7, 0.5, 255.0, 0.2]]])  # -> [1, 0 (0.5 is not > 0.5), ignore, 0]
    expected = (softplus(-2.0) + softplus(1.0) + softplus(-2.0)) / 3
    assert saliency_bce_loss(logits, target).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.522373, abs=1e-6)


def test_saliency_bce_loss_threshold_and_reference() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 1, 4, 4, generator=gen)
    target = torch.rand(2, 8, 8, generator=gen)
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    expected = F.binary_cross_entropy_with_logits(up, (target > 0.3).float())
    assert torch.allclose(saliency_bce_loss(logits, target, threshold=0.3), expected, atol=1e-6)


def test_saliency_bce_loss_all_ignored_is_zero_with_grad() -> None:
    logits = torch.randn(1, 1, 2, 2, requires_grad=True)
    loss = saliency_bce_loss(logits, torch.full((1, 4, 4), 255.0))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# --- segmentation_ce_loss ------------------------------------------------------------------------------------


def test_segmentation_ce_loss_hand_value_with_upsampling_and_ignore() -> None:
    # a constant 1×1 logit map [0, ln 3] upsampled to 2×2: P = [0.25, 0.75] everywhere.
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    target = torch.tensor([[[0, 1], [255, 1]]], dtype=torch.uint8)
    expected = (math.log(4.0) + 2 * math.log(4.0 / 3.0)) / 3
    assert segmentation_ce_loss(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_segmentation_ce_loss_matches_torch_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 3, 3, generator=gen)
    target = torch.randint(0, 5, (2, 6, 6), generator=gen)
    target[1, :2] = 255
    up = F.interpolate(logits, size=(6, 6), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(up, target, ignore_index=255)
    assert torch.allclose(segmentation_ce_loss(logits, target), expected, atol=1e-6)
    # another ignore index
    target[target == 255] = 4
    expected = F.cross_entropy(up, target, ignore_index=4)
    assert torch.allclose(segmentation_ce_loss(logits, target, ignore_index=4), expected, atol=1e-6)


def test_segmentation_ce_loss_all_ignored_is_zero_not_nan() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), 255, dtype=torch.long)
    assert torch.isnan(F.cross_entropy(logits, target, ignore_index=255))  # what we avoid
    loss = segmentation_ce_loss(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_ssnet_saliency_log_loss_in_log_space_equals_the_clamped_form_and_survives_saturation() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 5, 6, generator=gen)
    v = torch.rand(2, 4, generator=gen)
    prob = logits.softmax(1)
    sal = (prob[:, 1:] * v[:, 1:, None, None]).sum(1)
    target = (torch.rand(2, 5, 6, generator=gen) > 0.5).float()
    target[0, 0] = 255
    clamped = ssnet_saliency_loss(sal, prob[:, 0], target, form="log")
    exact = ssnet_saliency_loss(sal, prob[:, 0], target, form="log", seg_logits=logits, sal_scores=v)
    torch.testing.assert_close(exact, clamped)
    # background logit +40: S ~ 1e-17 lies below the clamp, which stops the gradient; log space does not
    saturated = logits.clone()
    saturated[:, 0] += 40.0
    saturated.requires_grad_(True)
    p = saturated.softmax(1)
    s = (p[:, 1:] * v[:, 1:, None, None]).sum(1)
    ssnet_saliency_loss(s, p[:, 0], target, form="log").backward(retain_graph=True)
    assert float(saturated.grad.abs().sum()) == 0.0
    saturated.grad = None
    loss = ssnet_saliency_loss(s, p[:, 0], target, form="log", seg_logits=saturated, sal_scores=v)
    assert loss.item() > 10.0  # -log S of about 40 on the salient pixels (about half of them), 0 on the rest
    loss.backward()
    assert float(saturated.grad.abs().sum()) > 0.3  # about 2 x the salient share of the valid pixels
