"""Writing a pseudo-label set: CPU jobs in a process pool, atomic files, a crash-safe manifest shard per rank.

The layout and the manifest belong to :class:`~wsss_lightning.pseudo.label_set.LabelSet`; this module runs the
jobs (CRF, fusion, PNG encoding, atomic writes) and appends one line per finished entry to this rank's shard
``manifest.rank<r>.jsonl``, so an interrupted set resumes where it stopped (``LabelSet.pending``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from wsss_lightning.pseudo.crf import CRFPool
from wsss_lightning.pseudo.label_set import LabelSet, config_hash

log = logging.getLogger(__name__)

__all__ = ["PseudoLabelWriter"]


class PseudoLabelWriter:
    """Runs label jobs in a pool and records each finished one in this rank's manifest shard.

    Args:
        label_set: the set (its folder is created).
        config: everything that determines the labels (stage, thresholds, CRF, checkpoint step...); its hash
            decides whether existing files can be reused.
        rank: this process's rank (each rank appends to its own manifest shard).
        workers: CRF/encoding worker processes (0 = inline in this process).
        max_pending: bound on jobs in flight, so memory stays bounded on large datasets.
    """

    def __init__(
        self,
        label_set: LabelSet,
        config: Mapping[str, Any],
        rank: int = 0,
        workers: int = 0,
        max_pending: int | None = None,
    ) -> None:
        self.label_set = label_set
        label_set.root.mkdir(parents=True, exist_ok=True)
        self.config = dict(config)
        self.config_hash = config_hash(self.config)
        self.rank = rank
        self.pool = CRFPool(workers)
        self.max_pending = max_pending or max(2, 2 * workers)
        self.pending: list[Future] = []
        self.written = 0
        self._shard = open(label_set.shard_path(rank), "a", encoding="utf-8")  # noqa: SIM115

    def submit(self, fn: Callable[[Any], dict[str, Any]], job: Any) -> None:
        """Queue ``fn(job)``; it writes its files under the set's folder and returns ``{"name", "files", "stats"}``."""
        self.pending.append(self.pool.submit(fn, job))
        self._collect(block_on_first=len(self.pending) >= self.max_pending)

    def _record(self, result: Mapping[str, Any]) -> None:
        record = {"name": result["name"], "files": result["files"], "config_hash": self.config_hash}
        if "stats" in result:
            record["stats"] = result["stats"]
        self._shard.write(json.dumps(record) + "\n")
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
        """Wait for every job, flush the shard; returns how many entries this writer wrote."""
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
