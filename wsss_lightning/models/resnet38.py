"""ResNet-38 ("Wider or Deeper", Wu et al. 2019) as used by PSA and AuxSegNet, with PSA's module names.

Module and parameter names follow PSA's ``network/resnet38d.py`` (``conv1a``, ``b2`` … ``b7``, ``bn7``; inside a
block ``bn_branch2a``, ``conv_branch2a``, ``bn_branch2b1``, ``conv_branch2b1``, ``bn_branch2b2``,
``conv_branch2b2``, ``conv_branch1``), so PSA's converted ImageNet weights and PSA / AuxSegNet classifier
checkpoints load by key (docs/method_notes.md §2.1, §2.2). The network is pre-activation: a block's input goes through
BN + ReLU first, so the raw block outputs are never normalised; the maps returned here are the normalised ones.

Layout at output stride 8 (docs/method_notes.md §2.2 table):

=================  ================  ======  ========
blocks             channels          stride  dilation
=================  ================  ======  ========
conv1a             3 -> 64           1       1
b2, b2_1, b2_2     -> 128            2       1
b3, b3_1, b3_2     -> 256            4       1
b4 … b4_5          -> 512            8       1
b5, b5_1, b5_2     -> 1024           8       2 (b5's first conv: 1)
b6 (dropout 0.3)   -> 2048           8       4
b7 (dropout 0.5)   -> 4096           8       4
bn7 + ReLU         4096              8
=================  ================  ======  ========

At output stride 16, b5 takes stride 2 and the dilations halve (b5: 1, b6/b7: 2); the weights are the same.

Input normalisation: PSA's converted ImageNet weights expect RGB / 255 normalised with ImageNet mean/std, which
is what the data pipeline produces, so ResNet-38 uses its input as it is (``normalization.is_identity``). This
module also defines :class:`Normalization`, the record every backbone exposes of what it expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from wsss_lightning.models.checkpoint import LoadReport, load_into, load_state_dict_file
from wsss_lightning.models.dilated_conv import DilatedConvImpl, apply_dilated_conv, check_dilated_conv
from wsss_lightning.models.mxnet_params import is_mxnet_params, read_mxnet_params, resnet38_state_from_mxnet

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Normalization",
    "ResBlock",
    "ResBlockBottleneck",
    "ResNet38",
    "freeze_batchnorm",
]

# The data pipeline's normalisation (wsss_lightning.data.transforms.IMAGENET_MEAN/STD; a test keeps them equal).
# Repeated here so the models do not import the data layer (albumentations, cv2).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class Normalization:
    """How a backbone's input is normalised and how its weights expect it: ``x = (rgb / 255 - mean) / std``.

    A backbone that gets ``input``-normalised images but has weights trained with ``model`` mean/std maps one to
    the other per channel: ``x_model = x_input * scale + shift`` with ``scale = input_std / model_std`` and
    ``shift = (input_mean - model_mean) / model_std``.

    Attributes:
        input_mean, input_std: the normalisation of the tensors the backbone receives (the data pipeline's).
        model_mean, model_std: the normalisation the backbone's weights were trained with.
    """

    input_mean: Triple = IMAGENET_MEAN
    input_std: Triple = IMAGENET_STD
    model_mean: Triple = IMAGENET_MEAN
    model_std: Triple = IMAGENET_STD

    def __post_init__(self) -> None:
        for name in ("input_mean", "input_std", "model_mean", "model_std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3 or (name.endswith("std") and min(value) <= 0):
                raise ValueError(f"{name} must be 3 numbers{' > 0' if name.endswith('std') else ''}, got {value}")
            object.__setattr__(self, name, value)

    @property
    def is_identity(self) -> bool:
        """True when the input already has the model's normalisation (nothing to do)."""
        return self.input_mean == self.model_mean and self.input_std == self.model_std

    @property
    def scale(self) -> Triple:
        """Per-channel factor of ``x_model = x_input * scale + shift``."""
        (i0, i1, i2), (m0, m1, m2) = self.input_std, self.model_std
        return (i0 / m0, i1 / m1, i2 / m2)

    @property
    def shift(self) -> Triple:
        """Per-channel offset of ``x_model = x_input * scale + shift``."""
        (i0, i1, i2), (m0, m1, m2), (s0, s1, s2) = self.input_mean, self.model_mean, self.model_std
        return ((i0 - m0) / s0, (i1 - m1) / s1, (i2 - m2) / s2)

    def __str__(self) -> str:
        def fmt(values: Triple) -> str:
            return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

        text = f"input mean {fmt(self.input_mean)} std {fmt(self.input_std)}"
        if self.is_identity:
            return f"{text} (as the weights expect)"
        return f"{text} -> model mean {fmt(self.model_mean)} std {fmt(self.model_std)}"


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm of ``module`` in eval mode and stop gradients to its affine parameters.

    Eval mode keeps the running statistics fixed (they are neither updated nor used as batch statistics);
    ``requires_grad=False`` keeps the optimizer off ``weight``/``bias``. Call it after every ``train()``.
    """
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()
            for param in layer.parameters(recurse=False):
                param.requires_grad_(False)


class ResBlock(nn.Module):
    """Basic pre-activation residual block: BN-ReLU, 3x3 conv, BN-ReLU, 3x3 conv, plus a shortcut.

    The 1x1 shortcut ``conv_branch1`` exists only when the shape changes; it reads the pre-activated input.
    Input ``(B, in_channels, H, W)`` -> output ``(B, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        first_dilation: int | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = in_channels == out_channels and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(
            in_channels, mid_channels, 3, stride, padding=first_dilation, dilation=first_dilation, bias=False
        )
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(mid_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv_branch1: nn.Conv2d | None = None
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(output, relu(bn_branch2a(x)))``; the second is the block's normalised input."""
        preact = F.relu(self.bn_branch2a(x))
        shortcut = x if self.conv_branch1 is None else self.conv_branch1(preact)
        branch = self.conv_branch2a(preact)
        branch = self.conv_branch2b1(F.relu(self.bn_branch2b1(branch)))
        return shortcut + branch, preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


class ResBlockBottleneck(nn.Module):
    """Bottleneck pre-activation block of b6/b7: 1x1 (C/4), 3x3 dilated (C/2), 1x1 (C), Dropout2d before the
    last two convs, and a 1x1 shortcut (always present here: channels change in both uses).

    Input ``(B, in_channels, H, W)`` -> output ``(B, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1, dropout: float = 0.0):
        super().__init__()
        self.same_shape = in_channels == out_channels and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, out_channels // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_channels // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(
            out_channels // 4, out_channels // 2, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn_branch2b2 = nn.BatchNorm2d(out_channels // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_channels // 2, out_channels, 1, bias=False)
        self.conv_branch1: nn.Conv2d | None = None
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(output, relu(bn_branch2a(x)))``; the second is the block's normalised input."""
        preact = F.relu(self.bn_branch2a(x))
        shortcut = x if self.conv_branch1 is None else self.conv_branch1(preact)
        branch = self.conv_branch2a(preact)
        branch = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(branch))))
        branch = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(branch))))
        return shortcut + branch, preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


