"""Shared LightningModule machinery: evaluation modes, metrics, logging keys, result tables and JSON.

Methods subclass :class:`WSSSModule` and provide the network-specific pieces:

* ``segmentation_logits(images) -> (B, C, h, w)`` — the logits used at inference;
* ``saliency_probabilities(images) -> (B, 1, h, w)`` in [0, 1] — the saliency output;
* ``training_step`` and ``configure_optimizers``.

Validation and test loaders come from the DataModule in the order of ``datamodule.loader_names(stage)``:
``seg/<split>`` (segmentation, scored in every configured mode) then ``sal/<name>`` (saliency sets).
Logged keys: ``val/mIoU``, ``val/IoU_<class>``, ``val/<mode>/mIoU``, ``test/<dataset>/maxF``, ...
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from wsss_lightning.data.io import atomic_write_text
from wsss_lightning.data.palette import default_class_names
from wsss_lightning.metrics import SaliencyMetrics, SegmentationIoU
from wsss_lightning.modules.inference import InferenceMode, ScaleFusion, crf_refine, segmentation_probabilities
from wsss_lightning.modules.nonfinite import batch_ids, check_finite

log = logging.getLogger(__name__)

DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)


def _key(name: str) -> str:
    """A ModuleDict-safe key for a loader or mode name."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _crop(tensor: Tensor, size: Sequence[int]) -> Tensor:
    return tensor[..., : int(size[0]), : int(size[1])]


