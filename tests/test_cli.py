"""The `wsss` command end to end on the tiny demo: fit -> test (JSON) -> predict (PNGs) -> pseudolabel (resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image
from tiny_config import checkpoint_callback, write_tiny_config

from wsss_lightning.cli import main
from wsss_lightning.data.demo import DEMO_CLASSES, TINY_SETTINGS, generate_demo
from wsss_lightning.data.splits import read_id_list


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_demo")
    generate_demo(root, seed=1, **TINY_SETTINGS)
    return root


def _config(demo: Path, run: Path) -> Path:
    trainer = {
        "accelerator": "cpu",
        "devices": 1,
        "default_root_dir": str(run),
        "logger": False,
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 2,
        "callbacks": [checkpoint_callback(run)],
    }
    model = {"cam_scales": [1.0, 0.5], "cam_flip": True, "test_modes": ["ss", "ms"], "eval_scales": [0.75, 1.0]}
    return write_tiny_config(demo, run, trainer, model=model)


def test_print_config_composes_and_overrides(demo, tmp_path, capsys):
    config = _config(demo, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--data.root", "/elsewhere", "--model.network.affinity", "pairwise",
              "--print_config"])  # fmt: skip
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["init_args"]["root"] == "/elsewhere"
    assert printed["model"]["init_args"]["network"]["init_args"]["affinity"] == "pairwise"
    assert printed["stages"]["init_args"]["num_stages"] == 1


@pytest.mark.slow
def test_fit_test_predict_pseudolabel(demo, tmp_path, capsys):
    config = _config(demo, tmp_path)
    assert main(["fit", "--config", str(config)]) == 0
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()

    results = tmp_path / "results.json"
    capsys.readouterr()
    assert main(["test", "--config", str(config), "--ckpt_path", "last", "--results_json", str(results)]) == 0
    report = json.loads(results.read_text())
    # the no-training bar of the same split, from the configured saliency maps, set against each mode
    bar = report["bar"]["val"]
    assert bar["num_images"] == len(read_id_list(demo / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"))
    assert bar["mIoU"] == max(bar["by_threshold"].values()) and 0 < bar["mIoU"] < 1
    printed = capsys.readouterr().out
    assert f"no-training bar on split 'val' ({bar['num_images']} images)" in printed and "test: ss " in printed
    modes = report["segmentation"]["val"]
    assert set(modes) == {"ss", "ms"}
    assert modes["ms"]["mode"] == "multi-scale"
    assert 0.0 <= modes["ss"]["mIoU"] <= 1.0 and set(modes["ss"]["IoU"]) == set(DEMO_CLASSES)
    assert {"maxF", "meanF", "adpF", "MAE", "Sm", "maxE"} <= set(report["saliency"]["ECSSD"])

    photos = tmp_path / "photos"
    photos.mkdir()
    for index, source in enumerate(sorted((demo / "ECSSD" / "images").glob("*.jpg"))[:3]):
        Image.open(source).save(photos / f"mine_{index}.png")
    out = tmp_path / "predictions"
    args = ["predict", "--config", str(config), "--ckpt_path", "last", "--data.predict_dir", str(photos)]
    assert main([*args, "--out_dir", str(out)]) == 0
    for index in range(3):
        mask = Image.open(out / "masks" / f"mine_{index}.png")
        saliency = Image.open(out / "saliency" / f"mine_{index}.png")
        assert mask.mode == "P" and saliency.mode == "L"
        assert mask.size == saliency.size == Image.open(photos / f"mine_{index}.png").size

    labels = tmp_path / "manual_labels"
    command = ["pseudolabel", "--config", str(config), "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt"),
               "--out_dir", str(labels)]  # fmt: skip
    assert main(command) == 0
    split_file = demo / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train_aug.txt"
    train_ids = {entry.id for entry in read_id_list(split_file)}
    assert {p.stem for p in (labels / "seg").glob("*.png")} == train_ids
    first = json.loads((labels / "quality.json").read_text())
    assert first["reused"] == 0 and first["images"] == len(train_ids)
    assert main(command) == 0  # resumable: a second run reuses every intact file
    assert json.loads((labels / "quality.json").read_text())["reused"] == len(train_ids)


def test_logger_false_drops_learning_rate_monitor(tmp_path: Path) -> None:
    """`--trainer.logger false` on a config with a LearningRateMonitor builds a trainer (Lightning would raise at fit
    start) and keeps the other callbacks."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from wsss_lightning.cli import _cli_class

    config = Path(__file__).resolve().parents[1] / "configs" / "demo_auxseg.yaml"
    base = ["--config", str(config), "--data.root", str(tmp_path), "--trainer.default_root_dir",
            str(tmp_path / "run"), "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor"]  # fmt: skip
    with_logger = _cli_class()(base, run=False).trainer
    assert any(isinstance(c, LearningRateMonitor) for c in with_logger.callbacks)
    without = _cli_class()([*base, "--trainer.logger", "false"], run=False).trainer
    assert not any(isinstance(c, LearningRateMonitor) for c in without.callbacks)
    assert any(isinstance(c, ModelCheckpoint) for c in without.callbacks)
