"""The W&B run page: tables, image panels with mask overlays, per-stage charts, throughput, one run under DDP.

Unit tests cover the table / panel builders and the throughput and progress helpers. The slow tests run a short
demo fit (warm-up -> initial labels -> 1 stage -> refined labels) and a test with W&B OFFLINE, then read the
offline runs back from disk: wandb 0.31 (wandb-core) writes no ``wandb-summary.json`` for offline runs, so the
summary, history, metric definitions and config are decoded from ``run-<id>.wandb`` (a LevelDB-style log of
``wandb.proto.wandb_internal_pb2.Record`` protobufs, what ``wandb sync`` uploads), and the media and table files
from ``files/media/``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from tiny_config import checkpoint_callback, write_tiny_config

from wsss_lightning.callbacks.progress import stage_description
from wsss_lightning.callbacks.pseudo_label_refresh import PseudoLabelRefresh
from wsss_lightning.callbacks.throughput import RateWindow, Throughput, count_images
from wsss_lightning.callbacks.wandb_media import (
    QUALITY_COLUMNS,
    WandbMedia,
    build_panel,
    class_labels,
    iou_table_rows,
    quality_table_rows,
    saliency_table_rows,
)
from wsss_lightning.config_files import load_config
from wsss_lightning.data.demo import DEMO_CLASSES, TINY_SETTINGS, generate_demo
from wsss_lightning.data.splits import read_id_list
from wsss_lightning.utils.visualize import colorize_label

# ------------------------------------------------------------------------------------------------ reading a run

_BLOCK = 32 * 1024  # the LevelDB log block size wandb uses
_HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte); every record: crc32 (4), length (2), type (1)


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of an offline run file ``run-<id>.wandb`` (FULL / FIRST-MIDDLE-LAST chunks joined)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, pending = _HEADER, b""
    while position + _HEADER <= len(data):
        left = _BLOCK - position % _BLOCK
        if left < _HEADER:  # a block's tail too short for a record header is zero padding
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + _HEADER])
        if kind == 0:  # zero padding up to the block end
            position += left
            continue
        payload = data[position + _HEADER : position + _HEADER + length]
        position += _HEADER + length
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _set(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """``summary`` (final values, nested), ``history`` (one dict per logged row), ``metrics`` (define_metric
    records as ``{name or glob: step_metric}``), ``config`` (+ ``config_keys``, every key path updated) and ``files``
    (paths under ``files/``)."""
    (run_file,) = run_dir.glob("run-*.wandb")
    run: dict[str, Any] = {"summary": {}, "history": [], "metrics": {}, "config": {}, "config_keys": set()}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            for update in record.summary.update:
                _set(run["summary"], list(update.nested_key) or [update.key], json.loads(update.value_json))
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, list(item.nested_key) or [item.key], json.loads(item.value_json))
            run["history"].append(row)
        elif kind == "metric":
            run["metrics"][record.metric.name or record.metric.glob_name] = record.metric.step_metric
        elif kind == "config":
            for update in record.config.update:
                run["config_keys"].add(tuple(update.nested_key) or (update.key,))
                _set(run["config"], list(update.nested_key) or [update.key], json.loads(update.value_json))
    files = run_dir / "files"
    run["files"] = {str(p.relative_to(files)) for p in files.rglob("*") if p.is_file()}
    run["dir"] = files
    return run


def _table(run: dict[str, Any], key: str) -> dict[str, Any]:
    """A logged table's JSON file (``columns``, ``data``), through the summary's path."""
    entry = run["summary"][key]
    return json.loads((run["dir"] / entry["path"]).read_text())


# ------------------------------------------------------------------------------------------------ unit tests


RESULTS = {
    "segmentation": {
        "val": {
            "ss": {"mode": "single-scale", "mIoU": 0.5, "IoU": {"background": 0.75, "disc": 0.25, "ring": None}},
            "ms": {"mode": "multi-scale", "mIoU": 0.625, "IoU": {"background": 0.8, "disc": 0.45, "ring": None}},
        }
    },
    "saliency": {
        "ECSSD": {"protocol": "sod", "maxF": 0.9, "MAE": 0.1},
        "DUTS-TE": {"protocol": "sod", "maxF": 0.8, "MAE": 0.2, "Sm": 0.7},
    },
}


def test_iou_table_rows_list_every_mode_and_class():
    rows = iou_table_rows(RESULTS)
    assert rows == [
        ["val", "ss", "mIoU", 0.5],
        ["val", "ss", "background", 0.75],
        ["val", "ss", "disc", 0.25],
        ["val", "ss", "ring", None],
        ["val", "ms", "mIoU", 0.625],
        ["val", "ms", "background", 0.8],
        ["val", "ms", "disc", 0.45],
        ["val", "ms", "ring", None],
    ]
    assert iou_table_rows({}) == []


def test_saliency_table_rows_union_the_metric_columns():
    columns, rows = saliency_table_rows(RESULTS)
    assert columns == ["dataset", "protocol", "maxF", "MAE", "Sm"]
    assert rows == [["ECSSD", "sod", 0.9, 0.1, None], ["DUTS-TE", "sod", 0.8, 0.2, 0.7]]


def test_quality_table_rows_follow_the_columns():
    records = [{"stage": 0, "kind": "initial", "pseudo_mIoU": 0.4, "images": 24, "dir": "x"}]
    (row,) = quality_table_rows(records)
    assert len(row) == len(QUALITY_COLUMNS)
    assert row[QUALITY_COLUMNS.index("stage")] == 0 and row[QUALITY_COLUMNS.index("pseudo_mIoU")] == 0.4
    assert row[QUALITY_COLUMNS.index("raw_cam_mIoU")] is None


def test_class_labels_add_the_ignore_value():
    assert class_labels(["background", "disc"]) == {0: "background", 1: "disc", 255: "ignore"}


def test_build_panel_order_captions_masks_and_downscaling():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 80, 3), dtype=np.uint8)
    gt = np.zeros((40, 80), dtype=np.uint8)
    gt[10:30, 10:30] = 1
    gt[0, 0] = 255
    prediction = np.zeros_like(gt)
    prediction[10:30, 40:60] = 3
    cam = np.zeros((5, 40, 80), dtype=np.float32)
    cam[0, 10:30, 10:30] = 1.0
    maps = {"cam": cam, "refined_cam": cam * 0.5, "saliency": np.full((40, 80), 0.5, np.float32)}
    names = ["background", "disc", "square", "triangle", "star", "ring"]
    panel = build_panel(
        "img", image, names, present=[0, 2, 3], ground_truth=gt, prediction=prediction, maps=maps,
        offshelf_saliency=np.ones((40, 80), np.float32), max_classes=2, max_side=40,
    )  # fmt: skip
    assert panel.captions == [
        "img", "ground truth", "prediction", "CAM disc", "CAM triangle", "refined CAM disc", "refined CAM triangle",
        "saliency (predicted)", "saliency (off-the-shelf)",
    ]  # fmt: skip
    assert all(image.shape == (20, 40, 3) and image.dtype == np.uint8 for image in panel.images)  # longer side 40
    # Only the image carries the interactive masks, at the panel size, nearest-neighbour (no new classes).
    first = panel.masks[0]
    assert set(first) == {"ground_truth", "prediction"} and all(m is None for m in panel.masks[1:])
    assert first["ground_truth"].shape == (20, 40)
    assert set(np.unique(first["ground_truth"]).tolist()) <= {0, 1, 255}
    assert np.array_equal(panel.images[1], colorize_label(first["ground_truth"]))
    assert panel.images[-1].min() == 255  # off-the-shelf saliency 1.0 -> white
    wandb_masks = panel.wandb_masks(names)
    assert wandb_masks[0]["prediction"]["class_labels"][3] == "triangle"
    assert wandb_masks[0]["prediction"]["mask_data"] is first["prediction"]
    assert wandb_masks[1] is None


def test_wandb_media_is_silent_without_a_wandb_logger():
    from lightning.pytorch.loggers import CSVLogger

    media = WandbMedia(num_images=2)
    trainer = SimpleNamespace(loggers=[CSVLogger("unused")], is_global_zero=True, sanity_checking=False,
                              state=SimpleNamespace(fn="fit"), callbacks=[], global_step=0)  # fmt: skip
    media.on_validation_end(trainer, SimpleNamespace(eval_results={"val": RESULTS}))
    assert media.validations == 1 and media.seconds == 0.0  # counted, nothing built
    with pytest.raises(ValueError):
        WandbMedia(val_every_n_epochs=0)


def test_log_record_hands_a_finished_set_to_the_listeners_on_rank_zero():
    from wsss_lightning.label_runner import log_record
    from wsss_lightning.modules.protocol import LabelSetListener

    seen: list[Any] = []

    class Listener(LabelSetListener):
        def on_label_set_end(self, trainer: Any, module: Any, record: dict[str, Any]) -> None:
            seen.append(record)

    record = {"stage": 2, "kind": "refined", "images": 3, "seconds": 0.1, "pseudo_mIoU": 0.5, "dir": "missing"}
    logged: list[dict[str, Any]] = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append(metrics))
    # a callback that merely has an `on_label_set_end` attribute is not a listener
    stray = SimpleNamespace(on_label_set_end=lambda *args: seen.append("stray"))
    trainer = SimpleNamespace(is_global_zero=True, loggers=[logger], callbacks=[Listener(), stray, object()],
                              global_step=7)  # fmt: skip
    lines: list[str] = []
    log_record(trainer, None, record, echo=lines.append)
    assert seen == [record] and logged == [{"pseudo/mIoU": 0.5, "pseudo/stage": 2}]
    assert lines[0].startswith("[pseudo-labels] stage 2 (refined, 3 images") and "-> missing" in lines[0]
    log_record(SimpleNamespace(**{**vars(trainer), "is_global_zero": False}), None, record, echo=lines.append)
    assert len(seen) == 1 and len(lines) == 1  # other ranks neither log nor show


def test_count_images_plain_and_joint_batches():
    import torch

    assert count_images({"image": torch.zeros(4, 3, 8, 8), "name": ["a"] * 4}) == 4
    assert count_images({"seg": {"image": torch.zeros(3, 3, 8, 8)}, "sal": {"image": torch.zeros(2, 3, 8, 8)}}) == 5
    assert count_images([{"image": torch.zeros(1, 3, 2, 2)}, {"image": torch.zeros(2, 3, 2, 2)}]) == 3
    assert count_images({"name": ["a"]}) == 0


def test_rate_window_slides():
    window = RateWindow(size=2)
    window.update(0.0, 0)
    assert window.rate() is None
    window.update(1.0, 4)
    assert window.rate() == pytest.approx(4.0)
    window.update(3.0, 4)
    assert window.rate() == pytest.approx(8 / 3)
    window.update(4.0, 8)  # (0, 0) falls out: (4 + 8) images over 3 s
    assert window.rate() == pytest.approx(4.0)
    with pytest.raises(ValueError):
        RateWindow(0)


class _FakeModule:
    def __init__(self) -> None:
        self.logged: list[tuple[str, float]] = []

    def log(self, name: str, value: float, **kwargs: Any) -> None:
        self.logged.append((name, value))


def test_throughput_logs_global_step_and_epoch_rates_with_a_fake_clock():
    import torch

    times = iter([10.0, 11.0, 13.0])  # batch 0 starts at 10 s, ends at 11 s; batch 1 ends at 13 s
    callback = Throughput(window=5, clock=lambda: next(times))
    trainer, module = SimpleNamespace(world_size=2), _FakeModule()
    batch = {"image": torch.zeros(4, 3, 2, 2)}
    callback.on_train_epoch_start(trainer, module)
    callback.on_train_batch_start(trainer, module, batch, 0)
    callback.on_train_batch_end(trainer, module, None, batch, 0)
    callback.on_train_batch_start(trainer, module, batch, 1)  # no clock read after the first batch
    callback.on_train_batch_end(trainer, module, None, batch, 1)
    callback.on_train_epoch_end(trainer, module)
    # rank-0 rates x world size 2: 4 img / 1 s, then 8 img / 3 s; the epoch: 8 img / 3 s.
    assert module.logged == [
        ("train/images_per_s", pytest.approx(8.0)),
        ("train/images_per_s", pytest.approx(16 / 3)),
        ("train/epoch_images_per_s", pytest.approx(16 / 3)),
    ]


def test_stage_description_names_warmup_and_stage_positions():
    stages = PseudoLabelRefresh(warmup_epochs=2, num_stages=2, epochs_per_stage=[3, 1])
    assert stage_description(stages, 0, 6) == "warm-up · epoch 1/2 (1/6)"
    assert stage_description(stages, 2, 6) == "stage 1/2 · epoch 1/3 (3/6)"
    assert stage_description(stages, 4, 6) == "stage 1/2 · epoch 3/3 (5/6)"
    assert stage_description(stages, 5, 6) == "stage 2/2 · epoch 1/1 (6/6)"
    assert stage_description(None, 3, 10) == "epoch 4/10"
    assert stage_description(None, 3, -1) == "epoch 4"


class _FakeRun:
    """The parts of a W&B run that artifact logging uses (a real online run needs a server)."""

    def __init__(self, mode: str = "online") -> None:
        self.id = "abc123"
        self.settings = SimpleNamespace(mode=mode)
        self.logged: list[tuple[Any, list[str]]] = []

    def log_artifact(self, artifact: Any, aliases: list[str] | None = None) -> None:
        self.logged.append((artifact, aliases))


def _logger(offline: bool) -> Any:
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="wsss_test", offline=offline)  # lazy: no run is started
    logger._experiment = _FakeRun()
    return logger


def test_best_checkpoint_goes_up_as_a_model_artifact_only_online(tmp_path):
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"weights")
    online, offline = _logger(offline=False), _logger(offline=True)
    from lightning.pytorch.callbacks import ModelCheckpoint

    callback = ModelCheckpoint(dirpath=tmp_path)
    callback.last_model_path = str(checkpoint)
    trainer = SimpleNamespace(is_global_zero=True, checkpoint_callback=callback, loggers=[online, offline])
    WandbMedia().on_fit_end(trainer, None)
    assert offline.experiment.logged == []
    ((artifact, aliases),) = online.experiment.logged
    assert artifact.type == "model" and artifact.name == "model-abc123" and aliases == ["latest", "last"]
    assert set(artifact.manifest.entries) == {"model.ckpt"}
    callback.best_model_path = str(checkpoint)  # a monitored run: the best checkpoint, aliased so
    online.experiment.logged.clear()
    WandbMedia().on_fit_end(trainer, None)
    assert online.experiment.logged[0][1] == ["latest", "best"]
    online.experiment.logged.clear()
    WandbMedia(log_checkpoint=False).on_fit_end(trainer, None)
    assert online.experiment.logged == []


def test_label_set_artifact_online_only_with_quality_metadata(tmp_path):
    from wsss_lightning.callbacks.wandb_media import log_label_set_artifact

    folder = tmp_path / "stage1"
    (folder / "seg").mkdir(parents=True)
    (folder / "seg" / "a.png").write_bytes(b"png")
    (folder / "quality.json").write_text("{}")
    record = {"stage": 1, "kind": "refined", "dir": str(folder), "pseudo_mIoU": 0.5, "written_per_rank": [1]}
    online, offline = _logger(offline=False), _logger(offline=True)
    trainer = SimpleNamespace(is_global_zero=True, loggers=[online, offline])
    assert log_label_set_artifact(trainer, record) == 1
    ((artifact, aliases),) = online.experiment.logged
    assert artifact.name == "abc123-pseudo_labels-stage1" and artifact.type == "pseudo_labels"
    assert aliases == ["latest", "stage1"]
    assert artifact.metadata["pseudo_mIoU"] == 0.5 and "written_per_rank" not in artifact.metadata
    assert set(artifact.manifest.entries) == {"seg/a.png", "quality.json"}
    assert log_label_set_artifact(SimpleNamespace(is_global_zero=False, loggers=[online]), record) == 0


def test_stage_progress_bar_shows_the_stage_and_epoch(tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel

    from wsss_lightning.callbacks.progress import StageProgressBar

    class Schedule(PseudoLabelRefresh):  # the schedule of PseudoLabelRefresh, without its refreshes
        def __init__(self) -> None:
            super().__init__(warmup_epochs=1, num_stages=2, epochs_per_stage=1)

        def setup(self, *args: Any, **kwargs: Any) -> None: ...
        def on_fit_start(self, *args: Any) -> None: ...
        def on_train_start(self, *args: Any) -> None: ...
        def on_train_epoch_end(self, *args: Any) -> None: ...

    class Recording(StageProgressBar):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.seen.append(self.train_progress_bar.desc)
            super().on_train_epoch_end(trainer, pl_module)

    bar = Recording()
    trainer = Trainer(
        max_epochs=3, limit_train_batches=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_model_summary=False, callbacks=[Schedule(), bar], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(BoringModel())
    assert [desc.rstrip(": ") for desc in bar.seen] == [
        "warm-up · epoch 1/1 (1/3)",
        "stage 1/2 · epoch 1/1 (2/3)",
        "stage 2/2 · epoch 1/1 (3/3)",
    ]


@pytest.mark.parametrize(("interval", "expected"), [(0.0, [1, 2, 3, 4, 5, 6]), (1e9, [1, 6])])
def test_progress_bar_reads_the_training_metrics_at_most_every_interval(tmp_path, interval, expected):
    """Reading the metrics is a GPU synchronisation: with a long interval only the first and the last batch of the
    epoch read them (the count still moves every batch); with 0, every batch, as Lightning's bar."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel

    from wsss_lightning.callbacks.progress import StageProgressBar

    class Recording(StageProgressBar):
        def __init__(self) -> None:
            super().__init__(metrics_interval_s=interval)
            self.read_at: list[int] = []
            self.counts: list[int] = []

        def get_metrics(self, trainer: Any, pl_module: Any) -> dict:
            if trainer.training and self.train_progress_bar.n not in self.read_at:
                self.read_at.append(self.train_progress_bar.n)
            return super().get_metrics(trainer, pl_module)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            self.counts.append(self.train_progress_bar.n)

    bar = Recording()
    trainer = Trainer(
        max_epochs=1, limit_train_batches=6, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_model_summary=False, callbacks=[bar], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(BoringModel())
    assert bar.counts == [1, 2, 3, 4, 5, 6]
    assert bar.read_at == expected


def test_throughput_logs_its_rate_without_a_copy_to_the_device() -> None:
    logged: dict[str, Any] = {}
    module = SimpleNamespace(log=lambda name, value, **kwargs: logged.__setitem__(name, value))
    trainer = SimpleNamespace(world_size=2)
    clock = iter([0.0, 1.0, 2.0])
    callback = Throughput(window=4, clock=lambda: next(clock))
    callback.on_train_epoch_start(trainer, module)
    callback.on_train_batch_start(trainer, module, {"image": torch.zeros(4, 3, 2, 2)}, 0)
    callback.on_train_batch_end(trainer, module, None, {"image": torch.zeros(4, 3, 2, 2)}, 0)
    callback.on_train_batch_end(trainer, module, None, {"image": torch.zeros(4, 3, 2, 2)}, 1)
    value = logged["train/images_per_s"]
    assert isinstance(value, torch.Tensor) and value.device.type == "cpu"  # a Python float would be copied to the GPU
    assert value.item() == pytest.approx(2 * 8 / 2.0)  # 8 images in 2 s on each of 2 ranks


def test_progress_bar_names_a_pseudolabel_run(tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
    from torch.utils.data import DataLoader

    from wsss_lightning.callbacks.progress import StageProgressBar
    from wsss_lightning.label_runner import LabelRunOptions
    from wsss_lightning.pseudo.label_set import LabelSet
    from wsss_lightning.trainer import LabelSetTask

    class Task(LabelSetTask):  # `wsss pseudolabel`'s carrier, without the label-set run
        def predict_step(self, batch: Any, batch_idx: int) -> None:
            return None

    class Recording(StageProgressBar):
        def on_predict_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
            self.seen = (self.predict_progress_bar.desc, self.predict_progress_bar.unit)
            super().on_predict_batch_end(trainer, pl_module, *args, **kwargs)

    loader = DataLoader(RandomDataset(32, 3), batch_size=1)
    task = Task(BoringModel(), None, LabelSet(tmp_path / "set"), "refined", 2, {}, LabelRunOptions())
    for model, expected in (
        (BoringModel(), ("Predicting", "img")),
        (task, ("Pseudo-labels (refined, stage 2)", "img")),
    ):
        bar = Recording()
        trainer = Trainer(logger=False, callbacks=[bar], default_root_dir=tmp_path)
        trainer.predict(model, loader, return_predictions=False)
        assert (bar.seen[0].rstrip(": "), bar.seen[1]) == expected


def test_wsss_evaluate_shows_a_progress_bar_with_counts_and_rate(tiny_demo, capsys):
    from wsss_lightning.cli import main

    masks = tiny_demo / "ECSSD" / "ground_truth_mask"
    count = len(list(masks.glob("*.png")))
    assert main(["evaluate", "--task", "sal", "--pred", str(masks), "--gt", str(masks)]) == 0
    captured = capsys.readouterr()
    assert "evaluate sal" in captured.err and f"{count}/{count}" in captured.err and "img/s" in captured.err
    assert "maxF" in captured.out


def test_wsss_data_check_shows_progress_bars_per_split(tiny_demo, tmp_path, capsys):
    from wsss_lightning.cli import main

    config = {"data": {"class_path": "wsss_lightning.data.WSSSDataModule", "init_args": {
        "root": str(tiny_demo / "VOCdevkit" / "VOC2012"), "dataset": "voc",
        "saliency_dir": "saliency_map"}}}  # fmt: skip
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["data", "check", "--config", str(path), "--stage", "fit"]) == 0
    err = capsys.readouterr().err
    assert "check train_aug" in err and f"/{TINY_SETTINGS['num_train_aug']}" in err and "img/s" in err


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    ("logger", "class_path"),
    [
        ("wandb", "lightning.pytorch.loggers.WandbLogger"),
        ("csv", "lightning.pytorch.loggers.CSVLogger"),
        ("tensorboard", "lightning.pytorch.loggers.TensorBoardLogger"),
    ],
)
def test_logger_configs_compose_onto_an_experiment(logger, class_path, capsys):
    from wsss_lightning.cli import main

    args = ["fit", "--config", str(CONFIGS / "voc_auxseg.yaml"), "--config", str(CONFIGS / "logger" / f"{logger}.yaml")]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert printed["logger"]["class_path"] == class_path
    if logger == "wandb":  # offline unless asked, and no checkpoint upload by the logger itself
        assert (
            printed["logger"]["init_args"]["offline"] is True and printed["logger"]["init_args"]["log_model"] is False
        )
    else:  # the W&B options of the experiment config do not leak into another logger
        assert "offline" not in printed["logger"]["init_args"]
    callbacks = [c["class_path"] for c in printed["callbacks"]]  # kept: inert without W&B
    assert "wsss_lightning.callbacks.wandb_media.WandbMedia" in callbacks


