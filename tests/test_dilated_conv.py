"""The space-to-batch dilated convolution equals ``F.conv2d(..., dilation=d)`` (values and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss_lightning.models.dilated_conv import SpaceToBatchConv2d, space_to_batch_conv2d, use_space_to_batch
from wsss_lightning.models.resnet38 import ResNet38


@pytest.mark.parametrize(
    ("dilation", "kernel", "size", "groups"),
    [(2, 3, (41, 41), 1), (4, 3, (41, 37), 1), (3, 3, (9, 12), 2), (2, 5, (16, 16), 1), (4, 3, (5, 3), 4)],
)
def test_equals_the_dilated_convolution(dilation: int, kernel: int, size: tuple[int, int], groups: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, *size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6 if groups != 4 else 8, 8 // groups, kernel, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(weight.shape[0], dtype=torch.float64, requires_grad=True)
    pad = dilation * (kernel - 1) // 2
    expected = F.conv2d(x, weight, bias, padding=pad, dilation=dilation, groups=groups)
    got = space_to_batch_conv2d(x, weight, bias, dilation, groups)
    assert got.shape == expected.shape == (2, weight.shape[0], *size)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(expected)
    want = torch.autograd.grad(expected, (x, weight, bias), grad_out)
    have = torch.autograd.grad(got, (x, weight, bias), grad_out)
    for a, b in zip(have, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_channels_last_input_keeps_the_values() -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 4, 21, 19).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(4, 4, 3, 3)
    expected = F.conv2d(x, weight, None, padding=4, dilation=4)
    torch.testing.assert_close(space_to_batch_conv2d(x, weight, None, 4), expected, rtol=1e-5, atol=1e-5)


def test_swap_keeps_parameters_and_skips_ineligible_convolutions() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=2, dilation=2),  # eligible
        nn.Conv2d(4, 4, 3, padding=1),  # not dilated
        nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2),  # strided
        nn.Conv2d(4, 4, 3, padding=1, dilation=2),  # not "same" padding
        nn.Conv2d(4, 4, 3, padding=4, dilation=4, bias=False),  # eligible
    )
    weights = [m.weight for m in net]
    keys = list(net.state_dict())
    x = torch.randn(1, 3, 23, 23)
    before = net(x)
    assert use_space_to_batch(net) == 2
    assert [type(m) is SpaceToBatchConv2d for m in net] == [True, False, False, False, True]
    assert all(m.weight is w for m, w in zip(net, weights, strict=True))  # the very same tensors
    assert list(net.state_dict()) == keys
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)
    assert use_space_to_batch(net) == 0  # already swapped


def test_resnet38_output_is_unchanged() -> None:
    torch.manual_seed(0)
    net = ResNet38().eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        before = net(x)[-1]
        # Dilation 2: b5's second 3x3, both 3x3s of b5_1 and b5_2; dilation 4: the 3x3 of b6 and of b7.
        assert use_space_to_batch(net) == 7
        after = net(x)[-1]
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_resnet38_switch_builds_the_same_parameters() -> None:
    native = ResNet38()
    split = ResNet38(dilated_conv="space_to_batch")
    assert list(split.state_dict()) == list(native.state_dict())
    assert sum(isinstance(m, SpaceToBatchConv2d) for m in split.modules()) == 7
    with pytest.raises(ValueError, match="dilated_conv"):
        ResNet38(dilated_conv="im2col")  # type: ignore[arg-type]


def test_timm_backbone_switch_swaps_the_dilated_depthwise_convs_and_keeps_outputs() -> None:
    from wsss_lightning.models.timm_backbone import TimmBackbone

    torch.manual_seed(0)
    native = TimmBackbone("tf_efficientnet_lite0", output_stride=8).eval()
    fast = TimmBackbone("tf_efficientnet_lite0", output_stride=8, dilated_conv="space_to_batch").eval()
    fast.load_state_dict(native.state_dict())  # same keys: checkpoints are interchangeable
    swapped = [m for m in fast.modules() if isinstance(m, SpaceToBatchConv2d)]
    assert swapped and all(m.groups == m.in_channels for m in swapped)  # lite0's dilated convs are depthwise
    x = torch.randn(1, 3, 67, 53)
    with torch.no_grad():
        for a, b in zip(native(x), fast(x), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="dilated_conv must be"):
        TimmBackbone("tf_efficientnet_lite0", dilated_conv="atrous")  # type: ignore[arg-type]
