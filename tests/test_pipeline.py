"""The stage pipeline on the tiny demo: warm-up -> initial labels -> stage 0 -> refresh -> stage 1.

Checks that the callback writes exactly one label per training id, that the DataModule serves the new labels
in the next stage, that the learning-rate schedule restarts per stage, and the quality records.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from wsss_lightning.callbacks import PseudoLabelRefresh
from wsss_lightning.data.datamodule import WSSSDataModule
from wsss_lightning.data.demo import DEMO_CLASSES, TINY_SETTINGS, generate_demo
from wsss_lightning.data.io import read_label
from wsss_lightning.models import AuxSegNetPlus, TimmBackbone
from wsss_lightning.modules import AuxSegNetModule
from wsss_lightning.pseudo.health import HealthPolicy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, seed=0, **TINY_SETTINGS)
    return root


def _datamodule(demo: Path) -> WSSSDataModule:
    return WSSSDataModule(
        root=str(demo / "VOCdevkit" / "VOC2012"),
        dataset="voc",  # the demo holds the 21 VOC classes
        saliency_dir="saliency_map",
        saliency_test_sets={"ECSSD": "../../ECSSD"},
        crop_size=64,
        batch_size=4,
        num_workers=0,
    )


def _module(lr: float = 0.01) -> AuxSegNetModule:
    network = AuxSegNetPlus(len(DEMO_CLASSES), TimmBackbone("test_resnet", output_stride=8), head_channels=16)
    return AuxSegNetModule(network, num_classes=len(DEMO_CLASSES), lr=lr, cam_scales=(1.0, 0.5), test_modes=["ss"])


class Recorder(L.Callback):
    """What each epoch trained on: label folders of the loader's dataset and the learning rate of its 1st step."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            dataset = trainer.train_dataloader.dataset
            self.epochs.append(
                {
                    "seg_dir": dataset.seg_dir,
                    "sal_dir": dataset.sal_dir,
                    "lr": [g["lr"] for g in trainer.optimizers[0].param_groups],
                    "phase": pl_module.phase,
                    "seg_values": set(torch.unique(batch["seg"]).tolist()),
                }
            )


def test_two_stage_run_writes_one_label_per_id_and_serves_them_next_stage(demo, tmp_path):
    L.seed_everything(0)
    datamodule = _datamodule(demo)
    # 3 epochs of 6 batches cannot teach 20 classes: the labels are degenerate, and this test is about the mechanics
    stages = PseudoLabelRefresh(
        output_dir=str(tmp_path / "labels"), warmup_epochs=1, num_stages=2, epochs_per_stage=1,
        refresh_after_last_stage=False, health=HealthPolicy(action="warn"),
    )  # fmt: skip
    recorder = Recorder()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=-1, callbacks=[stages, recorder], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, limit_val_batches=0, default_root_dir=str(tmp_path),
    )  # fmt: skip
    module = _module()
    trainer.fit(module, datamodule)

    ids = [entry.id for entry in datamodule.entries("train_aug")]
    assert trainer.current_epoch == 3  # 1 warm-up + 2 stages of 1 epoch
    for stage in (0, 1):
        folder = tmp_path / "labels" / f"stage{stage}"
        written = sorted(p.stem for p in (folder / "seg").glob("*.png"))
        assert written == sorted(ids), f"stage {stage}: exactly one label per training id"
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["count"] == len(ids) and set(manifest["files"]) == set(ids)
        for name in ids[:3]:
            values = set(read_label(folder / "seg" / f"{name}.png").ravel().tolist())
            assert values <= set(range(len(DEMO_CLASSES))) | {255}
    assert sorted(p.stem for p in (tmp_path / "labels" / "stage1" / "sal").glob("*.png")) == sorted(ids)
    assert not (tmp_path / "labels" / "stage0" / "sal").exists()  # stage 0 trains on the off-the-shelf maps

    warmup, stage0, stage1 = recorder.epochs
    assert warmup["phase"] == "warmup" and warmup["seg_dir"] is None and warmup["seg_values"] == {255}
    assert stage0["phase"] == "multitask"
    assert Path(stage0["seg_dir"]) == (tmp_path / "labels" / "stage0" / "seg").resolve()
    assert stage0["sal_dir"] == datamodule.path("saliency_map")
    assert Path(stage1["seg_dir"]) == (tmp_path / "labels" / "stage1" / "seg").resolve()
    assert Path(stage1["sal_dir"]) == (tmp_path / "labels" / "stage1" / "sal").resolve()
    assert stage0["seg_values"] - {255}, "stage 0 trains on real labels"
    base = [0.01, 0.1, 0.1]  # backbone, classifier (x10, the code), heads (x10)
    for epoch in (warmup, stage0, stage1):  # the poly schedule restarts at every stage
        assert epoch["lr"] == pytest.approx(base)

    assert [r["kind"] for r in stages.history] == ["initial", "refined"]
    for record in stages.history:
        assert record["images"] == len(ids) and record["reused"] == 0
        for key in ("pseudo_mIoU", "pseudo_precision", "pseudo_recall", "cam_mIoU"):
            assert 0.0 <= record[key] <= 1.0
        assert record["scored_images"] == len(datamodule.entries("train"))
    assert json.loads((tmp_path / "labels" / "stage1" / "quality.json").read_text())["kind"] == "refined"


