"""Resume anywhere, lose nothing: real ``wsss fit`` subprocesses killed with SIGKILL, resumed with ``--ckpt_path last``.

Setting: the tiny demo (24 training ids, batch 4 -> 6 steps per epoch), timm ``test_resnet``, 64 px crops,
1 warm-up epoch + 2 stages of 1 epoch (steps 0-5 warm-up, 6-11 stage 0, 12-17 stage 1), label sets stage0
(initial, after step 6), stage1 (refined, after step 12), stage2 (refined, after the last stage), a
``ModelCheckpoint(save_last, every_n_train_steps=1)``, ``--trainer.deterministic true``, one CPU thread.

What is compared with the uninterrupted run of the same seed, and why not more:

* everything produced before the kill is bit-identical (the run is deterministic up to the kill) and is
  *reused*, not regenerated: label files keep their bytes and their modification time;
* a refresh resumes from ``last-refresh.ckpt`` (saved just before it, the exact weights and step), so the
  finished label set is **bit-identical** to the uninterrupted run's, with only the missing ids written;
* after a mid-stage kill the restored step, stage, learning rate and SGD momentum equal the uninterrupted
  run's at that step (exactly);
* training *after* a resume sees the very batches, crops and dropout masks of the uninterrupted run: the training
  loader's position and the RNG states are in the checkpoint (``data/sampling.py``, ``modules/rng.py``), so every
  later label set, score and the final weights are **equal** to the uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from wsss_lightning.data.demo import DEMO_CLASSES, TINY_SETTINGS, generate_demo

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


# ------------------------------------------------------------------------------------------------ subprocess helpers
# These callbacks are imported by the `wsss fit` subprocesses (PYTHONPATH includes tests/).


class KillAt(L.Callback):
    """SIGKILLs its own process: at a global step (``step``), after ``records`` ids of a label set (``refresh``),
    or when validation starts in epoch ``epoch`` (``validation``: after the last batch, before the stage switch)."""

    def __init__(self, mode: str, value: int, records: int = 0) -> None:
        self.mode, self.value, self.records = mode, value, records

    def setup(self, trainer, pl_module, stage) -> None:
        if self.mode != "refresh":
            return
        from wsss_lightning.pseudo import writer

        original, folder, records = writer.PseudoLabelWriter._record, f"stage{self.value}", self.records

        def record_then_die(self_, result) -> None:
            original(self_, result)
            if self_.label_set.root.name == folder and self_.written >= records:
                os.kill(os.getpid(), signal.SIGKILL)

        writer.PseudoLabelWriter._record = record_then_die

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.mode == "step" and trainer.global_step == self.value:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.mode == "validation" and trainer.current_epoch == self.value:
            os.kill(os.getpid(), signal.SIGKILL)


def _momentum(trainer) -> float:
    return float(sum(s["momentum_buffer"].double().abs().sum() for s in trainer.optimizers[0].state.values() if s))


class Recorder(L.Callback):
    """Appends JSON lines: the restored state at train start, and per step the lr, momentum and label folder."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _write(self, **event) -> None:
        with open(self.path, "a") as stream:
            stream.write(json.dumps(event) + "\n")

    def _stage(self, trainer) -> int:
        return next(c.stage for c in trainer.callbacks if type(c).__name__ == "PseudoLabelRefresh")

    def on_train_start(self, trainer, pl_module) -> None:
        lr = [g["lr"] for g in trainer.optimizers[0].param_groups]
        self._write(event="start", step=trainer.global_step, stage=self._stage(trainer), lr=lr, m=_momentum(trainer))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        seg_dir = trainer.train_dataloader.dataset.seg_dir
        self._write(event="batch", step=trainer.global_step, stage=self._stage(trainer), seg_dir=str(seg_dir),
                    lr=[g["lr"] for g in trainer.optimizers[0].param_groups], m=_momentum(trainer))  # fmt: skip


