"""One contract test for every WSSS method (segmentation_models.pytorch's pattern): :class:`BaseMethodTester` holds
the generic tests of :class:`~wsss_lightning.modules.protocol.WSSSMethod`, and each method's test class only says how
to build it. AuxSegNet, AuxSegNet+, SSNet and the third method of docs/extending.md (``example_method.py``: CAM +
saliency, no saliency prediction, no affinity) run through the same tests, including a tiny end-to-end fit with a
label refresh.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import pytest
import torch
from example_method import CamSaliencyModule, CamSaliencyNet
from lightning.pytorch.utilities import CombinedLoader

from wsss_lightning.callbacks import PseudoLabelRefresh
from wsss_lightning.data.collate import pad_collate
from wsss_lightning.data.datamodule import WSSSDataModule
from wsss_lightning.data.demo import DEMO_CLASSES
from wsss_lightning.data.io import read_label
from wsss_lightning.models import AuxSegNet, AuxSegNetPlus, TimmBackbone
from wsss_lightning.models.ssnet import SSNetStage1, SSNetStage2
from wsss_lightning.modules import AuxSegNetModule, SSNetModule
from wsss_lightning.modules.base import WSSSModule
from wsss_lightning.modules.inference import InferenceMode
from wsss_lightning.modules.protocol import LabelBatch, MethodParts
from wsss_lightning.pseudo.health import HealthPolicy
from wsss_lightning.pseudo.jobs import run_label_job
from wsss_lightning.pseudo.label_set import LabelSet

NUM_CLASSES = len(DEMO_CLASSES)
SIZE = 64


def _datamodule(demo: Path, **kwargs: Any) -> WSSSDataModule:
    options: dict[str, Any] = dict(
        root=str(demo / "VOCdevkit" / "VOC2012"), dataset="voc", saliency_dir="saliency_map", crop_size=SIZE,
        batch_size=4, num_workers=0, saliency_test_sets={"ECSSD": "../../ECSSD"},
    )  # fmt: skip
    options.update(kwargs)
    return WSSSDataModule(**options)


def _backbone(stride: int = 8) -> TimmBackbone:
    return TimmBackbone("test_resnet", output_stride=stride)


class BaseMethodTester:
    """Generic tests of a method. A subclass sets ``label_kinds`` (the kinds its pipeline writes) and implements
    :meth:`make_module` (and :meth:`datamodule` when the method needs extra data, e.g. SSNet's DUTS-TR)."""

    label_kinds: ClassVar[tuple[str, ...]] = ()
    stage_setup: ClassVar[dict[str, Any]] = {}

    def make_module(self) -> WSSSModule:
        raise NotImplementedError

    def datamodule(self, demo: Path) -> WSSSDataModule:
        return _datamodule(demo)

    # ---------------------------------------------------------------------------------------------- helpers

    def _module(self) -> WSSSModule:
        torch.manual_seed(0)
        return self.make_module()

    def _refresh_batch(self, demo: Path, count: int = 2) -> dict[str, Any]:
        dataset = self.datamodule(demo).refresh_dataset()
        return pad_collate([dataset[i] for i in range(count)])

    # ---------------------------------------------------------------------------------------------- the contract

    def test_declares_its_parts_and_networks(self) -> None:
        module = self._module()
        assert isinstance(module.parts, MethodParts)
        networks = module.networks()
        assert networks and all(isinstance(n, torch.nn.Module) for n in networks)
        owned = {id(p) for p in module.parameters()}
        assert all(id(p) in owned for n in networks for p in n.parameters())

    def test_segmentation_and_saliency_outputs_follow_the_parts(self) -> None:
        module = self._module().eval()
        images = torch.randn(2, 3, SIZE, SIZE)
        with torch.no_grad():
            logits = module.segmentation_logits(images)
            assert logits.shape[:2] == (2, NUM_CLASSES) and torch.isfinite(logits).all()
            if module.parts.saliency:
                saliency = module.saliency_probabilities(images)
                assert saliency.shape[:2] == (2, 1) and 0 <= float(saliency.min()) <= float(saliency.max()) <= 1
            else:
                with pytest.raises(NotImplementedError):
                    module.saliency_probabilities(images)
            labels = torch.zeros(2, NUM_CLASSES - 1)
            labels[:, 3] = 1
            maps = module.visualize(images, labels)
        assert ("saliency" in maps) == module.parts.saliency
        assert ("cam" in maps) == module.parts.cam
        assert ("refined_cam" in maps) == module.parts.affinity
        for value in maps.values():
            assert value.shape[0] == 2 and value.shape[-2:] == (SIZE, SIZE)

    def test_class_gate_follows_the_classifier_part(self) -> None:
        module = self._module().eval()
        images = torch.randn(2, 3, SIZE, SIZE)
        sizes = torch.tensor([[SIZE, SIZE]] * 2)
        if not module.parts.classifier:
            with pytest.raises(NotImplementedError):
                module.class_presence(images)
            return
        with torch.no_grad():
            presence = module.class_presence(images)
            assert presence.shape == (2, NUM_CLASSES - 1) and 0 <= float(presence.min()) <= float(presence.max()) <= 1
            module.class_gate_threshold = 1.0  # only each image's top class survives the gate
            labels = module.predict_labels(images, sizes, InferenceMode.parse("ss_gate"))
        for label, scores in zip(labels, presence):
            assert set(label.unique().tolist()) <= {0, int(scores.argmax()) + 1}

    def test_label_batches_write_the_declared_layout(self, tiny_demo: Path, tmp_path: Path) -> None:
        module = self._module().eval()
        batch = self._refresh_batch(tiny_demo)
        batch["pseudo_eval"] = [True, True]
        for kind in self.label_kinds:
            label_set = LabelSet(tmp_path / kind)
            result = module.label_batch(batch, kind, label_set)
            assert isinstance(result, LabelBatch) and len(result.jobs) == 2
            assert set(result.extra_labels) == set(module.extra_label_kinds(kind))
            json.dumps(module.label_config(kind))  # a config hash needs a JSON-able config
            layout = module.label_layout(kind)
            for job, name in zip(result.jobs, batch["name"]):
                written = run_label_job(job)
                assert written["name"] == name and written["stats"]
                kinds = {relative.split("/")[0] for relative in written["files"]}
                assert kinds <= set(layout.kinds) and "seg" in kinds
                for relative in written["files"]:
                    label = read_label(label_set.root / relative) if relative.startswith("seg/") else None
                    if label is not None:
                        assert set(np.unique(label).tolist()) <= set(range(NUM_CLASSES)) | {255}
                if layout.copies:
                    assert all(Path(r).stem.startswith(f"{name}_") for r in written["files"])

    def test_training_step_gives_a_finite_loss_with_gradients(self, tiny_demo: Path) -> None:
        module = self._module()
        datamodule = self.datamodule(tiny_demo)
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        batch = next(iter(loader))
        if isinstance(loader, CombinedLoader):  # joint batches (SSNet): (batch, batch_idx, dataloader_idx)
            batch = batch[0]
        module.enter_stage(0, 0, 1, reset_optimizer=False)
        loss = module.training_step(batch, 0)
        assert torch.isfinite(loss)
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    # ---------------------------------------------------------------------------------------------- end to end

    @pytest.mark.slow
    def test_fit_refreshes_labels_and_tests(self, tiny_demo: Path, tmp_path: Path) -> None:
        L.seed_everything(0, verbose=False)
        module = self._module()
        datamodule = self.datamodule(tiny_demo)
        options: dict[str, Any] = dict(
            output_dir=str(tmp_path / "labels"), num_stages=2, epochs_per_stage=1, refresh_after_last_stage=False,
            health=HealthPolicy(action="off"),
        )  # fmt: skip
        options.update(self.stage_setup)
        stages = PseudoLabelRefresh(**options)
        trainer = L.Trainer(
            accelerator="cpu", max_epochs=-1, callbacks=[stages], logger=False, enable_checkpointing=False,
            enable_progress_bar=False, limit_train_batches=2, limit_val_batches=1, limit_test_batches=2,
            num_sanity_val_steps=0, default_root_dir=str(tmp_path),
        )  # fmt: skip
        trainer.fit(module, datamodule)
        assert stages.history, "no label set was written"
        for record in stages.history:
            label_set = LabelSet(record["dir"])
            assert label_set.manifest() is not None and label_set.layout() == module.label_layout(record["kind"])
            assert 0.0 <= record["empty_label_fraction"] <= 1.0
        trainer.test(module, datamodule)
        assert "segmentation" in module.test_results and module.test_results["segmentation"]["val"]
        assert bool(module.test_results["saliency"]) == module.parts.saliency


class TestAuxSegNet(BaseMethodTester):
    label_kinds = ("initial", "refined")
    stage_setup = {"warmup_epochs": 1}

    def make_module(self) -> WSSSModule:
        network = AuxSegNet(NUM_CLASSES, _backbone(), affinity="pairwise", head_channels=16)
        return AuxSegNetModule(network, num_classes=NUM_CLASSES, cam_scales=(1.0,), cam_flip=False, test_modes=["ss"])


class TestAuxSegNetPlus(BaseMethodTester):
    label_kinds = ("initial", "refined")
    stage_setup = {"warmup_epochs": 1}

    def make_module(self) -> WSSSModule:
        network = AuxSegNetPlus(NUM_CLASSES, _backbone(), head_channels=16)
        return AuxSegNetModule(network, num_classes=NUM_CLASSES, cam_scales=(1.0,), cam_flip=False, test_modes=["ss"])


class TestSSNet(BaseMethodTester):
    label_kinds = ("ssnet",)
    stage_setup = {"initial_labels": "none", "batch_size": 2}

    def make_module(self) -> WSSSModule:
        return SSNetModule(
            SSNetStage1(NUM_CLASSES, backbone="test_resnet"), SSNetStage2(NUM_CLASSES, backbone="test_resnet"),
            num_classes=NUM_CLASSES, eval_input_size=SIZE, label_image_size=SIZE, num_augmentations=2,
        )  # fmt: skip

    def datamodule(self, demo: Path) -> WSSSDataModule:
        return _datamodule(
            demo, augmentation="rotate_crop_resize", saliency_train_root="../..", saliency_batch_size=4,
            label_set_augmentation="none",
        )  # fmt: skip


class TestCamSaliency(BaseMethodTester):
    """The third method of docs/extending.md: a network file, a module file and a config."""

    label_kinds = ("initial", "refined")
    stage_setup = {"warmup_epochs": 1}

    def make_module(self) -> WSSSModule:
        return CamSaliencyModule(CamSaliencyNet(NUM_CLASSES, _backbone()), num_classes=NUM_CLASSES, test_modes=["ss"])
