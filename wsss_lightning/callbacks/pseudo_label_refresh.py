"""The stage logic of one ``wsss fit``: warm-up → initial pseudo-labels → stages with label refreshes.

Schedule (epochs, 0-based): ``warmup_epochs`` of classification only, then ``num_stages`` stages of
``epochs_per_stage`` each. Pseudo-label sets are generated

* before stage 0: ``initial`` labels (multi-scale CAM + off-the-shelf saliency), unless ``initial_labels="given"``
  (``data.pseudo_label_dir`` already holds them);
* after every stage but the last (and after the last with ``refresh_after_last_stage``): ``refined`` labels
  (affinity-propagated CAM + updated saliency), which the next stage trains on. Nothing trains on the set after the
  last stage: ``last_set_ids="scored"`` writes it for the GT-scored ids only (its quality at a fraction of the cost).

A refresh runs on every rank over its shard of the pending ids (resumable: ids already written with the same
config are skipped), waits at a barrier, merges the manifest on rank 0, scores the labels against GT where GT
exists (``pseudo/mIoU``, ``pseudo/precision``, ``pseudo/recall``, plus ``pseudo/cam_mIoU`` for the CAM-only
labels), points the DataModule at the new folders, and makes the trainer reload the training dataloader.
The module's poly learning-rate schedule restarts at every stage.

Crash safety: before a refresh the callback saves ``last-refresh.ckpt`` next to the other checkpoints with the
refresh marked pending; ``--ckpt_path last`` then resumes inside the refresh and writes only the missing ids.
Lightning restores the loops *after* ``on_fit_start`` and, when a checkpoint was saved on the last batch of an
epoch or inside ``on_train_epoch_end``, starts the next epoch without calling ``on_train_epoch_end`` again; so a
resumed run finishes a pending refresh, or a stage switch that was cut off, in ``on_train_start`` (global step,
optimiser and scheduler restored by then) and rebuilds the training loader on the new labels.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from wsss_lightning.label_runner import LabelRunOptions, label_config, run_label_set
from wsss_lightning.modules.base import WSSSModule
from wsss_lightning.pseudo.health import HealthPolicy, label_trajectory
from wsss_lightning.pseudo.label_set import LabelSet

log = logging.getLogger(__name__)

REFRESH_CHECKPOINT = "last-refresh.ckpt"


class PseudoLabelRefresh(Callback):
    """Drives warm-up, stages and pseudo-label refreshes inside one ``Trainer.fit``.

    Args:
        output_dir: where label sets go (``<output_dir>/stage<s>/``); default ``<default_root_dir>/pseudo_labels``.
        warmup_epochs: classification-only epochs before the initial labels (0 when starting from a trained
            classifier, e.g. PSA's ResNet-38 weights).
        num_stages: training stages on pseudo-labels (AuxSegNet code: 4, stages 0–3).
        epochs_per_stage: epochs of each stage (code 15, paper 10), or a list with one value per stage.
        initial_labels: ``cam`` to generate the stage-0 labels, ``given`` to use ``data.pseudo_label_dir``,
            ``none`` when stage 0 needs no pseudo-labels (SSNet stage 1 learns from image labels + saliency).
        refresh_after_last_stage: also generate labels after the last stage (to report their quality).
        last_set_ids: the ids of that last set: ``all`` training ids (the final pseudo-labels, e.g. to train another
            segmenter on) or only the ``scored`` ones (those with ground truth, e.g. VOC's 1,464 ``train`` ids of
            10,582; all when there is no ground truth), which is enough to score it.
        batch_size: images per forward pass during a refresh (full-size images; 1 avoids padding).
        num_workers: data-loading workers of the refresh loader.
        crf_workers: CPU processes for the CRF / PNG encoding (0 = inline).
        verify_checksums: check the sha256 of reused files when resuming a refresh.
        health: when a label set counts as degenerate (no foreground, dead CAMs, an affinity that has not learned)
            and whether that stops the run (default) or warns; see :class:`~wsss_lightning.pseudo.health.HealthPolicy`.
        last_stage_epochs: epochs of the last stage instead of its ``epochs_per_stage`` value (None: that value).
            The last stage trains the network that is tested, on the best labels of the run; the earlier stages
            only have to improve the labels. Follows ``num_stages`` (with 3 stages, the third is the last).
    """

    def __init__(
        self,
        output_dir: str | None = None,
        warmup_epochs: int = 0,
        num_stages: int = 4,
        epochs_per_stage: int | list[int] = 15,
        initial_labels: Literal["cam", "given", "none"] = "cam",
        refresh_after_last_stage: bool = True,
        last_set_ids: Literal["all", "scored"] = "all",
        batch_size: int = 1,
        num_workers: int = 0,
        crf_workers: int = 0,
        verify_checksums: bool = True,
        health: HealthPolicy | None = None,
        last_stage_epochs: int | None = None,
    ) -> None:
        per_stage = [epochs_per_stage] * num_stages if isinstance(epochs_per_stage, int) else list(epochs_per_stage)
        if num_stages < 1 or len(per_stage) != num_stages or min(per_stage) < 1 or warmup_epochs < 0:
            raise ValueError(
                "need num_stages >= 1, epochs_per_stage >= 1 (one value, or one per stage) and warmup_epochs >= 0"
            )
        if last_stage_epochs is not None:
            if last_stage_epochs < 1:
                raise ValueError(f"last_stage_epochs must be >= 1 (or null), got {last_stage_epochs}")
            per_stage[-1] = last_stage_epochs
        self.output_dir = output_dir
        self.warmup_epochs = warmup_epochs
        self.num_stages = num_stages
        self.epochs_per_stage = per_stage
        self.initial_labels = initial_labels
        self.refresh_after_last_stage = refresh_after_last_stage
        if last_set_ids not in ("all", "scored"):
            raise ValueError(f"last_set_ids must be 'all' or 'scored', got {last_set_ids!r}")
        self.last_set_ids = last_set_ids
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.crf_workers = crf_workers
        self.verify_checksums = verify_checksums
        self.health = health if health is not None else HealthPolicy()
        # State (saved in checkpoints).
        self.stage = -1 if warmup_epochs > 0 else 0  # -1 = warm-up
        self.label_sets: dict[int, str] = {}  # stage -> folder of the labels it trains on
        self.pending: dict[str, Any] | None = None  # a refresh that was started but not finished
        self.history: list[dict[str, Any]] = []
        self.stage_start_step = 0
        # Identifies this run in the label sets' config hash: a new run never reuses a previous run's files,
        # a resumed run (same id, from the checkpoint) reuses its own.
        self.run_id = uuid.uuid4().hex[:12]

    # ------------------------------------------------------------------------------------------ schedule

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + sum(self.epochs_per_stage)

    def stage_of_epoch(self, epoch: int) -> int:
        """-1 during warm-up, else the stage index of a 0-based epoch (the last stage beyond the end)."""
        if epoch < self.warmup_epochs:
            return -1
        end = self.warmup_epochs
        for stage, epochs in enumerate(self.epochs_per_stage):
            end += epochs
            if epoch < end:
                return stage
        return self.num_stages - 1

    def _root(self, trainer: L.Trainer) -> Path:
        return Path(self.output_dir) if self.output_dir else Path(trainer.default_root_dir) / "pseudo_labels"

    def _stage_epochs(self, stage: int) -> int:
        return self.warmup_epochs if stage < 0 else self.epochs_per_stage[stage]

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "label_sets": {str(k): v for k, v in self.label_sets.items()},
            "pending": self.pending,
            "history": self.history,
            "stage_start_step": self.stage_start_step,
            "run_id": self.run_id,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stage = int(state_dict["stage"])
        self.label_sets = {int(k): v for k, v in state_dict["label_sets"].items()}
        self.pending = state_dict.get("pending")
        self.history = list(state_dict.get("history", []))
        self.stage_start_step = int(state_dict.get("stage_start_step", 0))
        self.run_id = str(state_dict.get("run_id", self.run_id))

    # ------------------------------------------------------------------------------------------ hooks

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # Every rank built its own callback: agree on rank 0's run id (a resume then restores the saved one).
        self.run_id = trainer.strategy.broadcast(self.run_id, src=0)
        if trainer.max_epochs not in (None, -1, self.total_epochs):
            log.info("max_epochs set to %d by PseudoLabelRefresh (warm-up + stages)", self.total_epochs)
        trainer.fit_loop.max_epochs = self.total_epochs
        if self.initial_labels == "given" and 0 not in self.label_sets:
            given = trainer.datamodule.given_label_set()
            if given is None:
                raise ValueError("initial_labels='given' needs --data.pseudo_label_dir")
            self.label_sets[0] = str(given.root)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A pending refresh (resumed inside one) waits for on_train_start: the global step (part of the labels'
        # config hash) and the optimiser are restored only after this hook.
        if self.pending is None and self.stage == 0 and 0 not in self.label_sets and self.initial_labels == "cam":
            self._refresh(trainer, pl_module, pl_module.initial_label_kind(), 0)
        self._apply_stage(trainer, pl_module, fresh=False)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Resume: finish a refresh that was cut off, or a stage switch Lightning skipped (see module docstring)."""
        switched = False
        if self.pending is not None:  # resumed inside a refresh: finish it (only missing ids), then switch
            pending, stage = self.pending, int(self.pending["stage"])
            self._refresh(trainer, pl_module, pending["kind"], stage, save_checkpoint=False)
            if pending.get("advance", self.stage < stage < self.num_stages):
                self._advance(trainer, pl_module, stage, int(pending.get("start_step", trainer.global_step)))
            else:
                self._apply_stage(trainer, pl_module, fresh=False)
            switched = True
        # Resumed from a checkpoint saved after the last batch of a stage but before its end-of-epoch switch.
        while self.stage < min(self.stage_of_epoch(trainer.current_epoch), self.num_stages - 1):
            self._end_stage(trainer, pl_module)
            switched = True
        if switched:  # the loader was built before this hook, on the previous stage's labels: rebuild it
            trainer.reload_dataloaders_every_n_epochs = 1
            trainer.fit_loop._last_train_dl_reload_epoch = trainer.current_epoch - 1

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """End the run with the labels' trajectory over the stages; loud when they did not improve."""
        line = label_trajectory(self.history)
        if line is None or not trainer.is_global_zero:
            return
        print(line)
        self.health.verdict(self.history)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A reload requested at a stage boundary has happened by now (setup_data runs before this hook).
        trainer.reload_dataloaders_every_n_epochs = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.stage_of_epoch(epoch + 1) == self.stage_of_epoch(epoch) and epoch + 1 < self.total_epochs:
            return  # not the last epoch of the warm-up or of a stage
        if self.stage > self.stage_of_epoch(epoch):
            return  # this epoch's switch already happened (finished on resume)
        self._end_stage(trainer, pl_module)
        trainer.reload_dataloaders_every_n_epochs = 1  # the next epoch rebuilds the loader with new labels

    def _end_stage(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The end of the warm-up or of a stage: refresh the labels the next stage trains on, then switch."""
        next_stage = self.stage + 1
        if self.stage == -1:
            self._refresh(trainer, pl_module, pl_module.initial_label_kind(), 0)
        elif next_stage < self.num_stages or self.refresh_after_last_stage:
            self._refresh(trainer, pl_module, pl_module.refresh_kind(next_stage), next_stage)
        if next_stage < self.num_stages:
            self._advance(trainer, pl_module, next_stage, trainer.global_step)

    def _advance(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: int, start_step: int) -> None:
        self.stage = stage
        self.stage_start_step = start_step
        self._apply_stage(trainer, pl_module, fresh=True)

    # ------------------------------------------------------------------------------------------ stage switching

    def _apply_stage(self, trainer: L.Trainer, pl_module: L.LightningModule, fresh: bool) -> None:
        """Point the data at the stage's labels, set the module's phase and its LR segment."""
        label_set = self.label_sets.get(self.stage)
        if label_set is not None:
            trainer.datamodule.use_label_set(LabelSet(label_set))
        pl_module.enter_stage(self.stage, self.stage_start_step, self._stage_epochs(self.stage), reset_optimizer=fresh)

    # ------------------------------------------------------------------------------------------ refresh

    def _refresh(
        self, trainer: L.Trainer, pl_module: WSSSModule, kind: str, stage: int, save_checkpoint: bool = True
    ) -> None:
        label_set = LabelSet(self._root(trainer) / f"stage{stage}")
        # `advance` / `start_step`: the stage switch that follows, redone on resume if the run dies before it.
        advance = stage < self.num_stages and stage > self.stage
        self.pending = {
            "kind": kind, "stage": stage, "dir": str(label_set.root), "advance": advance,
            "start_step": trainer.global_step,
        }  # fmt: skip
        if save_checkpoint:  # not when resuming: the checkpoint we resumed from already holds this state
            self._save_refresh_checkpoint(trainer)
        config = {
            **label_config(pl_module, kind, stage, trainer.global_step, trainer.datamodule),
            "run_id": self.run_id,
        }
        options = LabelRunOptions(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            crf_workers=self.crf_workers,
            verify_checksums=self.verify_checksums,
            progress=trainer.progress_bar_callback is not None,
        )
        # the set after the last stage trains nothing: with last_set_ids="scored" it labels only the scored ids
        only_scored = stage == self.num_stages and self.last_set_ids == "scored"
        record = run_label_set(
            trainer, pl_module, trainer.datamodule, label_set, kind, stage, config, options, only_scored=only_scored
        )
        self.history.append(record)
        self.label_sets[stage] = str(label_set.root)
        self.pending = None
        # After the set is written, scored and logged (so it can be inspected): stop on a degenerate set.
        where = f"the stage-{stage} label set ({kind}, {label_set.root})"
        self.health.check(record, where)
        if trainer.is_global_zero:
            self.health.trend(self.history, where)

    def _save_refresh_checkpoint(self, trainer: L.Trainer) -> None:
        callback = trainer.checkpoint_callback
        if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None or trainer.sanity_checking:
            return
        if trainer.state.fn != "fit":
            return
        trainer.save_checkpoint(str(Path(callback.dirpath) / REFRESH_CHECKPOINT), weights_only=False)