@pytest.mark.parametrize("name", ["voc_auxseg", "voc_ssnet", "coco_auxseg", "demo_auxseg", "demo_ssnet"])
def test_experiment_configs_carry_the_run_page_callbacks(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    callbacks = [c["class_path"] for c in config["trainer"]["callbacks"]]
    assert "wsss_lightning.callbacks.wandb_media.WandbMedia" in callbacks
    assert "wsss_lightning.callbacks.throughput.Throughput" in callbacks
    if name.startswith(("voc", "coco")):  # W&B by default, offline
        assert config["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.WandbLogger"
        assert config["trainer"]["logger"]["init_args"]["offline"] is True
        assert "lightning.pytorch.callbacks.LearningRateMonitor" in callbacks


# ------------------------------------------------------------------------------------------------ end to end


def _config(demo: Path, run: Path, devices: int = 1, num_images: int = 2) -> Path:
    trainer: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": devices,
        "default_root_dir": str(run),
        "logger": {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"project": "wsss_test", "name": run.name, "save_dir": str(run), "offline": True},
        },
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 2,
        "log_every_n_steps": 1,
        "callbacks": [
            checkpoint_callback(run),
            {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},
            {"class_path": "wsss_lightning.callbacks.throughput.Throughput"},
            {"class_path": "wsss_lightning.callbacks.wandb_media.WandbMedia", "init_args": {"num_images": num_images}},
        ],
    }
    if devices > 1:
        trainer["strategy"] = "ddp"
    return write_tiny_config(demo, run, trainer)


