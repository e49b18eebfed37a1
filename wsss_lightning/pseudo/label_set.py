"""One pseudo-label set on disk: its layout, its manifest, its kinds of files. The only place that spells them.

Layout of a set (e.g. ``<run>/pseudo_labels/stage1``)::

    seg/<name>.png           palette PNG, class indices, 255 = uncertain               (every set)
    sal/<name>.png           grey PNG (mode L) saliency pseudo-label                    (AuxSegNet label updates)
    images/<name>.png        the (augmented) image the label belongs to                 (sets of copies: SSNet)
    gt/<name>.png            the ground truth warped like that image, for scoring       (sets of copies, scored ids)
    manifest.rank<r>.jsonl   one line per finished entry, appended while rank r works (crash-safe)
    manifest.json            the merged manifest: layout, config and its hash, sha256 of every file, label stats
    quality.json             the set's record: quality against GT, health figures, timing

A set is either **per image** (``<name>`` = a training id) or a set of **copies** (``<name>`` = ``<id>_<t>``, the
t-th augmented copy of training id ``<id>``, with its own image: SSNet's stage-2 data). The manifest says which
(``layout``); it is keyed by training id either way, an id counting as written when all its files are.

Entries are *resumable*: :meth:`LabelSet.done` keeps only entries written with the same config hash whose files
still exist and match their checksums, so a damaged or stale file is rewritten, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from wsss_lightning.data.io import atomic_write_text

__all__ = ["LabelKind", "LabelLayout", "LabelSet", "config_hash", "sha256_file"]

log = logging.getLogger(__name__)

#: The kinds of files a set may hold, each in the folder of the same name.
LabelKind = Literal["seg", "sal", "images", "gt"]
KINDS: tuple[LabelKind, ...] = ("seg", "sal", "images", "gt")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2
QUALITY = "quality.json"
SHARD_GLOB = "manifest.rank*.jsonl"


def config_hash(config: Mapping[str, Any]) -> str:
    """A short, order-independent hash of a JSON-able config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def relative_path(kind: LabelKind, name: str) -> str:
    """``<kind>/<name>.png``: where a file of a set lives, relative to the set's folder."""
    return f"{kind}/{name}.png"


@dataclass(frozen=True)
class LabelLayout:
    """What a set holds: the kinds of maps, and whether its names are augmented copies ``<id>_<t>`` with images."""

    kinds: tuple[LabelKind, ...] = ("seg",)
    copies: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"kinds": list(self.kinds), "copies": self.copies}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabelLayout:
        return cls(kinds=tuple(data.get("kinds", ("seg",))), copies=bool(data.get("copies", False)))


