"""Which checkpoint ``--ckpt_path`` means, said out loud, and checked against the model before anything loads.

* ``last``: the newest checkpoint of the run (``last*.ckpt`` in its checkpoint folder — ``last.ckpt``, the refresh
  checkpoint ``last-refresh.ckpt`` — and SLURM's ``hpc_ckpt_<n>.ckpt`` in its root), by modification time: after an
  interrupt that is the state the run stopped in, whichever file holds it;
* a path: that file, which must exist;
* ``best`` / ``hpc`` / none: Lightning's meaning.

The chosen file is printed with what it holds (stage, epoch, step), and its weights are compared with the model's:
a checkpoint of another method or of another number of classes is refused in one line naming the file and the fix,
before Lightning loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsss_lightning.models.checkpoint import CheckpointError

__all__ = ["CheckpointMismatchError", "check_compatible", "describe", "resolve", "run_checkpoints"]


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose weights do not fit the configured model."""


def run_checkpoints(folder: Path, root: Path) -> list[Path]:
    """The run's resumable checkpoints, oldest first: ``last*.ckpt`` in ``folder``, ``hpc_ckpt_*.ckpt`` in ``root``."""
    found = [*folder.glob("last*.ckpt"), *root.glob("hpc_ckpt_*.ckpt")] if folder.is_dir() or root.is_dir() else []
    return sorted((p for p in found if p.is_file()), key=lambda p: p.stat().st_mtime)


def _load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 (any unreadable file gets the same one-line answer)
        raise CheckpointError(
            f"{path} is not a readable Lightning checkpoint ({type(error).__name__}: {str(error)[:200]}); "
            "pass another --ckpt_path"
        ) from None


def describe(checkpoint: dict[str, Any]) -> str:
    """``stage s, epoch e, step n`` of a Lightning checkpoint (the stage from the stage callback's state)."""
    parts = []
    for key, state in checkpoint.get("callbacks", {}).items():
        if key.startswith("PseudoLabelRefresh") and isinstance(state, dict) and "stage" in state:
            stage = int(state["stage"])
            parts.append("warm-up" if stage < 0 else f"stage {stage}")
            if state.get("pending"):
                parts.append(f"inside the stage-{state['pending']['stage']} label refresh")
    parts += [f"epoch {checkpoint.get('epoch', '?')}", f"step {checkpoint.get('global_step', '?')}"]
    return ", ".join(parts)


def check_compatible(model: nn.Module, checkpoint: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose ``state_dict`` does not fit ``model`` (names and shapes)."""
    saved = checkpoint.get("state_dict")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds no model weights (no 'state_dict'); pass a checkpoint written by wsss fit")
    expected = model.state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [
        f"{k} {tuple(saved[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in saved and tuple(saved[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    details = []
    if shapes:
        details.append(f"{len(shapes)} shape(s) differ, e.g. {shapes[0]}")
    if missing:
        details.append(f"{len(missing)} weight(s) missing, e.g. {missing[0]}")
    if unexpected:
        details.append(f"{len(unexpected)} unknown weight(s), e.g. {unexpected[0]}")
    raise CheckpointMismatchError(
        f"{path} does not fit this model ({'; '.join(details)}): it was trained with another method, network or "
        "number of classes. Pass the config it was trained with (its run folder holds config.yaml), or another "
        "--ckpt_path"
    )


def resolve(
    ckpt_path: str | Path | None,
    folder: Path,
    root: Path,
    model: nn.Module | None,
    allow_missing_last: bool,
    echo: Any = print,
) -> str | Path | None:
    """The file ``ckpt_path`` stands for (see the module docstring), checked against ``model``.

    Args:
        folder: the run's checkpoint folder; root: its ``default_root_dir``.
        allow_missing_last: ``last`` without any checkpoint starts from scratch (``fit``) instead of failing.
    """
    if ckpt_path is None or ckpt_path in ("best", "hpc", "registry"):
        return ckpt_path
    if ckpt_path == "last":
        candidates = run_checkpoints(folder, root)
        if not candidates:
            if allow_missing_last:
                echo(f"wsss: --ckpt_path last: no checkpoint in {folder} yet; starting from the beginning")
                return None
            raise FileNotFoundError(f"--ckpt_path last: no checkpoint in {folder} (nor hpc_ckpt_*.ckpt in {root})")
        path = candidates[-1]
    else:
        path = Path(ckpt_path)
        if not path.is_file():
            existing = run_checkpoints(folder, root)
            hint = (
                f"checkpoints of this run: {', '.join(str(p) for p in existing)}"
                if existing
                else (f"no checkpoint in {folder} either")
            )
            raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such file ({hint})")
    checkpoint = _load(path)
    if model is not None:
        check_compatible(model, checkpoint, path)
    echo(f"wsss: checkpoint {path} ({describe(checkpoint)})")
    return path
