"""The base of every method: the :class:`~wsss_lightning.modules.protocol.WSSSMethod` contract, evaluation modes,
metrics, logging keys and result tables.

A method subclasses :class:`WSSSModule`, declares its optional ``parts`` (saliency, CAM, affinity) and implements
the abstract methods: ``networks``, ``segmentation_logits`` (and ``saliency_probabilities`` with a saliency
part), the label-set methods ``label_config`` / ``label_layout`` / ``label_batch``, plus Lightning's
``training_step`` and ``configure_optimizers``. Evaluation arguments (modes, scales, saliency protocol) and the
speed switches are the base's: a method passes them through with ``**kwargs`` instead of re-listing them.

Validation and test loaders come from the DataModule in the order of ``datamodule.loader_names(stage)``:
``seg/<split>`` (segmentation, scored in every configured mode) then ``sal/<name>`` (saliency sets).
Logged keys: ``val/mIoU``, ``val/IoU_<class>``, ``val/<mode>/mIoU``, ``test/<dataset>/maxF``, ...
"""

from __future__ import annotations

import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from wsss_lightning.data.datamodule import WSSSDataModule
from wsss_lightning.data.palette import default_class_names
from wsss_lightning.metrics import SaliencyMetrics, SegmentationIoU
from wsss_lightning.modules.inference import (
    InferenceMode,
    ScaleFusion,
    crf_refine,
    gate_absent_classes,
    segmentation_probabilities,
)
from wsss_lightning.modules.nonfinite import DeferredFiniteCheck, batch_ids, check_step_finite
from wsss_lightning.modules.protocol import LabelBatch, MethodParts
from wsss_lightning.modules.rng import capture_rng_states, restore_rng_states
from wsss_lightning.pseudo.dense_crf import DenseCRF, PydenseCRF
from wsss_lightning.pseudo.label_set import LabelLayout, LabelSet
from wsss_lightning.utils.log_cadence import logs_this_step

log = logging.getLogger(__name__)

DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
#: ``torch.compile`` modes the ``compile_mode`` switch accepts (None = the default mode).
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: The optimiser kernels the ``optimizer_kernel`` switch selects (torch's per-tensor default, foreach, fused).
OPTIMIZER_KERNELS = ("default", "foreach", "fused")
#: The NaN/Inf guard: ``sync`` decides before each update (one host-device sync per step); ``deferred`` skips a bad
#: update on the device and decides a step later (no sync; needs ``optimizer_kernel: fused``). modules/nonfinite.py.
NONFINITE_CHECKS = ("sync", "deferred")


def _key(name: str) -> str:
    """A ModuleDict-safe key for a loader or mode name."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _crop(tensor: Tensor, size: Sequence[int]) -> Tensor:
    return tensor[..., : int(size[0]), : int(size[1])]


def _target_sizes(sizes: Tensor, full_sizes: Tensor | None) -> list[tuple[int, int]]:
    """Per image, the size outputs are scored / written at: the file's (``full_size``) when given, else the input's."""
    chosen = sizes if full_sizes is None else full_sizes
    return [(int(h), int(w)) for h, w in chosen.tolist()]


def _resize_bilinear(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``(C, h, w)`` scores -> ``(C, H, W)`` (bilinear, as logits are upsampled); unchanged when the size matches."""
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps[None].float(), size=size, mode="bilinear", align_corners=False)[0]


def _resize_nearest(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """``(h, w)`` class indices -> ``(H, W)`` by nearest neighbour; unchanged when the size matches."""
    if tuple(labels.shape[-2:]) == size:
        return labels
    return F.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0].to(labels.dtype)


