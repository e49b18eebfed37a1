"""The one label-set runner: a pseudo-label set written by a model on every rank (``wsss fit``, ``wsss pseudolabel``).

:func:`run_label_set` is the whole operation, the same for the stage callback's refreshes and the ``pseudolabel``
subcommand:

1. the ids not yet written with this config (a set is resumable: intact files are kept) — every rank reads the
   manifests before any rank writes;
2. each rank runs the method on its shard (``pending[rank::world]``) of full-size training images, at the trainer's
   precision, and hands the CPU jobs (CRF, fusion, PNG encoding, atomic writes) to a worker pool;
3. a barrier; rank 0 merges the manifest; the set is scored against the ground truth where it exists (metrics
   synchronised across ranks) and its health figures are computed (``pseudo/health.py``);
4. rank 0 writes ``quality.json``, logs ``pseudo/*`` to every logger, prints one line, and hands the record to
   every :class:`~wsss_lightning.modules.protocol.LabelSetListener` callback (W&B panels and artifacts subscribe
   that way; nothing here imports wandb).

It knows the method only through :class:`~wsss_lightning.modules.protocol.WSSSMethod` and the files only through
:class:`~wsss_lightning.pseudo.label_set.LabelSet`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from wsss_lightning.data.collate import pad_collate
from wsss_lightning.metrics import PseudoLabelQuality
from wsss_lightning.modules.protocol import LabelBatch, LabelSetListener, WSSSMethod
from wsss_lightning.pseudo.health import HEALTH_LOG_KEYS, HealthCounts
from wsss_lightning.pseudo.jobs import run_label_job
from wsss_lightning.pseudo.label_set import LabelSet
from wsss_lightning.pseudo.quality import quality_summary, score_label_dir
from wsss_lightning.pseudo.writer import PseudoLabelWriter
from wsss_lightning.signals import raise_if_stop_requested

__all__ = ["QUALITY_LOG_KEYS", "LabelRunOptions", "label_config", "log_record", "run_label_set", "scored_ids"]

QUALITY_LOG_KEYS = {
    "pseudo_mIoU": "pseudo/mIoU",
    "pseudo_precision": "pseudo/precision",
    "pseudo_recall": "pseudo/recall",
    "pseudo_ignored_fraction": "pseudo/ignored_fraction",
    "cam_mIoU": "pseudo/cam_mIoU",
    "raw_cam_mIoU": "pseudo/raw_cam_mIoU",
    "raw_fused_mIoU": "pseudo/raw_fused_mIoU",
    "propagated_fused_mIoU": "pseudo/propagated_fused_mIoU",
    **HEALTH_LOG_KEYS,
}


@dataclass(frozen=True)
class LabelRunOptions:
    """How a set is generated (not what it contains: that is the method's ``label_config``).

    Attributes:
        batch_size: full-size images per forward pass (padded; 1 avoids padding).
        num_workers: data-loading workers.
        crf_workers: CPU processes for the CRF / PNG jobs (0 = inline).
        verify_checksums: re-hash reused files before trusting them.
        progress: show a progress bar (rank 0).
    """

    batch_size: int = 1
    num_workers: int = 0
    crf_workers: int = 0
    verify_checksums: bool = True
    progress: bool = True


def scored_ids(names: list[str], eval_ids: set[str] | None, gt_dir: Path | None) -> set[str] | None:
    """Which of the training ids ``names`` a set is scored on: those in ``eval_ids`` (the datamodule's
    ``pseudo_eval_ids()``), else every id with a GT mask in ``gt_dir``; None when there is no ground truth."""
    if eval_ids is not None:
        return {name for name in names if name in eval_ids}
    if gt_dir is None:
        return None
    return {name for name in names if (gt_dir / f"{name}.png").is_file()}


def label_config(method: WSSSMethod, kind: str, stage: int, model_step: int, datamodule: Any = None) -> dict[str, Any]:
    """Everything that determines a label set; its hash decides whether existing files are reused.

    ``datamodule``'s working resolution (``hparams.max_image_side``) enters only when one is set, so the sets of
    runs without it keep their hashes; a datamodule without that setting adds nothing."""
    max_image_side = getattr(getattr(datamodule, "hparams", None), "max_image_side", None)
    config = {**method.label_config(kind), "crf": method.crf.describe(), "stage": stage, "model_step": model_step}
    if max_image_side is not None:
        config["max_image_side"] = int(max_image_side)
    return config


def run_label_set(
    trainer: L.Trainer,
    method: WSSSMethod,
    datamodule: Any,
    label_set: LabelSet,
    kind: str,
    stage: int,
    config: dict[str, Any],
    options: LabelRunOptions = LabelRunOptions(),
    echo: Callable[[str], None] = print,
    only_scored: bool = False,
) -> dict[str, Any]:
    """Write (or finish) one label set on every rank; returns its record (the same on every rank).

    Args:
        trainer: gives the ranks, the collectives, the precision and the loggers.
        method: the model (eval mode is set here and restored afterwards).
        datamodule: ``refresh_dataset()`` (full-size training images), ``pseudo_eval_ids()``, ``train_gt_dir()``.
        label_set: where the set goes.
        kind: the method's label kind (e.g. AuxSegNet ``initial`` / ``refined``, SSNet ``ssnet``).
        stage: recorded in the manifest and the record.
        config: :func:`label_config` (plus anything that must separate runs, e.g. a run id).
        only_scored: label only the ids the set is scored on (:func:`scored_ids`; all without ground truth), e.g. for
            a set nothing trains on. The set then holds (and its manifest expects) just those ids, its config names
            them by count and hash, and the record says ``"subset": "ids"``.
    """
    run = _LabelSetRun(trainer, method, datamodule, label_set, kind, stage, config, options, only_scored)
    was_training = method.training
    method.eval()
    try:
        record = run.run()
    finally:
        method.train(was_training)
    log_record(trainer, method, record, echo)
    return record


class _LabelSetRun:
    """One label set on one rank (see :func:`run_label_set`)."""

    def __init__(
        self,
        trainer: L.Trainer,
        method: WSSSMethod,
        datamodule: Any,
        label_set: LabelSet,
        kind: str,
        stage: int,
        config: dict[str, Any],
        options: LabelRunOptions,
        only_scored: bool = False,
    ) -> None:
        self.trainer = trainer
        self.method = method
        self.datamodule = datamodule
        self.label_set = label_set
        self.kind = kind
        self.stage = stage
        self.options = options
        self.dataset = datamodule.refresh_dataset()
        self.eval_ids: set[str] | None = datamodule.pseudo_eval_ids()
        self.gt_dir = datamodule.train_gt_dir()
        only = scored_ids(self.dataset.ids, self.eval_ids, self.gt_dir) if only_scored else None
        if only is not None:
            digest = hashlib.sha256("\n".join(sorted(only)).encode()).hexdigest()[:16]
            config = {**config, "only_ids": f"{len(only)} ids, sha256 {digest}"}
        self.config = config
        # dataset indices of the ids this set labels (all, or the scored ones, in dataset order)
        self.indices = [i for i, name in enumerate(self.dataset.ids) if only is None or name in only]
        self.names: list[str] = [self.dataset.ids[i] for i in self.indices]
        self.subset = only is not None
        self.device = torch.device(trainer.strategy.root_device)
        # Extra label maps the method reports for ablations (e.g. "cam" = CAM-only labels), scored in memory.
        self.extra_metrics = {
            name: PseudoLabelQuality(method.num_classes).to(self.device) for name in method.extra_label_kinds(kind)
        }
        # CAM / affinity health counts of the images this rank ran (the label counts come from the manifest).
        self.model_health = HealthCounts()

    # ------------------------------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        strategy = self.trainer.strategy
        pending = self.label_set.pending(self.config, self.names, self.options.verify_checksums)
        strategy.barrier("pseudo_label_pending")  # every rank read the manifests before any write
        shard = pending[self.trainer.global_rank :: self.trainer.world_size]
        loader = DataLoader(
            Subset(self.dataset, [self.indices[i] for i in shard]),
            batch_size=self.options.batch_size,
            num_workers=self.options.num_workers,
            collate_fn=pad_collate,
            generator=torch.Generator().manual_seed(0),  # never draws from the global RNG (exact resume)
        )
        progress = tqdm(
            total=len(shard), desc=f"pseudo-labels stage {self.stage} ({self.kind})", unit="img", leave=False,
            disable=not (self.options.progress and self.trainer.is_global_zero),
        )  # fmt: skip
        writer = PseudoLabelWriter(
            self.label_set, self.config, rank=self.trainer.global_rank, workers=self.options.crf_workers
        )
        # Every rank runs as many rounds as the longest shard (shards differ by at most one batch), so the stop
        # check after each round is a collective all ranks reach: a signal stops every rank at the same round.
        rounds = self._rounds(len(loader))
        batches = iter(loader)
        try:
            with torch.no_grad():
                for _ in range(rounds):
                    batch = next(batches, None)
                    if batch is not None:
                        progress.update(self._submit(batch, writer))
                    raise_if_stop_requested(self.trainer)
        finally:  # finished labels stay recorded (manifest shard) whatever stops the loop: a resume keeps them
            progress.close()
            written = writer.close()
        return self._finish(written, reused=len(self.names) - len(pending), seconds=time.perf_counter() - started)

    def _rounds(self, batches: int) -> int:
        """The largest number of batches of any rank's shard."""
        if self.trainer.world_size == 1:
            return batches
        count = torch.tensor([float(batches)], device=self.device)
        return int(self.trainer.strategy.reduce(count, reduce_op="max").item())

    def _submit(self, batch: dict[str, Any], writer: PseudoLabelWriter) -> int:
        """Run the method on a batch and queue its CPU jobs. Returns the number of images queued."""
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        if self.eval_ids is not None:  # which images are scored (a method may write extra files for them)
            batch["pseudo_eval"] = [name in self.eval_ids for name in batch["name"]]
        with self.trainer.precision_plugin.forward_context():  # the training precision (bf16 under bf16-mixed)
            result: LabelBatch = self.method.label_batch(batch, self.kind, self.label_set)
        for job in result.jobs:
            writer.submit(run_label_job, job)
        self._update_extra_metrics(batch, result)
        self._update_model_health(result)
        return len(result.jobs)

    def _update_extra_metrics(self, batch: dict[str, Any], result: LabelBatch) -> None:
        """Score the method's extra label maps ``(B, H, W)`` of the GT-scored ids."""
        for name, metric in self.extra_metrics.items():
            labels = result.extra_labels[name]
            for index, image_id in enumerate(batch["name"]):
                if self.eval_ids is not None and image_id not in self.eval_ids:
                    continue
                h, w = batch["ori_size"][index].tolist()
                gt = batch["seg"][index, :h, :w].long()
                if bool((gt != 255).any()):
                    metric.update(labels[index, :h, :w].long(), gt)

    def _update_model_health(self, result: LabelBatch) -> None:
        if result.cam_peaks is not None and result.present is not None:
            for peaks, present in zip(result.cam_peaks.float().cpu(), result.present.bool().cpu()):
                self.model_health.add_cam(peaks[present].tolist())
        if result.affinity is not None:
            columns = (result.affinity[k].float().cpu().tolist() for k in ("row_peak", "row_spread", "background_mass"))
            for peak, spread, mass in zip(*columns):
                self.model_health.add_affinity(peak, spread, None if mass != mass else mass)  # NaN: undefined

    # ------------------------------------------------------------------------------------------ the end

    def _finish(self, written: int, reused: int, seconds: float) -> dict[str, Any]:
        """Wait for all ranks, merge the manifest, score, compute the health figures (same record on every rank)."""
        strategy = self.trainer.strategy
        strategy.barrier("pseudo_label_written")
        # How many labels each rank wrote: their sum is the number of pending ids iff each was written once.
        per_rank = strategy.all_gather(torch.tensor([written], device=self.device))
        per_rank = [int(v) for v in per_rank.reshape(-1).tolist()]
        counts = torch.tensor(self.model_health.to_list(), dtype=torch.float64, device=self.device)
        health = HealthCounts.from_list(strategy.reduce(counts, reduce_op="sum").tolist())
        if self.trainer.is_global_zero:
            layout = self.method.label_layout(self.kind)
            manifest = self.label_set.finalize(
                self.config, self.names, layout, {"stage": self.stage, "kind": self.kind}
            )
            for per_image in manifest["stats"].values():
                for stats in per_image:
                    health.add_label(stats)
        summary = strategy.broadcast(health.summary(), src=0)
        strategy.barrier("pseudo_label_manifest")
        record = {
            "stage": self.stage,
            "kind": self.kind,
            "dir": str(self.label_set.root),
            "images": len(self.names),
            **({"subset": "ids"} if self.subset else {}),
            "written_per_rank": per_rank,
            "reused": reused,
            "seconds": round(seconds, 2),
            **self._score(complete_extras=reused == 0),
            **summary,
        }
        if self.trainer.is_global_zero:
            self.label_set.write_quality(record)
        return record

    def _score(self, complete_extras: bool) -> dict[str, Any]:
        """Quality against the ground truth (metrics synchronised across ranks); {} without GT."""
        ids = [n for n in self.names if self.eval_ids is None or n in self.eval_ids]
        if self.method.label_layout(self.kind).copies:
            # each copy <id>_<t> is scored against the ground truth warped with its geometry, gt/<id>_<t>.png
            names, gt_dir, extra = self.label_set.copies_of(ids), self.label_set.folder("gt"), {}
            extra = {"scored_against": "augmented_gt"}
            if not names:
                return {}
        else:
            gt_dir = self.gt_dir
            if gt_dir is None:
                return {}
            names = ids
            extra = {"scored_images": sum(1 for n in ids if (gt_dir / f"{n}.png").is_file())}
        shard = names[self.trainer.global_rank :: self.trainer.world_size]
        metric = PseudoLabelQuality(self.method.num_classes).to(self.device)
        score_label_dir(self.label_set.folder("seg"), gt_dir, shard, self.method.num_classes, metric)
        result: dict[str, Any] = {f"pseudo_{k}": v for k, v in quality_summary(metric).items()}
        for name, extra_metric in self.extra_metrics.items():
            summary = quality_summary(extra_metric)  # on every rank: compute() synchronises
            if complete_extras:  # after a resume the extra labels of reused ids were not seen
                result.update({f"{name}_{key}": value for key, value in summary.items() if key != "ignored_fraction"})
        if "scored_against" in extra:
            extra["scored_images"] = len(names)
        return {**result, **extra}


def log_record(trainer: L.Trainer, method: Any, record: dict[str, Any], echo: Callable[[str], None] = print) -> None:
    """Send a set's figures to the loggers (rank 0), print one line, hand the record to the listeners."""
    if not trainer.is_global_zero:
        return
    metrics = {name: record[key] for key, name in QUALITY_LOG_KEYS.items() if key in record}
    metrics["pseudo/stage"] = record["stage"]
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
    summary = ", ".join(f"{k.removeprefix('pseudo/')}={v:.4f}" for k, v in metrics.items() if k != "pseudo/stage")
    echo(f"[pseudo-labels] stage {record['stage']} ({record['kind']}, {record['images']} images, "
         f"{record['seconds']} s) -> {record['dir']}: {summary or 'no ground truth to score against'}")  # fmt: skip
    for callback in trainer.callbacks:
        if isinstance(callback, LabelSetListener):
            callback.on_label_set_end(trainer, method, record)
