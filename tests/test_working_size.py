"""The working resolution (``max_image_side``): images shrunk for the network, outputs back at the files' sizes.

Hand-computed sizes and maps; an end-to-end run on the tiny demo checks that label sets and predictions keep the
published convention (a map has its image's size) while the network sees the shrunk images.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from wsss_lightning.callbacks import PseudoLabelRefresh
from wsss_lightning.data.collate import pad_collate
from wsss_lightning.data.datamodule import WSSSDataModule
from wsss_lightning.data.demo import DEMO_CLASSES
from wsss_lightning.data.io import read_image, read_label, read_saliency
from wsss_lightning.data.working_size import resize_labels, resize_saliency, working_size
from wsss_lightning.models import AuxSegNetPlus, TimmBackbone
from wsss_lightning.modules import AuxSegNetModule
from wsss_lightning.modules.inference import InferenceMode
from wsss_lightning.pseudo.health import HealthPolicy
from wsss_lightning.pseudo.jobs import FusionJob, run_fusion_job


def test_working_size_keeps_the_aspect_and_leaves_small_images_alone() -> None:
    assert working_size(375, 500, 176) == (132, 176)  # 375 * 176 / 500 = 132
    assert working_size(500, 333, 176) == (176, 117)  # 333 * 0.352 = 117.2
    assert working_size(150, 170, 176) == (150, 170)  # the demo's images: untouched
    assert working_size(375, 500, None) == (375, 500)


def test_label_resize_is_nearest_and_saliency_ignore_stays_ignore() -> None:
    labels = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [255, 255, 3, 3], [255, 255, 3, 3]], np.uint8)
    np.testing.assert_array_equal(resize_labels(labels, (2, 2)), [[1, 2], [255, 3]])
    ignore = np.full((4, 4), 255.0, np.float32)
    assert (resize_saliency(ignore, (2, 2)) == 255.0).all()  # "no map" must not average into real values
    ramp = np.array([[0.0, 0.0, 1.0, 1.0]] * 4, np.float32)
    np.testing.assert_allclose(resize_saliency(ramp, (2, 2)), [[0.0, 1.0], [0.0, 1.0]])  # area average


def test_dataset_shrinks_images_and_keeps_evaluation_targets_at_full_size(tiny_demo: Path) -> None:
    data = WSSSDataModule(root=str(tiny_demo / "VOCdevkit" / "VOC2012"), saliency_dir="saliency_map", max_image_side=40)
    refresh = data.refresh_dataset()
    sample = refresh[0]
    name = sample["name"]
    image = read_image(refresh.image_path(refresh.entries[0]))
    full = image.shape[:2]
    small = working_size(*full, 40)
    assert max(full) > 40 and max(small) == 40
    assert tuple(sample["image"].shape[-2:]) == small and tuple(sample["raw"].shape[:2]) == small
    assert tuple(sample["sal"].shape) == small and tuple(sample["seg"].shape) == small  # inputs of the labels
    assert sample["ori_size"].tolist() == list(small) and sample["full_size"].tolist() == list(full)
    offshelf = read_saliency(tiny_demo / "VOCdevkit" / "VOC2012" / "saliency_map" / f"{name}.png") / 255.0
    np.testing.assert_allclose(sample["sal"].numpy(), resize_saliency(offshelf.astype(np.float32), small), atol=1e-6)

    evaluation = data.eval_dataset("val")
    sample = evaluation[0]
    gt = read_label(evaluation.seg_dir / f"{sample['name']}.png")
    assert tuple(sample["image"].shape[-2:]) == working_size(*gt.shape, 40)
    np.testing.assert_array_equal(sample["seg"].numpy(), gt)  # scored at the file's size
    assert sample["full_size"].tolist() == list(gt.shape)

    with pytest.raises(ValueError, match="max_image_side must be a positive"):
        WSSSDataModule(root=str(tiny_demo), max_image_side=0)


def test_pad_collate_pads_each_key_to_its_own_size() -> None:
    samples = [
        {"image": torch.zeros(3, 4, 5), "seg": torch.zeros(8, 10, dtype=torch.uint8), "name": "a"},
        {"image": torch.zeros(3, 5, 4), "seg": torch.zeros(10, 8, dtype=torch.uint8), "name": "b"},
    ]
    batch = pad_collate(samples)
    assert tuple(batch["image"].shape) == (2, 3, 5, 5) and tuple(batch["seg"].shape) == (2, 10, 10)
    assert int(batch["seg"][0, 9, 0]) == 255 and int(batch["seg"][0, 7, 9]) == 0


def test_fusion_job_writes_the_label_at_the_file_size(tmp_path: Path) -> None:
    """A 2x2 working map -> a 4x4 file: the class map by nearest neighbour (quadrants), a constant peak and
    saliency stay constant, so the label is the quadrants' classes (1-based)."""
    job = FusionJob(
        name="x",
        out_dir=str(tmp_path),
        peak=np.full((2, 2), 0.9, np.float32),
        peak_class=np.array([[0, 1], [2, 3]], np.uint8),
        saliency=np.full((2, 2), 0.8, np.float32),
        write_saliency=True,
        full_size=(4, 4),
    )
    record = run_fusion_job(job)
    label = read_label(tmp_path / "seg" / "x.png")
    np.testing.assert_array_equal(label, [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    assert read_saliency(tmp_path / "sal" / "x.png").shape == (4, 4)
    assert set(record["files"]) == {"seg/x.png", "sal/x.png"}


def _module() -> AuxSegNetModule:
    network = AuxSegNetPlus(len(DEMO_CLASSES), TimmBackbone("test_resnet", output_stride=8), head_channels=16)
    return AuxSegNetModule(network, num_classes=len(DEMO_CLASSES), lr=0.01, cam_scales=(1.0,), test_modes=["ss"])


def test_predictions_come_back_at_the_file_size() -> None:
    """Probabilities are upsampled before the argmax: a prediction at full size equals the bilinear upsampling of
    the working-size probabilities, then the argmax (computed here by hand with torch)."""
    torch.manual_seed(0)
    module = _module().eval()
    images = torch.randn(1, 3, 24, 32)
    sizes, full = torch.tensor([[24, 32]]), torch.tensor([[48, 64]])
    with torch.no_grad():
        labels = module.predict_labels(images, sizes, InferenceMode.parse("ss"), full_sizes=full)
        probs = module._seg_probabilities(images, InferenceMode.parse("ss"))
        saliency = module.predict_saliency(images, sizes, full)
    expected = torch.nn.functional.interpolate(probs, size=(48, 64), mode="bilinear", align_corners=False)[0]
    assert tuple(labels[0].shape) == (48, 64) and tuple(saliency[0].shape) == (48, 64)
    assert torch.equal(labels[0], expected.argmax(0).to(torch.uint8))


@pytest.mark.slow
def test_a_run_at_a_working_resolution_writes_and_scores_at_the_files_sizes(tiny_demo: Path, tmp_path: Path) -> None:
    L.seed_everything(0)
    data = WSSSDataModule(
        root=str(tiny_demo / "VOCdevkit" / "VOC2012"),
        saliency_dir="saliency_map",
        saliency_test_sets={"ECSSD": "../../ECSSD"},
        crop_size=32,
        batch_size=4,
        num_workers=0,
        max_image_side=48,
    )
    stages = PseudoLabelRefresh(
        output_dir=str(tmp_path / "labels"), warmup_epochs=1, num_stages=1, epochs_per_stage=1,
        refresh_after_last_stage=True, health=HealthPolicy(action="off"),
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=-1, callbacks=[stages], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, limit_val_batches=0, default_root_dir=str(tmp_path),
    )  # fmt: skip
    module = _module()
    trainer.fit(module, data)

    images = tiny_demo / "VOCdevkit" / "VOC2012" / "JPEGImages"
    for stage in (0, 1):
        folder = tmp_path / "labels" / f"stage{stage}"
        for path in sorted((folder / "seg").glob("*.png"))[:6]:
            assert read_label(path).shape == read_image(images / f"{path.stem}.jpg").shape[:2], path
        config = json.loads((folder / "manifest.json").read_text())["config"]
        assert config["max_image_side"] == 48
    for path in sorted((tmp_path / "labels" / "stage1" / "sal").glob("*.png"))[:6]:
        assert read_saliency(path).shape == read_image(images / f"{path.stem}.jpg").shape[:2]

    results = trainer.test(module, data, verbose=False)[0]
    assert 0.0 <= results["test/mIoU"] <= 1.0
    predictions = trainer.predict(module, data)
    first = predictions[0][0]
    assert first["label"].shape == read_image(images / f"{first['name']}.jpg").shape[:2]


@pytest.mark.slow
def test_ssnet_runs_both_stages_and_tests_at_a_working_resolution(tiny_demo: Path, tmp_path: Path) -> None:
    """SSNet makes its copies from the shrunk images (they carry their own images, at ``label_image_size``) and
    is scored at the files' sizes; the DUTS-TR pairs are shrunk with their masks for training."""
    from wsss_lightning.models.ssnet import SSNetStage1, SSNetStage2
    from wsss_lightning.modules import SSNetModule

    torch.manual_seed(0)
    classes = len(DEMO_CLASSES)
    module = SSNetModule(
        SSNetStage1(classes, backbone="test_resnet"), SSNetStage2(classes, backbone="test_resnet"),
        num_classes=classes, class_names=list(DEMO_CLASSES), eval_input_size=32, label_image_size=32,
        num_augmentations=1, lr=1e-3, stage2_lr=1e-3,
    )  # fmt: skip
    data = WSSSDataModule(
        str(tiny_demo / "VOCdevkit" / "VOC2012"), augmentation="rotate_crop_resize", crop_size=32,
        saliency_train_root="../../DUTS-TR", saliency_val_sets={"ECSSD": "../../ECSSD"},
        saliency_test_sets={"ECSSD": "../../ECSSD"}, batch_size=4, num_workers=0, max_image_side=48,
    )  # fmt: skip
    refresh = PseudoLabelRefresh(
        output_dir=str(tmp_path / "labels"), num_stages=2, epochs_per_stage=1, initial_labels="none",
        refresh_after_last_stage=False, health=HealthPolicy(action="off"),
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[refresh],
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    copies = sorted((tmp_path / "labels" / "stage1" / "seg").glob("*.png"))
    assert copies and all(read_label(path).shape == (32, 32) for path in copies[:4])
    results = trainer.test(module, datamodule=data, verbose=False)[0]
    assert 0.0 <= results["test/mIoU"] <= 1.0 and 0.0 <= results["test/ECSSD/maxF"] <= 1.0


def test_label_config_takes_the_working_resolution_from_the_datamodule() -> None:
    from types import SimpleNamespace

    from wsss_lightning.label_runner import label_config

    method = SimpleNamespace(label_config=lambda kind: {"kind": kind}, crf=SimpleNamespace(describe=lambda: "crf"))
    plain = label_config(method, "refined", 1, 10)
    assert plain == {"kind": "refined", "crf": "crf", "stage": 1, "model_step": 10}
    assert (
        label_config(method, "refined", 1, 10, SimpleNamespace(hparams=SimpleNamespace(max_image_side=None))) == plain
    )
    small = label_config(method, "refined", 1, 10, SimpleNamespace(hparams=SimpleNamespace(max_image_side=176)))
    assert small == {**plain, "max_image_side": 176}
    assert label_config(method, "refined", 1, 10, object()) == plain  # a datamodule without the setting
