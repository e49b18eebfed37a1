"""Signals honoured everywhere: real ``wsss`` subprocesses get SIGTERM / SIGINT / SLURM's SIGUSR1 mid-command.

For each signal in the middle of a label refresh: the process exits within ``EXIT_LIMIT`` seconds with status 143,
the labels finished before the signal are kept, and the resumed run (``--ckpt_path last``; under SLURM the automatic
restore of ``hpc_ckpt_<n>.ckpt``) ends exactly like the uninterrupted run. SIGTERM is also sent mid-training,
mid-``wsss test``, mid-``wsss predict`` and mid-``wsss pseudolabel``. The measured times go to
``<tmp>/signal_times.json`` and, printed, into the test log (docs/reliability.md quotes them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import yaml
from test_resume import _assert_complete, _config, _files  # the tiny recipe and its uninterrupted reference

from wsss_lightning.data.demo import TINY_SETTINGS, generate_demo

pytestmark = pytest.mark.slow

EXIT_LIMIT = 10.0
TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


# ------------------------------------------------------------------------------------------------ subprocess side


class Pace(L.Callback):
    """Imported by the subprocesses: slows the run down so that a signal lands mid-phase, and writes a marker file
    when the phase is under way (``phase``: ``refresh`` = after 5 labels of the stage-1 set, ``train`` = at step 8,
    ``eval`` / ``predict`` = after 2 batches)."""

    def __init__(self, marker: str, phase: str, delay: float = 0.25) -> None:
        self.marker, self.phase, self.delay = marker, phase, delay

    def _mark(self) -> None:
        Path(self.marker).touch()

    def setup(self, trainer, pl_module, stage) -> None:
        if self.phase != "refresh":
            return
        from wsss_lightning.pseudo import writer

        original, callback = writer.PseudoLabelWriter._record, self

        def paced(self_, result) -> None:
            original(self_, result)
            time.sleep(callback.delay)
            if self_.label_set.root.name in ("stage1", "manual") and self_.written == 5:
                callback._mark()

        writer.PseudoLabelWriter._record = paced

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.phase == "train":
            time.sleep(self.delay)
            if trainer.global_step == 8:
                self._mark()

    def _eval_batch(self, batch_idx: int) -> None:
        time.sleep(self.delay)
        if batch_idx == 1:
            self._mark()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.phase == "eval":
            self._eval_batch(batch_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.phase == "predict":
            self._eval_batch(batch_idx)


# ------------------------------------------------------------------------------------------------ helpers


def _env(slurm: bool = False) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(REPO)])}
    for key in [k for k in env if k.startswith("SLURM_")]:
        del env[key]
    if slurm:  # what SLURMEnvironment.detect() needs; scontrol is absent, so the requeue itself only warns
        env.update(SLURM_NTASKS="1", SLURM_JOB_NAME="wsss", SLURM_JOB_ID="4242", SLURM_NODELIST="localhost",
                   SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0")  # fmt: skip
    return env


def _paced_config(demo: Path, run: Path, phase: str, slurm: bool = False) -> Path:
    path = _config(demo, run, [])
    config = yaml.safe_load(path.read_text())
    marker = str(run) + f".{phase}.marker"
    config["trainer"]["callbacks"].append(
        {"class_path": "test_signals.Pace", "init_args": {"marker": marker, "phase": phase}}
    )
    if slurm:
        config["trainer"]["plugins"] = [
            {
                "class_path": "lightning.pytorch.plugins.environments.SLURMEnvironment",
                "init_args": {"auto_requeue": True, "requeue_signal": "SIGUSR1"},
            }
        ]
    path = run.parent / f"{run.name}-{phase}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _signal_when_marked(command: list[str], marker: Path, signum: int, env: dict[str, str]) -> tuple[int, float]:
    """Start ``wsss <command>``, send ``signum`` once ``marker`` exists; returns (exit status, seconds to exit)."""
    marker.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "wsss_lightning.cli", *command], env=env, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"finished before the signal: {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the phase never started")
        time.sleep(0.05)
    sent = time.monotonic()
    process.send_signal(signum)
    try:
        status = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"still running 60 s after signal {signum}") from None
    return status, time.monotonic() - sent


def _record(tmp_path: Path, name: str, seconds: float) -> None:
    path = tmp_path.parent / "signal_times.json"
    times = json.loads(path.read_text()) if path.exists() else {}
    times[name] = round(seconds, 2)
    path.write_text(json.dumps(times, indent=1))
    print(f"[signal] {name}: exit {seconds:.2f} s after the signal")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("signal_demo")
    generate_demo(root, seed=0, **TINY_SETTINGS)
    return root


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("signal_reference") / "run"
    result = subprocess.run(
        [sys.executable, "-m", "wsss_lightning.cli", "fit", "--config", str(_config(demo, run, []))],
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run


# ------------------------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT", "SIGUSR1"])
def test_a_signal_mid_refresh_stops_quickly_and_the_resumed_run_equals_the_uninterrupted_one(
    name: str, demo: Path, reference: Path, tmp_path: Path
) -> None:
    slurm = name == "SIGUSR1"
    run = tmp_path / "run"
    config = _paced_config(demo, run, "refresh", slurm=slurm)
    marker = Path(str(run) + ".refresh.marker")
    status, seconds = _signal_when_marked(["fit", "--config", str(config)], marker, getattr(signal, name), _env(slurm))
    _record(tmp_path, f"{name} mid-refresh", seconds)
    assert status == 143 and seconds < EXIT_LIMIT
    label_set = run / "labels" / "stage1"
    kept = {k: v for k, v in _files(label_set).items()}
    assert 5 <= len([k for k in kept if k.startswith("seg/")]) < 24, "stopped inside the refresh, finished labels kept"
    if slurm:
        assert list(run.glob("hpc_ckpt_*.ckpt")), "the requeue signal saved an hpc checkpoint"
        resume = ["fit", "--config", str(_config(demo, run, []))]  # the requeued job: Lightning restores hpc_ckpt
    else:
        resume = ["fit", "--config", str(_config(demo, run, [])), "--ckpt_path", "last"]
    result = subprocess.run(
        [sys.executable, "-m", "wsss_lightning.cli", *resume], env=_env(slurm), cwd=REPO,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(_files(label_set)[k] == v for k, v in kept.items()), "labels written before the signal were reused"
    _assert_complete(run, reference)


def test_sigterm_stops_training_test_predict_and_pseudolabel_within_the_limit(demo: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = _env()
    status, seconds = _signal_when_marked(
        ["fit", "--config", str(_paced_config(demo, run, "train"))], Path(str(run) + ".train.marker"),
        signal.SIGTERM, env,
    )  # fmt: skip
    _record(tmp_path, "SIGTERM mid-training", seconds)
    assert status == 143 and seconds < EXIT_LIMIT
    assert (run / "checkpoints" / "last.ckpt").is_file()
    for phase, command in (
        ("eval", ["test", "--ckpt_path", "last"]),
        ("predict", ["predict", "--ckpt_path", "last", "--out_dir", str(tmp_path / "predictions")]),
        ("refresh", ["pseudolabel", "--ckpt_path", "last", "--out_dir", str(tmp_path / "manual"), "--kind",
                     "refined"]),
    ):  # fmt: skip
        config = _paced_config(demo, run, phase)
        marker = Path(str(run) + f".{phase}.marker")
        status, seconds = _signal_when_marked([command[0], "--config", str(config), *command[1:]], marker,
                                              signal.SIGTERM, env)  # fmt: skip
        _record(tmp_path, f"SIGTERM mid-{command[0]}", seconds)
        assert status == 143 and seconds < EXIT_LIMIT, (command[0], status, seconds)
