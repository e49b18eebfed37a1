"""SSNet networks (Zeng et al., ICCV 2019): stage 1 ("JLSFCN") and stage 2 ("JLSDL"), plain ``nn.Module``s.

docs/method_notes.md §1.2 (stage-1 shapes), §1.3 (saliency aggregation module, SAM), §1.6 (stage-2 net), §1.11 (plan).
Losses live in :mod:`wsss_lightning.losses`, training in ``modules/``.

Both networks predict segmentation logits ``Z`` at input resolution and per-class saliency scores ``v`` (SAM).
The saliency map is ``S = Σ_{c≥1} v_c softmax(Z)_c`` and the background score is ``P_0 = softmax(Z)_0``
(:func:`sam_saliency`).

**Input size (documented deviation).** The official SAM is a conv whose kernel equals the deepest feature map of
a 256×256 input (16 at stride 16, 32 at stride 8), which hard-wires the input to 256×256. By default
(``fixed_input_size=None``) an ``AdaptiveAvgPool2d`` to that kernel size runs in front of the SAM conv, so any
input size works (for 256×256 inputs the pool is the identity and the result equals the official layer).
``fixed_input_size=256`` removes the pool (exact parity) and rejects any other input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_lightning.models.densenet import DilatedDenseNet, is_timm_densenet
from wsss_lightning.models.timm_backbone import TimmBackbone

__all__ = [
    "SSNetOutput",
    "SSNetStage1",
    "SSNetStage2",
    "SaliencyAggregation",
    "bilinear_upsampling_kernel",
    "build_ssnet_backbone",
    "sam_saliency",
]

# The official input size; SAM kernels are this size divided by the output stride (16 -> 16, 8 -> 32).
REFERENCE_INPUT_SIZE = 256
STAGE2_DILATIONS = (6, 12, 18, 24)
INIT_STD = 0.02


@dataclass
class SSNetOutput:
    """One forward pass of an SSNet network.

    Attributes:
        seg_logits: ``Z`` ``(B, C, H, W)`` segmentation logits at exactly the input size.
        coarse_logits: ``(B, C, h, w)`` logits before the last upsampling: ``s32`` at stride 16 (stage 1, used
            by ``L_c``) or the summed ASPP output at stride 8 (stage 2).
        sal_scores: ``v`` ``(B, C)`` per-class saliency scores in (0, 1); entry 0 (background) is unused.
        saliency: ``S`` ``(B, H, W)`` in [0, 1).
        background: ``P_0`` ``(B, H, W)`` in [0, 1].
        cls_logits: ``(B, C)`` classifier logits (stage 2 only; the loss uses entries 1..C-1), else ``None``.
    """

    seg_logits: Tensor
    coarse_logits: Tensor
    sal_scores: Tensor
    saliency: Tensor
    background: Tensor
    cls_logits: Tensor | None = None


def sam_saliency(seg_logits: Tensor, sal_scores: Tensor) -> tuple[Tensor, Tensor]:
    """Aggregate segmentation probabilities into a saliency map (docs/method_notes.md §1.3).

    Args:
        seg_logits: ``(B, C, H, W)`` segmentation logits ``Z``.
        sal_scores: ``(B, C)`` SAM scores ``v`` in (0, 1); entry 0 is ignored.

    Returns:
        ``(S, P_0)``: saliency ``S = Σ_{c≥1} v_c softmax(Z)_c`` ``(B, H, W)`` in [0, 1) and the background
        probability ``P_0 = softmax(Z)_0`` ``(B, H, W)``. ``S + P_0 ≤ 1``, not ``= 1``.
    """
    prob = seg_logits.softmax(dim=1)
    saliency = (prob[:, 1:] * sal_scores[:, 1:, None, None]).sum(dim=1)
    return saliency, prob[:, 0]


def bilinear_upsampling_kernel(channels: int, kernel_size: int) -> Tensor:
    """The FCN bilinear-upsampling weight for ``ConvTranspose2d(channels, channels, kernel_size)``.

    Channel ``i`` maps to channel ``i`` only. With ``kernel_size = 2·stride`` and ``padding = stride / 2`` the
    transposed conv equals ``F.interpolate(..., mode="bilinear", align_corners=False)`` away from the borders.

    Returns:
        ``(channels, channels, kernel_size, kernel_size)`` float32 tensor.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(kernel_size, dtype=torch.float64) - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size, dtype=torch.float64)
    index = torch.arange(channels)
    weight[index, index] = taps[:, None] * taps[None, :]
    return weight.float()


