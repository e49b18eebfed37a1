"""ResumableCheckpoint keeps ``last.ckpt`` current where Lightning's step-based ModelCheckpoint leaves it stale."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from wsss_lightning.callbacks import ResumableCheckpoint


def _fit(tmp_path: Path, callback_class: type[ModelCheckpoint]) -> int:
    """2 epochs x 5 batches = 10 steps, a step checkpoint every 3 steps; returns the step stored in last.ckpt."""
    L.seed_everything(0)
    checkpoint = callback_class(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=3)
    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=5, limit_val_batches=0, callbacks=[checkpoint], logger=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(BoringModel())
    return torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"]


def test_lightning_step_checkpoint_leaves_last_stale(tmp_path: Path) -> None:
    # The behaviour the subclass exists for: steps 3, 6, 9 are saved, the final step 10 is not.
    assert _fit(tmp_path, ModelCheckpoint) == 9


def test_resumable_checkpoint_saves_last_at_the_end(tmp_path: Path) -> None:
    assert _fit(tmp_path, ResumableCheckpoint) == 10
