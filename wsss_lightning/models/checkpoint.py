"""Reading weight files safely and loading them into modules with a report instead of a silent ``strict=False``.

The official AuxSegNet code loads its initial weights with ``load_state_dict(strict=False)`` and never looks at
the result, so a wrong file trains from random weights without a word (docs/method_notes.md §7.2). Here every load goes
through :func:`load_into`, which returns a :class:`LoadReport` (loaded / missing / unexpected / shape-mismatched
keys) that callers log and check.

Files are read with ``torch.load(weights_only=True)`` by default (design §4: untrusted files are data, never
code); ``.safetensors`` files are read with ``safetensors``. Common wrappers are removed: a
``{"state_dict": ...}`` / ``{"model": ...}`` dict (Lightning, mmcv, DeiT-style files) and the key prefixes
``module.`` (DataParallel / DDP), ``model.`` (a LightningModule attribute) and ``backbone.``.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

DEFAULT_STRIP_PREFIXES: tuple[str, ...] = ("module.", "model.", "backbone.")
# Keys of a checkpoint dict that hold the actual state dict, tried in this order.
_WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model")
_SUMMARY_NAMES = 8  # how many key names a summary line lists before "…"


class CheckpointError(RuntimeError):
    """A weight file cannot be read or does not fit the model; the message names the file and the fix."""


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a module.

    Attributes:
        source: where the weights came from (a file path or a description), for messages.
        loaded: module keys that received a tensor.
        missing: module keys the checkpoint did not provide (``num_batches_tracked`` counters are not listed:
            they carry no learned value and converted PSA/MXNet weights never have them).
        unexpected: checkpoint keys the module has no place for (e.g. the PSA classifier's ``fc8.weight`` when
            loading a backbone); their tensors are in ``unexpected_state`` so a caller can load them elsewhere.
        shape_mismatch: ``(key, checkpoint shape, module shape)`` for keys present in both with different
            shapes; these are not loaded.
        unexpected_state: the tensors of ``unexpected``, keyed by their (prefix-stripped) checkpoint names.
    """

    source: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    unexpected_state: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def complete(self) -> bool:
        """True when every module key was loaded (nothing missing, no shape mismatch)."""
        return not self.missing and not self.shape_mismatch

    def summary(self) -> str:
        """A few human-readable lines: counts, then the first names of each non-empty list."""
        total = len(self.loaded) + len(self.missing) + len(self.shape_mismatch)
        lines = [
            f"loaded {len(self.loaded)}/{total} module tensors from {self.source or 'a state dict'}: "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.shape_mismatch)} shape mismatch"
        ]
        if self.missing:
            lines.append(f"  missing: {_short_list(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected: {_short_list(self.unexpected)}")
        if self.shape_mismatch:
            items = [f"{key} (file {list(a)} vs model {list(b)})" for key, a, b in self.shape_mismatch]
            lines.append(f"  shape mismatch: {_short_list(items)}")
        return "\n".join(lines)


def _short_list(names: list[str]) -> str:
    shown = ", ".join(names[:_SUMMARY_NAMES])
    return shown + (f", … (+{len(names) - _SUMMARY_NAMES} more)" if len(names) > _SUMMARY_NAMES else "")