def _init_new_layers(*modules: nn.Module) -> None:
    """Official init of the new layers: convs/linears N(0, 0.02) with zero bias; transposed convs bilinear."""
    for root in modules:
        for module in root.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.normal_(module.weight, 0.0, INIT_STD)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.ConvTranspose2d):
                with torch.no_grad():
                    module.weight.copy_(bilinear_upsampling_kernel(module.in_channels, module.kernel_size[0]))
                # The official code leaves PyTorch's random bias here; zero makes the start exactly bilinear.
                nn.init.zeros_(module.bias)


def _match_size(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop (bottom/right) or replicate-pad ``(B, C, h, w)`` to ``size``; a no-op when sizes agree.

    Transposed convs anchor their output at the top-left, so cropping or padding at the bottom/right keeps the
    maps aligned when an input size is not divisible by the network stride.
    """
    height, width = size
    x = x[..., :height, :width]
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x


def build_ssnet_backbone(
    name: str,
    output_stride: int,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
) -> nn.Module:
    """A timm DenseNet with the SSNet surgery (:class:`DilatedDenseNet`) or any other timm model as
    :class:`TimmBackbone` (``features_only`` at ``output_stride``). Both return maps shallow to deep with
    ``feature_channels`` / ``feature_strides`` attributes.
    """
    if is_timm_densenet(name):
        return DilatedDenseNet(name, output_stride, pretrained=pretrained, checkpoint_path=checkpoint_path)
    path = None if checkpoint_path is None else str(checkpoint_path)
    return TimmBackbone(name, pretrained=pretrained, checkpoint_path=path, output_stride=output_stride)


class SaliencyAggregation(nn.Module):
    """SAM score head: ``v = sigmoid(mean_xy(Conv_k(pool(f))))`` (docs/method_notes.md §1.2).

    Args:
        in_channels: channels of the deepest feature ``f``.
        num_classes: ``C`` (including background).
        kernel_size: the conv kernel ``k`` (16 in stage 1, 32 in stage 2).
        adaptive: put ``AdaptiveAvgPool2d(k)`` in front (any feature size); else the feature must be ``k × k``.
    """

    def __init__(self, in_channels: int, num_classes: int, kernel_size: int, adaptive: bool = True) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.pool: nn.Module = nn.AdaptiveAvgPool2d(kernel_size) if adaptive else nn.Identity()
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=kernel_size)

    def forward(self, feature: Tensor) -> Tensor:
        """``(B, in_channels, h, w)`` -> scores ``(B, num_classes)`` in (0, 1)."""
        return torch.sigmoid(self.conv(self.pool(feature)).mean(dim=(2, 3)))


class _SSNetBase(nn.Module):
    """Shared parts: input-size policy, SAM, parameter groups, output assembly."""

    output_stride: int

    def __init__(self, num_classes: int, fixed_input_size: int | None, output_stride: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
        if fixed_input_size is not None and (fixed_input_size <= 0 or fixed_input_size % output_stride):
            raise ValueError(
                f"fixed_input_size must be a positive multiple of the output stride {output_stride} "
                f"(256 reproduces the official SAM), got {fixed_input_size}"
            )
        self.num_classes = num_classes
        self.fixed_input_size = fixed_input_size
        self.output_stride = output_stride
        # SAM kernel = deepest feature size of the reference input (official: 256 // 16 = 16, 256 // 8 = 32).
        self.sam_kernel_size = (fixed_input_size or REFERENCE_INPUT_SIZE) // output_stride

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects images (B, 3, H, W), got {tuple(x.shape)}")
        size = self.fixed_input_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            raise ValueError(
                f"{type(self).__name__} was built with fixed_input_size={size}: its SAM conv (kernel "
                f"{self.sam_kernel_size}) spans the whole stride-{self.output_stride} feature map of a {size}×{size} "
                f"input, but got {x.shape[-2]}×{x.shape[-1]}. Resize the images to {size}×{size}, or build the "
                "network with fixed_input_size=None (adaptive pooling before the SAM conv, any input size)."
            )

    def _head_modules(self) -> list[nn.Module]:
        return [module for name, module in self.named_children() if name != "backbone"]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"backbone": pretrained backbone parameters, "heads": the new layers}``; every parameter once."""
        backbone = list(self.backbone.parameters())
        heads = [p for module in self._head_modules() for p in module.parameters()]
        return {"backbone": backbone, "heads": heads}

    def _output(
        self, seg_logits: Tensor, coarse_logits: Tensor, sal_scores: Tensor, cls_logits: Tensor | None = None
    ) -> SSNetOutput:
        saliency, background = sam_saliency(seg_logits, sal_scores)
        return SSNetOutput(seg_logits, coarse_logits, sal_scores, saliency, background, cls_logits)


class SSNetStage1(_SSNetBase):
    """SSNet stage-1 network (official ``JLSFCN``): FCN head on a stride-16 backbone + SAM.

    Head (docs/method_notes.md §1.2, all new layers N(0, 0.02), transposed convs bilinear):
    ``s32 = conv1x1(f32)``; ``s16 = conv1x1(f16) + s32``; ``s8 = conv1x1(f8) + up2(s16)`` (ConvTranspose k4 s2
    p1); ``Z = up8(s8)`` (ConvTranspose k16 s8 p4). SAM: ``v = sigmoid(Conv_k16(f32))``.

    Works for any input size divisible by 16; other sizes are cropped/padded internally so that ``Z`` has
    exactly the input size.

    Args:
        num_classes: ``C`` including background (21 VOC).
        backbone: ``"densenet169"`` (official; any timm DenseNet gets the same surgery) or any timm model that
            takes ``output_stride=16`` with ``features_only`` (its stride-8 map, its last stride-16 map before
            the deepest, and the deepest map are tapped).
        pretrained: timm hub ImageNet weights (only when no ``checkpoint_path``).
        checkpoint_path: local backbone weight file (offline clusters).
        fixed_input_size: ``None`` (default: ``AdaptiveAvgPool2d(16)`` before a kernel-16 SAM conv, any input
            size) or the one accepted input size, without the pool; the SAM kernel then spans the whole deepest
            map (``fixed_input_size / 16``; ``256`` = the official layer exactly). Must be a multiple of 16.

    Input: ``(B, 3, H, W)`` ImageNet-normalised images. Output: :class:`SSNetOutput` (``cls_logits=None``).
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "densenet169",
        pretrained: bool = False,
        checkpoint_path: str | Path | None = None,
        fixed_input_size: int | None = None,
    ) -> None:
        super().__init__(num_classes, fixed_input_size, output_stride=16)
        self.backbone = build_ssnet_backbone(backbone, 16, pretrained=pretrained, checkpoint_path=checkpoint_path)
        self.tap_indices = _stage1_taps(backbone, tuple(self.backbone.feature_strides))
        c8, c16, c32 = (int(self.backbone.feature_channels[i]) for i in self.tap_indices)
        self.pred_coarse = nn.Conv2d(c32, num_classes, kernel_size=1)
        self.pred_16 = nn.Conv2d(c16, num_classes, kernel_size=1)
        self.pred_8 = nn.Conv2d(c8, num_classes, kernel_size=1)
        self.up2 = nn.ConvTranspose2d(num_classes, num_classes, kernel_size=4, stride=2, padding=1)
        self.up8 = nn.ConvTranspose2d(num_classes, num_classes, kernel_size=16, stride=8, padding=4)
        self.sam = SaliencyAggregation(c32, num_classes, self.sam_kernel_size, adaptive=fixed_input_size is None)
        _init_new_layers(*self._head_modules())

    def forward(self, x: Tensor) -> SSNetOutput:
        """``(B, 3, H, W)`` -> :class:`SSNetOutput` with ``coarse_logits`` ``s32`` ``(B, C, ~H/16, ~W/16)``."""
        self._check_input(x)
        features = self.backbone(x)
        f8, f16, f32 = (features[i] for i in self.tap_indices)
        coarse = self.pred_coarse(f32)
        s16 = self.pred_16(f16) + _match_size(coarse, f16.shape[-2:])
        s8 = self.pred_8(f8) + _match_size(self.up2(s16), f8.shape[-2:])
        seg_logits = _match_size(self.up8(s8), x.shape[-2:])
        return self._output(seg_logits, coarse, self.sam(f32))


class SSNetStage2(_SSNetBase):
    """SSNet stage-2 network (official ``JLSDL``): stride-8 backbone, summed ASPP head, SAM and a classifier.

    Head (docs/method_notes.md §1.6): four parallel 3×3 convs (dilation = padding = 6, 12, 18, 24) on the deepest map,
    **summed**, then ConvTranspose k16 s8 p4 (bilinear init) to the input size. SAM: ``Conv_k32`` (adaptive pool
    to 32×32 in front unless ``fixed_input_size``). Classifier: global average pool -> ``Linear(c, C)``.

    Args: as :class:`SSNetStage1`; non-DenseNet timm backbones must take ``output_stride=8``. With
    ``fixed_input_size`` the SAM kernel is ``fixed_input_size / 8`` (``256`` -> 32, official) and no pool is used.
    ``aspp_dilations``: the four branches' dilations (official ``(6, 12, 18, 24)`` for 256-px inputs, i.e. 32×32
    maps). On a 16×16 map (128 px) dilations 18 and 24 reach no neighbour and those branches are 1×1 convs;
    ``(3, 6, 9, 12)`` scales them with the map (measured to tie the official head on the demo, which keeps it).

    Input: ``(B, 3, H, W)`` ImageNet-normalised images. Output: :class:`SSNetOutput` with ``coarse_logits``
    ``(B, C, ~H/8, ~W/8)`` and ``cls_logits`` ``(B, C)``.
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "densenet169",
        pretrained: bool = False,
        checkpoint_path: str | Path | None = None,
        fixed_input_size: int | None = None,
        aspp_dilations: Sequence[int] = STAGE2_DILATIONS,
    ) -> None:
        super().__init__(num_classes, fixed_input_size, output_stride=8)
        if len(aspp_dilations) < 1 or any(int(d) < 1 for d in aspp_dilations):
            raise ValueError(f"aspp_dilations must be positive integers, got {list(aspp_dilations)}")
        self.backbone = build_ssnet_backbone(backbone, 8, pretrained=pretrained, checkpoint_path=checkpoint_path)
        strides = tuple(self.backbone.feature_strides)
        if strides[-1] != 8:
            raise ValueError(f"backbone '{backbone}' gives feature strides {list(strides)}; SSNet stage 2 needs 8")
        channels = int(self.backbone.feature_channels[-1])
        self.aspp = nn.ModuleList(
            nn.Conv2d(channels, num_classes, kernel_size=3, padding=int(d), dilation=int(d)) for d in aspp_dilations
        )
        self.up8 = nn.ConvTranspose2d(num_classes, num_classes, kernel_size=16, stride=8, padding=4)
        self.sam = SaliencyAggregation(channels, num_classes, self.sam_kernel_size, adaptive=fixed_input_size is None)
        self.classifier = nn.Linear(channels, num_classes)
        _init_new_layers(*self._head_modules())

    def forward(self, x: Tensor) -> SSNetOutput:
        """``(B, 3, H, W)`` -> :class:`SSNetOutput` (with ``cls_logits``)."""
        self._check_input(x)
        feature = self.backbone(x)[-1]
        coarse = self.aspp[0](feature)
        for branch in self.aspp[1:]:
            coarse = coarse + branch(feature)
        seg_logits = _match_size(self.up8(coarse), x.shape[-2:])
        cls_logits = self.classifier(feature.mean(dim=(2, 3)))
        return self._output(seg_logits, coarse, self.sam(feature), cls_logits)


def _stage1_taps(name: str, strides: tuple[int, ...]) -> tuple[int, int, int]:
    """Indices of (stride-8 map, last stride-16 map before the deepest, deepest stride-16 map)."""
    deepest = len(strides) - 1
    at8 = [i for i, s in enumerate(strides) if s == 8]
    at16 = [i for i, s in enumerate(strides[:deepest]) if s == 16]
    if strides[deepest] != 16 or not at8 or not at16:
        raise ValueError(
            f"backbone '{name}' gives feature strides {list(strides)} at output_stride=16; SSNet stage 1 needs a "
            "stride-8 map, a stride-16 map and a deeper stride-16 map. Use a DenseNet or a timm CNN with dilation "
            "support (resnet*, convnext*, efficientnet*, regnet*)."
        )
    return at8[-1], at16[-1], deepest