def _config(demo: Path, run: Path, extra_callbacks: list[dict]) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "default_root_dir": str(run), "logger": False,
            "enable_progress_bar": False, "num_sanity_val_steps": 0, "limit_val_batches": 2, "deterministic": True,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True, "save_top_k": 0,
                               "every_n_train_steps": 1}},
                {"class_path": "test_resume.Recorder", "init_args": {"path": str(run) + ".events.jsonl"}},
                *extra_callbacks,
            ],
        },
        "stages": {"class_path": "wsss_lightning.callbacks.PseudoLabelRefresh",
                   "init_args": {"output_dir": str(run / "labels"), "warmup_epochs": 1, "num_stages": 2,
                                 "epochs_per_stage": 1,
                                 "health": {"action": "warn"}}},  # a tiny run cannot learn the 20 demo classes
        "model": {"class_path": "wsss_lightning.modules.AuxSegNetModule", "init_args": {
            "network": {"class_path": "wsss_lightning.models.AuxSegNetPlus", "init_args": {
                "backbone": {"class_path": "wsss_lightning.models.TimmBackbone",
                             "init_args": {"name": "test_resnet", "output_stride": 8, "pretrained": False}},
                "head_channels": 16}},
            "lr": 0.01, "momentum": 0.9, "cam_scales": [1.0, 0.5], "test_modes": ["ss"], "eval_scales": [1.0]}},
        "data": {"class_path": "wsss_lightning.data.WSSSDataModule", "init_args": {
            "root": str(demo / "VOCdevkit" / "VOC2012"), "dataset": "voc", "saliency_dir": "saliency_map",
            "crop_size": 64, "batch_size": 4, "num_workers": 0}},
    }  # fmt: skip
    path = run.parent / f"{run.name}{'-kill' if extra_callbacks else ''}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(REPO)])}
    command = [sys.executable, "-m", "wsss_lightning.cli", "fit", "--config", str(config), *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def _run(demo: Path, run: Path, kill: dict | None = None) -> subprocess.CompletedProcess:
    """Fit (killed by ``kill`` if given); returns the finished process."""
    callbacks = [{"class_path": "test_resume.KillAt", "init_args": kill}] if kill else []
    return _fit(_config(demo, run, callbacks))


def _resume(demo: Path, run: Path) -> subprocess.CompletedProcess:
    result = _fit(_config(demo, run, []), "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in Path(str(run) + ".events.jsonl").read_text().splitlines()]


def _files(label_set: Path) -> dict[str, str]:
    return {str(p.relative_to(label_set)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(label_set.rglob("*.png"))}  # fmt: skip


def _mtimes(label_set: Path) -> dict[str, int]:
    return {str(p.relative_to(label_set)): p.stat().st_mtime_ns for p in label_set.rglob("*.png")}


def _quality(run: Path, stage: int) -> dict:
    return json.loads((run / "labels" / f"stage{stage}" / "quality.json").read_text())


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_demo")
    generate_demo(root, seed=0, **TINY_SETTINGS)
    return root


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    result = _run(demo, run)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def _assert_complete(run: Path, reference: Path) -> None:
    """The resumed run equals the uninterrupted one: every label set bit-identical (one file per id, manifest), the
    same scores, the same final weights, at the same step."""
    for stage in (0, 1, 2):
        label_set = run / "labels" / f"stage{stage}"
        assert _files(label_set) == _files(reference / "labels" / f"stage{stage}"), f"stage {stage} labels differ"
        manifest = json.loads((label_set / "manifest.json").read_text())
        assert manifest["count"] == 24 and not list(label_set.glob("manifest.rank*"))
        assert _quality(run, stage)["pseudo_mIoU"] == _quality(reference, stage)["pseudo_mIoU"]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    expected = torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 18
    for key, value in expected["state_dict"].items():
        assert torch.equal(last["state_dict"][key], value), f"{key} differs from the uninterrupted run"
    steps = [e["step"] for e in _events(run) if e["event"] == "batch"]
    assert sorted(set(steps)) == list(range(18)), "every step ran (steps before the kill, the rest after)"


# ------------------------------------------------------------------------------------------------ kill tests


@pytest.mark.slow
def test_kill_mid_stage_resumes_same_stage_lr_and_optimizer_state(demo, reference, tmp_path):
    run = tmp_path / "run"
    killed = _run(demo, run, {"mode": "step", "value": 9})  # stage 0, its 4th step
    assert killed.returncode == -signal.SIGKILL
    stage0_before = _mtimes(run / "labels" / "stage0")
    _resume(demo, run)

    ref = {e["step"]: e for e in _events(reference) if e["event"] == "batch"}
    start = [e for e in _events(run) if e["event"] == "start"][-1]
    assert start["step"] == 9 and start["stage"] == 0
    assert start["lr"] == pytest.approx(ref[9]["lr"], rel=1e-12), "lr position restored"
    assert start["m"] == pytest.approx(ref[9]["m"], rel=1e-9) and start["m"] > 0, "SGD momentum restored"
    resumed = [e for e in _events(run) if e["event"] == "batch" and e["step"] >= 9]
    assert resumed[0]["seg_dir"] == ref[9]["seg_dir"].replace(str(reference), str(run)), "same labels"
    # The stage-0 labels were made before the kill: identical to the reference's and not rewritten.
    assert _files(run / "labels" / "stage0") == _files(reference / "labels" / "stage0")
    assert _mtimes(run / "labels" / "stage0") == stage0_before
    _assert_complete(run, reference)


@pytest.mark.slow
def test_kill_mid_refresh_writes_only_missing_ids_and_matches_the_uninterrupted_run(demo, reference, tmp_path):
    run = tmp_path / "run"
    killed = _run(demo, run, {"mode": "refresh", "value": 1, "records": 10})  # 10 of 24 stage-1 labels written
    assert killed.returncode == -signal.SIGKILL
    label_set = run / "labels" / "stage1"
    assert not (label_set / "manifest.json").exists() and len(list((label_set / "seg").glob("*.png"))) >= 10
    # Damage one finished label (truncated): the checksum must catch it on resume and the id be rewritten.
    written = sorted((label_set / "seg").glob("*.png"))
    damaged = written[0]
    damaged.write_bytes(damaged.read_bytes()[:40])
    before = _mtimes(label_set)
    _resume(demo, run)

    reference_set = reference / "labels" / "stage1"
    assert _files(label_set) == _files(reference_set), "the finished set is bit-identical"
    quality = _quality(run, 1)
    assert quality["reused"] == 9 and quality["written_per_rank"] == [15]  # 10 written - 1 damaged
    after = _mtimes(label_set)
    kept = {k for k in before if k != f"seg/{damaged.name}" and k.replace("seg/", "sal/") != f"sal/{damaged.name}"}
    assert {k: after[k] for k in kept} == {k: before[k] for k in kept}, "intact labels were reused, not rewritten"
    assert after[f"seg/{damaged.name}"] != before[f"seg/{damaged.name}"]
    # After the refresh the run switched to stage 1, on the new labels, with the learning rate restarted.
    first = next(e for e in _events(run) if e["event"] == "batch" and e["step"] == 12)
    assert first["stage"] == 1 and first["seg_dir"] == str((label_set / "seg").resolve())
    assert first["lr"] == pytest.approx([0.01, 0.1, 0.1]) and first["m"] == 0.0, "fresh stage: lr restart, no momentum"
    _assert_complete(run, reference)


@pytest.mark.slow
def test_kill_between_last_batch_and_stage_switch_redoes_the_switch(demo, reference, tmp_path):
    """Killed in the end-of-stage validation: last.ckpt holds the stage's last step but no switch happened."""
    run = tmp_path / "run"
    killed = _run(demo, run, {"mode": "validation", "value": 1})
    assert killed.returncode == -signal.SIGKILL
    assert not (run / "labels" / "stage1").exists()
    _resume(demo, run)
    assert _files(run / "labels" / "stage1") == _files(reference / "labels" / "stage1")
    first = next(e for e in _events(run) if e["event"] == "batch" and e["step"] == 12)
    assert first["stage"] == 1 and first["seg_dir"] == str((run / "labels" / "stage1" / "seg").resolve())
    assert first["lr"] == pytest.approx([0.01, 0.1, 0.1])
    _assert_complete(run, reference)


# ------------------------------------------------------------------------------------------------ fast checks


def test_nan_loss_stops_with_step_and_ids_and_keeps_last_checkpoint_finite(tmp_path: Path, monkeypatch) -> None:
    """A NaN loss at step 2 stops fit naming the step and the batch ids; last.ckpt (step 2) stays finite."""
    from wsss_lightning.modules.nonfinite import NonFiniteLossError

    error, module, names, checkpoints = _nan_at_third_step_fit(tmp_path, monkeypatch, checkpointing=True)
    assert isinstance(error, NonFiniteLossError)
    message = str(error)
    assert "loss is NaN/Inf at global step 2" in message
    assert ", ".join(names[2]) in message, "the batch's image ids are named"
    assert str(checkpoints / "nonfinite-step2.ckpt") in message
    for name, step in (("last.ckpt", 2), ("nonfinite-step2.ckpt", 2)):
        state = torch.load(checkpoints / name, map_location="cpu", weights_only=True)
        assert state["global_step"] == step
        assert all(bool(torch.isfinite(v).all()) for v in state["state_dict"].values() if v.is_floating_point())
    assert not any(torch.isnan(p).any() for p in module.parameters()), "the NaN never reached the weights"


def test_nonfinite_batch_ids() -> None:
    from wsss_lightning.modules.nonfinite import batch_ids

    assert batch_ids({"seg": {"name": ["a", "b"]}, "sal": {"name": ["c"]}}) == ["a", "b", "c"]
    assert batch_ids([{"name": "x"}, {"image": np.zeros(1)}]) == ["x"]


def test_step_check_names_loss_or_gradient() -> None:
    from wsss_lightning.modules.nonfinite import NonFiniteLossError, check_step_finite

    module, nan, inf = L.LightningModule(), torch.tensor(float("nan")), torch.tensor([float("inf")])
    check_step_finite(module, [torch.tensor(1.0), torch.tensor(2.0)], [torch.ones(3)], ["a"])  # finite: nothing
    check_step_finite(module, [], None, ["a"])  # nothing to check
    with pytest.raises(NonFiniteLossError, match="loss is not finite .*batch ids: a"):
        check_step_finite(module, [torch.tensor(1.0), nan], [torch.ones(3)], ["a"])  # one micro-batch of two
    with pytest.raises(NonFiniteLossError, match="gradient is not finite"):
        check_step_finite(module, [torch.tensor(1.0)], [torch.ones(2), inf], ["a"])
    with pytest.raises(NonFiniteLossError, match="loss is not finite"):
        check_step_finite(module, [nan], None, ["a"])  # under a GradScaler: the loss only
    with pytest.raises(NonFiniteLossError, match="gradient is not finite"):
        check_step_finite(module, [], [torch.zeros(2, 2), torch.tensor([1.0, float("nan")])], ["a"])  # grads only
    check_step_finite(module, [], [torch.ones(3), torch.zeros(2, 2)], ["a"])  # finite grads only: nothing


def test_nan_guard_decides_once_per_optimizer_step(tmp_path: Path, monkeypatch) -> None:
    """One host-device sync and one cross-rank decision per optimiser step (accumulating 2 micro-batches: every loss
    is still checked), not one before each backward plus one before the step."""
    from wsss_lightning.data.datamodule import WSSSDataModule
    from wsss_lightning.models import AuxSegNetPlus, TimmBackbone
    from wsss_lightning.modules import AuxSegNetModule, nonfinite

    demo = tmp_path / "demo"
    generate_demo(demo, seed=0, **{**TINY_SETTINGS, "num_train_aug": 8, "num_val": 2})
    checked: list[int] = []
    original = nonfinite.check_step_finite
    monkeypatch.setattr(
        "wsss_lightning.modules.base.check_step_finite",
        lambda module, losses, grads, ids: (checked.append(len(losses)), original(module, losses, grads, ids)),
    )  # fmt: skip
    L.seed_everything(0)
    network = AuxSegNetPlus(len(DEMO_CLASSES), TimmBackbone("test_resnet", output_stride=8), head_channels=8)
    module = AuxSegNetModule(network, num_classes=len(DEMO_CLASSES), lr=0.01, cam_scales=(1.0,), test_modes=["ss"])
    module.enter_stage(-1, 0, 1, reset_optimizer=False)
    datamodule = WSSSDataModule(root=str(demo / "VOCdevkit" / "VOC2012"), dataset="voc", crop_size=32, batch_size=2,
                                num_workers=0)  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=4, limit_val_batches=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
        accumulate_grad_batches=2,
    )  # fmt: skip
    decisions = {"n": 0}
    reduce = trainer.strategy.reduce_boolean_decision
    monkeypatch.setattr(
        trainer.strategy, "reduce_boolean_decision",
        lambda decision, all=True: (decisions.__setitem__("n", decisions["n"] + 1), reduce(decision, all))[1],
    )  # fmt: skip
    trainer.fit(module, datamodule)
    assert trainer.global_step == 2
    assert checked == [2, 2], "each optimiser step checks the losses of both micro-batches"
    assert decisions["n"] == 2, "one cross-rank decision per optimiser step"
    assert module._pending_losses == []


def _nan_at_third_step_fit(tmp_path: Path, monkeypatch, checkpointing: bool, nan_call: int | None = 3, **module_kwargs):
    """Fit the tiny AuxSegNet+ for 5 steps with a NaN loss at call ``nan_call`` (3: global step 2; None: finite);
    returns the error (or None), the module, the image ids of each batch and the checkpoint folder."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from wsss_lightning.data.datamodule import WSSSDataModule
    from wsss_lightning.models import AuxSegNetPlus, TimmBackbone
    from wsss_lightning.modules import AuxSegNetModule, auxsegnet
    from wsss_lightning.modules.nonfinite import NonFiniteLossError

    demo = tmp_path / "demo"
    if not demo.exists():
        generate_demo(demo, seed=0, **{**TINY_SETTINGS, "num_train_aug": 12, "num_val": 2})
    calls = {"n": 0}
    original = auxsegnet.multilabel_soft_margin

    def nan_at_third_step(logits, target):
        calls["n"] += 1
        loss = original(logits, target)
        return loss * float("nan") if calls["n"] == nan_call else loss

    monkeypatch.setattr(auxsegnet, "multilabel_soft_margin", nan_at_third_step)
    L.seed_everything(0)
    network = AuxSegNetPlus(len(DEMO_CLASSES), TimmBackbone("test_resnet", output_stride=8), head_channels=8)
    module = AuxSegNetModule(network, num_classes=len(DEMO_CLASSES), lr=0.01, cam_scales=(1.0,), test_modes=["ss"],
                             **module_kwargs)  # fmt: skip
    module.enter_stage(-1, 0, 1, reset_optimizer=False)
    datamodule = WSSSDataModule(root=str(demo / "VOCdevkit" / "VOC2012"), dataset="voc", crop_size=32, batch_size=2,
                                num_workers=0)  # fmt: skip
    name = "_".join(f"{k}-{v}" for k, v in module_kwargs.items()) + f"_ckpt-{checkpointing}_nan-{nan_call}"
    checkpoints = tmp_path / name / "checkpoints"
    callbacks = [ModelCheckpoint(dirpath=checkpoints, save_last=True, save_top_k=0, every_n_train_steps=1)]
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=5, limit_val_batches=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path / name,
        callbacks=callbacks if checkpointing else [], enable_checkpointing=checkpointing,
    )  # fmt: skip
    names: list[list[str]] = []
    monkeypatch.setattr(
        module, "on_train_batch_start",
        lambda batch, idx, base=module.on_train_batch_start: (names.append(list(batch["name"])), base(batch, idx)),
    )  # fmt: skip
    error = None
    try:
        trainer.fit(module, datamodule)
    except NonFiniteLossError as caught:
        error = caught
    return error, module, names, checkpoints


@pytest.mark.parametrize("checkpointing", [True, False], ids=["checkpoint-every-step", "no-checkpoints"])
def test_deferred_nan_guard_skips_the_update_and_stops_with_the_sync_guards_weights(
    tmp_path: Path, monkeypatch, checkpointing: bool
) -> None:
    """nonfinite_check: deferred (no host-device sync per step) ends where the sync guard ends: the bad step's update
    is skipped on the device, the run stops naming that step and its batch, the parameters equal the sync run's."""
    fused = {"optimizer_kernel": "fused"}
    sync_error, sync_module, _, sync_dir = _nan_at_third_step_fit(tmp_path, monkeypatch, checkpointing, **fused)
    error, module, names, checkpoints = _nan_at_third_step_fit(
        tmp_path, monkeypatch, checkpointing, **fused, nonfinite_check="deferred"
    )
    assert sync_error is not None and error is not None
    message = str(error)
    assert "loss is NaN/Inf at global step 2" in message and "update was skipped on the device" in message
    assert ", ".join(names[2]) in message, "the bad batch's ids, not the next one's"
    expected = dict(sync_module.named_parameters())
    for key, value in module.named_parameters():
        assert torch.equal(value, expected[key]), key
    # Without a checkpoint after the bad step, the next step's forward ran before the verdict was read: the BatchNorm
    # statistics have seen one more batch (finite); with one, the whole state equals the sync run's.
    buffers = dict(sync_module.named_buffers())
    assert all(bool(torch.isfinite(v).all()) for v in buffers.values() if v.is_floating_point())
    if checkpointing:
        assert all(torch.equal(value, buffers[key]) for key, value in module.named_buffers())
    if checkpointing:  # a checkpoint after the bad step is never written: the resolution runs before it
        assert str(checkpoints / "nonfinite-step2.ckpt") in message
        for name in ("last.ckpt", "nonfinite-step2.ckpt"):
            state = torch.load(checkpoints / name, map_location="cpu", weights_only=True)["state_dict"]
            reference = torch.load(sync_dir / name, map_location="cpu", weights_only=True)["state_dict"]
            assert all(torch.equal(state[k], reference[k]) for k in reference)


def test_deferred_nan_guard_needs_a_fused_optimizer_and_lets_finite_runs_finish(tmp_path: Path, monkeypatch) -> None:
    from wsss_lightning.models import AuxSegNetPlus, TimmBackbone
    from wsss_lightning.modules import AuxSegNetModule
    from wsss_lightning.modules.nonfinite import DeferredFiniteCheck, NonFiniteLossError

    network = AuxSegNetPlus(len(DEMO_CLASSES), TimmBackbone("test_resnet", output_stride=8), head_channels=8)
    with pytest.raises(ValueError, match="optimizer_kernel: fused"):
        AuxSegNetModule(network, num_classes=len(DEMO_CLASSES), nonfinite_check="deferred")
    with pytest.raises(ValueError, match="optimizer_kernel must be one of"):
        AuxSegNetModule(network, num_classes=len(DEMO_CLASSES), optimizer_kernel="apex")
    module = AuxSegNetModule(network, num_classes=len(DEMO_CLASSES), optimizer_kernel="fused")
    assert module.configure_optimizers()["optimizer"].defaults["fused"] is True

    # the check on its own: a bad gradient skips the fused update (weights and momentum) and is raised later
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9, fused=True)
    weight.grad = torch.ones(3)
    optimizer.step()  # a finite first step: the momentum buffer exists
    state = (weight.detach().clone(), optimizer.state[weight]["momentum_buffer"].clone())
    check = DeferredFiniteCheck()
    weight.grad = torch.tensor([1.0, float("nan"), 1.0])
    check.submit(L.LightningModule(), optimizer, [torch.tensor(0.5)], [weight.grad], ["a"])
    optimizer.step()
    assert torch.equal(weight, state[0]) and torch.equal(optimizer.state[weight]["momentum_buffer"], state[1])
    with pytest.raises(NonFiniteLossError, match="gradient is not finite .*batch ids: a"):
        check.resolve(L.LightningModule())
    check.resolve(L.LightningModule())  # resolved once: nothing pending
    weight.grad = torch.ones(3)
    check.submit(L.LightningModule(), optimizer, [torch.tensor(0.5)], [weight.grad], ["b"])
    optimizer.step()
    assert not torch.equal(weight, state[0]), "a finite step updates"
    check.resolve(L.LightningModule())
    check.submit(L.LightningModule(), optimizer, [torch.tensor(float("inf"))], None, ["c"])  # losses only
    with pytest.raises(NonFiniteLossError, match="loss is not finite .*batch ids: c"):
        check.resolve(L.LightningModule())

    # a finite fit in deferred mode runs to its end and trains as the sync guard does
    finite = {"nan_call": None, "optimizer_kernel": "fused"}
    error, deferred, _, _ = _nan_at_third_step_fit(tmp_path, monkeypatch, True, **finite, nonfinite_check="deferred")
    assert error is None and deferred.trainer.global_step == 5
    _, synced, _, _ = _nan_at_third_step_fit(tmp_path, monkeypatch, True, **finite)
    assert all(torch.equal(v, synced.state_dict()[k]) for k, v in deferred.state_dict().items())


@pytest.mark.slow
def test_two_runs_of_one_seed_are_identical_even_under_cpu_load(demo, tmp_path):
    """Nothing depends on timing: data workers, the CRF pool and the label writes are ordered by seeds and names,
    not by which process finishes first. Run B competes with three busy processes for the two cores."""

    def config(run: Path) -> Path:
        path = _config(demo, run, [])
        data = yaml.safe_load(path.read_text())
        data["data"]["init_args"]["num_workers"] = 2  # real worker processes, as the demo recipe
        data["stages"]["init_args"]["crf_workers"] = 1
        path.write_text(yaml.safe_dump(data))
        return path

    first = _fit(config(tmp_path / "a"))
    assert first.returncode == 0, first.stderr[-3000:]
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        second = _fit(config(tmp_path / "b"))
    finally:
        for burner in burners:
            burner.kill()
    assert second.returncode == 0, second.stderr[-3000:]
    _assert_complete(tmp_path / "b", tmp_path / "a")