def _read_file(path: Path, weights_only: bool) -> object:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise CheckpointError(f"{path} is a .safetensors file: `pip install safetensors` to read it") from error
        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own SafetensorError (not importable by name everywhere)
            raise CheckpointError(f"{path} cannot be read as a safetensors file ({error})") from error
    try:
        # map to CPU: the module's load_state_dict copies onto whatever device the module lives on.
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as error:
        message = str(error)
        needed = re.search(r"GLOBAL (\S+)", message)
        if weights_only and needed:
            raise CheckpointError(
                f"{path} holds Python objects beyond tensors ({needed.group(1)}), so it cannot be read with "
                "weights_only=True. Only if you trust where this file comes from, load it with weights_only=False "
                "(the backbone's `weights_only: false` setting), or re-save just its state dict once: "
                "torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pth')"
            ) from error
        raise CheckpointError(
            f"{path} cannot be read as a PyTorch checkpoint ({_reason(message)}).{_hint(path)}"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint ({error}).{_hint(path)}") from error


def _reason(message: str) -> str:
    """The informative line of torch's long weights-only error (e.g. "Unsupported operand 110")."""
    tail = message.split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[0] if lines else message


def _hint(path: Path) -> str:
    if path.suffix != ".params":
        return " The file is truncated, corrupt, or not a torch.save / safetensors file."
    from wsss_lightning.models.mxnet_params import is_mxnet_params  # lazy: that module imports this one

    if is_mxnet_params(path):
        return (
            " It is an MXNet .params file: ResNet38 reads those directly; other models need a PyTorch state dict "
            "(e.g. from PSA's network/resnet38d.convert_mxnet_to_torch)."
        )
    return (
        " It is not an MXNet .params file either (no 0x112 magic): it is truncated or corrupt. Intact MXNet "
        "ResNet-38 weights are read directly by ResNet38, or converted with PSA's "
        "network/resnet38d.convert_mxnet_to_torch."
    )


def _unwrap(obj: object, path: Path) -> Mapping[str, object]:
    """Descend into ``{"state_dict": ...}``-style wrappers until a mapping with tensor values is found."""
    while isinstance(obj, Mapping):
        # A wrapper key wins over stray tensors next to it (e.g. {"state_dict": ..., "best_score": tensor}).
        inner = next((obj[key] for key in _WRAPPER_KEYS if isinstance(obj.get(key), Mapping)), None)
        if inner is not None:
            obj = inner
        elif any(isinstance(value, Tensor) for value in obj.values()):
            return obj
        else:
            break
    keys = list(obj)[:10] if isinstance(obj, Mapping) else []
    raise CheckpointError(
        f"{path} does not contain a state dict (a dict of tensors); found {type(obj).__name__}"
        + (f" with keys {keys}" if keys else "")
        + f". Expected a plain state dict or a dict with one of {list(_WRAPPER_KEYS)}."
    )


def strip_prefixes(state: Mapping[str, Tensor], prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """Remove any of ``prefixes`` from the front of every key, repeatedly (``module.model.x`` -> ``x``).

    Raises:
        CheckpointError: two keys become the same name (e.g. ``backbone.x`` and ``x``).
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in prefixes:
                if name.startswith(prefix):
                    name = name[len(prefix) :]
                    stripped = True
        if name in out:
            raise CheckpointError(
                f"checkpoint keys collide after removing the prefixes {list(prefixes)}: '{key}' -> '{name}'; "
                "pass strip_prefixes=() and select the keys yourself"
            )
        out[name] = value
    return out


def load_state_dict_file(
    path: str | Path,
    weights_only: bool = True,
    strip: tuple[str, ...] = DEFAULT_STRIP_PREFIXES,
) -> dict[str, Tensor]:
    """Read a weight file into a flat ``{name: tensor}`` dict on the CPU.

    Args:
        path: a ``torch.save`` file (``.pth``/``.pt``/``.ckpt``/``.bin``) or a ``.safetensors`` file.
        weights_only: passed to ``torch.load``; ``True`` refuses pickled Python objects (the safe default).
        strip: key prefixes removed from the front of every key (see :func:`strip_prefixes`).

    Returns:
        the state dict with wrappers and prefixes removed; non-tensor entries are dropped (with a warning).

    Raises:
        CheckpointError: the file is missing, unreadable, needs pickle while ``weights_only=True``, or holds no
            state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist; check the checkpoint_path setting")
    state = _unwrap(_read_file(path, weights_only), path)
    tensors = {str(key): value for key, value in state.items() if isinstance(value, Tensor)}
    dropped = [str(key) for key, value in state.items() if not isinstance(value, Tensor)]
    if dropped:
        log.warning("%s: ignoring %d non-tensor entries: %s", path, len(dropped), _short_list(dropped))
    return strip_prefixes(tensors, strip)


def load_into(
    module: nn.Module,
    state: Mapping[str, Tensor],
    prefix: str = "",
    source: str = "",
    check_as: str | None = None,
    strict: bool = False,
) -> LoadReport:
    """Copy the matching tensors of ``state`` into ``module`` and report what matched.

    Only keys present in both with equal shapes are loaded (dtype is converted by ``load_state_dict``).
    Without ``check_as`` nothing raises for missing, unexpected or mismatched keys: the caller decides with
    the report.

    Args:
        module: the target module.
        state: a flat state dict (e.g. from :func:`load_state_dict_file`).
        prefix: only keys starting with ``prefix`` are candidates for ``module``, with the prefix removed
            (``prefix="backbone."`` loads a network's backbone part); other keys are reported as unexpected
            under their full names.
        source: a description for the report (usually the file path).
        check_as: the module's name for :func:`check_report`, run *before* copying, so a refused file
            leaves the module untouched; ``None`` skips the check.
        strict: passed to :func:`check_report`.

    Returns:
        the :class:`LoadReport`.

    Raises:
        CheckpointError: from :func:`check_report` when ``check_as`` is given.
    """
    target = module.state_dict()
    to_load: dict[str, Tensor] = {}
    report = LoadReport(source=source)
    for key, value in state.items():
        name = key[len(prefix) :] if key.startswith(prefix) else None
        if name is None or name not in target:
            report.unexpected.append(key)
            report.unexpected_state[key] = value
        elif tuple(value.shape) != tuple(target[name].shape):
            report.shape_mismatch.append((name, tuple(value.shape), tuple(target[name].shape)))
        else:
            to_load[name] = value
    mismatched = {key for key, _, _ in report.shape_mismatch}
    report.loaded = [key for key in target if key in to_load]
    report.missing = [
        key
        for key in target
        if key not in to_load and key not in mismatched and not key.endswith("num_batches_tracked")
    ]
    if check_as is not None:
        check_report(report, check_as, strict=strict)
    if to_load:
        module.load_state_dict(to_load, strict=False)
    return report


def check_report(report: LoadReport, what: str, strict: bool) -> None:
    """Log ``report`` and raise when it shows that the wrong file was given.

    Args:
        report: the result of :func:`load_into`.
        what: the module's name for messages (e.g. ``"ResNet38"``).
        strict: also raise when some module keys are missing or have the wrong shape.

    Raises:
        CheckpointError: no module key was loaded (always), or the load is incomplete and ``strict``.
    """
    if not report.loaded:
        raise CheckpointError(
            f"no {what} weight matched in {report.source or 'the state dict'}: this is the wrong file for {what} "
            f"(training would silently start from random weights).\n{report.summary()}"
        )
    if report.complete:
        log.info("%s: %s", what, report.summary())
        return
    if strict:
        raise CheckpointError(
            f"{report.source or 'the state dict'} does not cover all {what} weights; pass strict=False to load "
            f"it partially.\n{report.summary()}"
        )
    log.warning("%s: partial load, the rest keeps its initialisation: %s", what, report.summary())
