"""SSNet networks: SAM math, shapes, DenseNet surgery against a torchvision reference, init, weights, errors.

DenseNet-169 is slow on CPU, so each network is built once per module and run on 32–128 px inputs; the
official 256×256 case is checked once. All weights are random (``pretrained=False``), nothing downloads.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from wsss_lightning.models.checkpoint import CheckpointError
from wsss_lightning.models.densenet import DilatedDenseNet
from wsss_lightning.models.ssnet import (
    SaliencyAggregation,
    SSNetOutput,
    SSNetStage1,
    SSNetStage2,
    bilinear_upsampling_kernel,
    sam_saliency,
)


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    # DenseNet's ~170 small convs slow down 10-20× when OpenMP threads compete for shared cores (CI, laptops).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stage1() -> SSNetStage1:
    torch.manual_seed(0)
    return SSNetStage1(num_classes=21).eval()


@pytest.fixture(scope="module")
def stage2() -> SSNetStage2:
    torch.manual_seed(0)
    return SSNetStage2(num_classes=21).eval()


# --- SAM -----------------------------------------------------------------------------------------------------


def test_sam_saliency_hand_example() -> None:
    # pixel 1: P = [0.5, 0.25, 0.25]; pixel 2: P = [0.1, 0.6, 0.3]; v = [0.9 (unused), 0.2, 0.6]
    prob = torch.tensor([[0.5, 0.1], [0.25, 0.6], [0.25, 0.3]]).view(1, 3, 1, 2)
    logits = prob.log() + 1.7  # softmax is shift invariant
    v = torch.tensor([[0.9, 0.2, 0.6]])
    saliency, background = sam_saliency(logits, v)
    assert torch.allclose(saliency, torch.tensor([[[0.2 * 0.25 + 0.6 * 0.25, 0.2 * 0.6 + 0.6 * 0.3]]]), atol=1e-6)
    assert torch.allclose(background, torch.tensor([[[0.5, 0.1]]]), atol=1e-6)
    # entry 0 of v is unused
    saliency_other, _ = sam_saliency(logits, torch.tensor([[0.0, 0.2, 0.6]]))
    assert torch.allclose(saliency, saliency_other)


def test_sam_module_adaptive_pool_matches_official_conv() -> None:
    torch.manual_seed(1)
    official = SaliencyAggregation(8, 3, kernel_size=4, adaptive=False)
    adaptive = SaliencyAggregation(8, 3, kernel_size=4, adaptive=True)
    adaptive.load_state_dict(official.state_dict())
    feature = torch.randn(2, 8, 4, 4)
    # on a k×k map: the same layer; v = sigmoid(conv) with a 1×1 output
    expected = torch.sigmoid(F.conv2d(feature, official.conv.weight, official.conv.bias)).flatten(1)
    assert torch.allclose(official(feature), expected, atol=1e-6)
    assert torch.allclose(adaptive(feature), expected, atol=1e-6)
    # on a 2k×2k map the adaptive pool averages 2×2 blocks first
    big = torch.randn(2, 8, 8, 8)
    expected_big = torch.sigmoid(F.conv2d(F.avg_pool2d(big, 2), official.conv.weight, official.conv.bias)).flatten(1)
    assert torch.allclose(adaptive(big), expected_big, atol=1e-6)


def test_stage1_saliency_is_v_weighted_sum_of_foreground_probabilities(stage1: SSNetStage1) -> None:
    model = copy.deepcopy(stage1)
    v = torch.linspace(0.05, 0.95, 21)
    with torch.no_grad():  # set v by hand: zero SAM weights, bias = logit(v)
        model.sam.conv.weight.zero_()
        model.sam.conv.bias.copy_(torch.log(v / (1 - v)))
        out = model(torch.randn(2, 3, 32, 32))
    assert torch.allclose(out.sal_scores, v.expand(2, 21), atol=1e-6)
    prob = out.seg_logits.softmax(1)
    expected = sum(v[c] * prob[:, c] for c in range(1, 21))
    assert torch.allclose(out.saliency, expected, atol=1e-6)
    assert torch.allclose(out.background, prob[:, 0], atol=1e-6)


# --- shapes and value ranges --------------------------------------------------------------------------------


def test_stage1_shapes_and_ranges_64(stage1: SSNetStage1) -> None:
    with torch.no_grad():
        out = stage1(torch.randn(2, 3, 64, 64))
    assert isinstance(out, SSNetOutput)
    assert out.seg_logits.shape == (2, 21, 64, 64)
    assert out.coarse_logits.shape == (2, 21, 4, 4)  # stride 16
    assert out.sal_scores.shape == (2, 21)
    assert out.saliency.shape == out.background.shape == (2, 64, 64)
    assert out.cls_logits is None
    # (random weights can saturate the SAM sigmoid to exactly 0/1 in float32, hence the closed interval)
    assert ((out.sal_scores >= 0) & (out.sal_scores <= 1)).all()
    assert ((out.saliency >= 0) & (out.saliency <= 1)).all()
    assert ((out.background >= 0) & (out.background <= 1)).all()
    assert (out.saliency + out.background <= 1 + 1e-6).all()


def test_stage1_backbone_taps_strides_and_no_final_relu(stage1: SSNetStage1) -> None:
    assert stage1.backbone.feature_channels == (256, 640, 1664)
    assert stage1.backbone.feature_strides == (8, 16, 16)
    with torch.no_grad():
        f8, f16, f32 = stage1.backbone(torch.randn(1, 3, 64, 64))
    assert f8.shape == (1, 256, 8, 8) and f16.shape == (1, 640, 4, 4) and f32.shape == (1, 1664, 4, 4)
    assert f32.min() < 0  # norm5 output before the ReLU


def test_stage1_odd_input_size_gives_logits_at_input_size(stage1: SSNetStage1) -> None:
    # 100 -> 50 -> 25 -> 12 (f8) -> 6 (f16); 120 -> 60 -> 30 -> 15 -> 7: sizes are aligned before the adds.
    with torch.no_grad():
        out = stage1(torch.randn(1, 3, 100, 120))
    assert out.seg_logits.shape == (1, 21, 100, 120)
    assert out.coarse_logits.shape == (1, 21, 6, 7)
    assert out.saliency.shape == (1, 100, 120)


def test_stage1_fixed_input_256_is_the_official_layer_and_rejects_other_sizes() -> None:
    torch.manual_seed(0)
    model = SSNetStage1(fixed_input_size=256).eval()
    assert isinstance(model.sam.pool, nn.Identity)
    assert model.sam.conv.kernel_size == (16, 16)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 256))
    assert out.seg_logits.shape == (1, 21, 256, 256)
    assert out.coarse_logits.shape == (1, 21, 16, 16)
    with pytest.raises(ValueError, match=r"fixed_input_size=256.*128×128"):
        model(torch.randn(1, 3, 128, 128))


def test_fixed_input_size_must_be_a_multiple_of_the_stride() -> None:
    with pytest.raises(ValueError, match="multiple of the output stride 16"):
        SSNetStage1(fixed_input_size=250)
    with pytest.raises(ValueError, match="multiple of the output stride 8"):
        SSNetStage2(fixed_input_size=100)


def test_stage2_shapes_head_sum_and_classifier(stage2: SSNetStage2) -> None:
    assert stage2.backbone.feature_strides == (8, 8, 8)
    assert [conv.dilation for conv in stage2.aspp] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert [conv.padding for conv in stage2.aspp] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert isinstance(stage2.sam.pool, nn.AdaptiveAvgPool2d) and stage2.sam.conv.kernel_size == (32, 32)
    assert stage2.classifier.in_features == 1664 and stage2.classifier.out_features == 21
    captured: list[torch.Tensor] = []
    hook = stage2.backbone.register_forward_hook(lambda m, i, o: captured.append(o[-1]))
    try:
        with torch.no_grad():
            out = stage2(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    finally:
        hook.remove()
    assert out.seg_logits.shape == (1, 21, 32, 32)
    assert out.coarse_logits.shape == (1, 21, 4, 4)  # output stride 8
    assert out.cls_logits is not None and out.cls_logits.shape == (1, 21)
    assert ((out.sal_scores >= 0) & (out.sal_scores <= 1)).all()
    assert ((out.saliency >= 0) & (out.saliency <= 1)).all()
    # head: the SUM of the four dilated convs; classifier: Linear on the global average of the feature
    feature = captured[0]
    with torch.no_grad():
        convs = [F.conv2d(feature, c.weight, c.bias, padding=c.padding, dilation=c.dilation) for c in stage2.aspp]
        expected_cls = feature.mean((2, 3)) @ stage2.classifier.weight.T + stage2.classifier.bias
    assert torch.allclose(out.coarse_logits, sum(convs), rtol=1e-4, atol=1e-4)
    assert torch.allclose(out.cls_logits, expected_cls, rtol=1e-4, atol=1e-4)


def test_stage2_fixed_input_size_with_timm_backbone() -> None:
    model = SSNetStage2(backbone="test_resnet", fixed_input_size=256).eval()
    assert isinstance(model.sam.pool, nn.Identity) and model.sam.conv.kernel_size == (32, 32)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 256))
    assert out.seg_logits.shape == (1, 21, 256, 256) and out.coarse_logits.shape == (1, 21, 32, 32)
    with pytest.raises(ValueError, match="fixed_input_size=256"):
        model(torch.randn(1, 3, 128, 128))


# --- DenseNet surgery against torchvision + the official recipe ----------------------------------------------


def _official_densenet(backbone: DilatedDenseNet, output_stride: int) -> tuple[nn.Module, list[torch.Tensor]]:
    """torchvision DenseNet-169 with our weights and the surgery of jsws jls_fcn.py / jls_deeplab.py."""
    reference = torchvision.models.densenet169(weights=None)
    reference.features.load_state_dict(backbone.features.state_dict())
    dilations = {"denseblock4": 2} if output_stride == 16 else {"denseblock3": 2, "denseblock4": 4}
    pools = ["transition3"] if output_stride == 16 else ["transition2", "transition3"]
    for name in pools:
        pool = getattr(reference.features, name)[-1]
        pool.kernel_size, pool.stride = 1, 1
    for name, dilation in dilations.items():
        for module in getattr(reference.features, name).modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
                module.dilation, module.padding = (dilation, dilation), (dilation, dilation)
    taps: list[torch.Tensor] = []
    for name in ("transition2", "transition3"):
        getattr(reference.features, name)[-2].register_forward_hook(lambda m, i, o: taps.append(o))
    return reference.eval(), taps


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_dilated_densenet_matches_torchvision_reference(stage: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(stage)
    reference, taps = _official_densenet(model.backbone, model.output_stride)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = model.backbone(x)
        final = reference.features(x)
    for mine, theirs in zip(ours, [*taps, final], strict=True):
        assert mine.shape == theirs.shape
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())


# --- initialisation --------------------------------------------------------------------------------------------


def test_bilinear_kernel_hand_values() -> None:
    kernel = bilinear_upsampling_kernel(2, 4)
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(kernel[0, 0], taps[:, None] * taps[None, :])
    assert torch.allclose(kernel[1, 1], kernel[0, 0])
    assert torch.count_nonzero(kernel[0, 1]) == 0 and torch.count_nonzero(kernel[1, 0]) == 0


def test_transposed_convs_start_as_bilinear_upsampling(stage1: SSNetStage1, stage2: SSNetStage2) -> None:
    rows = torch.arange(6.0)[:, None]
    cols = torch.arange(7.0)[None, :]
    smooth = (torch.sin(rows / 3) + torch.cos(cols / 4) + 0.1 * rows * cols).expand(1, 21, 6, 7)
    smooth = smooth * torch.linspace(-1, 1, 21).view(1, 21, 1, 1)  # a different map per channel
    for layer, stride in ((stage1.up2, 2), (stage1.up8, 8), (stage2.up8, 8)):
        assert torch.count_nonzero(layer.bias) == 0
        with torch.no_grad():
            up = layer(smooth)
        expected = F.interpolate(smooth, scale_factor=stride, mode="bilinear", align_corners=False)
        border = stride // 2  # the transposed conv zero-pads where interpolate clamps
        assert up.shape == expected.shape
        inner = (..., slice(border, -border), slice(border, -border))
        assert torch.allclose(up[inner], expected[inner], atol=1e-5)


def test_new_layers_init_normal_002_zero_bias(stage1: SSNetStage1, stage2: SSNetStage2) -> None:
    for layer in (stage1.pred_coarse, stage1.sam.conv, stage2.aspp[0], stage2.classifier):
        assert layer.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert layer.weight.mean().abs().item() < 0.002
    for layer in (stage1.pred_coarse, stage1.pred_16, stage1.pred_8, stage1.sam.conv, stage2.classifier, *stage2.aspp):
        assert torch.count_nonzero(layer.bias) == 0


# --- parameter groups and gradients ----------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_parameter_groups_cover_every_parameter_once(stage: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(stage)
    groups = model.parameter_groups()
    assert set(groups) == {"backbone", "heads"}
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in groups["backbone"]} == {id(p) for p in model.backbone.parameters()}
    assert id(model.sam.conv.weight) in {id(p) for p in groups["heads"]}


@pytest.mark.parametrize(
    ("network", "backbone"),
    [(SSNetStage1, "densenet169"), (SSNetStage1, "test_resnet"), (SSNetStage2, "test_resnet")],
)
def test_every_parameter_gets_a_gradient(network: type[SSNetStage1] | type[SSNetStage2], backbone: str) -> None:
    # (stage 2 with DenseNet-169 is left out only for speed: its backward takes seconds on a CPU)
    model = network(backbone=backbone).train()
    out = model(torch.randn(2, 3, 32, 32))
    loss = out.seg_logits.mean() + out.coarse_logits.mean() + out.saliency.mean()
    if out.cls_logits is not None:
        loss = loss + out.cls_logits.mean()
    loss.backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []  # DDP-safe: nothing unused


# --- other timm backbones ---------------------------------------------------------------------------------------


def test_stage1_with_timm_resnet_backbone() -> None:
    model = SSNetStage1(backbone="test_resnet").eval()
    strides = model.backbone.feature_strides
    assert strides == (2, 4, 8, 16, 16)
    assert model.tap_indices == (2, 3, 4)
    channels = model.backbone.feature_channels
    assert model.pred_8.in_channels == channels[2] and model.pred_16.in_channels == channels[3]
    assert model.pred_coarse.in_channels == channels[4] == model.sam.conv.in_channels
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.seg_logits.shape == (2, 21, 64, 64) and out.coarse_logits.shape == (2, 21, 4, 4)
    assert ((out.saliency >= 0) & (out.saliency < 1)).all()


def test_backbone_without_the_needed_strides_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs a stride-8 map"):
        SSNetStage1(backbone="test_vit")


# --- local weight files --------------------------------------------------------------------------------------------


def test_checkpoint_path_loads_a_legacy_torchvision_densenet_file(tmp_path: Path) -> None:
    torch.manual_seed(5)
    reference = torchvision.models.densenet121(weights=None)
    # old torchvision files name dense-layer parameters "norm.1" / "conv.2" (torchvision renames them on load)
    legacy = {}
    for key, value in reference.state_dict().items():
        for part in ("norm1", "norm2", "conv1", "conv2"):
            if ".denselayer" in key and f".{part}." in key:
                key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        legacy[key] = value
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "densenet121_tv.pth"
    torch.save(legacy, path)

    model = SSNetStage1(backbone="densenet121", checkpoint_path=path)
    assert model.backbone.load_report is not None and model.backbone.load_report.complete
    ours = model.backbone.features
    assert torch.equal(ours.conv0.weight, reference.features.conv0.weight)
    assert torch.equal(
        ours.denseblock1.denselayer1.norm1.weight, reference.features.denseblock1.denselayer1.norm1.weight
    )
    assert torch.equal(ours.norm5.running_var, reference.features.norm5.running_var)


def test_checkpoint_path_with_the_wrong_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, path)
    with pytest.raises(CheckpointError, match="wrong file"):
        SSNetStage1(backbone="densenet121", checkpoint_path=path)
    with pytest.raises(CheckpointError, match="does not exist"):
        DilatedDenseNet("densenet121", checkpoint_path=tmp_path / "missing.pth")


def test_dilated_densenet_argument_errors() -> None:
    with pytest.raises(ValueError, match="output_stride 16 or 8"):
        DilatedDenseNet("densenet121", output_stride=32)
    with pytest.raises(ValueError, match="not a timm DenseNet"):
        DilatedDenseNet("resnet18")


def test_stage2_aspp_dilations_scale_with_the_map() -> None:
    """Scaled dilations keep the head's reach on small maps; on a 16×16 map dilation 24 sees the centre tap only."""
    model = SSNetStage2(backbone="test_resnet", aspp_dilations=(3, 6, 9, 12)).eval()
    assert [conv.dilation for conv in model.aspp] == [(3, 3), (6, 6), (9, 9), (12, 12)]
    assert [conv.padding for conv in model.aspp] == [(3, 3), (6, 6), (9, 9), (12, 12)]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128))
    assert out.coarse_logits.shape == (1, 21, 16, 16)
    # Why the demo scales them: a dilation-24 3×3 conv on a 16×16 map equals its centre tap (a 1×1 conv).
    conv = nn.Conv2d(4, 2, 3, padding=24, dilation=24)
    x = torch.randn(1, 4, 16, 16)
    centre = F.conv2d(x, conv.weight[:, :, 1:2, 1:2], conv.bias)
    torch.testing.assert_close(conv(x), centre)
    with pytest.raises(ValueError, match="aspp_dilations"):
        SSNetStage2(backbone="test_resnet", aspp_dilations=(0, 6))
