"""Writing a pseudo-label set: CPU jobs in a process pool, atomic files, a manifest with checksums, resume.

Layout of one set (e.g. ``<run>/pseudo_labels/stage1``)::

    seg/<id>.png            palette PNG, class indices, 255 = uncertain
    sal/<id>.png            grey PNG saliency pseudo-label (mode L), when the method updates saliency
    manifest.rank<r>.jsonl  one line per finished id, appended while rank r works (crash-safe)
    manifest.json           the merged manifest: config, config hash, sha256 of every file

A set is *resumable*: :meth:`PseudoLabelWriter.completed` reads the manifests, keeps only entries written
with the same config hash whose files still exist and match their checksums, and the caller generates the
rest. A damaged or stale file is therefore rewritten, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from wsss_lightning.data.io import atomic_write_text
from wsss_lightning.pseudo.crf import CRFPool

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


def config_hash(config: Mapping[str, Any]) -> str:
    """A short, order-independent hash of a JSON-able config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _read_records(out_dir: Path, expected_hash: str) -> tuple[dict[str, dict[str, str]], dict[str, list]]:
    """Entries (name -> {relative file: sha256}) and label statistics (name -> list of
    :func:`~wsss_lightning.pseudo.health.label_statistics`) from the merged manifest and every rank's shard."""
    entries: dict[str, dict[str, str]] = {}
    stats: dict[str, list] = {}
    merged = out_dir / MANIFEST
    if merged.is_file():
        try:
            data = json.loads(merged.read_text())
            if data.get("config_hash") == expected_hash:
                entries.update(data.get("files", {}))
                stats.update(data.get("stats", {}))
        except (json.JSONDecodeError, OSError):
            log.warning("%s is unreadable; regenerating its entries", merged)
    for shard in sorted(out_dir.glob("manifest.rank*.jsonl")):
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


def _read_entries(out_dir: Path, expected_hash: str) -> dict[str, dict[str, str]]:
    """Entries (name -> {relative file: sha256}) from the merged manifest and every rank's shard."""
    return _read_records(out_dir, expected_hash)[0]


def verified_entries(out_dir: Path, expected_hash: str, verify: bool = True) -> dict[str, dict[str, str]]:
    """Manifest entries whose files exist (and, with ``verify``, match their checksums)."""
    good = {}
    for name, files in _read_entries(out_dir, expected_hash).items():
        ok = all(
            (out_dir / rel).is_file() and (not verify or sha256_file(out_dir / rel) == digest)
            for rel, digest in files.items()
        )
        if ok:
            good[name] = files
        else:
            log.warning("pseudo-label %s in %s is missing or damaged; it will be rewritten", name, out_dir)
    return good


class PseudoLabelWriter:
    """Runs label jobs (CRF, fusion, PNG encoding, atomic writes) in a pool and records them in a manifest.

    Args:
        out_dir: the set's folder.
        config: everything that determines the labels (stage, thresholds, CRF preset, checkpoint step...);
            its hash decides whether existing files can be reused.
        rank: this process's rank (each rank appends to its own manifest shard).
        workers: CRF/encoding worker processes (0 = inline in this process).
        max_pending: bound on jobs in flight, so memory stays bounded on large datasets.
    """

    def __init__(
        self,
        out_dir: str | Path,
        config: Mapping[str, Any],
        rank: int = 0,
        workers: int = 0,
        max_pending: int | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.config = dict(config)
        self.config_hash = config_hash(self.config)
        self.rank = rank
        self.pool = CRFPool(workers)
        self.max_pending = max_pending or max(2, 2 * workers)
        self.pending: list[Future] = []
        self.written = 0
        self._shard = open(self.out_dir / f"manifest.rank{rank}.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def completed(self, verify: bool = True) -> set[str]:
        """Names already written with this config (files present and intact)."""
        return set(verified_entries(self.out_dir, self.config_hash, verify))

    def submit(self, fn: Callable[[Any], dict[str, Any]], job: Any) -> None:
        """Queue ``fn(job)``; it must write its files under ``out_dir`` and return ``{"name", "files"}``."""
        self.pending.append(self.pool.submit(fn, job))
        if len(self.pending) >= self.max_pending:
            self._collect(block_on_first=True)
        else:
            self._collect(block_on_first=False)

    def _record(self, result: Mapping[str, Any]) -> None:
        record = {"name": result["name"], "files": result["files"], "config_hash": self.config_hash}
        if "stats" in result:
            record["stats"] = result["stats"]
        line = json.dumps(record)
        self._shard.write(line + "\n")
        self._shard.flush()
        self.written += 1

    def _collect(self, block_on_first: bool) -> None:
        remaining = []
        for index, future in enumerate(self.pending):
            if (block_on_first and index == 0) or future.done():
                self._record(future.result())
            else:
                remaining.append(future)
        self.pending = remaining

    def close(self) -> int:
        """Wait for every job, flush the shard; returns how many items this writer wrote."""
        try:
            for future in self.pending:
                self._record(future.result())
            self.pending = []
        finally:
            self._shard.flush()
            os.fsync(self._shard.fileno())
            self._shard.close()
            self.pool.close()
        return self.written

    def __enter__(self) -> PseudoLabelWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._shard.closed:
            self.close()


def finalize_manifest(
    out_dir: str | Path, config: Mapping[str, Any], expected: Iterable[str], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Merge the shards into ``manifest.json`` (rank 0, after every rank finished). Raises if names are missing.

    The manifest holds ``files`` (name -> {relative path: sha256}) and ``stats`` (name -> the label statistics of
    the maps it wrote, for the set's health figures; absent for entries of older sets)."""
    out_dir = Path(out_dir)
    digest = config_hash(config)
    entries, stats = _read_records(out_dir, digest)
    expected = list(expected)
    missing = [name for name in expected if name not in entries]
    if missing:
        raise RuntimeError(f"{len(missing)} pseudo-labels missing in {out_dir} (e.g. {missing[:3]})")
    manifest = {
        "format": MANIFEST_FORMAT,
        "config": dict(config),
        "config_hash": digest,
        "count": len(expected),
        "files": {name: entries[name] for name in expected},
        "stats": {name: stats[name] for name in expected if name in stats},
        **dict(extra or {}),
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True, default=str))
    for shard in out_dir.glob("manifest.rank*.jsonl"):
        shard.unlink()
    return manifest
