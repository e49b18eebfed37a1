"""Per-step training values are logged only on the steps whose values reach the loggers (utils/log_cadence.py):
the loggers receive exactly what they received when every step logged, with fewer ``self.log`` calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers.logger import Logger

from wsss_lightning.data.demo import DEMO_CLASSES, TINY_SETTINGS, generate_demo
from wsss_lightning.utils import log_cadence


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call: (step, {key: value})."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((step, {k: float(v) for k, v in metrics.items()}))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def _fit(demo: Path, tmp_path: Path, monkeypatch, every_step: bool) -> tuple[RecordingLogger, int]:
    from wsss_lightning.callbacks.throughput import Throughput
    from wsss_lightning.data.datamodule import WSSSDataModule
    from wsss_lightning.models import AuxSegNetPlus, TimmBackbone
    from wsss_lightning.modules import AuxSegNetModule

    if every_step:  # the previous behaviour: every training step logs every value
        monkeypatch.setattr("wsss_lightning.modules.base.logs_this_step", lambda trainer: True)
        monkeypatch.setattr("wsss_lightning.callbacks.throughput.logs_this_step", lambda trainer: True)
    clock = iter(range(1000))  # a fake clock: the logged rates are the same in both runs
    L.seed_everything(0)
    network = AuxSegNetPlus(len(DEMO_CLASSES), TimmBackbone("test_resnet", output_stride=8), head_channels=8)
    module = AuxSegNetModule(network, num_classes=len(DEMO_CLASSES), lr=0.01, cam_scales=(1.0,), test_modes=["ss"])
    calls = {"n": 0}
    log = module.log
    monkeypatch.setattr(module, "log", lambda *a, **k: (calls.__setitem__("n", calls["n"] + 1), log(*a, **k))[1])
    datamodule = WSSSDataModule(root=str(demo / "VOCdevkit" / "VOC2012"), dataset="voc", crop_size=32, batch_size=2,
                                num_workers=0)  # fmt: skip
    logger = RecordingLogger()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=6, limit_val_batches=0, logger=logger,
        log_every_n_steps=3, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=tmp_path, callbacks=[Throughput(window=2, clock=lambda: float(next(clock)))],
    )  # fmt: skip
    trainer.fit(module, datamodule)
    return logger, calls["n"]


def test_training_values_reach_the_loggers_unchanged_with_fewer_log_calls(tmp_path: Path, monkeypatch) -> None:
    demo = tmp_path / "demo"
    generate_demo(demo, seed=0, **{**TINY_SETTINGS, "num_train_aug": 12, "num_val": 2})
    with monkeypatch.context() as patch:
        reference, reference_calls = _fit(demo, tmp_path / "every", patch, every_step=True)
    logger, calls = _fit(demo, tmp_path / "cadence", monkeypatch, every_step=False)
    assert logger.records == reference.records, "the loggers receive the same keys, values and steps"
    steps = [step for step, metrics in logger.records if "train/loss_seg" in metrics]
    assert steps == [2, 5], "log_every_n_steps=3: the values of steps 3 and 6 (0-based 2 and 5)"
    assert {"train/loss", "train/loss_cls", "train/loss_sal", "train/loss_seg", "train/images_per_s"} <= set(
        logger.records[0][1]
    )
    # every step logs train/loss (the progress bar's); the 3-4 components (+ the rate) only on the 2 logged steps
    assert reference_calls - calls >= 4 * 3
    assert calls >= 6


def test_outside_a_fit_every_step_logs() -> None:
    assert log_cadence.logs_this_step(None) is True  # a module used without a trainer
    assert log_cadence.logs_this_step(L.Trainer(logger=False, log_every_n_steps=5)) is True  # no loop running