def _runs(save_dir: Path) -> list[Path]:
    return sorted((save_dir / "wandb").glob("offline-run-*"))


@pytest.fixture(scope="module")
def offline_runs(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """``wsss fit`` then ``wsss test`` with W&B offline; the two runs read back from disk."""
    from wsss_lightning.cli import main

    root = tmp_path_factory.mktemp("wandb_e2e")
    generate_demo(root / "demo", seed=1, **TINY_SETTINGS)
    run = root / "run"
    config = _config(root / "demo", run)
    with pytest.MonkeyPatch.context() as patch:  # the test-wide env disables W&B; restored afterwards
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_DIR", str(root / "wandb_dir"))
        patch.setenv("WANDB_SILENT", "true")
        assert main(["fit", "--config", str(config)]) == 0
        (fit_dir,) = _runs(run)
        assert main(["test", "--config", str(config), "--ckpt_path", "last"]) == 0
    (test_dir,) = [d for d in _runs(run) if d != fit_dir]
    return {"fit": read_offline_run(fit_dir), "test": read_offline_run(test_dir), "root": root}


def _history_keys(run: dict[str, Any]) -> set[str]:
    return {key for row in run["history"] for key in row}


@pytest.mark.slow
def test_fit_run_has_scalars_config_and_metric_axes(offline_runs):
    fit = offline_runs["fit"]
    keys = _history_keys(fit)
    # Losses per task, learning rate per parameter group, throughput.
    assert {"train/loss", "train/loss_cls", "train/loss_sal", "train/loss_seg"} <= keys
    assert {"lr-SGD/backbone", "lr-SGD/heads"} <= keys
    assert {"train/images_per_s", "train/epoch_images_per_s"} <= keys
    assert all(row["train/images_per_s"] > 0 for row in fit["history"] if "train/images_per_s" in row)
    # Validation mIoU and per-class IoU; pseudo-label quality once per set, against the stage.
    assert {"val/mIoU", "val/IoU_background"} <= keys
    stages = [row["pseudo/stage"] for row in fit["history"] if "pseudo/mIoU" in row]
    assert stages == [0, 1]
    assert all({"pseudo/precision", "pseudo/recall"} <= set(row) for row in fit["history"] if "pseudo/mIoU" in row)
    assert fit["metrics"]["pseudo/*"] == "pseudo/stage"
    assert fit["metrics"]["*"] == "trainer/global_step"
    # The resolved config of the command.
    cli = fit["config"]["cli"]
    assert cli["stages"]["init_args"]["num_stages"] == 1
    assert cli["data"]["init_args"]["dataset"] == "voc" and cli["data"]["init_args"]["class_names"] is None


@pytest.mark.slow
def test_fit_run_has_iou_table_and_stage_quality_chart(offline_runs):
    fit = offline_runs["fit"]
    iou = _table(fit, "val/IoU_table")
    assert iou["columns"] == ["split", "mode", "class", "IoU"]
    assert [row[2] for row in iou["data"]] == ["mIoU", *DEMO_CLASSES]
    assert iou["data"][0][3] == pytest.approx(fit["summary"]["val/mIoU"])  # both from the last validation

    quality = _table(fit, "pseudo_quality/table")
    assert quality["columns"] == list(QUALITY_COLUMNS)
    assert [(row[0], row[1]) for row in quality["data"]] == [(0, "initial"), (1, "refined")]
    for label_set, row in zip(("stage0", "stage1"), quality["data"]):
        on_disk = json.loads((offline_runs["root"] / "run" / "labels" / label_set / "quality.json").read_text())
        assert row[2] == pytest.approx(on_disk["pseudo_mIoU"]) and row[4] == pytest.approx(on_disk["pseudo_recall"])
    chart = _table(fit, "pseudo_quality/chart_table")
    lines = {(line, step): value for step, line, value in chart["data"]}
    assert set(lines) == {(k, s) for k in ("mIoU", "precision", "recall") for s in (0, 1)}
    assert lines[("mIoU", 1)] == pytest.approx(quality["data"][1][2])
    assert ("_wandb", "visualize", "pseudo_quality/chart") in fit["config_keys"]  # the line-series panel spec


@pytest.mark.slow
def test_fit_run_has_mask_overlay_panels_for_fixed_ids(offline_runs):
    fit = offline_runs["fit"]
    summary, files = fit["summary"], fit["files"]
    val_ids = sorted(k.split("/", 1)[1] for k in summary if k.startswith("val_media/"))
    pseudo_ids = sorted(k.split("/", 1)[1] for k in summary if k.startswith("pseudo_media/"))
    # Fixed ids: the first 2 of the val split; the first 2 training ids that are scored (in `train`, with GT).
    lists = offline_runs["root"] / "demo" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    assert val_ids == sorted(e.id for e in read_id_list(lists / "val.txt")[:2])
    scored = {e.id for e in read_id_list(lists / "train.txt")}
    assert pseudo_ids == sorted([e.id for e in read_id_list(lists / "train_aug.txt") if e.id in scored][:2])
    # The same ids at every step they were logged (2 validations, 2 label sets).
    for name in val_ids:  # the same ids at every validation (2: the warm-up's end and the stage's end)
        assert sum(f"val_media/{name}" in row for row in fit["history"]) == 2
    for name in pseudo_ids:  # and after every label set (initial, refined)
        assert sum(f"pseudo_media/{name}" in row for row in fit["history"]) == 2
    panel = summary[f"val_media/{val_ids[0]}"]
    assert panel["_type"] == "images/separated"
    assert panel["captions"][:3] == [val_ids[0], "ground truth", "prediction"]
    assert any(c.startswith("CAM ") for c in panel["captions"])
    assert any(c.startswith("refined CAM ") for c in panel["captions"])
    assert "saliency (predicted)" in panel["captions"]
    assert all(name in files for name in panel["filenames"])
    masks = panel["all_masks"][0]
    assert set(masks) == {"ground_truth", "prediction"} and all(m is None for m in panel["all_masks"][1:])
    assert all(masks[k]["path"] in files for k in masks)
    legend = fit["config"]["_wandb"]["mask/class_labels"]
    entries = [v for k, v in legend.items() if k.startswith(f"val_media/{val_ids[0]}")]
    assert entries and entries[0]["value"] == {**{str(i): n for i, n in enumerate(DEMO_CLASSES)}, "255": "ignore"}

    pseudo = summary[f"pseudo_media/{pseudo_ids[0]}"]
    assert set(pseudo["all_masks"][0]) == {"ground_truth", "prediction", "pseudo_label"}
    assert any("pseudo-label" in c for c in pseudo["captions"])
    assert any("saliency (updated)" in c for c in pseudo["captions"])  # the refined set carries the updated map
    assert pseudo["captions"][0] == f"{pseudo_ids[0]} (stage 1, refined)"  # the last logged set, named once


@pytest.mark.slow
def test_test_run_has_tables_and_panels(offline_runs):
    test = offline_runs["test"]
    summary = test["summary"]
    assert {"test/mIoU", "test/ECSSD/maxF", "test/ECSSD/MAE"} <= set(summary)
    iou = _table(test, "test/IoU_table")
    assert [row[2] for row in iou["data"]] == ["mIoU", *DEMO_CLASSES]
    assert iou["data"][0][3] == pytest.approx(summary["test/mIoU"])
    saliency = _table(test, "test/saliency_table")
    assert saliency["columns"][:2] == ["dataset", "protocol"] and {"maxF", "MAE", "Sm"} <= set(saliency["columns"])
    assert saliency["data"][0][0] == "ECSSD"
    assert saliency["data"][0][saliency["columns"].index("maxF")] == pytest.approx(summary["test/ECSSD/maxF"])
    assert len([k for k in summary if k.startswith("test_media/")]) == 2


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ddp_processes_create_one_wandb_run(tmp_path):
    demo = tmp_path / "demo"
    generate_demo(demo, seed=2, **TINY_SETTINGS)
    run = tmp_path / "run"
    config = _config(demo, run, devices=2, num_images=1)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_DIR": str(tmp_path / "wandb_dir"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    command = [sys.executable, "-m", "wsss_lightning.cli", "fit", "--config", str(config)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = _runs(run)  # exactly one run: rank 1 never creates one
    assert list(tmp_path.rglob("offline-run-*")) == [run_dir]  # and none elsewhere (WANDB_DIR, cwd)
    fit = read_offline_run(run_dir)
    assert [row["pseudo/stage"] for row in fit["history"] if "pseudo/mIoU" in row] == [0, 1]  # logged once per set
    assert "val/IoU_table" in fit["summary"] and any(k.startswith("pseudo_media/") for k in fit["summary"])