class WSSSModule(L.LightningModule, ABC):
    """Base class: the method contract, evaluation in several inference modes, saliency scoring, result reports.

    Args:
        num_classes: C including background (linked from ``data.num_classes`` by the CLI).
        class_names: C names for tables and per-class logs (default VOC/COCO names by C).
        crf: the run's dense CRF (``pseudo/dense_crf.py``): one object for the ``*_crf`` evaluation modes and the
            method's label CRFs; None = pydensecrf with the method's presets (``default_crf``).
        val_modes / test_modes: inference modes scored on the segmentation split (see ``modules/inference.py``):
            ``ss``, ``ms``, ``ms_flip``, each optionally ``_gate`` and ``_crf``; default ``default_val_modes`` /
            ``default_test_modes`` of the method. ``_gate`` needs a method with ``parts.classifier``.
        class_gate_threshold: the ``_gate`` modes keep a foreground class where the network's image-level
            classifier gives it at least this probability (and always each image's top class).
        eval_scales: scales of the multi-scale modes (AuxSegNet protocol: 0.5–1.5).
        scale_fusion: fuse scales by element-wise ``max`` (AuxSegNet author's code) or ``mean``.
        saliency_protocol: ``sod`` (pysodmetrics definitions) or ``ssnet`` (jsws, 21 thresholds).
        predict_mode: inference mode of ``wsss predict``.
        channels_last: store the networks' weights (and feed their images) in ``torch.channels_last`` memory
            format — faster convolutions under bf16 on recent GPUs and with oneDNN on CPUs; numbers unchanged.
        compile: ``torch.compile`` the networks (in place, ``nn.Module.compile``: checkpoint keys are unchanged)
            with ``compile_backend`` and ``compile_mode`` when the model is configured. The first steps of each new
            input shape are slow while it compiles.
        compile_mode: ``torch.compile``'s ``mode``: None (``"default"``), ``"reduce-overhead"`` (CUDA graphs on a GPU:
            fewer kernel launches, more memory), ``"max-autotune"`` or ``"max-autotune-no-cudagraphs"``. CUDA graphs
            reuse their output buffers: checked by the training benchmark only, not with the several forwards per
            batch of flip / multi-scale inference (a GPU run must check those before it is a default).
        optimizer_kernel: the optimiser's kernel, passed to torch's SGD / Adam: ``default`` (torch's choice),
            ``foreach`` or ``fused`` (one kernel for all parameters; on CUDA and CPU). Same update up to rounding.
        nonfinite_check: the NaN/Inf guard (``modules/nonfinite.py``). ``sync`` (default): checked before every
            update, one host-device synchronisation per step. ``deferred``: the bad update is skipped on the device
            (the fused optimiser's ``found_inf``) and the run stops one step later, without a per-step sync; needs
            ``optimizer_kernel: fused``. Both keep the weights finite and name the bad step and its batch.
    """

    #: the optional parts of the method (see ``modules/protocol.py``)
    parts: ClassVar[MethodParts] = MethodParts()
    default_val_modes: ClassVar[tuple[str, ...]] = ("ss",)
    default_test_modes: ClassVar[tuple[str, ...]] = ("ss", "ms", "ms_crf")

    def __init__(
        self,
        num_classes: int = 21,
        class_names: list[str] | None = None,
        *,
        crf: DenseCRF | None = None,
        val_modes: list[str] | None = None,
        test_modes: list[str] | None = None,
        eval_scales: list[float] | None = None,
        scale_fusion: ScaleFusion = "max",
        saliency_protocol: str = "sod",
        predict_mode: str = "ss",
        class_gate_threshold: float = 0.5,
        channels_last: bool = False,
        compile: bool = False,
        compile_backend: str = "inductor",
        compile_mode: str | None = None,
        optimizer_kernel: str = "default",
        nonfinite_check: str = "sync",
    ) -> None:
        super().__init__()
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        if optimizer_kernel not in OPTIMIZER_KERNELS:
            raise ValueError(f"optimizer_kernel must be one of {OPTIMIZER_KERNELS}, got {optimizer_kernel!r}")
        if nonfinite_check not in NONFINITE_CHECKS:
            raise ValueError(f"nonfinite_check must be one of {NONFINITE_CHECKS}, got {nonfinite_check!r}")
        if nonfinite_check == "deferred" and optimizer_kernel != "fused":
            raise ValueError(
                "nonfinite_check='deferred' skips a NaN/Inf update on the device through the fused optimiser's "
                "found_inf: set optimizer_kernel: fused as well (or keep nonfinite_check: sync)"
            )
        self.optimizer_kernel = optimizer_kernel
        self.nonfinite_check = nonfinite_check
        self._deferred_check = DeferredFiniteCheck()
        self.channels_last = channels_last
        self.compile = compile
        self.compile_backend = compile_backend
        self.compile_mode = compile_mode
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else list(default_class_names(num_classes))
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for num_classes={num_classes}")
        self.crf: DenseCRF = crf if crf is not None else PydenseCRF()
        self.val_modes = [InferenceMode.parse(m) for m in (val_modes or self.default_val_modes)]
        self.test_modes = [InferenceMode.parse(m) for m in (test_modes or self.default_test_modes)]
        self.predict_inference = InferenceMode.parse(predict_mode)
        gated = [m.name for m in [*self.val_modes, *self.test_modes, self.predict_inference] if m.gate]
        if gated and not self.parts.classifier:
            raise ValueError(
                f"{type(self).__name__} has no image-level classifier for the class-gated modes {gated}; "
                "drop '_gate' from val_modes / test_modes / predict_mode"
            )
        if not 0.0 <= class_gate_threshold <= 1.0:
            raise ValueError(f"class_gate_threshold must lie in [0, 1], got {class_gate_threshold}")
        self.class_gate_threshold = class_gate_threshold
        self.eval_scales = tuple(eval_scales or DEFAULT_SCALES)
        self.scale_fusion = scale_fusion
        self.saliency_protocol = saliency_protocol
        self.eval_metrics = nn.ModuleDict()
        self._loader_names: dict[str, list[str]] = {}
        self.test_results: dict[str, Any] = {}
        self.eval_results: dict[str, dict[str, Any]] = {}  # "val"/"test" -> the last results (media, tables)
        self.stage = 0
        self.lr_segment_start = 0
        self.lr_segment_epochs: int | None = None
        self._train_batch_ids: list[str] = []
        self._rng_to_restore: dict[str, Any] | None = None
        self._lr_stale = False
        self._pending_losses: list[Tensor] = []  # losses backpropagated since the last optimiser step (NaN guard)

    # ------------------------------------------------------------------------------------------ the contract

    @abstractmethod
    def networks(self) -> list[nn.Module]:
        """The method's networks (the ``channels_last`` / ``compile`` switches apply to them)."""

    @abstractmethod
    def segmentation_logits(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised images -> ``(B, C, h, w)`` logits used at inference."""

    def saliency_probabilities(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, 1, h, w)`` saliency in [0, 1]; methods with ``parts.saliency`` implement it."""
        raise NotImplementedError(f"{type(self).__name__} predicts no saliency (parts.saliency is False)")

    def class_presence(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, C-1)`` image-level foreground class probabilities in [0, 1]; methods with
        ``parts.classifier`` implement it (the ``_gate`` inference modes)."""
        raise NotImplementedError(f"{type(self).__name__} has no image-level classifier (parts.classifier is False)")

    def initial_label_kind(self) -> str:
        """The kind of the label set generated before stage 0 when the stage callback makes one (``initial_labels:
        cam``)."""
        return "initial"

    def refresh_kind(self, stage: int) -> str:
        """The kind of label set generated before ``stage`` (> 0) by the stage callback."""
        return "refined"

    @abstractmethod
    def label_config(self, kind: str) -> dict[str, Any]:
        """What determines a label set of ``kind`` (thresholds, protocols...), for its config hash."""

    @abstractmethod
    def label_layout(self, kind: str) -> LabelLayout:
        """What a set of ``kind`` holds (``seg`` and ``sal`` maps per image, or copies with their images)."""

    def extra_label_kinds(self, kind: str) -> tuple[str, ...]:
        """Names of the extra label maps ``label_batch`` returns for ablations (scored next to the set)."""
        return ()

    @abstractmethod
    def label_batch(self, batch: dict[str, Any], kind: str, label_set: LabelSet) -> LabelBatch:
        """The model side of one batch of a label set (see :class:`~wsss_lightning.modules.protocol.LabelBatch`).

        Args:
            batch: from ``datamodule.refresh_dataset()`` at full size, padded: ``image``, ``raw`` (uint8), ``sal``
                (the off-the-shelf map, 255 = none), ``seg`` (GT or 255), ``cls_label``, ``ori_size``, ``name``,
                and ``pseudo_eval`` (which images are scored).
            kind: the label kind.
            label_set: the set being written (jobs write below its folder).
        """

    # ------------------------------------------------------------------------------------------ speed switches

    def configure_model(self) -> None:
        """Apply the speed switches once, before the strategy (e.g. DDP) wraps the model."""
        for module in self.networks():
            if self.channels_last:
                module.to(memory_format=torch.channels_last)
            if self.compile and module._compiled_call_impl is None:
                module.compile(backend=self.compile_backend, mode=self.compile_mode)

    def log_training_losses(self, losses: dict[str, Tensor], total: Tensor, batch_size: int) -> None:
        """Log ``train/loss`` every step (the progress bar shows it) and ``train/<name>`` for each loss on the steps
        whose values reach the loggers (``utils/log_cadence.py``: the other calls only cost host time)."""
        if logs_this_step(self._trainer):
            for name, value in losses.items():
                self.log(f"train/{name}", value.detach(), batch_size=batch_size)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=batch_size)

    def prepare_images(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` images in the memory format the network runs in (channels-last when switched on)."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    @torch.no_grad()
    def visualize(self, images: Tensor, cls_label: Tensor) -> dict[str, Tensor]:
        """Maps to look at for a batch (W&B panels, notebooks), all at the input resolution ``(H, W)``.

        Args:
            images: ``(B, 3, H, W)`` normalised images.
            cls_label: ``(B, C-1)`` multi-hot image labels (classes whose maps are kept).

        Returns:
            ``saliency`` ``(B, H, W)`` in [0, 1] with a saliency part; methods add ``cam`` ``(B, C-1, H, W)`` in
            [0, 1] (absent classes 0) with a CAM part and ``refined_cam`` (after affinity propagation) with an
            affinity part.
        """
        if not self.parts.saliency:
            return {}
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
        # The scheduler set the current lr at its last step, under the previous segment: re-evaluate it before the
        # stage's first step. Not here when the training loader is not built yet (the stage callback enters the
        # stage in on_fit_start): asking for the stage length then would build it before Lightning restored the
        # loops, and a resumed run would lose the loader's position.
        if self.trainer.num_training_batches == float("inf"):
            self._lr_stale = True
        else:
            self._reevaluate_lr()

    def _reevaluate_lr(self) -> None:
        """Set every group's lr to the scheduler's value at its current step (under the current segment)."""
        self._lr_stale = False
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
        if self._lr_stale:
            self._reevaluate_lr()
        if self._rng_to_restore is not None:  # the first step after a resume draws what the interrupted run would
            restore_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    # ------------------------------------------------------------------------------------------ exact resume

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the RNG states (torch CPU/CUDA, numpy, python) of the training steps: dropout resumes exactly.
        With the deferred NaN/Inf guard, a pending bad verdict stops the run before this checkpoint is written."""
        self._deferred_check.resolve(self)
        checkpoint["rng_states"] = capture_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Restored at the next training step, not now: restoring the loops and building loaders comes in between
        # (every loader has its own generator, so nothing there draws from the global RNG).
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_epoch_start(self) -> None:
        self._pending_losses = []

    def on_train_epoch_end(self) -> None:
        # the epoch's last step (callbacks' epoch-end hooks, the label refresh among them, run before this one: the
        # weights they see are finite, the bad update having been skipped)
        self._deferred_check.resolve(self)

    def on_train_end(self) -> None:
        self._deferred_check.resolve(self)

    def optimizer_kernel_kwargs(self) -> dict[str, bool]:
        """The keyword that selects the ``optimizer_kernel`` switch's kernel in torch's SGD / Adam constructors."""
        return {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[self.optimizer_kernel]

    def on_before_backward(self, loss: Tensor) -> None:
        """Keep the loss for the NaN/Inf check before the optimiser step (no host-device sync here)."""
        self._pending_losses.append(loss.detach())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop before a NaN/Inf loss or gradient reaches the weights (see ``modules/nonfinite.py``): one check of
        the losses since the last step and the gradients; under a GradScaler (which skips non-finite steps
        itself) the losses only."""
        plugin = self.trainer.precision_plugin if self._trainer is not None else None
        scaled = isinstance(plugin, MixedPrecision) and plugin.scaler is not None
        grads = None
        if not scaled:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        losses, self._pending_losses = self._pending_losses, []
        if self.nonfinite_check == "deferred":
            self._deferred_check.resolve(self)  # the previous step's verdict, on the host by now: no wait
            self._deferred_check.submit(self, optimizer, losses, grads, self._train_batch_ids)
        else:
            check_step_finite(self, losses, grads, self._train_batch_ids)

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
            datamodule = self.trainer.datamodule if self._trainer is not None else None
            names = datamodule.loader_names(stage) if isinstance(datamodule, WSSSDataModule) else ["seg/val"]
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
                if name.startswith("sal/") and not self.parts.saliency:
                    continue
                for mode in self.modes(current) if name.startswith("seg/") else [None]:
                    self._metric(current, name, mode)

    # ------------------------------------------------------------------------------------------ evaluation

    def _seg_probabilities(self, images: Tensor, mode: InferenceMode) -> Tensor:
        scales = self.eval_scales if mode.multiscale else (1.0,)
        return segmentation_probabilities(self.segmentation_logits, images, scales, mode.flip, self.scale_fusion)

    def predict_labels(
        self,
        images: Tensor,
        sizes: Tensor,
        mode: InferenceMode,
        cache: dict | None = None,
        full_sizes: Tensor | None = None,
    ):
        """Label maps (one ``uint8`` tensor (h_i, w_i) per image, cropped to its true size) in ``mode``.

        ``full_sizes`` ``(B, 2)``: the files' sizes when the images were shrunk to a working resolution
        (``data/working_size.py``); the maps come back at those sizes: probabilities are upsampled bilinearly
        before the argmax (as the logits are upsampled to the input), CRF labels (computed at the working size,
        on the image the network saw) with nearest neighbour."""
        cache = {} if cache is None else cache
        if mode.base not in cache:
            cache[mode.base] = self._seg_probabilities(images, InferenceMode.parse(mode.base))
        if mode.probabilities_key not in cache:  # the class gate on the shared probabilities
            if "class_presence" not in cache:
                cache["class_presence"] = self._class_presence(images, sizes)
            presence = cache["class_presence"]
            cache[mode.probabilities_key] = gate_absent_classes(cache[mode.base], presence, self.class_gate_threshold)
        probs = cache[mode.probabilities_key]
        targets = _target_sizes(sizes, full_sizes)
        if mode.crf:
            labels = crf_refine(images, probs, sizes, self.crf)
            return [_resize_nearest(label, target) for label, target in zip(labels, targets)]
        return [
            _resize_bilinear(_crop(p, size), target).argmax(0).to(torch.uint8)
            for p, size, target in zip(probs, sizes, targets)
        ]

    def _class_presence(self, images: Tensor, sizes: Tensor) -> Tensor:
        """:meth:`class_presence` ``(B, C-1)`` of each image without the padding of its batch: the classifier's
        global pooling would otherwise average the padded border in (one batched call when nothing is padded)."""
        height, width = images.shape[-2:]
        if all(int(h) == height and int(w) == width for h, w in sizes.tolist()):
            return self.class_presence(images).float()
        return torch.cat(
            [self.class_presence(image[None, :, :h, :w]).float() for image, (h, w) in zip(images, sizes.tolist())]
        )

    def predict_saliency(self, images: Tensor, sizes: Tensor, full_sizes: Tensor | None = None) -> list[Tensor]:
        """Saliency maps in [0, 1], one float tensor (h_i, w_i) per image (at ``full_sizes`` when given)."""
        probs = self.saliency_probabilities(images).float()
        probs = F.interpolate(probs, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        targets = _target_sizes(sizes, full_sizes)
        return [
            _resize_bilinear(_crop(p, size)[None], target)[0].clamp(0, 1)
            for p, size, target in zip(probs, sizes, targets)
        ]

    def _eval_step(self, batch: dict[str, Any], dataloader_idx: int, stage: str) -> None:
        names = self.loader_names(stage)
        name = names[dataloader_idx] if dataloader_idx < len(names) else f"loader{dataloader_idx}"
        images, sizes = batch["image"], batch["ori_size"]
        full_sizes = batch.get("full_size")  # targets at the files' size (a working resolution shrank the images)
        target_sizes = _target_sizes(sizes, full_sizes)
        if name.startswith("seg/"):
            cache: dict[str, Tensor] = {}
            for mode in self.modes(stage):
                labels = self.predict_labels(images, sizes, mode, cache, full_sizes)
                metric = self._metric(stage, name, mode)
                for label, target, size in zip(labels, batch["seg"], target_sizes):
                    metric.update(label.long(), _crop(target, size).long())
        elif self.parts.saliency:  # a method without saliency skips the saliency sets
            maps = self.predict_saliency(images, sizes, full_sizes)
            targets = [_crop(t, size) for t, size in zip(batch["sal"], target_sizes)]
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
                if not self.parts.saliency:
                    continue
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
        print(format_results(results))  # the JSON file is written by the trainer (WSSSTrainer.test)

    # ------------------------------------------------------------------------------------------ predict

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        """Per image: ``name``, ``label`` uint8 (H, W) class indices and, with a saliency part, ``saliency`` uint8
        (H, W) grey levels."""
        sizes, full_sizes = batch["ori_size"], batch.get("full_size")  # outputs at the files' size
        labels = self.predict_labels(batch["image"], sizes, self.predict_inference, full_sizes=full_sizes)
        saliency = (
            self.predict_saliency(batch["image"], sizes, full_sizes) if self.parts.saliency else [None] * len(labels)
        )
        return [
            {
                "name": name,
                "label": label.cpu().numpy().astype(np.uint8),
                "saliency": None if sal is None else (sal * 255).round().to(torch.uint8).cpu().numpy(),
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