class WSSSModule(L.LightningModule):
    """Base class: evaluation in several inference modes, saliency scoring, logging and result reports.

    Args:
        num_classes: C including background (linked from ``data.num_classes`` by the CLI).
        class_names: C names for tables and per-class logs (default VOC/COCO names by C).
        val_modes / test_modes: inference modes scored on the segmentation split (see
            ``modules/inference.py``): ``ss``, ``ms``, ``ms_flip``, each optionally ``_crf``.
        eval_scales: scales of the multi-scale modes (AuxSegNet protocol: 0.5–1.5).
        scale_fusion: fuse scales by element-wise ``max`` (AuxSegNet author's code) or ``mean``.
        crf_preset: dense CRF preset of the ``_crf`` modes (``auxseg_inference``: 4/3, 83/5/3, 10 iterations).
        saliency_protocol: ``sod`` (pysodmetrics definitions) or ``ssnet`` (jsws, 21 thresholds).
        predict_mode: inference mode of ``wsss predict``.
        channels_last: store the network's weights (and feed its images) in ``torch.channels_last`` memory
            format — faster convolutions under bf16 on recent GPUs; the numbers are unchanged.
        compile: ``torch.compile`` the network (in place, ``nn.Module.compile``: checkpoint keys are unchanged)
            with ``compile_backend`` when the model is configured. The first steps of each new input shape
            are slow while it compiles.
    """

    def __init__(
        self,
        num_classes: int = 21,
        class_names: list[str] | None = None,
        val_modes: list[str] | None = None,
        test_modes: list[str] | None = None,
        eval_scales: list[float] | None = None,
        scale_fusion: ScaleFusion = "max",
        crf_preset: str = "auxseg_inference",
        saliency_protocol: str = "sod",
        predict_mode: str = "ss",
        *,
        channels_last: bool = False,
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.compile = compile
        self.compile_backend = compile_backend
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else list(default_class_names(num_classes))
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for num_classes={num_classes}")
        self.val_modes = [InferenceMode.parse(m) for m in (val_modes or ["ss"])]
        self.test_modes = [InferenceMode.parse(m) for m in (test_modes or ["ss", "ms", "ms_crf"])]
        self.predict_inference = InferenceMode.parse(predict_mode)
        self.eval_scales = tuple(eval_scales or DEFAULT_SCALES)
        self.scale_fusion = scale_fusion
        self.crf_preset = crf_preset
        self.saliency_protocol = saliency_protocol
        self.eval_metrics = nn.ModuleDict()
        self._loader_names: dict[str, list[str]] = {}
        self.test_results: dict[str, Any] = {}
        self.eval_results: dict[str, dict[str, Any]] = {}  # "val"/"test" -> the last results (media, tables)
        self.stage = 0
        self.label_request = None  # a LabelSetRun while `wsss pseudolabel` runs
        self.lr_segment_start = 0
        self.lr_segment_epochs: int | None = None

    # ------------------------------------------------------------------------------------------ speed switches

    def speed_modules(self) -> list[nn.Module]:
        """The networks the ``channels_last`` / ``compile`` switches apply to (attributes ``network``, ``stage1``,
        ``stage2`` when present)."""
        found = (getattr(self, name, None) for name in ("network", "stage1", "stage2"))
        return [module for module in found if isinstance(module, nn.Module)]

    def configure_model(self) -> None:
        """Apply the speed switches once, before the strategy (e.g. DDP) wraps the model."""
        for module in self.speed_modules():
            if self.channels_last:
                module.to(memory_format=torch.channels_last)
            if self.compile and getattr(module, "_compiled_call_impl", None) is None:
                module.compile(backend=self.compile_backend)

    def prepare_images(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` images in the memory format the network runs in (channels-last when switched on)."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    # ------------------------------------------------------------------------------------------ to implement

    def segmentation_logits(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised images -> ``(B, C, h, w)`` logits used at inference."""
        raise NotImplementedError

    def saliency_probabilities(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, 1, h, w)`` saliency in [0, 1]."""
        raise NotImplementedError

    @torch.no_grad()
    def visualize(self, images: Tensor, cls_label: Tensor) -> dict[str, Tensor]:
        """Maps to look at for a batch (W&B panels, notebooks), all at the input resolution ``(H, W)``.

        Args:
            images: ``(B, 3, H, W)`` normalised images.
            cls_label: ``(B, C-1)`` multi-hot image labels (classes whose maps are kept).

        Returns:
            ``saliency`` ``(B, H, W)`` in [0, 1]; methods add ``cam`` ``(B, C-1, H, W)`` in [0, 1] (absent classes 0)
            and, where they have one, ``refined_cam`` (the CAM after affinity propagation).
        """
        saliency = self.saliency_probabilities(images).float()
        saliency = F.interpolate(saliency, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return {"saliency": saliency[:, 0].clamp(0, 1)}

    def enter_stage(self, stage: int, start_step: int, epochs: int | None, reset_optimizer: bool) -> None:
        """Called by the stage callback when a stage begins (``stage`` -1 = classification warm-up).

        ``start_step`` is the global step the stage starts at and ``epochs`` its length, so the learning-rate
        schedule can restart; ``reset_optimizer`` clears optimiser state (momentum) as a fresh run would.
        """
        self.stage = stage
        self.lr_segment_start = start_step
        self.lr_segment_epochs = epochs
        if self._trainer is None:
            return
        if reset_optimizer:
            for optimizer in self.trainer.optimizers:
                optimizer.state.clear()
        # The scheduler set the current lr at its last step, under the previous segment: re-evaluate it now so
        # the stage's first step already runs at the restarted learning rate.
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                for group, base, factor in zip(
                    scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas
                ):
                    group["lr"] = base * factor(scheduler.last_epoch)

    # ------------------------------------------------------------------------------------------ NaN/Inf guard

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._train_batch_ids = batch_ids(batch)  # named by the NaN/Inf guard if this batch's loss blows up

    def on_before_backward(self, loss: Tensor) -> None:
        """Stop before a NaN/Inf loss reaches the weights (see ``modules/nonfinite.py``)."""
        check_finite(self, loss, "loss", getattr(self, "_train_batch_ids", []))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop before NaN/Inf gradients reach the weights; skipped under a GradScaler, which skips such steps."""
        if self._trainer is not None and getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        check_finite(self, grads, "gradient", getattr(self, "_train_batch_ids", []))

    def refresh_kind(self, stage: int) -> str:
        """The kind of label set generated before ``stage`` (> 0) by the stage callback."""
        return "refined"

    def lr_segment_steps(self) -> int:
        """Optimiser steps of the current schedule segment (a stage, or the whole run without stages)."""
        if self._trainer is None:
            return 1
        trainer = self.trainer
        if self.lr_segment_epochs is None or trainer.num_training_batches in (None, float("inf")):
            return max(int(trainer.estimated_stepping_batches), 1)
        per_epoch = int(trainer.num_training_batches) // max(trainer.accumulate_grad_batches, 1)
        return max(per_epoch * self.lr_segment_epochs, 1)

    # ------------------------------------------------------------------------------------------ metrics set-up

    def _stage_key(self, stage: str) -> str:
        return "val" if stage in ("validate", "fit", "sanity_check") else "test"

    def loader_names(self, stage: str) -> list[str]:
        stage = "validate" if stage in ("fit", "sanity_check") else stage
        if stage not in self._loader_names:
            datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            names = datamodule.loader_names(stage) if hasattr(datamodule, "loader_names") else ["seg/val"]
            self._loader_names[stage] = names
        return self._loader_names[stage]

    def modes(self, stage: str) -> list[InferenceMode]:
        return self.val_modes if self._stage_key(stage) == "val" else self.test_modes

    def _metric(self, stage: str, name: str, mode: InferenceMode | None = None):
        key = _key(f"{self._stage_key(stage)}__{name}__{mode.name if mode else ''}")
        if key not in self.eval_metrics:
            metric = (
                SegmentationIoU(self.num_classes)
                if name.startswith("seg/")
                else SaliencyMetrics(protocol=self.saliency_protocol)
            )
            self.eval_metrics[key] = metric.to(self.device)
        return self.eval_metrics[key]

    def setup(self, stage: str) -> None:
        # Create every metric up front so all ranks hold the same modules (DDP syncs them by name).
        stages = ["validate"] if stage == "fit" else [stage]
        for current in stages:
            if current not in ("validate", "test"):
                continue
            for name in self.loader_names(current):
                for mode in self.modes(current) if name.startswith("seg/") else [None]:
                    self._metric(current, name, mode)

    # ------------------------------------------------------------------------------------------ evaluation

    def _seg_probabilities(self, images: Tensor, mode: InferenceMode) -> Tensor:
        scales = self.eval_scales if mode.multiscale else (1.0,)
        return segmentation_probabilities(self.segmentation_logits, images, scales, mode.flip, self.scale_fusion)

    def predict_labels(self, images: Tensor, sizes: Tensor, mode: InferenceMode, cache: dict | None = None):
        """Label maps (one ``uint8`` tensor (h_i, w_i) per image, cropped to its true size) in ``mode``."""
        cache = {} if cache is None else cache
        if mode.base not in cache:
            cache[mode.base] = self._seg_probabilities(images, InferenceMode.parse(mode.base))
        probs = cache[mode.base]
        if mode.crf:
            labels = crf_refine(images, probs, sizes, self.crf_preset)
            return [torch.from_numpy(label).to(images.device) for label in labels]
        return [_crop(p, size).argmax(0).to(torch.uint8) for p, size in zip(probs, sizes)]

    def predict_saliency(self, images: Tensor, sizes: Tensor) -> list[Tensor]:
        """Saliency maps in [0, 1], one float tensor (h_i, w_i) per image."""
        probs = self.saliency_probabilities(images).float()
        probs = F.interpolate(probs, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return [_crop(p, size).clamp(0, 1) for p, size in zip(probs, sizes)]

    def _eval_step(self, batch: dict[str, Any], dataloader_idx: int, stage: str) -> None:
        names = self.loader_names(stage)
        name = names[dataloader_idx] if dataloader_idx < len(names) else f"loader{dataloader_idx}"
        images, sizes = batch["image"], batch["ori_size"]
        if name.startswith("seg/"):
            cache: dict[str, Tensor] = {}
            for mode in self.modes(stage):
                labels = self.predict_labels(images, sizes, mode, cache)
                metric = self._metric(stage, name, mode)
                for label, target, size in zip(labels, batch["seg"], sizes):
                    metric.update(label.long(), _crop(target, size).long())
        else:
            maps = self.predict_saliency(images, sizes)
            targets = [_crop(t, size) for t, size in zip(batch["sal"], sizes)]
            self._metric(stage, name).update(maps, targets)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "validate")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "test")

    def _compute_and_log(self, stage: str) -> dict[str, Any]:
        prefix = self._stage_key(stage)
        results: dict[str, Any] = {"segmentation": {}, "saliency": {}}
        for name in self.loader_names(stage):
            if name.startswith("seg/"):
                split = name[len("seg/") :]
                per_mode = {}
                for index, mode in enumerate(self.modes(stage)):
                    metric = self._metric(stage, name, mode)
                    if metric.update_count == 0 and not self.trainer.sanity_checking:
                        continue
                    values = metric.compute()
                    metric.reset()
                    iou = values["IoU"].tolist()
                    per_class = {c: (None if math.isnan(v) else v) for c, v in zip(self.class_names, iou)}
                    per_mode[mode.name] = {
                        "mode": mode.label,
                        "mIoU": float(values["mIoU"]),
                        "pixel_accuracy": float(values["pixel_accuracy"]),
                        "IoU": per_class,
                    }
                    self.log(f"{prefix}/{mode.name}/mIoU", float(values["mIoU"]), sync_dist=False)
                    if index == 0:  # the first mode is the headline number
                        self.log(f"{prefix}/mIoU", float(values["mIoU"]), prog_bar=True, sync_dist=False)
                        for cls, value in per_class.items():
                            if value is not None:
                                self.log(f"{prefix}/IoU_{cls}", value, sync_dist=False)
                results["segmentation"][split] = per_mode
            else:
                dataset = name[len("sal/") :]
                metric = self._metric(stage, name)
                if metric.update_count == 0:
                    continue
                values = {k: float(v) for k, v in metric.compute().items()}
                metric.reset()
                results["saliency"][dataset] = {"protocol": self.saliency_protocol, **values}
                for key, value in values.items():
                    self.log(f"{prefix}/{dataset}/{key}", value, sync_dist=False)
        self.eval_results[prefix] = results
        return results

    def on_validation_epoch_end(self) -> None:
        self._compute_and_log("validate")

    def on_test_epoch_end(self) -> None:
        self.test_results = self._compute_and_log("test")
        self._report_test_results(self.test_results)

    @rank_zero_only
    def _report_test_results(self, results: dict[str, Any]) -> None:
        print(format_results(results))
        path = getattr(self.trainer, "results_json", None)
        if path is None and self.trainer.log_dir is not None:
            path = Path(self.trainer.log_dir) / "test_results.json"
        if path is not None:
            atomic_write_text(path, json.dumps(results, indent=2, allow_nan=False))
            log.info("test results written to %s", path)

    # ------------------------------------------------------------------------------------------ predict

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        """Per image: ``name``, ``label`` uint8 (H, W) class indices, ``saliency`` uint8 (H, W) grey levels.

        While ``label_request`` is set (``wsss pseudolabel``) the batch feeds that label-set run instead.
        """
        if self.label_request is not None:
            return self.label_request.submit(batch)
        sizes = batch["ori_size"]
        labels = self.predict_labels(batch["image"], sizes, self.predict_inference)
        saliency = self.predict_saliency(batch["image"], sizes)
        return [
            {
                "name": name,
                "label": label.cpu().numpy().astype(np.uint8),
                "saliency": (sal * 255).round().to(torch.uint8).cpu().numpy(),
            }
            for name, label, sal in zip(batch["name"], labels, saliency)
        ]


def format_results(results: dict[str, Any]) -> str:
    """The ``wsss test`` table: mIoU per split and mode, per-class IoU, saliency metrics per dataset."""
    lines: list[str] = []
    for split, per_mode in results.get("segmentation", {}).items():
        modes = list(per_mode)
        if not modes:
            continue
        lines.append(f"Segmentation — split '{split}' (mIoU %, per class IoU %)")
        header = f"{'class':<16}" + "".join(f"{m:>16}" for m in modes)
        lines.append(header)
        lines.append("-" * len(header))
        classes = list(per_mode[modes[0]]["IoU"])
        for cls in classes:
            cells = []
            for mode in modes:
                value = per_mode[mode]["IoU"][cls]
                cells.append(f"{'n/a' if value is None else f'{100 * value:.1f}':>16}")
            lines.append(f"{cls:<16}" + "".join(cells))
        lines.append("-" * len(header))
        lines.append(f"{'mIoU':<16}" + "".join(f"{100 * per_mode[m]['mIoU']:>16.2f}" for m in modes))
        lines.append("modes: " + "; ".join(f"{m} = {per_mode[m]['mode']}" for m in modes))
        lines.append("")
    saliency = results.get("saliency", {})
    if saliency:
        keys = [k for k in next(iter(saliency.values())) if k != "protocol"]
        lines.append(f"Saliency ({next(iter(saliency.values()))['protocol']} protocol)")
        header = f"{'dataset':<12}" + "".join(f"{k:>9}" for k in keys)
        lines.append(header)
        lines.append("-" * len(header))
        for dataset, values in saliency.items():
            lines.append(f"{dataset:<12}" + "".join(f"{values.get(k, float('nan')):>9.4f}" for k in keys))
    return "\n".join(lines)
