"""Writers for ``wsss predict`` (masks + saliency PNGs) and ``wsss pseudolabel`` (a label set from a checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter, Callback

from wsss_lightning.callbacks.label_sets import LabelSetRun, log_record
from wsss_lightning.pseudo.health import HealthPolicy
from wsss_lightning.data.io import write_grey_png, write_palette_png


class MaskWriter(BasePredictionWriter):
    """Writes each prediction as ``<out_dir>/masks/<name>.png`` (palette) and ``<out_dir>/saliency/<name>.png`` (grey).

    Every rank writes the images of its own shard; files are written atomically.
    """

    def __init__(self, out_dir: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.count = 0

    def write_on_batch_end(
        self, trainer, pl_module, prediction: list[dict[str, Any]], batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        for item in prediction:
            write_palette_png(self.out_dir / "masks" / f"{item['name']}.png", item["label"])
            if item.get("saliency") is not None:
                write_grey_png(self.out_dir / "saliency" / f"{item['name']}.png", item["saliency"])
            self.count += 1


class PseudoLabelSetWriter(Callback):
    """Turns the ``predict`` run of ``wsss pseudolabel`` into one label set (see ``label_sets.py``).

    The module's ``predict_step`` returns label jobs while ``pl_module.label_request`` is set; this callback
    submits them, then merges, scores and logs the set when prediction ends.
    """

    def __init__(
        self,
        datamodule: L.LightningDataModule,
        out_dir: str | Path,
        kind: str,
        stage: int,
        config: dict[str, Any],
        crf_workers: int,
        reused: int,
    ) -> None:
        self.datamodule = datamodule
        self.config = config
        self.out_dir = Path(out_dir)
        self.kind = kind
        self.stage = stage
        self.crf_workers = crf_workers
        self.reused = reused
        self.run: LabelSetRun | None = None
        self.record: dict[str, Any] | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.run = LabelSetRun(
            trainer, pl_module, self.datamodule, self.kind, self.stage, self.out_dir, self.config, self.crf_workers
        )
        pl_module.label_request = self.run

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.label_request = None
        assert self.run is not None
        self.record = self.run.finish(reused=self.reused)
        log_record(trainer, self.record)
        # a set written on request is kept whatever its health; a degenerate one is announced loudly
        HealthPolicy(action="warn").check(self.record, f"the label set in {self.out_dir}")
