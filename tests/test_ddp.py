"""Two real processes (CPU, gloo): the stage pipeline writes each label once and metrics equal one process's.

Runs the ``wsss`` command in a subprocess so Lightning's DDP launcher can start the second process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wsss_lightning.data.demo import DEMO_CLASSES, TINY_SETTINGS, generate_demo
from wsss_lightning.data.splits import read_id_list

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


def _wsss(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "wsss_lightning.cli", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _config(demo: Path, run: Path) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 2,
            "strategy": "ddp",
            "default_root_dir": str(run),
            "logger": False,
            "enable_progress_bar": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 0,
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True, "save_top_k": 0},
                }
            ],
        },
        "stages": {
            "class_path": "wsss_lightning.callbacks.PseudoLabelRefresh",
            "init_args": {
                "output_dir": str(run / "labels"),
                "warmup_epochs": 1,
                "num_stages": 2,
                "epochs_per_stage": 1,
            },
        },
        "model": {
            "class_path": "wsss_lightning.modules.AuxSegNetModule",
            "init_args": {
                "network": {
                    "class_path": "wsss_lightning.models.AuxSegNetPlus",
                    "init_args": {
                        "backbone": {
                            "class_path": "wsss_lightning.models.TimmBackbone",
                            "init_args": {"name": "test_resnet", "output_stride": 8},
                        },
                        "head_channels": 16,
                    },
                },
                "lr": 0.01,
                "cam_scales": [1.0],
                "cam_flip": False,
                "test_modes": ["ss"],
            },
        },
        "data": {
            "class_path": "wsss_lightning.data.WSSSDataModule",
            "init_args": {
                "root": str(demo / "VOCdevkit" / "VOC2012"),
                "dataset": "custom",
                "class_names": list(DEMO_CLASSES),
                "saliency_dir": "../../saliency_maps",
                "saliency_test_sets": {"ECSSD": "../../ECSSD"},
                "crop_size": 64,
                "batch_size": 4,
                "num_workers": 0,
            },
        },
    }
    path = run.parent / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_ddp_pipeline_writes_each_label_once_and_metrics_match_one_process(tmp_path):
    demo = tmp_path / "demo"
    generate_demo(demo, seed=2, **TINY_SETTINGS)
    run = tmp_path / "run"
    config = _config(demo, run)
    _wsss("fit", "--config", str(config), cwd=tmp_path)

    ids = sorted(e.id for e in read_id_list(demo / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt"))
    for stage in (0, 1, 2):
        folder = run / "labels" / f"stage{stage}"
        assert sorted(p.stem for p in (folder / "seg").glob("*.png")) == ids
        quality = json.loads((folder / "quality.json").read_text())
        assert len(quality["written_per_rank"]) == 2
        assert sum(quality["written_per_rank"]) == len(ids), "every id written exactly once across the ranks"
        assert min(quality["written_per_rank"]) >= len(ids) // 2 - 1  # both ranks did their share
        manifest = json.loads((folder / "manifest.json").read_text())
        assert sorted(manifest["files"]) == ids
        assert not list(folder.glob("manifest.rank*.jsonl"))
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    scores = {}
    for devices in ("2", "1"):
        out = tmp_path / f"test_{devices}.json"
        _wsss("test", "--config", str(config), "--ckpt_path", checkpoint, "--trainer.devices", devices,
              "--trainer.limit_test_batches", "1.0", "--results_json", str(out), cwd=tmp_path)  # fmt: skip
        scores[devices] = json.loads(out.read_text())
    two, one = scores["2"], scores["1"]
    assert two["segmentation"]["val"]["ss"]["mIoU"] == pytest.approx(one["segmentation"]["val"]["ss"]["mIoU"], abs=1e-6)
    for key, value in one["saliency"]["ECSSD"].items():
        if key != "protocol":
            assert two["saliency"]["ECSSD"][key] == pytest.approx(value, abs=1e-6)
