"""Config files that build on others: ``__base__``, the way mmsegmentation's ``_base_`` files compose.

An experiment file names the pieces it builds on and holds only what differs::

    # configs/voc_auxseg.yaml
    __base__: [model/auxsegnet_plus_r38.yaml, data/voc.yaml, trainer/gpu.yaml, logger/wandb.yaml]
    trainer:
      default_root_dir: runs/voc_auxseg

``wsss ... --config configs/voc_auxseg.yaml`` then reads as ``--config configs/model/auxsegnet_plus_r38.yaml
--config configs/data/voc.yaml ... --config <the rest of voc_auxseg.yaml>``: bases first, in order, each expanded
the same way (paths relative to the file that names them), later files win, and a list (e.g. the trainer's
callbacks) is replaced as a whole. Files without ``__base__`` pass through untouched, so any config also composes
by hand with repeated ``--config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["BASE_KEY", "ConfigError", "expand_config_args", "expand_config_file", "load_config"]

BASE_KEY = "__base__"
_FLAGS = ("--config", "-c")


class ConfigError(ValueError):
    """A config file that cannot be composed (a missing base, a cycle, not a mapping)."""


def expand_config_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> list[str]:
    """The ``--config`` values that ``path`` stands for: its bases' (recursively), then its own content.

    Returns:
        file paths and, for a file with bases, its content without ``__base__`` as a YAML string (last).
    """
    path = Path(path)
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise ConfigError(f"config files include each other: {cycle}")
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        where = f" (named in {_chain[-1]} {BASE_KEY})" if _chain else ""
        raise ConfigError(f"cannot read config file {path}{where}: {error.strerror or error}") from None
    if not isinstance(data, dict) or BASE_KEY not in data:
        return [str(path)]
    bases = data.pop(BASE_KEY)
    bases = [bases] if isinstance(bases, str) else list(bases or [])
    values: list[str] = []
    for base in bases:
        values += expand_config_file(path.parent / str(base), (*_chain, resolved))
    if data:
        values.append(yaml.safe_dump(data, sort_keys=False))
    return values


def expand_config_args(argv: list[str]) -> list[str]:
    """``argv`` with every ``--config FILE`` / ``--config=FILE`` / ``-c FILE`` expanded by :func:`expand_config_file`.

    Values that are not files (a YAML string, a typo) are left for the parser to report.
    """
    out: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        flag, value = None, None
        if arg in _FLAGS and index + 1 < len(argv):
            flag, value, index = arg, argv[index + 1], index + 2
        elif arg.startswith("--config="):
            flag, value, index = "--config", arg.split("=", 1)[1], index + 1
        else:
            out.append(arg)
            index += 1
            continue
        if Path(value).is_file():
            for expanded in expand_config_file(value):
                out += [flag, expanded]
        else:
            out += [flag, value]
    return out


def _is_class_spec(value: Any) -> bool:
    return isinstance(value, dict) and bool({"class_path", "init_args"} & set(value))


def _merge(base: dict[str, Any], delta: dict[str, Any], top: bool = False) -> dict[str, Any]:
    """jsonargparse's composition: top-level sections and class specs (``class_path`` / ``init_args``) merge key by
    key; every other value — scalars, lists, plain mappings such as ``saliency_test_sets`` — is replaced."""
    merged = dict(base)
    for key, value in delta.items():
        old = merged.get(key)
        mergeable = isinstance(value, dict) and isinstance(old, dict)
        if mergeable and (top or key == "init_args" or (_is_class_spec(value) and _is_class_spec(old))):
            merged[key] = _merge(old, value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path) -> dict[str, Any]:
    """One config file with its bases merged into a plain dict as the parser composes them (see :func:`_merge`), e.g.
    to derive a variant of an experiment in a script; ``--print_config`` gives the parser's full view."""
    merged: dict[str, Any] = {}
    for value in expand_config_file(path):
        data = yaml.safe_load(Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value) or {}
        merged = _merge(merged, data, top=True)
    return merged
