"""SSNetModule: losses recomputed by hand, optimiser and schedule, inference, label jobs, the two-stage pipeline.

Tiny timm backbones (``test_resnet``, random weights) at 64 px on the tiny demo dataset; nothing downloads.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback

from wsss_lightning.callbacks import PseudoLabelRefresh
from wsss_lightning.cli import main
from wsss_lightning.config_files import load_config
from wsss_lightning.data.collate import pad_collate
from wsss_lightning.data.datamodule import WSSSDataModule
from wsss_lightning.data.demo import DEMO_CLASSES, TINY_SETTINGS, generate_demo
from wsss_lightning.data.io import read_image, read_label
from wsss_lightning.data.transforms import RotateCropResize
from wsss_lightning.models.ssnet import SSNetStage1, SSNetStage2
from wsss_lightning.modules import SSNetModule
from wsss_lightning.modules.ssnet import augmentation_seed
from wsss_lightning.pseudo.dense_crf import PydenseCRF
from wsss_lightning.pseudo.health import HealthPolicy
from wsss_lightning.pseudo.jobs import CRFLabelJob, LabelJobGroup, run_label_job
from wsss_lightning.pseudo.label_set import LabelSet

NUM_CLASSES = len(DEMO_CLASSES)  # 21: background + the 20 VOC classes
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: OpenMP threads only compete on shared cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ssnet_demo")
    generate_demo(root, 0, **TINY_SETTINGS)
    return root


def _module(**kwargs) -> SSNetModule:
    torch.manual_seed(0)
    options = dict(eval_input_size=64, label_image_size=64, num_augmentations=2, lr=1e-3, stage2_lr=1e-3)
    options.update(kwargs)
    return SSNetModule(
        SSNetStage1(NUM_CLASSES, backbone="test_resnet"),
        SSNetStage2(NUM_CLASSES, backbone="test_resnet"),
        num_classes=NUM_CLASSES,
        class_names=list(DEMO_CLASSES),
        **options,
    )


def _datamodule(demo: Path, **kwargs) -> WSSSDataModule:
    options = dict(
        dataset="voc",  # the demo holds the 21 VOC classes
        augmentation="rotate_crop_resize",
        crop_size=64,
        saliency_train_root="../../DUTS-TR",
        saliency_val_sets={"ECSSD": "../../ECSSD"},
        batch_size=4,
        num_workers=0,
    )
    options.update(kwargs)
    return WSSSDataModule(str(demo / "VOCdevkit" / "VOC2012"), **options)


def _joint_batch() -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    labels = torch.zeros(2, NUM_CLASSES - 1)
    labels[0, [0, 3]] = labels[1, 1] = 1.0
    seg = torch.randint(0, NUM_CLASSES, (2, 64, 64), generator=generator, dtype=torch.uint8)
    seg[:, :4] = 255
    sal = (torch.rand(2, 64, 64, generator=generator) > 0.5).float()
    sal[:, :, :3] = 255.0  # ignored pixels
    return {
        "seg": {"image": torch.randn(2, 3, 64, 64, generator=generator), "cls_label": labels, "seg": seg},
        "sal": {"image": torch.randn(2, 3, 64, 64, generator=generator), "sal": sal},
    }


def _bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).mean()


def _saliency_loss(network: torch.nn.Module, batch: dict[str, torch.Tensor], form: str) -> torch.Tensor:
    out = network(batch["image"])
    prob = out.seg_logits.softmax(1)
    saliency = (prob[:, 1:] * out.sal_scores[:, 1:, None, None]).sum(1)  # S = sum_c v_c P_c
    valid = batch["sal"] != 255
    g = batch["sal"][valid]
    s = saliency[valid]
    if form == "linear":
        return -(g * s + (1 - g) * prob[:, 0][valid]).mean()
    s = s.clamp(1e-6, 1 - 1e-6)
    return -(g * s.log() + (1 - g) * (1 - s).log()).mean()


# --- training step ------------------------------------------------------------------------------------------


def test_stage1_step_is_gap_classification_plus_saliency_loss() -> None:
    module = _module(cls_loss_weight=0.5, sal_loss_weight=2.0)
    batch = _joint_batch()
    total = module.training_step(batch, 0)
    # BatchNorm in train mode is a function of the batch, so the passes can be recomputed exactly.
    out = module.stage1(batch["seg"]["image"])
    labels = batch["seg"]["cls_label"]
    loss_c = _bce(out.seg_logits[:, 1:].mean((2, 3)), labels) + _bce(out.coarse_logits[:, 1:].mean((2, 3)), labels)
    expected = 0.5 * loss_c + 2.0 * _saliency_loss(module.stage1, batch["sal"], "linear")
    torch.testing.assert_close(total, expected)
    total.backward()
    # the inactive network is not run: zero gradients (it sits in the graph for DDP's reducer only)
    assert all(p.grad is not None and not p.grad.any() for p in module.stage2.parameters())
    assert module.stage1.pred_coarse.weight.grad.abs().sum() > 0


def test_stage2_step_is_segmentation_ce_plus_classifier_plus_saliency_loss() -> None:
    module = _module(cls_loss_weight=0.5, sal_loss_weight=2.0, seg_loss_weight=3.0, saliency_loss="log")
    module.enter_stage(1, 0, None, reset_optimizer=False)
    assert module.network is module.stage2
    batch = _joint_batch()
    total = module.training_step(batch, 0)
    out = module.stage2(batch["seg"]["image"])
    target = batch["seg"]["seg"].long()
    valid = target != 255
    log_prob = out.seg_logits.log_softmax(1)
    picked = log_prob.gather(1, target.clamp(max=NUM_CLASSES - 1)[:, None])[:, 0]
    loss_seg = -picked[valid].mean()
    loss_cls = _bce(out.cls_logits[:, 1:], batch["seg"]["cls_label"])
    expected = 3.0 * loss_seg + 0.5 * loss_cls + 2.0 * _saliency_loss(module.stage2, batch["sal"], "log")
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(p.grad is not None and not p.grad.any() for p in module.stage1.parameters())
    assert module.stage2.classifier.weight.grad.abs().sum() > 0


def test_training_step_needs_the_joint_batch() -> None:
    module = _module()
    with pytest.raises(ValueError, match="saliency_train_root"):
        module.training_step(_joint_batch()["seg"], 0)


def test_joint_loader_yields_voc_and_duts_batches(demo: Path) -> None:
    datamodule = _datamodule(demo, saliency_batch_size=3)
    loader = datamodule.train_dataloader()
    batch, _, _ = next(iter(loader))
    seg, sal = batch["seg"], batch["sal"]
    assert seg["image"].shape == (4, 3, 64, 64) and seg["cls_label"].shape == (4, NUM_CLASSES - 1)
    assert bool((seg["seg"] == 255).all())  # stage 1: no pseudo-labels yet
    assert sal["image"].shape == (3, 3, 64, 64) and set(sal["source"]) == {"sal/DUTS-TR"}
    assert set(torch.unique(sal["sal"]).tolist()) <= {0.0, 1.0}
    # max_size_cycle: one epoch = the longer loader (24 // 4 VOC batches vs 12 // 3 DUTS-TR batches)
    assert len(loader) == max(TINY_SETTINGS["num_train_aug"] // 4, TINY_SETTINGS["num_duts_train"] // 3)


# --- optimiser and schedule -----------------------------------------------------------------------------------


def test_adam_groups_and_step_decay_restarting_at_stage_two() -> None:
    module = _module(lr=1e-4, stage2_lr=5e-6)
    config = module.configure_optimizers()
    optimizer = config["optimizer"]
    assert isinstance(optimizer, torch.optim.Adam)
    assert [g["name"] for g in optimizer.param_groups] == ["stage1", "stage2"]
    assert config["lr_scheduler"]["scheduler"].base_lrs == [1e-4, 5e-6]
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 0.0]  # stage 1 is active
    assert all(g["betas"] == (0.95, 0.999) and g["weight_decay"] == 0.0 for g in optimizer.param_groups)
    counts = [sum(p.numel() for p in g["params"]) for g in optimizer.param_groups]
    assert counts == [sum(p.numel() for p in net.parameters()) for net in (module.stage1, module.stage2)]
    # stage 1: x0.1 every 2000 steps; the inactive stage-2 group runs at lr 0
    factors = config["lr_scheduler"]["scheduler"].lr_lambdas
    assert [factors[0](s) for s in (0, 1999, 2000, 4000, 5999)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])
    assert [factors[1](s) for s in (0, 2000)] == [0.0, 0.0]
    module.enter_stage(1, 6610, None, reset_optimizer=True)  # stage 2 starts at step 6610
    assert [factors[1](s) for s in (6610, 9609, 9610, 12610)] == pytest.approx([1, 1, 0.5, 0.25])
    assert [factors[0](s) for s in (6610, 9610)] == [0.0, 0.0]
    with pytest.raises(ValueError, match="two networks"):
        module.enter_stage(2, 0, None, reset_optimizer=True)
    assert not optimizer.defaults["fused"] and not optimizer.defaults["foreach"]  # torch's default kernel
    for kernel in ("foreach", "fused"):  # the optimizer_kernel switch reaches Adam, same groups
        switched = _module(optimizer_kernel=kernel).configure_optimizers()["optimizer"]
        assert switched.defaults[kernel] is True and len(switched.param_groups) == 2


def test_first_network_two_trains_stage_two_from_callback_stage_zero() -> None:
    module = _module(first_network=2)
    assert module.network is module.stage2
    module.enter_stage(0, 0, None, reset_optimizer=False)
    assert module.network is module.stage2
    with pytest.raises(ValueError, match="two networks"):
        module.enter_stage(1, 0, None, reset_optimizer=False)


def test_stage2_init_stage1_copies_the_trained_backbone_once_at_a_fresh_switch() -> None:
    module = _module(stage2_init="stage1")
    with torch.no_grad():
        for parameter in module.stage1.backbone.parameters():
            parameter.add_(1.0)  # "trained": differs from the stage-2 backbone's initialisation
    head_before = {k: v.clone() for k, v in module.stage2.state_dict().items() if not k.startswith("backbone.")}
    first = next(iter(module.stage1.backbone.state_dict()))  # the stem's first conv weight
    module.enter_stage(1, 100, None, reset_optimizer=False)  # a resumed stage 2 keeps its own weights
    assert not torch.equal(module.stage2.backbone.state_dict()[first], module.stage1.backbone.state_dict()[first])
    module.enter_stage(1, 100, None, reset_optimizer=True)  # the fresh switch copies
    stage1, stage2 = module.stage1.backbone.state_dict(), module.stage2.backbone.state_dict()
    assert stage1.keys() == stage2.keys() and all(torch.equal(stage1[k], stage2[k]) for k in stage1)
    assert stage2[first].data_ptr() != stage1[first].data_ptr()  # a copy, not shared
    after = module.stage2.state_dict()
    assert all(torch.equal(after[k], v) for k, v in head_before.items())  # the heads start fresh
    plain = _module()  # the code: stage 2 starts from its own (ImageNet) initialisation
    before = {k: v.clone() for k, v in plain.stage2.backbone.state_dict().items()}
    with torch.no_grad():
        next(plain.stage1.backbone.parameters()).add_(1.0)
    plain.enter_stage(1, 100, None, reset_optimizer=True)
    assert all(torch.equal(plain.stage2.backbone.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(ValueError, match="stage2_init must be"):
        _module(stage2_init="imagenet")


def test_stage2_init_stage1_names_the_fix_when_the_backbones_differ_before_training() -> None:
    torch.manual_seed(0)
    networks = (
        SSNetStage1(NUM_CLASSES, backbone="test_resnet"),
        SSNetStage2(NUM_CLASSES, backbone="test_efficientnet"),
    )
    options = dict(num_classes=NUM_CLASSES, eval_input_size=64, label_image_size=64)
    with pytest.raises(ValueError, match="same backbone in both stages"):
        SSNetModule(*networks, stage2_init="stage1", **options)  # at construction, not after stage 1 trained
    SSNetModule(*networks, stage2_init="stage1", first_network=2, **options)  # stage 2 only: nothing to copy


@pytest.mark.parametrize("reset", [True, False])
def test_reset_on_decay_clears_adams_state_at_each_decay(demo: Path, tmp_path: Path, reset: bool) -> None:
    module = _module(stage1_decay_steps=2, reset_on_decay=reset)
    stage2 = {k: v.clone() for k, v in module.stage2.state_dict().items()}
    trainer = L.Trainer(
        accelerator="cpu", max_steps=3, limit_train_batches=3, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=_datamodule(demo))
    optimizer = trainer.optimizers[0]
    steps = {int(optimizer.state[p]["step"]) for p in module.stage1.parameters()}
    assert steps == ({1} if reset else {3})  # steps 0, 1 | reset | step 2
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.1)  # lr of step 3: 0.1^(3 // 2)
    assert optimizer.param_groups[1]["lr"] == 0.0
    assert all(torch.equal(stage2[k], v) for k, v in module.stage2.state_dict().items())  # untouched


# --- inference ----------------------------------------------------------------------------------------------


def test_inference_runs_the_active_network_at_eval_input_size() -> None:
    module = _module(eval_input_size=32).eval()
    images = torch.randn(2, 3, 48, 40)
    small = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        for network in (1, 2):
            if network == 2:
                module.enter_stage(1, 0, None, reset_optimizer=False)
            net = module.stage1 if network == 1 else module.stage2
            out = net(small)
            logits = module.segmentation_logits(images)
            expected = F.interpolate(out.seg_logits, size=(48, 40), mode="bilinear", align_corners=False)
            torch.testing.assert_close(logits, expected)
            saliency = module.saliency_probabilities(images)
            expected_sal = F.interpolate(out.saliency[:, None], size=(48, 40), mode="bilinear", align_corners=False)
            torch.testing.assert_close(saliency, expected_sal.clamp(0, 1))
            assert saliency.shape == (2, 1, 48, 40) and 0 <= float(saliency.min()) <= float(saliency.max()) <= 1
        native = _module(eval_input_size=None).eval()
        torch.testing.assert_close(native.segmentation_logits(images), native.stage1(images).seg_logits)


def test_active_network_is_saved_in_the_state_dict() -> None:
    module = _module()
    module.enter_stage(1, 0, None, reset_optimizer=False)
    fresh = _module()
    assert fresh.network is fresh.stage1
    fresh.load_state_dict(module.state_dict())
    assert fresh.network is fresh.stage2  # `wsss test --ckpt_path` evaluates the network being trained


# --- pseudo-label jobs --------------------------------------------------------------------------------------


def _refresh_batch(demo: Path, count: int = 2) -> dict:
    dataset = _datamodule(demo).refresh_dataset()
    train = set((demo / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").read_text().split())
    indices = [i for i, name in enumerate(dataset.ids) if name in train][:count]
    return pad_collate([dataset[i] for i in indices])


def test_label_jobs_are_deterministic_copies_named_id_t(demo: Path) -> None:
    module = _module(num_augmentations=3).eval()
    batch = _refresh_batch(demo)
    result = module.label_batch(batch, "ssnet", LabelSet("/unused"))
    groups, again = result.jobs, module.label_batch(batch, "ssnet", LabelSet("/unused")).jobs
    assert result.extra_labels == {} and result.affinity is None
    assert module.label_layout("ssnet").copies and module.label_layout("ssnet").kinds == ("seg", "images", "gt")
    assert [g.name for g in groups] == batch["name"] and all(isinstance(g, LabelJobGroup) for g in groups)
    for group, repeat, (height, width), index in zip(groups, again, batch["ori_size"].tolist(), range(2)):
        assert [job.name for job in group.jobs] == [f"{group.name}_{t}" for t in range(3)]
        raw = batch["raw"][index, :height, :width].numpy()
        gt = batch["seg"][index, :height, :width].numpy()
        for t, (job, same) in enumerate(zip(group.jobs, repeat.jobs)):
            assert isinstance(job, CRFLabelJob) and job.save_image and job.crf is not None
            assert job.image.shape == (64, 64, 3) and job.image.dtype == np.uint8
            assert job.probs.shape == (NUM_CLASSES, 64, 64)
            np.testing.assert_array_equal(job.image, same.image)  # same seed -> same copy
            np.testing.assert_array_equal(job.probs, same.probs)
            # the copy is RotateCropResize seeded by (id, t); the GT is warped with the same geometry
            image, warped, _ = RotateCropResize(64)(raw, gt, np.zeros(gt.shape, np.float32),
                                                   seed=augmentation_seed(group.name, t))  # fmt: skip
            np.testing.assert_array_equal(job.image, image)
            np.testing.assert_array_equal(job.gt, warped)
            assert set(np.unique(job.gt)) <= set(np.unique(gt))  # nearest neighbour: no new values
        assert any(not np.array_equal(group.jobs[0].image, other.image) for other in group.jobs[1:])
    assert not np.array_equal(groups[0].jobs[0].image, groups[1].jobs[0].image)  # other id, other image


def test_label_probabilities_mask_absent_classes_as_the_code(demo: Path) -> None:
    batch = _refresh_batch(demo, count=1)
    labels = batch["cls_label"][0]
    absent = [c + 1 for c in range(NUM_CLASSES - 1) if labels[c] == 0]
    assert absent
    for mode in ("zero", "neg_inf"):
        module = _module(num_augmentations=1, label_mask_mode=mode).eval()
        (group,) = module.label_batch(batch, "ssnet", LabelSet("/unused")).jobs
        job = group.jobs[0]
        with torch.no_grad():
            image = torch.from_numpy(job.image).permute(2, 0, 1).float().div(255)[None]
            mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            logits = module.stage1((image - mean) / std).seg_logits[0]
        fill = 0.0 if mode == "zero" else -math.inf
        logits[absent] = fill  # the code multiplies absent logits by 0
        expected = logits.softmax(0).numpy()
        np.testing.assert_allclose(job.probs, expected, atol=1e-5)
        if mode == "neg_inf":
            assert float(job.probs[absent].max()) == 0.0


def test_label_files_never_contain_absent_classes(demo: Path, tmp_path: Path) -> None:
    batch = _refresh_batch(demo, count=2)
    module = _module(num_augmentations=2, label_mask_mode="neg_inf").eval()
    groups = module.label_batch(batch, "ssnet", LabelSet(tmp_path)).jobs
    for index, group in enumerate(groups):
        present = {0} | {c + 1 for c in range(NUM_CLASSES - 1) if batch["cls_label"][index, c] > 0}
        result = run_label_job(group)
        assert result["name"] == group.name
        assert set(result["files"]) == {f"{d}/{group.name}_{t}.png" for d in ("seg", "images", "gt") for t in (0, 1)}
        for t in range(2):
            label = read_label(tmp_path / "seg" / f"{group.name}_{t}.png")
            assert label.shape == (64, 64) and set(np.unique(label).tolist()) <= present
            copy = f"{group.name}_{t}.png"
            np.testing.assert_array_equal(read_image(tmp_path / "images" / copy), group.jobs[t].image)
            np.testing.assert_array_equal(read_label(tmp_path / "gt" / copy), group.jobs[t].gt)


def test_label_jobs_write_gt_only_for_scored_images(demo: Path) -> None:
    batch = _refresh_batch(demo, count=2)
    batch["pseudo_eval"] = [True, False]
    module = _module(num_augmentations=1, crf=PydenseCRF(inference="ssnet", saliency=None, labels=None)).eval()
    groups = module.label_batch(batch, "ssnet", LabelSet("/unused")).jobs
    assert groups[0].jobs[0].gt is not None and groups[1].jobs[0].gt is None and groups[0].jobs[0].crf is None
    with pytest.raises(ValueError, match="ssnet"):
        module.label_batch(batch, "refined", LabelSet("/unused"))


# --- the pipeline -------------------------------------------------------------------------------------------


class _Recorder(Callback):
    """Weights at the start of each epoch and the names the training loader served."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.names: dict[int, list[str]] = {}
        self.lrs: dict[int, list[float]] = {}

    def _snapshot(self, module: SSNetModule) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items() if k.startswith("stage")}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: SSNetModule) -> None:
        self.weights[trainer.current_epoch] = self._snapshot(pl_module)
        self.lrs[trainer.current_epoch] = [g["lr"] for g in trainer.optimizers[0].param_groups]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: SSNetModule, batch, batch_idx: int) -> None:
        self.names.setdefault(trainer.current_epoch, []).extend(batch["seg"]["name"])

    def on_train_end(self, trainer: L.Trainer, pl_module: SSNetModule) -> None:
        self.weights[-1] = self._snapshot(pl_module)


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix) and "weight" in k)