class ResNet38(nn.Module):
    """Wide pre-activation ResNet-38 ("resnet38d") backbone with PSA's state-dict names.

    ``forward`` returns four maps, shallow to deep, all after BatchNorm + ReLU:

    ==========  ========  ===================================================  ==================
    channels    stride    what                                                 PSA name
    ==========  ========  ===================================================  ==================
    256         4         b3_2 output, normalised by b4.bn_branch2a            —
    512         8         b4_5 output, normalised by b5.bn_branch2a            ``conv4``
    1024        8 (16)    b5_2 output, normalised by b6.bn_branch2a            ``conv5``
    4096        8 (16)    relu(bn7(b7 output)): the classifier / CAM feature   ``conv6``
    ==========  ========  ===================================================  ==================

    (strides in brackets: ``output_stride=16``.) A 321x321 input gives 81x81, 41x41, 41x41, 41x41 at stride 8.

    Args:
        output_stride: 8 (PSA / AuxSegNet) or 16.
        freeze_bn: keep every BatchNorm in eval mode with frozen affine parameters, also across ``train()``
            (docs/method_notes.md §2.2; Lightning calls ``train()`` every epoch, so this is re-applied there).
        freeze_conv1a: ``conv1a.weight`` gets ``requires_grad=False`` (PSA, AuxSegNet).
        checkpoint_path: PSA/AuxSegNet-style weight file or the MXNet ImageNet ``.params``, loaded at
            construction (see :meth:`load_checkpoint`).
        weights_only: read ``checkpoint_path`` with ``torch.load(weights_only=True)``.
        frozen_blocks: further top-level blocks whose parameters get ``requires_grad=False``, e.g.
            ``("b2", "b2_1", "b2_2")`` for PSA's classification recipe (docs/method_notes.md §2.1).
        dilated_conv: ``"native"`` (cuDNN's dilated kernels) or ``"space_to_batch"``: the seven dilated 3×3
            convolutions of b5–b7 run as dense ones on phase-split maps (:mod:`wsss_lightning.models.dilated_conv`);
            the same parameters and state-dict keys, the same outputs up to summation order; a GPU speed lever.

    Attributes:
        load_report: the :class:`LoadReport` of the constructor's checkpoint load, else ``None``. Its
            ``unexpected_state`` holds head tensors such as ``fc8.weight`` for the caller.
        normalization: the expected input normalisation, ImageNet mean/std as PSA (the data pipeline's), so no
            re-normalisation happens: ``normalization.is_identity`` (same attribute as :class:`TimmBackbone`).
    """

    feature_channels: tuple[int, ...] = (256, 512, 1024, 4096)
    out_channels: int = 4096
    normalization: Normalization = Normalization()

    def __init__(
        self,
        output_stride: int = 8,
        freeze_bn: bool = True,
        freeze_conv1a: bool = True,
        checkpoint_path: str | None = None,
        weights_only: bool = True,
        frozen_blocks: tuple[str, ...] = (),
        dilated_conv: DilatedConvImpl = "native",
    ) -> None:
        super().__init__()
        check_dilated_conv(dilated_conv)
        if output_stride not in (8, 16):
            raise ValueError(f"ResNet38 supports output_stride 8 or 16, got {output_stride}")
        # At stride 16, b5 downsamples and every later dilation halves, so receptive fields stay the same.
        b5_stride, d5, d6 = (1, 2, 4) if output_stride == 8 else (2, 1, 2)
        self.output_stride = output_stride
        self.feature_strides: tuple[int, ...] = (4, 8, output_stride, output_stride)
        self.freeze_bn = freeze_bn
        self.freeze_conv1a = freeze_conv1a

        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)

        self.b2 = ResBlock(64, 128, 128, stride=2)
        self.b2_1 = ResBlock(128, 128, 128)
        self.b2_2 = ResBlock(128, 128, 128)

        self.b3 = ResBlock(128, 256, 256, stride=2)
        self.b3_1 = ResBlock(256, 256, 256)
        self.b3_2 = ResBlock(256, 256, 256)

        self.b4 = ResBlock(256, 512, 512, stride=2)
        self.b4_1 = ResBlock(512, 512, 512)
        self.b4_2 = ResBlock(512, 512, 512)
        self.b4_3 = ResBlock(512, 512, 512)
        self.b4_4 = ResBlock(512, 512, 512)
        self.b4_5 = ResBlock(512, 512, 512)

        self.b5 = ResBlock(512, 512, 1024, stride=b5_stride, first_dilation=1, dilation=d5)
        self.b5_1 = ResBlock(1024, 512, 1024, dilation=d5)
        self.b5_2 = ResBlock(1024, 512, 1024, dilation=d5)

        self.b6 = ResBlockBottleneck(1024, 2048, dilation=d6, dropout=0.3)
        self.b7 = ResBlockBottleneck(2048, 4096, dilation=d6, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)

        unknown = [name for name in frozen_blocks if not isinstance(getattr(self, name, None), nn.Module)]
        if unknown:
            raise ValueError(f"frozen_blocks names no ResNet38 block: {unknown} (blocks are conv1a, b2 … b7, bn7)")
        self.frozen_blocks = tuple(frozen_blocks)
        self.dilated_conv = dilated_conv
        apply_dilated_conv(self, dilated_conv)

        self.load_report: LoadReport | None = None
        if checkpoint_path is not None:
            self.load_report = self.load_checkpoint(checkpoint_path, weights_only=weights_only)
        self._apply_freezing()

    def _apply_freezing(self) -> None:
        if self.freeze_conv1a:
            self.conv1a.weight.requires_grad_(False)
        for name in self.frozen_blocks:
            getattr(self, name).requires_grad_(False)
        if self.freeze_bn:
            freeze_batchnorm(self)

    def train(self, mode: bool = True) -> ResNet38:
        """Set train/eval mode, then re-freeze: BN stays in eval mode, frozen weights keep no gradient.

        Dropout2d inside b6/b7 follows ``mode`` (active in training, as in PSA).
        """
        super().train(mode)
        self._apply_freezing()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` ImageNet-normalised RGB -> four maps (see the class docstring), shallow to deep."""
        x = self.conv1a(x)
        x = self.b2_2(self.b2_1(self.b2(x)))
        x = self.b3_2(self.b3_1(self.b3(x)))
        x, stride4 = self.b4.forward_preact(x)
        x = self.b4_5(self.b4_4(self.b4_3(self.b4_2(self.b4_1(x)))))
        x, conv4 = self.b5.forward_preact(x)
        x = self.b5_2(self.b5_1(x))
        x, conv5 = self.b6.forward_preact(x)
        conv6 = F.relu(self.bn7(self.b7(x)))
        return [stride4, conv4, conv5, conv6]

    def load_checkpoint(self, path: str | Path, weights_only: bool = True, strict: bool = True) -> LoadReport:
        """Load a PSA/AuxSegNet-style weight file by key and return what matched.

        Accepted: a plain state dict, ``{"state_dict": ...}`` / ``{"model": ...}``, with ``module.`` /
        ``model.`` / ``backbone.`` prefixes (see :func:`~wsss_lightning.models.checkpoint.load_state_dict_file`),
        and the official MXNet ImageNet weights ``ilsvrc-cls_rna-a1_cls1000_ep-0001.params`` (recognised by
        their magic number, read without mxnet and renamed as PSA's ``convert_mxnet_to_torch`` does; see
        :mod:`~wsss_lightning.models.mxnet_params`). Keys that are not backbone keys (e.g. the PSA
        classifier's ``fc8.weight``, the ImageNet ``linear1000_*``) come back in ``report.unexpected`` and
        ``report.unexpected_state`` for the caller's head.

        Args:
            path: the weight file.
            weights_only: ``torch.load(weights_only=...)`` (MXNet files hold no pickle and ignore it).
            strict: raise unless every backbone tensor loaded (``num_batches_tracked`` excepted). With
                ``strict=False`` a partial load only warns.

        Raises:
            CheckpointError: no backbone key matched (a wrong file), or an incomplete load with ``strict``.
        """
        if is_mxnet_params(path):
            state = resnet38_state_from_mxnet(read_mxnet_params(path))
        else:
            state = load_state_dict_file(path, weights_only=weights_only)
        return load_into(self, state, source=str(path), check_as="ResNet38", strict=strict)