def test_last_set_labels_only_the_scored_ids_when_asked(demo, tmp_path):
    """Nothing trains on the set after the last stage: ``last_set_ids="scored"`` writes it for the GT-scored ids only,
    scored exactly like a full set (the stage-0 set, which stage 0 trains on, still holds every id)."""
    L.seed_everything(0)
    datamodule = _datamodule(demo)
    stages = PseudoLabelRefresh(
        output_dir=str(tmp_path / "labels"), warmup_epochs=1, num_stages=1, epochs_per_stage=1,
        refresh_after_last_stage=True, last_set_ids="scored", health=HealthPolicy(action="off"),
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=-1, callbacks=[stages], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, limit_val_batches=0, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(_module(), datamodule)

    all_ids = sorted(entry.id for entry in datamodule.entries("train_aug"))
    scored = sorted(entry.id for entry in datamodule.entries("train"))
    assert 0 < len(scored) < len(all_ids)
    written = {
        stage: sorted(p.stem for p in (tmp_path / "labels" / f"stage{stage}" / "seg").glob("*.png")) for stage in (0, 1)
    }
    assert written == {0: all_ids, 1: scored}
    manifest = json.loads((tmp_path / "labels" / "stage1" / "manifest.json").read_text())
    assert manifest["count"] == len(scored) and sorted(manifest["files"]) == scored
    assert manifest["config"]["only_ids"].startswith(f"{len(scored)} ids, sha256 ")
    initial, last = stages.history
    assert "subset" not in initial and initial["images"] == len(all_ids)
    assert last["subset"] == "ids" and last["images"] == len(scored)
    assert last["scored_images"] == len(scored) == initial["scored_images"]
    assert 0.0 <= last["pseudo_mIoU"] <= 1.0


def test_last_set_ids_is_checked():
    with pytest.raises(ValueError, match="last_set_ids must be 'all' or 'scored'"):
        PseudoLabelRefresh(num_stages=1, last_set_ids="train")


def test_last_stage_epochs_lengthens_whichever_stage_is_last():
    # the demo schedule: warm-up 3, stages of 3, the last 6 -> epochs 0-2 warm-up, 3-5, 6-8, 9-11, then 12-17
    stages = PseudoLabelRefresh(warmup_epochs=3, num_stages=4, epochs_per_stage=3, last_stage_epochs=6)
    assert stages.epochs_per_stage == [3, 3, 3, 6] and stages.total_epochs == 18
    assert [stages.stage_of_epoch(e) for e in (2, 3, 11, 12, 17)] == [-1, 0, 2, 3, 3]
    # with fewer stages the last one is still the long one; a list keeps its other entries
    assert PseudoLabelRefresh(num_stages=1, epochs_per_stage=3, last_stage_epochs=6).epochs_per_stage == [6]
    assert PseudoLabelRefresh(num_stages=2, epochs_per_stage=[2, 4], last_stage_epochs=5).epochs_per_stage == [2, 5]
    assert PseudoLabelRefresh(num_stages=2, epochs_per_stage=3).epochs_per_stage == [3, 3]  # None: unchanged
    with pytest.raises(ValueError, match="last_stage_epochs must be >= 1"):
        PseudoLabelRefresh(num_stages=2, epochs_per_stage=3, last_stage_epochs=0)
