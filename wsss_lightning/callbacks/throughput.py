"""Training throughput in images per second, logged with the other training metrics.

The rate is wall-clock time between consecutive ``on_train_batch_end`` calls, so it includes data loading, the
forward/backward pass and the optimiser step: what a person waiting for a run experiences. Pseudo-label refreshes
and validation run outside training batches and are not counted. Under DDP every rank runs the same number of
batches at the same pace, so the global rate is the rank-0 rate times the world size.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from wsss_lightning.utils.log_cadence import logs_this_step

__all__ = ["RateWindow", "Throughput", "count_images"]


def count_images(batch: Any) -> int:
    """Images in a training batch: the leading size of every ``image`` tensor, nested dicts summed.

    A plain batch ``{"image": (B, 3, H, W), ...}`` counts ``B``; SSNet's joint batch ``{"seg": {...}, "sal": {...}}``
    counts the VOC and the DUTS-TR images together.
    """
    if isinstance(batch, Mapping):
        image = batch.get("image")
        if torch.is_tensor(image):
            return int(image.shape[0])
        return sum(count_images(value) for value in batch.values())
    if isinstance(batch, list | tuple):
        return sum(count_images(value) for value in batch)
    return 0


class RateWindow:
    """Images per second over the last ``size`` intervals of a stream of ``(time, images)`` events.

    The first event only starts the clock: the rate is (images of the later events) / (last time - first time).
    """

    def __init__(self, size: int = 20) -> None:
        if size < 1:
            raise ValueError("the window needs at least one interval")
        self.events: deque[tuple[float, int]] = deque(maxlen=size + 1)

    def reset(self) -> None:
        self.events.clear()

    def update(self, now: float, images: int) -> None:
        self.events.append((now, images))

    def rate(self) -> float | None:
        """Images per second, or None before two events (or when no time has passed)."""
        if len(self.events) < 2:
            return None
        elapsed = self.events[-1][0] - self.events[0][0]
        if elapsed <= 0:
            return None
        return sum(images for _, images in list(self.events)[1:]) / elapsed


class Throughput(Callback):
    """Logs ``train/images_per_s`` (sliding window, every step it is logged) and ``train/epoch_images_per_s``.

    Both are global rates (rank-0 rate × world size). They go to every logger at the trainer's
    ``log_every_n_steps`` cadence (the step rate is logged only on those steps unless it is shown in the progress
    bar: each ``log`` call costs host time), and to the progress bar with ``prog_bar=True``.

    Args:
        window: training batches the step rate is averaged over.
        prog_bar: also show the step rate in the progress bar.
        clock: time source in seconds (tests pass a fake clock).
    """

    def __init__(self, window: int = 20, prog_bar: bool = False, clock: Callable[[], float] = time.perf_counter):
        self.window = RateWindow(window)
        self.prog_bar = prog_bar
        self.clock = clock
        self._epoch_start: float | None = None
        self._epoch_end: float | None = None
        self._epoch_images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A new epoch restarts the window: the gap across validation / label refreshes is not training time.
        self.window.reset()
        self._epoch_start = self._epoch_end = None
        self._epoch_images = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._epoch_start is None:
            now = self.clock()
            self._epoch_start = now
            self.window.update(now, 0)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = self.clock()
        images = count_images(batch)
        self.window.update(now, images)
        self._epoch_end = now
        self._epoch_images += images
        rate = self.window.rate()
        if rate is not None and (self.prog_bar or logs_this_step(trainer)):
            # A CPU tensor: Lightning turns a Python number into a tensor on the module's device, a blocking copy
            # (one GPU synchronisation per step); the logged value stays on the CPU instead.
            pl_module.log(
                "train/images_per_s", torch.tensor(rate * trainer.world_size), on_step=True, on_epoch=False,
                prog_bar=self.prog_bar, batch_size=1,
            )  # fmt: skip

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch_start is None or self._epoch_end is None or self._epoch_end <= self._epoch_start:
            return
        rate = self._epoch_images / (self._epoch_end - self._epoch_start)
        pl_module.log("train/epoch_images_per_s", rate * trainer.world_size, on_step=False, on_epoch=True, batch_size=1)
