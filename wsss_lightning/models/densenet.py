"""Dilated DenseNet backbones for SSNet (docs/method_notes.md §1.2 stage 1, §1.6 stage 2).

timm's DenseNet has no ``output_stride`` argument, so the surgery of the official ``jsws`` code is done here on
timm's ``features`` (same module names as torchvision: conv0, norm0, pool0, denseblock1, transition1, …,
denseblock4, norm5):

* output stride 16 (stage 1): ``transition3``'s pool removed, every 3×3 conv of ``denseblock4`` dilated by 2;
* output stride 8 (stage 2): also ``transition2``'s pool removed and ``denseblock3`` dilated by 2, while
  ``denseblock4`` is dilated by 4.

timm fuses the ReLU that torchvision applies after ``features`` into ``norm5`` (``BatchNormAct2d``); SSNet uses the
map *before* that ReLU, so ``norm5``'s activation is removed.
"""

from __future__ import annotations

import re
from pathlib import Path

import timm
from torch import Tensor, nn

from wsss_lightning.models.checkpoint import LoadReport, check_report, load_into, load_state_dict_file

__all__ = ["DilatedDenseNet", "is_timm_densenet"]

# Per output stride: the dilation of each dense block's 3×3 convs, and the transitions whose pool is removed.
_DILATIONS: dict[int, dict[str, int]] = {16: {"denseblock4": 2}, 8: {"denseblock3": 2, "denseblock4": 4}}
_REMOVED_POOLS: dict[int, tuple[str, ...]] = {16: ("transition3",), 8: ("transition2", "transition3")}
# The two transitions whose 1×1 conv outputs SSNet taps (before their pool): f8 and f16 of jls_fcn.py.
_TAPPED_TRANSITIONS = ("transition2", "transition3")
# Old torchvision DenseNet files name layers "norm.1" instead of "norm1" (torchvision fixes this when loading).
_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def is_timm_densenet(name: str) -> bool:
    """True when ``name`` (optionally with a ``.tag``) is one of timm's DenseNet models (densenet121/169/…)."""
    return name.split(".")[0] in timm.list_models(module="densenet")


def _dilate(block: nn.Module, dilation: int) -> None:
    """Give every 3×3 conv of ``block`` the dilation and padding ``dilation`` (spatial size preserved)."""
    for module in block.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            module.dilation = (dilation, dilation)
            module.padding = (dilation, dilation)


class DilatedDenseNet(nn.Module):
    """A timm DenseNet with the SSNet surgery, returning the three maps SSNet taps.

    Follows the backbone contract of :class:`~wsss_lightning.models.timm_backbone.TimmBackbone`.

    Args:
        name: a timm DenseNet (``"densenet169"`` as in SSNet; densenet121/161/201 work too).
        output_stride: 16 (SSNet stage 1) or 8 (stage 2).
        pretrained: load timm's ImageNet weights from the hub (ignored when ``checkpoint_path`` is set). For
            densenet169 these are torchvision's weights (``densenet169.tv_in1k``), as in the official code.
        checkpoint_path: a local weight file (timm or torchvision DenseNet state dict, old torchvision key names
            included, or a file of this backbone / of an SSNet network); loaded offline, every backbone tensor
            must be found (a wrong file raises :class:`~wsss_lightning.models.checkpoint.CheckpointError`).

    Attributes:
        feature_channels: channels of the returned maps, e.g. ``(256, 640, 1664)`` for densenet169.
        feature_strides: their strides: ``(8, 16, 16)`` at output stride 16, ``(8, 8, 8)`` at 8.
        out_channels: ``feature_channels[-1]``.
        features: timm's ``features`` sequence (state-dict keys ``features.*``, as torchvision).
        load_report: the report of the ``checkpoint_path`` load, else ``None``.
    """

    def __init__(
        self,
        name: str = "densenet169",
        output_stride: int = 16,
        pretrained: bool = False,
        checkpoint_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        if output_stride not in _DILATIONS:
            raise ValueError(f"DilatedDenseNet supports output_stride 16 or 8, got {output_stride}")
        if not is_timm_densenet(name):
            raise ValueError(f"'{name}' is not a timm DenseNet; choose one of {timm.list_models(module='densenet')}")
        self.name = name
        self.output_stride = output_stride
        download = pretrained and checkpoint_path is None
        try:
            model = timm.create_model(name, pretrained=download)
        except (OSError, RuntimeError, ValueError) as error:
            if not download:
                raise
            raise RuntimeError(
                f"could not get pretrained weights for '{name}' from the timm hub ({error}). Offline? Download the "
                "weights elsewhere and pass checkpoint_path=<file>, or use pretrained=False."
            ) from error
        self.features = model.features  # the classifier is not needed
        for transition in _REMOVED_POOLS[output_stride]:
            getattr(self.features, transition).pool = nn.Identity()
        for block, dilation in _DILATIONS[output_stride].items():
            _dilate(getattr(self.features, block), dilation)
        if hasattr(self.features.norm5, "act"):
            self.features.norm5.act = nn.Identity()

        self.feature_channels: tuple[int, ...] = (
            int(self.features.transition2.conv.out_channels),
            int(self.features.transition3.conv.out_channels),
            int(self.features.norm5.num_features),
        )
        self.feature_strides: tuple[int, ...] = (8, 16, 16) if output_stride == 16 else (8, 8, 8)
        self.out_channels: int = self.feature_channels[-1]

        self.load_report: LoadReport | None = None
        if checkpoint_path is not None:
            self.load_report = self.load_checkpoint(checkpoint_path)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Run the dilated DenseNet.

        Args:
            x: ``(B, 3, H, W)`` ImageNet-normalised images.

        Returns:
            ``[t2, t3, final]``: the 1×1 conv outputs of ``transition2`` and ``transition3`` (before their pools)
            and the ``norm5`` output (no ReLU), ``(B, feature_channels[i], ~H / s_i, ~W / s_i)`` with
            ``s = feature_strides`` (sizes rounded as the convs and pools do for sizes not divisible by 16).
        """
        taps: list[Tensor] = []
        for name, module in self.features.named_children():
            if name in _TAPPED_TRANSITIONS:
                x = module.conv(module.norm(x))
                taps.append(x)
                x = module.pool(x)
            else:
                x = module(x)
        return [*taps, x]

    def load_checkpoint(self, path: str | Path) -> LoadReport:
        """Load a local DenseNet weight file by key (classifier keys are ignored); raise unless complete."""
        state = load_state_dict_file(path)
        state = {_LEGACY_KEY.sub(r"\1\2", key): value for key, value in state.items()}
        report = load_into(self, state, source=str(path))
        check_report(report, f"DilatedDenseNet('{self.name}')", strict=True)
        return report
