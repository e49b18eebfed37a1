"""SSNet's saliency-collapse guard: the vanishing gradient it guards against, the check, and a real collapsed fit."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from wsss_lightning.cli import main
from wsss_lightning.data.datamodule import WSSSDataModule
from wsss_lightning.data.demo import DEMO_CLASSES, TINY_SETTINGS, generate_demo
from wsss_lightning.losses import ssnet_saliency_loss
from wsss_lightning.models.ssnet import SSNetStage1, SSNetStage2
from wsss_lightning.modules import SSNetModule
from wsss_lightning.modules.collapse import SaliencyCollapseError, SaliencyCollapseGuard

NUM_CLASSES = len(DEMO_CLASSES)


def _saliency_gradient(background_logit: float, form: str) -> float:
    """|∂L/∂logits| of SSNet's saliency loss on a 2×2 image, half salient, background logit raised by hand."""
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 0] = background_logit
    logits.requires_grad_(True)
    prob = logits.softmax(1)
    v = torch.tensor([0.9, 0.8])  # class saliency weights of the two foreground classes
    saliency = (prob[:, 1:] * v[None, :, None, None]).sum(1)
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    ssnet_saliency_loss(
        saliency, prob[:, 0], target, form, seg_logits=logits, sal_scores=torch.cat([v[:1], v])[None]
    ).backward()
    return float(logits.grad.abs().sum())


def test_the_linear_loss_loses_its_gradient_on_a_saturated_softmax_and_the_log_loss_does_not() -> None:
    # P_0 = 1 / (1 + 2 e^-b): at b = 20 the foreground probabilities are 2e-9, and the linear loss's gradient with
    # them; the log form (in log space) keeps a gradient of order one: ∂(-log S)/∂z_c = P_c - w_c.
    assert _saliency_gradient(0.0, "linear") > 0.1
    assert _saliency_gradient(20.0, "linear") < 1e-7
    assert _saliency_gradient(20.0, "log") > 0.4


def test_guard_averages_batch_spreads_per_epoch_and_raises_warns_or_stays_quiet(caplog) -> None:
    guard = SaliencyCollapseGuard("error", min_std=0.01)
    assert guard.epoch_mean() is None
    flat = torch.full((2, 4, 4), 0.25)  # exact in binary: std 0
    half = torch.zeros(2, 4, 4)
    half[:, :2] = 1.0
    assert float(guard.update(flat)) == 0.0
    assert float(guard.update(half)) == pytest.approx(float(half.std()))  # 0.5080 (unbiased, 32 pixels)
    assert guard.epoch_mean() == pytest.approx(float(half.std()) / 2)
    assert guard.epoch_mean() is None  # the record starts over each epoch
    assert guard.check(0.02, epoch=0, loss_form="linear") is None
    with pytest.raises(SaliencyCollapseError) as info:
        guard.check(0.004, epoch=3, loss_form="linear")
    message = str(info.value)
    assert "0.0040 over training epoch 3" in message and "--model.init_args.saliency_loss log" in message
    assert "linear saliency loss" in message and "collapse_check warn" in message
    with caplog.at_level("WARNING"):
        assert "collapsed" in SaliencyCollapseGuard("warn").check(0.004, 3, "log")
    assert "collapsed" in caplog.text
    assert SaliencyCollapseGuard("off").check(0.0, 3, "log") is None
    with pytest.raises(ValueError, match="collapse_check"):
        SaliencyCollapseGuard("loud")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("collapse_demo")
    generate_demo(root, 0, **TINY_SETTINGS)
    return root


def _saturated_module(check: str) -> SSNetModule:
    """SSNet whose segmentation starts saturated on background (P_0 ≈ 1 everywhere): a collapsed saliency map."""
    torch.manual_seed(0)
    stage1 = SSNetStage1(NUM_CLASSES, backbone="test_resnet")
    with torch.no_grad():
        for layer in (stage1.pred_coarse, stage1.pred_16, stage1.pred_8):
            layer.bias[0] = 30.0
    return SSNetModule(
        stage1, SSNetStage2(NUM_CLASSES, backbone="test_resnet"), num_classes=NUM_CLASSES,
        class_names=list(DEMO_CLASSES), eval_input_size=64, lr=1e-3, collapse_check=check,
    )  # fmt: skip


def _fit(module: SSNetModule, demo: Path, tmp_path: Path) -> L.Trainer:
    data = WSSSDataModule(
        str(demo / "VOCdevkit" / "VOC2012"), dataset="voc", augmentation="rotate_crop_resize", crop_size=64,
        saliency_train_root="../../DUTS-TR", batch_size=4, num_workers=0,
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return trainer


def test_a_fit_whose_saliency_collapsed_stops_at_the_epoch_end(demo: Path, tmp_path: Path) -> None:
    with pytest.raises(SaliencyCollapseError, match="collapsed to a constant"):
        _fit(_saturated_module("error"), demo, tmp_path)


def test_warn_carries_on_and_logs_the_spread(demo: Path, tmp_path: Path) -> None:
    trainer = _fit(_saturated_module("warn"), demo, tmp_path)
    assert float(trainer.callback_metrics["train/saliency_std"]) < 1e-3


def test_the_cli_reports_a_collapse_loudly_with_exit_code_3(demo: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from wsss_lightning.modules import ssnet as ssnet_module

    def collapsed(self, mean_std, epoch, loss_form):  # the guard's verdict, whatever the tiny run learned
        raise SaliencyCollapseError(f"SSNet's saliency map has collapsed to a constant (epoch {epoch})")

    monkeypatch.setattr(ssnet_module.SaliencyCollapseGuard, "check", collapsed)
    root = demo / "VOCdevkit" / "VOC2012"
    args = [
        "fit", "--config", str(Path(__file__).resolve().parents[1] / "configs" / "demo_ssnet.yaml"),
        "--data.init_args.root", str(root), "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.logger", "false", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false", "--model.init_args.stage1.init_args.pretrained", "false",
        "--model.init_args.stage1.init_args.backbone", "test_resnet",
        "--model.init_args.stage2.init_args.backbone", "test_resnet",
        "--model.init_args.stage2.init_args.pretrained", "false",
    ]  # fmt: skip
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "error: the run stopped because it is not learning." in err and "collapsed to a constant" in err
    assert "Traceback" not in err
