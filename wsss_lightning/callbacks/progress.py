"""A progress bar that says where a WSSS run is: warm-up or stage, epoch within it, which loader is scored.

``wsss`` adds it by default (unless ``--trainer.enable_progress_bar false`` or another progress bar is configured):

* training: ``stage 2/3 · epoch 4/6 (13/24)`` or ``warm-up · epoch 1/6 (1/24)`` (1-based, with the global epoch);
* validation / test: the loader's name, e.g. ``Validation seg/val`` or ``Testing sal/ECSSD``;
* predict: ``Predicting`` for ``wsss predict`` and ``Pseudo-labels (refined, stage 1)`` for ``wsss pseudolabel``,
  counted in images when the loader's batch size is 1.

Counts and rates come from tqdm (``12/30 [00:05<00:07, 2.4it/s]``). The training metrics (the loss) are refreshed at
most every ``metrics_interval_s`` seconds and at the end of an epoch: reading a metric from a GPU waits for the step to
finish (a host-device synchronisation), which per step would keep the CPU from queueing the next one.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader

from wsss_lightning.callbacks.pseudo_label_refresh import PseudoLabelRefresh
from wsss_lightning.modules.base import WSSSModule
from wsss_lightning.trainer import LabelSetTask

__all__ = ["StageProgressBar", "stage_description"]


def _stage_callback(trainer: L.Trainer) -> PseudoLabelRefresh | None:
    """The stage pipeline callback of the run."""
    for callback in trainer.callbacks:
        if isinstance(callback, PseudoLabelRefresh):
            return callback
    return None


def _batch_size(loader: Any) -> int | None:
    """A loader's batch size; Lightning re-creates predict loaders with a batch sampler (``batch_size`` None)."""
    if not isinstance(loader, DataLoader):
        return None
    if loader.batch_size is not None:
        return loader.batch_size
    # a BatchSampler, or Lightning's wrapper of one (which copies the sampler's attributes into its own __dict__)
    return vars(loader.batch_sampler).get("batch_size") if loader.batch_sampler is not None else None


def stage_description(stages: PseudoLabelRefresh | None, epoch: int, max_epochs: int | None) -> str:
    """Human-readable position of 0-based ``epoch`` in the schedule of a ``PseudoLabelRefresh``.

    Args:
        stages: has ``warmup_epochs``, ``num_stages``, ``epochs_per_stage`` (list) and ``stage_of_epoch(epoch)``;
            None for a run without stages.
        epoch: the trainer's 0-based epoch.
        max_epochs: total epochs (None or -1 if unbounded).

    Returns:
        e.g. ``"warm-up · epoch 2/6 (2/24)"``, ``"stage 1/3 · epoch 3/6 (9/24)"`` or ``"epoch 3/10"``.
    """
    total = f"/{max_epochs}" if max_epochs not in (None, -1) else ""
    if stages is None:
        return f"epoch {epoch + 1}{total}"
    stage = stages.stage_of_epoch(epoch)
    overall = f"({epoch + 1}{total})"
    if stage < 0:
        return f"warm-up · epoch {epoch + 1}/{stages.warmup_epochs} {overall}"
    start = stages.warmup_epochs + sum(stages.epochs_per_stage[:stage])
    within = f"epoch {epoch - start + 1}/{stages.epochs_per_stage[stage]}"
    return f"stage {stage + 1}/{stages.num_stages} · {within} {overall}"


class StageProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with stage-aware training descriptions and named evaluation loaders."""

    def __init__(
        self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False, metrics_interval_s: float = 0.5
    ) -> None:
        super().__init__(refresh_rate, process_position, leave)
        self._predict_description = "Predicting"
        self.metrics_interval_s = metrics_interval_s
        self._metrics_shown_at = -float("inf")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """The count every ``refresh_rate`` batches; the metrics only every ``metrics_interval_s`` seconds and at
        the epoch's last batch (Lightning's bar reads them, one GPU synchronisation, at every refresh)."""
        bar, n = self.train_progress_bar, batch_idx + 1
        if bar is None or not self._should_update(n, bar.total):
            return
        if not bar.disable:
            bar.n = n
            bar.refresh()
        now = time.monotonic()
        if n == bar.total or now - self._metrics_shown_at >= self.metrics_interval_s:
            self._metrics_shown_at = now
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    @property
    def predict_description(self) -> str:
        return self._predict_description

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(
            stage_description(_stage_callback(trainer), trainer.current_epoch, trainer.max_epochs)
        )

    @staticmethod
    def _loader_name(pl_module: L.LightningModule, stage: str, dataloader_idx: int) -> str:
        names = pl_module.loader_names(stage) if isinstance(pl_module, WSSSModule) else []
        return names[dataloader_idx] if dataloader_idx < len(names) else f"DataLoader {dataloader_idx}"

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        changed = self._current_eval_dataloader_idx != dataloader_idx  # the parent records the change itself
        super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if changed and not trainer.sanity_checking:
            name = self._loader_name(pl_module, "validate", dataloader_idx)
            self.val_progress_bar.set_description(f"{self.validation_description} {name}")

    def on_test_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        changed = self._current_eval_dataloader_idx != dataloader_idx
        super().on_test_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if changed:
            name = self._loader_name(pl_module, "test", dataloader_idx)
            self.test_progress_bar.set_description(f"{self.test_description} {name}")

    def on_predict_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        changed = self._current_eval_dataloader_idx != dataloader_idx
        super().on_predict_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if changed:
            if isinstance(pl_module, LabelSetTask):  # `wsss pseudolabel`: the runner shows its own image count
                self._predict_description = f"Pseudo-labels ({pl_module.kind}, stage {pl_module.label_stage})"
            else:
                self._predict_description = "Predicting"
            loaders = trainer.predict_dataloaders
            loader = loaders[dataloader_idx] if isinstance(loaders, list | tuple) else loaders
            self.predict_progress_bar.unit = "img" if _batch_size(loader) == 1 else "batch"
            self.predict_progress_bar.set_description(self.predict_description)