class LabelSet:
    """A pseudo-label set folder (see the module docstring). Cheap to create; reads the disk only when asked.

    Args:
        root: the set's folder.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LabelSet('{self.root}')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSet) and self.root.resolve() == other.root.resolve()

    def __hash__(self) -> int:
        return hash(self.root.resolve())

    # ------------------------------------------------------------------------------------------ layout

    def folder(self, kind: LabelKind) -> Path:
        """The folder of one kind of file (``seg``, ``sal``, ``images``, ``gt``)."""
        if kind not in KINDS:
            raise ValueError(f"unknown label kind {kind!r}; one of {KINDS}")
        return self.root / kind

    def path(self, kind: LabelKind, name: str) -> Path:
        return self.root / relative_path(kind, name)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def quality_path(self) -> Path:
        return self.root / QUALITY

    def layout(self) -> LabelLayout:
        """The layout the manifest records (a set without a merged manifest: what its folders show)."""
        manifest = self.manifest()
        if manifest is not None and "layout" in manifest:
            return LabelLayout.from_json(manifest["layout"])
        kinds = tuple(k for k in KINDS if self.folder(k).is_dir()) or ("seg",)
        return LabelLayout(kinds=kinds, copies="images" in kinds)

    def has(self, kind: LabelKind) -> bool:
        return kind in self.layout().kinds

    def folder_if(self, kind: LabelKind) -> Path | None:
        """The folder of ``kind`` when the set holds that kind, else None."""
        return self.folder(kind) if self.has(kind) else None

    def files_of(self, training_id: str) -> dict[LabelKind, Path] | None:
        """The files of one training id: its own maps, or for a set of copies those of its first copy ``<id>_0``
        (``images`` and, where written, ``gt``). None when the id has no label in the set."""
        layout = self.layout()
        name = f"{training_id}_0" if layout.copies else training_id
        files = {kind: self.path(kind, name) for kind in layout.kinds if self.path(kind, name).is_file()}
        return files if "seg" in files else None

    # ------------------------------------------------------------------------------------------ manifest

    def manifest(self) -> dict[str, Any] | None:
        """The merged manifest, or None when there is none (yet) or it is unreadable."""
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def records(self, expected_hash: str) -> tuple[dict[str, dict[str, str]], dict[str, list]]:
        """Entries written with config hash ``expected_hash`` (name -> {relative file: sha256}) and their label
        statistics (name -> list of :func:`~wsss_lightning.pseudo.health.label_statistics`), from the merged
        manifest and every rank's shard."""
        entries: dict[str, dict[str, str]] = {}
        stats: dict[str, list] = {}
        manifest = self.manifest()
        if manifest is None and self.manifest_path.is_file():
            log.warning("%s is unreadable; regenerating its entries", self.manifest_path)
        if manifest is not None and manifest.get("config_hash") == expected_hash:
            entries.update(manifest.get("files", {}))
            stats.update(manifest.get("stats", {}))
        for shard in sorted(self.root.glob(SHARD_GLOB)):
            for line in shard.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if record.get("config_hash") == expected_hash:
                    entries[record["name"]] = record["files"]
                    if "stats" in record:
                        stats[record["name"]] = record["stats"]
        return entries, stats

    def done(self, config: Mapping[str, Any], verify: bool = True) -> dict[str, dict[str, str]]:
        """Entries already written with ``config`` whose files exist (and, with ``verify``, match their sha256)."""
        good = {}
        for name, files in self.records(config_hash(config))[0].items():
            intact = all(
                (self.root / rel).is_file() and (not verify or sha256_file(self.root / rel) == digest)
                for rel, digest in files.items()
            )
            if intact:
                good[name] = files
            else:
                log.warning("pseudo-label %s in %s is missing or damaged; it will be rewritten", name, self.root)
        return good

    def pending(self, config: Mapping[str, Any], names: list[str], verify: bool = True) -> list[int]:
        """Indices of ``names`` not yet written with ``config`` (intact files are kept)."""
        done = set(self.done(config, verify)) if self.root.is_dir() else set()
        return [index for index, name in enumerate(names) if name not in done]

    def shard_path(self, rank: int) -> Path:
        return self.root / f"manifest.rank{rank}.jsonl"

    def finalize(
        self,
        config: Mapping[str, Any],
        expected: Iterable[str],
        layout: LabelLayout,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Merge the shards into ``manifest.json`` (rank 0, after every rank finished); raises if names are
        missing. The manifest holds the ``layout``, ``files`` (name -> {relative path: sha256}) and ``stats``."""
        digest = config_hash(config)
        entries, stats = self.records(digest)
        expected = list(expected)
        missing = [name for name in expected if name not in entries]
        if missing:
            raise RuntimeError(f"{len(missing)} pseudo-labels missing in {self.root} (e.g. {missing[:3]})")
        manifest = {
            "format": MANIFEST_FORMAT,
            "layout": layout.to_json(),
            "config": dict(config),
            "config_hash": digest,
            "count": len(expected),
            "files": {name: entries[name] for name in expected},
            "stats": {name: stats[name] for name in expected if name in stats},
            **dict(extra or {}),
        }
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True, default=str))
        for shard in self.root.glob(SHARD_GLOB):
            shard.unlink()
        return manifest

    def copies_of(self, training_ids: Iterable[str], kind: LabelKind = "gt") -> list[str]:
        """The copy names ``<id>_<t>`` of ``training_ids`` that have a ``kind`` file, from the manifest."""
        manifest = self.manifest() or {}
        files = manifest.get("files", {})
        prefix = f"{kind}/"
        return [
            Path(rel).stem for name in training_ids for rel in sorted(files.get(name, {})) if rel.startswith(prefix)
        ]

    def write_quality(self, record: Mapping[str, Any]) -> None:
        atomic_write_text(self.quality_path, json.dumps(dict(record), indent=2))
