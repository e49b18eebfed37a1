"""A ``ModelCheckpoint`` whose ``last.ckpt`` is never older than the weights at the end of an epoch or of the fit."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class ResumableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for mid-stage resumes (``every_n_train_steps``) that keeps ``last.ckpt`` current.

    With ``every_n_train_steps=N``, Lightning writes ``last.ckpt`` only at multiples of ``N`` and, once any ``last``
    exists, not again when the fit ends — so ``wsss test --ckpt_path last`` could load weights up to ``N - 1``
    steps old, and a resume after a stage switch could start from before it. This subclass also saves ``last``
    at the end of every training epoch (after the stage callback's refresh and switch: Lightning runs checkpoint
    callbacks last) and at the end of the fit, whenever the global step has moved since the last save.
    Use it exactly like ``ModelCheckpoint``, e.g. ``{save_last: true, save_top_k: 0, every_n_train_steps: 500}``.
    """

    def _save_last_if_stale(self, trainer: L.Trainer) -> None:
        if not self.save_last or trainer.sanity_checking or trainer.fast_dev_run:
            return
        if self._last_global_step_saved == trainer.global_step:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_stale(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_if_stale(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """A stop signal (``signals.py``) stops the fit at a safe point: save ``last`` there, so
        ``--ckpt_path last`` continues exactly where it stopped (a label set cut off included: the stage callback's
        state records it). Any other exception leaves the last good checkpoint alone."""
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit" and self.save_last:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
