"""Dilated convolutions as ordinary ones over phase-split maps ("space to batch"), an exact speed lever.

A 3×3 convolution with dilation ``d`` (stride 1, padding ``d``) only ever combines pixels whose coordinates agree
modulo ``d``. Splitting the zero-padded map into its ``d × d`` phases (every ``d``-th row and column, from each
offset) turns it into ``d²`` independent maps on which the same weights act as an **undilated** valid 3×3
convolution; interleaving the outputs back gives the dilated result exactly (TensorFlow's ``atrous_conv2d`` does
this). Output position ``i = q·d + a`` reads padded input ``i + k·d = (q + k)·d + a``: phase ``a``, index ``q + k``.

Why: ResNet-38's b5–b7 (dilations 2 and 4; about half of the network's FLOPs) run dilated 3×3 kernels, for which
cuDNN often has slower algorithms than for dense ones, especially in bf16 channels-last. Whether the extra pad and
two permutes pay is a GPU measurement (``benchmarks/train_step.py --dilated-conv space_to_batch``); the result is
identical either way, so the switch is safe to try (``tests/test_dilated_conv.py`` checks it against
``F.conv2d(..., dilation=d)``, values and gradients).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DilatedConvImpl",
    "DILATED_CONV_IMPLS",
    "SpaceToBatchConv2d",
    "apply_dilated_conv",
    "check_dilated_conv",
    "space_to_batch_conv2d",
    "use_space_to_batch",
]

DilatedConvImpl = Literal["native", "space_to_batch"]
#: The values of :data:`DilatedConvImpl`, for argument parsers and checks.
DILATED_CONV_IMPLS: tuple[str, ...] = get_args(DilatedConvImpl)


def check_dilated_conv(impl: str) -> None:
    """Raise ``ValueError`` unless ``impl`` is a :data:`DilatedConvImpl` (a backbone's ``dilated_conv`` switch)."""
    if impl not in DILATED_CONV_IMPLS:
        raise ValueError(f"dilated_conv must be 'native' or 'space_to_batch', got {impl!r}")


def apply_dilated_conv(module: nn.Module, impl: DilatedConvImpl) -> int:
    """A backbone's ``dilated_conv`` switch: ``"space_to_batch"`` runs :func:`use_space_to_batch` on ``module``,
    ``"native"`` leaves it as built. Returns the number of convolutions swapped (0 for ``"native"``)."""
    check_dilated_conv(impl)
    return use_space_to_batch(module) if impl == "space_to_batch" else 0


def space_to_batch_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int, groups: int = 1) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=d·(k−1)/2, dilation=d, groups=groups)`` computed on the ``d²`` phases.

    Args:
        x: ``(B, C, H, W)``, any ``H``, ``W`` (the padded map is rounded up to a multiple of ``d`` with zeros).
        weight: ``(O, C / groups, k, k)``, ``k`` odd.
        bias: ``(O,)`` or None.
        dilation: ``d ≥ 1``.

    Returns:
        ``(B, O, H, W)``, equal to the dilated convolution up to floating-point summation order.
    """
    k = weight.shape[-1]
    if weight.shape[-2] != k or k % 2 == 0:
        raise ValueError(f"space_to_batch_conv2d needs a square odd kernel, got {tuple(weight.shape[-2:])}")
    d = dilation
    if d == 1:
        return F.conv2d(x, weight, bias, padding=(k - 1) // 2, groups=groups)
    b, c, h, w = x.shape
    pad = d * (k - 1) // 2
    hp = -(-(h + 2 * pad) // d) * d  # padded size rounded up to a multiple of d (the extra rows are zeros too)
    wp = -(-(w + 2 * pad) // d) * d
    x = F.pad(x, (pad, wp - w - pad, pad, hp - h - pad))
    # (B, C, hp/d, d, wp/d, d) -> (B, d, d, C, hp/d, wp/d): phase (a, a') becomes its own batch entry.
    phases = x.view(b, c, hp // d, d, wp // d, d).permute(0, 3, 5, 1, 2, 4).reshape(b * d * d, c, hp // d, wp // d)
    y = F.conv2d(phases, weight, bias, groups=groups)  # valid: (B·d², O, hp/d − k + 1, wp/d − k + 1)
    o, qh, qw = y.shape[1:]
    # Interleave back: output row q·d + a comes from phase a, row q.
    y = y.view(b, d, d, o, qh, qw).permute(0, 3, 4, 1, 5, 2).reshape(b, o, qh * d, qw * d)
    return y[:, :, :h, :w]


class SpaceToBatchConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters and state-dict keys) whose dilated forward runs :func:`space_to_batch_conv2d`.

    Only built by :func:`use_space_to_batch` for eligible convolutions: square odd kernel, stride 1, equal
    dilation ``> 1`` on both axes, "same" zero padding ``d·(k−1)/2``.
    """

    def forward(self, x: Tensor) -> Tensor:
        return space_to_batch_conv2d(x, self.weight, self.bias, self.dilation[0], self.groups)


def _eligible(conv: nn.Module) -> bool:
    if type(conv) is not nn.Conv2d:
        return False
    k, d = conv.kernel_size, conv.dilation
    return (
        k[0] == k[1]
        and k[0] % 2 == 1
        and d[0] == d[1] > 1
        and conv.stride == (1, 1)
        and conv.padding == (d[0] * (k[0] - 1) // 2,) * 2
        and conv.padding_mode == "zeros"
    )


def use_space_to_batch(module: nn.Module) -> int:
    """Swap every eligible dilated ``nn.Conv2d`` inside ``module`` for a :class:`SpaceToBatchConv2d`, in place.

    The new modules share the old ones' parameter tensors (optimisers built before or after see the same
    parameters; checkpoints load unchanged). Returns the number of convolutions swapped.
    """
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not _eligible(child):
                continue
            assert isinstance(child, nn.Conv2d)
            new = SpaceToBatchConv2d(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                padding=child.padding,
                dilation=child.dilation,
                groups=child.groups,
                bias=child.bias is not None,
                device="meta",  # no throw-away allocation: the parameters are the old module's
            )
            new.weight = child.weight
            new.bias = child.bias
            new.train(child.training)
            setattr(parent, name, new)
            swapped += 1
    return swapped
