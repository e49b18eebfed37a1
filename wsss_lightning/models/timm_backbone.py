"""Any timm model as a multi-scale backbone (``features_only``), with offline weight loading.

Weights come from the Hugging Face hub only when ``pretrained=True`` and no ``checkpoint_path`` is given;
with ``checkpoint_path`` the model is built with random weights and the file is loaded by key through
:func:`~wsss_lightning.models.checkpoint.load_into`, so the load is reported and checked (a wrong file raises
instead of silently leaving random weights). Nothing downloads at import or construction otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
from torch import Tensor, nn

from wsss_lightning.models.checkpoint import LoadReport, load_into, load_state_dict_file
from wsss_lightning.models.resnet38 import freeze_batchnorm

__all__ = ["TimmBackbone"]

SUPPORTED_OUTPUT_STRIDES = (8, 16, 32)
# Named in errors: timm families whose constructors take output_stride (checked with timm 1.0.31).
DILATED_FAMILIES = "resnet*/resnext*/resnest*, regnet*, convnext*, efficientnet*/mobilenetv3*, xception*, nfnet*"


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model that returns NCHW maps, shallow to deep.

    Args:
        name: a timm model name, e.g. ``"resnet101"``, ``"convnext_tiny"``, ``"test_resnet"``.
        pretrained: download timm's pretrained weights from the hub (ignored when ``checkpoint_path`` is set).
        checkpoint_path: a local weight file (a timm/torch state dict, ``.pth``/``.bin``/``.safetensors``, of
            the full classification model or of this backbone); loaded offline at construction.
        output_stride: 8, 16 or 32; 8 and 16 dilate the last stages (models without dilation support raise
            unless the requested stride is their native one).
        out_indices: which feature levels to return (timm's ``out_indices``); ``None`` = all.
        freeze_bn: keep every BatchNorm in eval mode with frozen affine parameters, also across ``train()``.
        weights_only: read ``checkpoint_path`` with ``torch.load(weights_only=True)``.

    Attributes:
        feature_channels: channels of each returned map (timm ``feature_info``).
        feature_strides: output stride of each returned map (timm ``feature_info``).
        out_channels: ``feature_channels[-1]``.
        body: the timm ``FeatureListNet`` (its state-dict keys: timm's, with the first level of nested names
            joined by ``_``, e.g. ``stages_0.blocks.0.conv_dw.weight``).
        load_report: the :class:`LoadReport` of the ``checkpoint_path`` load, else ``None``.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        output_stride: int = 8,
        out_indices: tuple[int, ...] | None = None,
        freeze_bn: bool = False,
        weights_only: bool = True,
    ) -> None:
        super().__init__()
        if output_stride not in SUPPORTED_OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {SUPPORTED_OUTPUT_STRIDES}, got {output_stride}")
        self.name = name
        self.output_stride = output_stride
        self.freeze_bn = freeze_bn
        download = pretrained and checkpoint_path is None
        self.body = self._create(name, download, output_stride, out_indices)
        info = self.body.feature_info
        self.feature_channels: tuple[int, ...] = tuple(int(c) for c in info.channels())
        self.feature_strides: tuple[int, ...] = tuple(int(r) for r in info.reduction())
        self.out_channels: int = self.feature_channels[-1]
        # Some timm feature nets emit NHWC (output_fmt); our contract is NCHW.
        self._channels_last = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        self._check_strides(out_indices)

        self.load_report: LoadReport | None = None
        if checkpoint_path is not None:
            self.load_report = self.load_checkpoint(checkpoint_path, weights_only=weights_only)
        if freeze_bn:
            freeze_batchnorm(self)

    @staticmethod
    def _create(name: str, download: bool, output_stride: int, out_indices: tuple[int, ...] | None) -> nn.Module:
        kwargs: dict[str, Any] = {"features_only": True}
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        try:
            return _create_model(name, download, output_stride=output_stride, **kwargs)
        except TypeError as error:
            if "output_stride" not in str(error):
                raise
        # The constructor takes no output_stride: acceptable only if the native stride is the one asked for,
        # which _check_strides verifies. Build without weights first so a mismatch never downloads.
        model = _create_model(name, False, **kwargs)
        native = max(int(r) for r in model.feature_info.reduction())
        if native != output_stride:
            raise ValueError(
                f"timm model '{name}' cannot change its output stride (its constructor has no output_stride; "
                f"native stride {native}), so output_stride={output_stride} is impossible. Use "
                f"output_stride={native}, or a model family with dilation support: {DILATED_FAMILIES} "
                "(e.g. resnet101, convnext_tiny, efficientnet_b3, regnetx_032)."
                + (
                    " For SSNet's dilated DenseNet use wsss_lightning.models.densenet.DilatedDenseNet."
                    if "densenet" in name
                    else ""
                )
            )
        return _create_model(name, download, **kwargs) if download else model

    def _check_strides(self, out_indices: tuple[int, ...] | None) -> None:
        # A model may accept output_stride and still ignore it; the feature_info strides tell.
        deepest = max(self.feature_strides)
        if deepest > self.output_stride or (out_indices is None and deepest != self.output_stride):
            raise ValueError(
                f"timm model '{self.name}' reports feature strides {list(self.feature_strides)} for "
                f"output_stride={self.output_stride}: it does not honour the requested stride. Use "
                f"output_stride={deepest} or a model family with dilation support: {DILATED_FAMILIES}."
            )

    def train(self, mode: bool = True) -> TimmBackbone:
        """Set train/eval mode; with ``freeze_bn`` every BatchNorm stays in eval mode with frozen affine."""
        super().train(mode)
        if self.freeze_bn:
            freeze_batchnorm(self)
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` normalised image -> maps ``(B, feature_channels[i], H / s_i, W / s_i)``, shallow to
        deep (sizes rounded up as the convolutions do)."""
        features = list(self.body(x))
        if self._channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return features

    def load_checkpoint(self, path: str | Path, weights_only: bool = True, strict: bool = True) -> LoadReport:
        """Load a local weight file into the backbone and return what matched.

        Accepts timm's own key names (a state dict of the full classification model, e.g. timm's hub
        ``pytorch_model.bin`` / ``model.safetensors``) and this backbone's (``body.``-prefixed or
        ``FeatureListNet`` names). Classifier and unused deeper-stage keys come back as ``unexpected``.

        Args:
            path: the weight file.
            weights_only: ``torch.load(weights_only=...)``.
            strict: raise unless every backbone tensor loaded; with ``strict=False`` a partial load only warns.

        Raises:
            CheckpointError: no backbone key matched (a wrong file), or an incomplete load with ``strict``.
        """
        state = load_state_dict_file(path, weights_only=weights_only, strip=("module.", "model.", "backbone.", "body."))
        state = _to_feature_names(state, self.body.state_dict())
        return load_into(self.body, state, source=str(path), check_as=f"TimmBackbone('{self.name}')", strict=strict)


def _create_model(name: str, download: bool, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with an explanation when a requested hub download fails."""
    if not download:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as error:
        raise RuntimeError(
            f"could not get pretrained weights for timm model '{name}' from the hub ({error}). Offline? Download "
            "the weights elsewhere and pass checkpoint_path=<file> (e.g. --model.backbone.checkpoint_path), "
            "or use pretrained=False."
        ) from error


def _to_feature_names(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename timm model keys to ``FeatureListNet`` keys where needed.

    ``FeatureListNet`` flattens the first level of nested modules, joining names with ``_``
    (``stages.0.x`` -> ``stages_0.x``); keys already valid for the feature net are kept as they are.
    """
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        flat = key.replace(".", "_", 1)
        new_key = flat if key not in target and flat in target else key
        renamed[new_key] = value
    return renamed
