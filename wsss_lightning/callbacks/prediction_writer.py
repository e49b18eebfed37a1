"""The writer of ``wsss predict``: palette masks and grey saliency PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter

from wsss_lightning.data.io import write_grey_png, write_palette_png
from wsss_lightning.signals import raise_if_stop_requested


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
        raise_if_stop_requested(trainer, synchronize=False)  # Lightning's predict loop checks no signal itself
