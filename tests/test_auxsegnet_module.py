"""AuxSegNetModule: losses, optimiser groups, the restarting poly schedule, and the pseudo-label jobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_lightning.losses import multilabel_soft_margin, saliency_bce_loss, segmentation_ce_loss
from wsss_lightning.models import AuxSegNetPlus, TimmBackbone
from wsss_lightning.modules import AuxSegNetModule
from wsss_lightning.pseudo.cam import normalize_cam, upsample_cam
from wsss_lightning.pseudo.jobs import FusionJob, run_fusion_job
from wsss_lightning.pseudo.label_set import LabelSet

NUM_CLASSES = 4


def _module(**kwargs) -> AuxSegNetModule:
    torch.manual_seed(0)
    network = AuxSegNetPlus(NUM_CLASSES, TimmBackbone("test_resnet", output_stride=8), head_channels=16)
    return AuxSegNetModule(network, num_classes=NUM_CLASSES, **kwargs)


def _batch(size: int = 48, batch: int = 2) -> dict:
    generator = torch.Generator().manual_seed(1)
    seg = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=generator).to(torch.uint8)
    seg[:, :4] = 255
    sal = torch.rand(batch, size, size, generator=generator)
    sal[:, -3:] = 255.0
    return {
        "image": torch.randn(batch, 3, size, size, generator=generator),
        "cls_label": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])[:batch],
        "seg": seg,
        "sal": sal,
        "name": [f"img{i}" for i in range(batch)],
        "ori_size": torch.tensor([[size, size]] * batch),
    }


def test_training_step_is_the_weighted_sum_of_the_five_losses():
    module = _module(cls_loss_weight=0.5, sal_loss_weight=2.0, seg_loss_weight=3.0)
    module.network.eval()  # no dropout: the same outputs twice
    batch = _batch()
    loss = module.training_step(batch, 0)
    out = module.network(batch["image"])
    expected = (
        0.5 * multilabel_soft_margin(out.cls_logits, batch["cls_label"])
        + 2.0 * (saliency_bce_loss(out.sal_logits, batch["sal"]) + saliency_bce_loss(out.sal_refined, batch["sal"]))
        + 3.0
        * (segmentation_ce_loss(out.seg_logits, batch["seg"]) + segmentation_ce_loss(out.seg_refined, batch["seg"]))
    )
    assert torch.allclose(loss, expected, atol=1e-6)
    module.enter_stage(-1, 0, 1, reset_optimizer=False)  # classification warm-up: L_cls only
    assert module.phase == "warmup"
    assert torch.allclose(
        module.training_step(batch, 0), 0.5 * multilabel_soft_margin(out.cls_logits, batch["cls_label"])
    )


def test_parameter_groups_have_the_head_multiplier_and_skip_frozen_parameters():
    torch.manual_seed(0)
    network = AuxSegNetPlus(NUM_CLASSES, TimmBackbone("test_resnet", output_stride=8), head_channels=16)
    frozen = next(network.backbone.parameters())
    frozen.requires_grad_(False)
    module = AuxSegNetModule(network, num_classes=NUM_CLASSES, lr=0.01, head_lr_mult=10.0, momentum=0.9)
    optimizer = module.configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(0.01)
    assert groups["heads"]["lr"] == pytest.approx(0.1)
    assert groups["classifier"]["lr"] == pytest.approx(0.1)  # the code: fc8 is a head
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(frozen) not in in_optimizer
    heads = {id(p) for p in network.parameter_groups()["heads"]}
    assert {id(p) for p in groups["heads"]["params"]} == heads
    assert optimizer.defaults["momentum"] == 0.9
    probe = AuxSegNetModule(network, num_classes=NUM_CLASSES, lr=0.01, head_lr_mult=10.0, classifier_lr_mult=100.0)
    groups = {g["name"]: g for g in probe.configure_optimizers()["optimizer"].param_groups}
    assert groups["classifier"]["lr"] == pytest.approx(1.0) and groups["heads"]["lr"] == pytest.approx(0.1)


def test_adam_option_keeps_the_groups_and_multipliers_and_rejects_unknown_optimisers():
    module = _module(optimizer="adam", lr=1e-3, head_lr_mult=2.0, classifier_lr_mult=4.0, adam_betas=(0.8, 0.99))
    config = module.configure_optimizers()
    optimizer = config["optimizer"]
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["betas"] == (0.8, 0.99) and optimizer.defaults["weight_decay"] == 0.0
    groups = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert groups == pytest.approx({"backbone": 1e-3, "heads": 2e-3, "classifier": 4e-3})
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.LambdaLR)  # the same poly
    assert isinstance(_module().configure_optimizers()["optimizer"], torch.optim.SGD)  # the method's default
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'adam'"):
        _module(optimizer="adamw")


def test_poly_schedule_restarts_at_every_stage():
    module = _module(poly_power=0.9)
    module.lr_segment_steps = lambda: 100  # a stage of 100 optimiser steps
    module.enter_stage(0, 0, 1, reset_optimizer=False)
    assert module.poly_factor(0) == pytest.approx(1.0)
    assert module.poly_factor(50) == pytest.approx(0.5**0.9)
    assert module.poly_factor(100) == pytest.approx(0.0)
    module.enter_stage(1, 100, 1, reset_optimizer=False)
    assert module.poly_factor(100) == pytest.approx(1.0)
    assert module.poly_factor(175) == pytest.approx(0.25**0.9)


def test_initial_label_jobs_fuse_the_multiscale_cam_with_the_raw_saliency():
    module = _module(cam_scales=(1.0, 0.5), cam_flip=True).eval()
    batch = _batch(size=40)
    batch["sal"] = torch.rand(2, 40, 40, generator=torch.Generator().manual_seed(3))
    batch["raw"] = torch.zeros(2, 40, 40, 3, dtype=torch.uint8)
    result = module.label_batch(batch, "initial", LabelSet("/unused"))
    jobs, extras = result.jobs, result.extra_labels
    assert len(jobs) == 2 and all(isinstance(j, FusionJob) for j in jobs)
    assert all(j.crf is None and not j.write_saliency for j in jobs)  # §2.7: raw off-the-shelf map
    assert module.label_layout("initial").kinds == ("seg",) and module.label_layout("refined").kinds == ("seg", "sal")
    assert result.cam_peaks.shape == (2, NUM_CLASSES - 1) and result.affinity is None
    for index, job in enumerate(jobs):
        np.testing.assert_allclose(job.saliency, batch["sal"][index].numpy(), atol=1e-6)
        absent = (batch["cls_label"][index] == 0).nonzero().flatten().tolist()
        cam_labels = extras["cam"][index]
        for cls in absent:
            assert not (cam_labels == cls + 1).any(), "an absent class was labelled"
        expected = np.where(job.peak > 0.2, job.peak_class.astype(np.int64) + 1, 0)
        np.testing.assert_array_equal(cam_labels.numpy(), expected)


def test_refined_label_jobs_propagate_the_cam_with_the_cross_task_affinity(tmp_path):
    module = _module().eval()
    batch = _batch(size=40, batch=1)
    batch["sal"] = torch.rand(1, 40, 40, generator=torch.Generator().manual_seed(4))
    batch["raw"] = torch.randint(0, 255, (1, 40, 40, 3), dtype=torch.uint8)
    result = module.label_batch(batch, "refined", LabelSet(tmp_path))
    jobs = result.jobs
    assert set(result.extra_labels) == set(module.extra_label_kinds("refined")) == {"cam", "raw_cam"}
    assert set(result.affinity) == {"row_peak", "row_spread", "background_mass"}
    with torch.no_grad():
        out = module.network(batch["image"])
        matrix = out.affinity.matrix()  # explicit (B, N, N) A_CT
        cam = normalize_cam(out.cam.float())
        b, k, h, w = cam.shape
        propagated = torch.bmm(cam.flatten(2), matrix.transpose(1, 2)).view(b, k, h, w)  # K̃(:, i) = Σ_j A(i,j) M̂(:, j)
        propagated = upsample_cam(propagated, (40, 40))
        present = batch["cls_label"][0] > 0
        peak = torch.where(present[:, None, None], propagated[0], torch.zeros(())).amax(0)
        predicted = torch.sigmoid(F.interpolate(out.sal_refined, (40, 40), mode="bilinear"))[0, 0]
    np.testing.assert_allclose(jobs[0].peak, peak.numpy(), atol=1e-5)
    np.testing.assert_allclose(jobs[0].saliency, ((predicted + batch["sal"][0]) / 2).numpy(), atol=1e-5)
    assert jobs[0].write_saliency and jobs[0].crf is module.crf  # the pool CRF travels with the job
    pytest.importorskip("pydensecrf.densecrf")
    result = run_fusion_job(jobs[0])
    assert set(result["files"]) == {"seg/img0.png", "sal/img0.png"}
    assert (tmp_path / "seg" / "img0.png").is_file() and (tmp_path / "sal" / "img0.png").is_file()


@pytest.mark.parametrize("mode", ["mean", "given"])
def test_refresh_saliency_switch_chooses_the_update_and_skips_the_crf(tmp_path, mode):
    module = _module(refresh_saliency=mode).eval()
    batch = _batch(size=40, batch=1)
    given = torch.rand(1, 40, 40, generator=torch.Generator().manual_seed(4))
    given[0, :5] = 255.0  # no off-the-shelf value there: the prediction stands in
    batch["sal"] = given
    batch["raw"] = torch.randint(0, 255, (1, 40, 40, 3), dtype=torch.uint8)
    result = module.label_batch(batch, "refined", LabelSet(tmp_path))
    job = result.jobs[0]
    with torch.no_grad():
        out = module.network(batch["image"])
        predicted = torch.sigmoid(F.interpolate(out.sal_refined, (40, 40), mode="bilinear"))[0, 0]
        raw = upsample_cam(normalize_cam(out.cam.float()) * (batch["cls_label"] > 0)[:, :, None, None], (40, 40))
    expected = given[0] if mode == "given" else (predicted + given[0]) / 2
    expected = torch.where(given[0] == 255, predicted, expected)
    np.testing.assert_allclose(job.saliency, expected.numpy(), atol=1e-5)
    assert job.crf is None and job.write_saliency  # no CRF; the set still holds the saliency targets
    # the saliency is final here, so the "+ affinity" ablation is scored on the fused label too
    assert set(result.extra_labels) == set(module.extra_label_kinds("refined")) == {"cam", "raw_cam", "raw_fused"}
    peak, cls = (raw[0] * (batch["cls_label"][0] > 0)[:, None, None]).max(0)
    cam_obj, sal_obj = peak > 0.2, torch.from_numpy(job.saliency) > 0.06
    fused = torch.where(cam_obj & sal_obj, cls + 1, torch.where(cam_obj ^ sal_obj, 255, 0))
    np.testing.assert_array_equal(result.extra_labels["raw_fused"][0].numpy(), fused.numpy())
    assert module.label_config("refined")["refresh_saliency"] == mode
    assert "refresh_saliency" not in module.label_config("initial")


def test_refresh_saliency_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="refresh_saliency"):
        _module(refresh_saliency="crf")


def test_refresh_cam_norm_after_max_normalises_the_propagated_cam(tmp_path):
    batch = _batch(size=40, batch=1)
    batch["sal"] = torch.rand(1, 40, 40, generator=torch.Generator().manual_seed(4))
    batch["raw"] = torch.randint(0, 255, (1, 40, 40, 3), dtype=torch.uint8)
    before = _module(refresh_cam_norm="before").eval().label_batch(batch, "refined", LabelSet(tmp_path)).jobs[0]
    after = _module(refresh_cam_norm="after").eval().label_batch(batch, "refined", LabelSet(tmp_path)).jobs[0]
    with torch.no_grad():
        module = _module().eval()
        out = module.network(batch["image"])
        cam = normalize_cam(out.cam.float()) * (batch["cls_label"][0] > 0)[None, :, None, None]
        propagated = normalize_cam(upsample_cam(out.affinity.propagate(cam), (40, 40)))[0]
        present = batch["cls_label"][0] > 0
        peak = torch.where(present[:, None, None], propagated, torch.zeros(())).amax(0)
    np.testing.assert_allclose(after.peak, peak.numpy(), atol=1e-5)
    assert after.peak.max() > 0.99 and before.peak.max() < after.peak.max()


def test_refresh_cam_raw_fuses_the_unpropagated_cam_and_records_the_propagated_label(tmp_path):
    module = _module(refresh_cam="raw", refresh_saliency="given").eval()
    batch = _batch(size=40, batch=1)
    batch["sal"] = torch.rand(1, 40, 40, generator=torch.Generator().manual_seed(4))
    batch["raw"] = torch.randint(0, 255, (1, 40, 40, 3), dtype=torch.uint8)
    result = module.label_batch(batch, "refined", LabelSet(tmp_path))
    present = (batch["cls_label"][0] > 0)[:, None, None]
    with torch.no_grad():
        out = module.network(batch["image"])
        cam = normalize_cam(out.cam.float()) * present[None]
        raw = upsample_cam(cam, (40, 40))[0]
        propagated = upsample_cam(out.affinity.propagate(cam), (40, 40))[0]
    np.testing.assert_allclose(result.jobs[0].peak, (raw * present).amax(0).numpy(), atol=1e-5)
    assert (
        set(result.extra_labels) == set(module.extra_label_kinds("refined")) == {"cam", "raw_cam", "propagated_fused"}
    )
    peak, cls = (propagated * present).max(0)
    cam_obj, sal_obj = peak > 0.2, batch["sal"][0] > 0.06
    fused = torch.where(cam_obj & sal_obj, cls + 1, torch.where(cam_obj ^ sal_obj, 255, 0))
    np.testing.assert_array_equal(result.extra_labels["propagated_fused"][0].numpy(), fused.numpy())
    # "cam" stays the propagated CAM-only map whichever CAM the label uses
    np.testing.assert_array_equal(result.extra_labels["cam"][0].numpy(), torch.where(peak > 0.2, cls + 1, 0).numpy())
    assert module.label_config("refined")["refresh_cam"] == "raw"
    with pytest.raises(ValueError, match="refresh_cam"):
        _module(refresh_cam="both")


def test_pairwise_loss_weight_adds_the_loss_of_the_pairwise_only_refinement():
    batch = _batch()
    plain, extra = _module(), _module(pairwise_loss_weight=0.5)
    plain.network.eval(), extra.network.eval()  # no dropout: the same outputs in both
    out = extra.network(batch["image"])
    expected = segmentation_ce_loss(out.affinity.propagate(out.seg_logits), batch["seg"])
    assert out.affinity.has_pairwise and expected > 0
    assert torch.allclose(extra.training_step(batch, 0), plain.training_step(batch, 0) + 0.5 * expected, atol=1e-6)
    extra.enter_stage(-1, 0, 1, reset_optimizer=False)  # warm-up: classification only, no pairwise term either
    plain.enter_stage(-1, 0, 1, reset_optimizer=False)
    assert torch.allclose(extra.training_step(batch, 0), plain.training_step(batch, 0))
