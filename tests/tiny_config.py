"""The tiny AuxSegNet+ run config shared by the end-to-end CLI tests (test_cli, test_ddp, test_wandb_logging).

Each test brings its own ``trainer`` section (devices, logger, callbacks); the stage, model and data sections are the
same tiny setting everywhere: test_resnet backbone at output stride 8, 16-channel heads, 64 px crops, no workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def checkpoint_callback(run: Path) -> dict[str, Any]:
    """``ModelCheckpoint`` saving ``last.ckpt`` only, into ``<run>/checkpoints``."""
    return {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True, "save_top_k": 0},
    }


def write_tiny_config(
    demo: Path,
    run: Path,
    trainer: dict[str, Any],
    *,
    num_stages: int = 1,
    batch_size: int = 4,
    model: dict[str, Any] | None = None,
) -> Path:
    """Write ``<run.parent>/<run.name>.yaml`` (outside the run folder, where Lightning saves its own config.yaml).

    Args:
        demo: a ``generate_demo`` root; run: the run folder (labels go to ``<run>/labels``).
        trainer: the whole ``trainer`` section.
        num_stages: stages after a 1-epoch warm-up, 1 epoch each.
        batch_size: training batch size.
        model: ``AuxSegNetModule`` init args that replace the defaults (single-scale CAMs without flip, ss test).
    """
    model_args: dict[str, Any] = {
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
    }
    model_args.update(model or {})
    config = {
        "seed_everything": 0,
        "trainer": trainer,
        "stages": {
            "class_path": "wsss_lightning.callbacks.PseudoLabelRefresh",
            "init_args": {
                "output_dir": str(run / "labels"),
                "warmup_epochs": 1,
                "num_stages": num_stages,
                "epochs_per_stage": 1,
                # a few batches cannot teach the demo's 20 classes: the labels are degenerate; these runs test the
                # mechanics, so the health check only warns
                "health": {"action": "warn"},
            },
        },
        "model": {"class_path": "wsss_lightning.modules.AuxSegNetModule", "init_args": model_args},
        "data": {
            "class_path": "wsss_lightning.data.WSSSDataModule",
            "init_args": {
                "root": str(demo / "VOCdevkit" / "VOC2012"),
                "dataset": "voc",  # the demo holds the 21 VOC classes: no class_names, as for real VOC
                "saliency_dir": "saliency_map",
                "saliency_test_sets": {"ECSSD": "../../ECSSD"},
                "crop_size": 64,
                "batch_size": batch_size,
                "num_workers": 0,
            },
        },
    }
    path = run.parent / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
