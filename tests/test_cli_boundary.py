"""Clear answers and errors at the CLI boundary, and optional pieces staying optional.

Bad input (a missing or foreign checkpoint, absent backbone weights, a wrong data root, a setting the schedule
overrides, ``predict`` without an output folder) gets one line naming the file and the fix and exit status 2 — no
traceback; ``--ckpt_path last`` says which file and stage it resumes; logs follow ``--trainer.default_root_dir``;
``fit`` runs with wandb made unimportable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_config import checkpoint_callback, write_tiny_config

from wsss_lightning.cli import main
from wsss_lightning.data.demo import TINY_SETTINGS, generate_demo

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("boundary_demo")
    generate_demo(root, seed=2, **TINY_SETTINGS)
    return root


def _config(demo: Path, run: Path, **trainer_extra) -> Path:
    trainer = {
        "accelerator": "cpu", "devices": 1, "default_root_dir": str(run), "logger": False,
        "enable_progress_bar": False, "num_sanity_val_steps": 0, "limit_val_batches": 1, "limit_test_batches": 2,
        "callbacks": [checkpoint_callback(run)], **trainer_extra,
    }  # fmt: skip
    return write_tiny_config(demo, run, trainer)


@pytest.fixture(scope="module")
def trained(demo, tmp_path_factory) -> tuple[Path, Path]:
    run = tmp_path_factory.mktemp("boundary_run") / "run"
    config = _config(demo, run)
    assert main(["fit", "--config", str(config)]) == 0
    return config, run


def _one_line_error(capsys: pytest.CaptureFixture, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.mark.slow
def test_a_missing_checkpoint_is_one_line_naming_the_file_and_the_existing_ones(trained, capsys) -> None:
    config, run = trained
    assert main(["test", "--config", str(config), "--ckpt_path", str(run / "missing.ckpt")]) == 2
    _one_line_error(capsys, "missing.ckpt: no such file", "last.ckpt")


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused_before_loading(trained, capsys) -> None:
    config, run = trained
    args = ["test", "--config", str(config), "--ckpt_path", "last", "--model.network.init_args.head_channels", "8"]
    assert main(args) == 2
    _one_line_error(capsys, str(run / "checkpoints" / "last.ckpt"), "does not fit this model", "shape")


@pytest.mark.slow
def test_ckpt_path_last_says_which_file_and_stage(trained, capsys) -> None:
    config, run = trained
    assert main(["test", "--config", str(config), "--ckpt_path", "last"]) == 0
    out = capsys.readouterr().out
    # the fit's last epoch trains on stage-0 labels (warm-up 1 epoch + 1 stage epoch)
    assert f"wsss: checkpoint {run / 'checkpoints' / 'last.ckpt'} (stage 0, epoch 2, step" in out, out[-2000:]


def test_absent_backbone_weights_bad_root_schedule_and_predict_are_one_line_errors(demo, tmp_path, capsys) -> None:
    config = _config(demo, tmp_path / "run")
    weights = "--model.network.init_args.backbone.init_args.checkpoint_path"
    assert main(["fit", "--config", str(config), weights, str(tmp_path / "none.pth")]) == 2
    _one_line_error(capsys, "none.pth does not exist")
    assert main(["fit", "--config", str(config), "--data.init_args.root", str(tmp_path / "nowhere")]) == 2
    _one_line_error(capsys, "nowhere")
    assert main(["fit", "--config", str(config), "--trainer.max_epochs", "1"]) == 2
    _one_line_error(capsys, "--trainer.max_epochs 1 conflicts with the stage schedule", "epochs_per_stage")
    assert main(["predict", "--config", str(config)]) == 2
    _one_line_error(capsys, "--out_dir")


@pytest.mark.slow
def test_fit_runs_with_wandb_unimportable_and_logs_follow_the_root_dir(demo, tmp_path) -> None:
    """WandbMedia in the callbacks, a CSV logger whose config names another save_dir, wandb absent: exit 0, and the
    metrics land under --trainer.default_root_dir."""
    blocker = tmp_path / "blocker"
    (blocker / "wandb").mkdir(parents=True)
    (blocker / "wandb" / "__init__.py").write_text("raise ImportError('wandb is not installed (test)')\n")
    run = tmp_path / "run"
    csv = {"save_dir": str(tmp_path / "elsewhere"), "name": "csv"}
    config = _config(demo, run, logger={"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": csv})
    data = yaml.safe_load(config.read_text())
    data["trainer"]["callbacks"].append({"class_path": "wsss_lightning.callbacks.wandb_media.WandbMedia"})
    config.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(TESTS_DIR), str(REPO)])}
    command = [sys.executable, "-m", "wsss_lightning.cli", "fit", "--config", str(config)]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wandb is not installed" not in result.stderr
    assert list(run.rglob("metrics.csv")) and not (tmp_path / "elsewhere").exists()