def _trainer(tmp_path: Path, callbacks: list[Callback]) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
        default_root_dir=tmp_path,
    )  # fmt: skip


def test_stage_one_labels_stage_two(demo: Path, tmp_path: Path) -> None:
    module = _module(num_augmentations=2, lr=1e-3, stage2_lr=2e-3)
    # two training batches cannot teach 20 classes: the labels are degenerate, and this test is about the mechanics
    refresh = PseudoLabelRefresh(
        output_dir=str(tmp_path / "labels"), num_stages=2, epochs_per_stage=1, initial_labels="none",
        refresh_after_last_stage=False, health=HealthPolicy(action="off"),
    )  # fmt: skip
    recorder = _Recorder()
    trainer = _trainer(tmp_path, [refresh, recorder])
    trainer.fit(module, datamodule=_datamodule(demo))

    label_set = tmp_path / "labels" / "stage1"
    ids = _datamodule(demo).refresh_dataset().ids
    copies = {f"{i}_{t}" for i in ids for t in range(2)}
    assert {p.stem for p in (label_set / "seg").glob("*.png")} == copies
    assert {p.stem for p in (label_set / "images").glob("*.png")} == copies
    manifest = json.loads((label_set / "manifest.json").read_text())
    assert manifest["count"] == len(ids) and set(manifest["files"]) == set(ids)
    assert manifest["config"]["method"] == "ssnet" and manifest["config"]["num_augmentations"] == 2

    # quality: every copy of the VOC `train` ids scored against its warped GT
    train = set((demo / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").read_text().split())
    assert {p.stem for p in (label_set / "gt").glob("*.png")} == {f"{i}_{t}" for i in train for t in range(2)}
    quality = json.loads((label_set / "quality.json").read_text())
    assert quality["scored_images"] == 2 * len(train) and quality["scored_against"] == "augmented_gt"
    assert 0.0 <= quality["pseudo_mIoU"] <= 1.0

    # stage 1 trained the stage-1 network only; stage 2 the stage-2 network only, on the copies
    first, second, end = recorder.weights[0], recorder.weights[1], recorder.weights[-1]
    assert _changed(first, second, "stage1.") and not _changed(first, second, "stage2.")
    assert _changed(second, end, "stage2.") and not _changed(second, end, "stage1.")
    assert set(recorder.names[0]) <= set(ids)
    assert recorder.names[1] and set(recorder.names[1]) <= copies
    assert recorder.lrs[1][1] == pytest.approx(2e-3)  # the stage-2 schedule restarts at its base lr
    assert int(module.active_network) == 2 and refresh.label_sets == {1: str(label_set)}

    # the same set, given on disk: stage 2 only (configs/voc_ssnet_stage2_from_labels.yaml)
    only2 = _module(num_augmentations=2, first_network=2)
    # the set after its one epoch is an untrained network's (65 % of it without background): mechanics only
    given = PseudoLabelRefresh(output_dir=str(tmp_path / "unused"), num_stages=1, epochs_per_stage=1,
                               initial_labels="given", health=HealthPolicy(action="off"))  # fmt: skip
    recorder2 = _Recorder()
    trainer = _trainer(tmp_path / "given", [given, recorder2])
    trainer.fit(only2, datamodule=_datamodule(demo, pseudo_label_dir=str(label_set / "seg")))
    assert set(recorder2.names[0]) <= copies
    assert _changed(recorder2.weights[0], recorder2.weights[-1], "stage2.")
    assert not _changed(recorder2.weights[0], recorder2.weights[-1], "stage1.")


# --- CLI and configs ----------------------------------------------------------------------------------------


def test_configs_parse_and_compose(capsys: pytest.CaptureFixture[str]) -> None:
    def printed(*configs: str) -> dict:
        args = ["fit"] + [a for c in configs for a in ("--config", str(CONFIGS / c))] + ["--print_config"]
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 0
        return yaml.safe_load(capsys.readouterr().out)

    demo = printed("demo_ssnet.yaml")
    assert demo["model"]["class_path"] == "wsss_lightning.modules.SSNetModule"
    assert demo["stages"]["init_args"]["initial_labels"] == "none"
    voc = printed("voc_ssnet.yaml")
    assert voc["model"]["init_args"]["stage1"]["init_args"]["backbone"] == "densenet169"
    assert voc["stages"]["init_args"]["epochs_per_stage"] == [5, 2]
    sets = {"ECSSD", "PASCAL-S", "HKU-IS", "DUT-OMRON", "DUTS-TE"}
    assert set(voc["data"]["init_args"]["saliency_test_sets"]) == sets
    only2 = printed("voc_ssnet.yaml", "voc_ssnet_stage2_from_labels.yaml")
    assert only2["model"]["init_args"]["first_network"] == 2
    assert only2["model"]["init_args"]["stage2"]["init_args"]["backbone"] == "densenet169"
    assert only2["stages"]["init_args"]["initial_labels"] == "given"
    assert only2["stages"]["init_args"]["num_stages"] == 1


def _cli_config(demo: Path, run: Path) -> Path:
    config = load_config(CONFIGS / "demo_ssnet.yaml")
    config["trainer"].update(
        default_root_dir=str(run), logger=False, enable_progress_bar=False, limit_train_batches=2,
        limit_val_batches=1, check_val_every_n_epoch=1,
        callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True, "save_top_k": 0}}],
    )  # fmt: skip
    # two batches per stage cannot teach the demo's 20 classes: the labels are degenerate, so the check only warns
    config["stages"]["init_args"].update(
        output_dir=str(run / "labels"), epochs_per_stage=[1, 1], crf_workers=0, health={"action": "warn"}
    )
    model = config["model"]["init_args"]
    for key in ("stage1", "stage2"):
        model[key]["init_args"].update(backbone="test_resnet", pretrained=False)
    model.update(eval_input_size=64, label_image_size=64, num_augmentations=1)
    config["data"]["init_args"].update(root=str(demo / "VOCdevkit" / "VOC2012"), crop_size=64, batch_size=4,
                                       saliency_batch_size=4, num_workers=0)  # fmt: skip
    path = run / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_wsss_fit_then_test_writes_segmentation_and_saliency_results(demo: Path, tmp_path: Path) -> None:
    config = _cli_config(demo, tmp_path)
    assert main(["fit", "--config", str(config)]) == 0
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert int(checkpoint["state_dict"]["active_network"]) == 2
    results = tmp_path / "results.json"
    assert main(["test", "--config", str(config), "--ckpt_path", "last", "--results_json", str(results)]) == 0
    report = json.loads(results.read_text())
    modes = report["segmentation"]["val"]
    assert set(modes) == {"ss", "ss_crf"} and modes["ss_crf"]["mode"] == "single-scale + CRF"
    assert 0.0 <= modes["ss"]["mIoU"] <= 1.0 and set(modes["ss"]["IoU"]) == set(DEMO_CLASSES)
    assert set(report["saliency"]) == {"ECSSD"}
    for values in report["saliency"].values():
        assert {"maxF", "meanF", "adpF", "MAE", "Sm", "maxE"} <= set(values)
        assert 0.0 <= values["maxF"] <= 1.0 and 0.0 <= values["MAE"] <= 1.0


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_ddp_runs_both_stages(demo: Path, tmp_path: Path) -> None:
    """Plain DDP (no find_unused_parameters): the inactive network stays in the graph with a zero-weighted term."""
    config = _cli_config(demo, tmp_path)
    # 24 images at batch 8 = 3 batches, so 6 of the 12 DUTS-TR pairs a epoch (joint_epoch: segmentation): the ranks
    # split an EpochSubset
    command = [sys.executable, "-m", "wsss_lightning.cli", "fit", "--config", str(config), "--trainer.devices", "2",
               "--trainer.strategy", "ddp", "--data.init_args.batch_size", "8",
               "--data.init_args.saliency_batch_size", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(CONFIGS.parent)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    label_set = tmp_path / "labels" / "stage1"
    ids = _datamodule(demo).refresh_dataset().ids
    manifest = json.loads((label_set / "manifest.json").read_text())
    assert set(manifest["files"]) == set(ids)  # both ranks wrote their shards, rank 0 merged them
    assert {p.stem for p in (label_set / "seg").glob("*.png")} == {f"{i}_0" for i in ids}
    quality = json.loads((label_set / "quality.json").read_text())
    train = set((demo / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").read_text().split())
    assert quality["scored_images"] == len(train) and 0.0 <= quality["pseudo_mIoU"] <= 1.0
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert int(checkpoint["state_dict"]["active_network"]) == 2
