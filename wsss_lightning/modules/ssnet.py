"""LightningModule for SSNet (Zeng et al., ICCV 2019): two networks, two stages, joint VOC + DUTS-TR batches.

One ``wsss fit`` runs the whole method with the stage callback (``PseudoLabelRefresh`` with
``initial_labels: none``, ``num_stages: 2``):

* **stage 0 = SSNet-1** (method_notes §1.2–1.4): the stage-1 network (FCN + SAM) learns from image-level labels
  (``L_c``: BCE on the spatial mean of the full-resolution and the coarse logits) and DUTS-TR saliency masks
  (``L_s1`` on ``S = Σ_c v_c P_c`` and ``P_0``);
* **pseudo-labels** (§1.5, kind ``"ssnet"``): every training image gets ``num_augmentations`` augmented copies
  ``<id>_<t>`` (rotate ±10°, crop 90 %, flip, resize; seeded by ``(id, t)``), the stage-1 network labels them
  (absent classes masked, softmax, dense CRF, argmax) and the copies with their labels form the stage-2 set;
* **stage 1 = SSNet-2** (§1.6): a fresh stage-2 network (stride 8, summed ASPP, SAM, classifier) learns from
  the copies (``L_s2`` cross-entropy + ``L_cls`` on its classifier) and from DUTS-TR (``L_s1``).

Optimiser (§1.7): one Adam (betas 0.95, 0.999) over BOTH networks, one parameter group per network (base
lr ``lr`` and ``stage2_lr``), so one optimiser and one checkpoint layout serve the whole run. The learning rate
is a step decay that restarts at each stage: ``lr · 0.1^⌊t/2000⌋`` in stage 1, ``stage2_lr · 0.5^⌊t/3000⌋`` in
stage 2, ``t`` = steps since the stage began; the inactive network's group has lr 0, so it never changes (its
Adam state is cleared when stage 2 begins). The inactive network is not run, but a zero-weighted term keeps its
parameters in the graph, so DDP's reducer sees every parameter: plain ``ddp`` works, no
``find_unused_parameters``. With ``reset_on_decay`` Adam's state of the active network is cleared at every
decay, as the official code re-creates its optimiser there.

Pseudo-label quality: the copies are augmented, so they cannot be scored against ``SegmentationClassAug/<id>.png``.
The label jobs also warp the ground truth with the copy's own geometry (nearest neighbour) and write it as
``gt/<id>_<t>.png`` for the ids scored (``data.pseudo_eval_split``); the set is scored copy by copy against it.
This is exactly what the official ``syn_stage1.py`` evaluates (it saves the augmented GT next to each copy).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_lightning.data.transforms import RotateCropResize, normalize_image
from wsss_lightning.losses import (
    SaliencyLossForm,
    gap_classification_loss,
    multilabel_soft_margin,
    segmentation_ce_loss,
    ssnet_saliency_loss,
)
from wsss_lightning.models.ssnet import SSNetOutput
from wsss_lightning.modules.auxsegnet import build_network
from wsss_lightning.modules.base import WSSSModule
from wsss_lightning.modules.collapse import SaliencyCollapseGuard, reduce_mean
from wsss_lightning.modules.protocol import LabelBatch, MethodParts
from wsss_lightning.pseudo.dense_crf import DenseCRF, PydenseCRF
from wsss_lightning.pseudo.fusion import mask_absent_class_logits
from wsss_lightning.pseudo.jobs import CRFLabelJob, LabelJobGroup
from wsss_lightning.pseudo.label_set import LabelLayout, LabelSet

log = logging.getLogger(__name__)

NetworkFactory = Callable[[int], nn.Module]
MaskMode = Literal["zero", "neg_inf"]
LABEL_KIND = "ssnet"


def augmentation_seed(identifier: str, copy: int, base_seed: int = 0) -> int:
    """A 31-bit seed that depends only on ``(base_seed, identifier, copy)`` (stable across runs and ranks)."""
    digest = hashlib.sha256(f"{base_seed}:{identifier}:{copy}".encode()).digest()
    # One below 2**31 - 1: RotateCropResize also uses seed + 1.
    return int.from_bytes(digest[:4], "little") % (2**31 - 2)


class SSNetModule(WSSSModule):
    """SSNet training (both stages), inference with the active network, and the stage-2 label set.

    Args:
        stage1: the stage-1 network (``SSNetStage1``) or, from configs, a factory called with ``num_classes``.
            The factory comes first in the type on purpose: jsonargparse tries a union's members in order, and
            as an ``nn.Module`` it would build ``SSNetStage1`` with its default ``num_classes=21``.
        stage2: the stage-2 network (``SSNetStage2``) or a factory.
        num_classes, class_names: see :class:`WSSSModule` (linked from the data by the CLI).
        saliency_loss: ``"linear"`` (what the official code optimises, default) or ``"log"`` (paper-style BCE).
        cls_loss_weight: weight of ``L_c`` (stage 1) / ``L_cls`` (stage 2) (1).
        sal_loss_weight: weight of ``L_s1`` (1). ``seg_loss_weight``: weight of ``L_s2`` (1).
        lr, stage1_decay_steps, stage1_decay_factor: stage-1 Adam lr 1e-4, ×0.1 every 2000 steps.
        stage2_lr, stage2_decay_steps, stage2_decay_factor: stage-2 lr 5e-6, ×0.5 every 3000 steps.
        betas, weight_decay: Adam (0.95, 0.999), 0.
        reset_on_decay: clear Adam's state (moments and step count) of the active network at every decay, as
            the official code re-creates its optimiser (default True).
        eval_input_size: inference resizes images to this square (256, the code) and the outputs back;
            None = native size.
        num_augmentations: augmented copies per training image in the stage-2 set (10).
        label_image_size: side of the copies (256).
        label_mask_mode: absent-class masking before the softmax: ``"zero"`` (the code: logits set to 0, so an
            absent class keeps softmax mass and can still win) or ``"neg_inf"`` (removed from the softmax).
        label_seed: base seed of the copies' augmentation.
        first_network: the network the callback's stage 0 trains: 1 (the whole method) or 2 (stage 2 only, on a
            label set already on disk: ``initial_labels: given``, see ``configs/voc_ssnet_stage2_from_labels.yaml``).
        stage2_init: what the stage-2 backbone starts from when stage 2 begins after stage 1 in the same run:
            ``pretrained`` (the code: a fresh ImageNet network, stage-1 weights are not loaded) or ``stage1`` (the
            trained stage-1 backbone's weights, copied once at the switch; the two backbones must have the same
            parameters, e.g. the same timm model at output strides 16 and 8). A measured deviation for short
            schedules (docs/results.md); the heads start fresh either way.
        crf: the run's dense CRF; its ``labels`` preset refines the label synthesis (``ssnet``: 3/3, 80/13/10,
            5 iterations; None: plain argmax) and its ``inference`` preset the ``ss_crf`` test mode (``ssnet``).
        collapse_check, collapse_min_std: the saliency-collapse guard (``modules/collapse.py``): at every training
            epoch end, a mean pixel standard deviation of the saliency map below ``collapse_min_std`` (0.01) stops
            the run (``error``, default), warns (``warn``) or is only logged (``off``).
        **kwargs: evaluation arguments and speed switches of :class:`WSSSModule` (SSNet code: single scale at
            256, no CRF: ``val_modes [ss]``, ``test_modes [ss, ss_crf]`` by default).
    """

    parts = MethodParts(saliency=True, cam=True, affinity=False)
    default_val_modes = ("ss",)
    default_test_modes = ("ss", "ss_crf")

    def __init__(
        self,
        stage1: NetworkFactory | nn.Module,
        stage2: NetworkFactory | nn.Module,
        num_classes: int = 21,
        class_names: list[str] | None = None,
        saliency_loss: SaliencyLossForm = "linear",
        cls_loss_weight: float = 1.0,
        sal_loss_weight: float = 1.0,
        seg_loss_weight: float = 1.0,
        lr: float = 1e-4,
        stage1_decay_steps: int = 2000,
        stage1_decay_factor: float = 0.1,
        stage2_lr: float = 5e-6,
        stage2_decay_steps: int = 3000,
        stage2_decay_factor: float = 0.5,
        betas: tuple[float, float] = (0.95, 0.999),
        weight_decay: float = 0.0,
        reset_on_decay: bool = True,
        eval_input_size: int | None = 256,
        num_augmentations: int = 10,
        label_image_size: int = 256,
        label_mask_mode: MaskMode = "zero",
        label_seed: int = 0,
        first_network: Literal[1, 2] = 1,
        stage2_init: Literal["pretrained", "stage1"] = "pretrained",
        crf: DenseCRF | None = None,
        collapse_check: Literal["error", "warn", "off"] = "error",
        collapse_min_std: float = 0.01,
        **kwargs: Any,
    ) -> None:
        crf = crf if crf is not None else PydenseCRF(inference="ssnet", saliency=None, labels="ssnet")
        super().__init__(num_classes, class_names, crf=crf, **kwargs)
        if min(stage1_decay_steps, stage2_decay_steps, num_augmentations) < 1:
            raise ValueError("stage1_decay_steps, stage2_decay_steps and num_augmentations must be >= 1")
        if saliency_loss not in ("linear", "log"):
            raise ValueError(f"saliency_loss must be 'linear' or 'log', got {saliency_loss!r}")
        if first_network not in (1, 2):
            raise ValueError(f"first_network must be 1 or 2, got {first_network!r}")
        if stage2_init not in ("pretrained", "stage1"):
            raise ValueError(f"stage2_init must be 'pretrained' or 'stage1', got {stage2_init!r}")
        if label_mask_mode not in ("zero", "neg_inf"):
            raise ValueError(f"label_mask_mode must be 'zero' or 'neg_inf', got {label_mask_mode!r}")
        self.save_hyperparameters(ignore=["stage1", "stage2", "crf"])
        self.stage1 = build_network(stage1, num_classes)
        self.stage2 = build_network(stage2, num_classes)
        if stage2_init == "stage1" and first_network == 1:
            self._check_backbones_match()  # now, not after stage 1 has trained
        # Which network is active (1 or 2). A buffer, so `wsss test --ckpt_path` uses the network the
        # checkpoint was training, without the stage callback.
        self.register_buffer("active_network", torch.tensor(first_network, dtype=torch.int64))
        self._last_reset_step = -1
        self.collapse_guard = SaliencyCollapseGuard(collapse_check, collapse_min_std)

    # ------------------------------------------------------------------------------------------ stages

    @property
    def network(self) -> nn.Module:
        """The active network: stage 1 until the stage-2 training begins, stage 2 after."""
        return self.stage2 if int(self.active_network) == 2 else self.stage1

    def enter_stage(self, stage: int, start_step: int, epochs: int | None, reset_optimizer: bool) -> None:
        """Callback stage 0 (or a warm-up, -1) trains network ``first_network``, stage 1 the next one."""
        network = max(stage, 0) + self.hparams.first_network
        if network > 2:
            raise ValueError(
                f"SSNet has two networks: callback stage {stage} with first_network={self.hparams.first_network} "
                f"would train network {network}. Use num_stages: 2 (from stage 1) or 1 (first_network: 2)"
            )
        if (
            network == 2
            and reset_optimizer
            and self.hparams.first_network == 1
            and self.hparams.stage2_init == "stage1"
        ):
            # only at a fresh switch (a resumed stage 2 keeps its own trained backbone)
            self._copy_stage1_backbone()
        # Before super(): the base re-evaluates the lr with `lr_factor`, which reads the active network's rule.
        self.active_network.fill_(network)
        super().enter_stage(stage, start_step, epochs, reset_optimizer)
        self._last_reset_step = start_step

    def _check_backbones_match(self) -> None:
        """``stage2_init: stage1`` copies the stage-1 backbone into stage 2: both need the same parameters."""
        source = {k: v.shape for k, v in self.stage1.backbone.state_dict().items()}
        target = {k: v.shape for k, v in self.stage2.backbone.state_dict().items()}
        if source != target:
            differ = sorted(set(source.items()) ^ set(target.items()))[:3]
            raise ValueError(
                "stage2_init: stage1 needs the same backbone in both stages (the same parameters); these differ "
                f"(first differences: {differ}). Use the same backbone name in model.stage1 and model.stage2, or "
                "stage2_init: pretrained"
            )

    def _copy_stage1_backbone(self) -> None:
        """``stage2_init: stage1``: load the trained stage-1 backbone's weights into the stage-2 backbone."""
        self.stage2.backbone.load_state_dict(self.stage1.backbone.state_dict())
        log.info("stage 2 starts from the stage-1 backbone's weights (stage2_init: stage1)")

    def refresh_kind(self, stage: int) -> str:
        return LABEL_KIND

    # ------------------------------------------------------------------------------------------ training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One step on ``{"seg": VOC batch, "sal": DUTS-TR batch}`` (two forward passes, summed losses).

        Stage 1: ``w_cls·L_c + w_sal·L_s1``; stage 2: ``w_seg·L_s2 + w_cls·L_cls + w_sal·L_s1`` (method_notes §1.4).
        """
        if not isinstance(batch, dict) or "seg" not in batch or "sal" not in batch:
            raise ValueError(
                "SSNet trains on joint batches {'seg': VOC batch, 'sal': DUTS-TR batch}: set data.saliency_train_root "
                "(the DUTS-TR folder) so the DataModule combines the two loaders"
            )
        self._reset_on_decay()
        losses = self.compute_losses(batch["seg"], batch["sal"])
        hp = self.hparams
        total = hp.cls_loss_weight * losses["loss_cls"] + hp.sal_loss_weight * losses["loss_sal"]
        if "loss_seg" in losses:
            total = total + hp.seg_loss_weight * losses["loss_seg"]
        # The inactive network is not run; a zero-weighted term keeps its parameters in the graph so DDP's reducer
        # sees every parameter (its lr is 0, so the zero gradients change nothing).
        inactive = [p.sum() for p in self._inactive_network().parameters() if p.requires_grad]
        if inactive:
            total = total + 0.0 * torch.stack(inactive).sum()
        batch_size = batch["seg"]["image"].shape[0]
        self.log_training_losses(losses, total, batch_size)
        return total

    def compute_losses(self, seg_batch: dict[str, Any], sal_batch: dict[str, Any]) -> dict[str, Tensor]:
        """The unweighted loss terms of the active stage: ``loss_cls``, ``loss_sal`` and (stage 2) ``loss_seg``."""
        network = self.network
        out: SSNetOutput = network(seg_batch["image"])
        labels = seg_batch["cls_label"]
        if network is self.stage1:
            loss_cls = gap_classification_loss(out.seg_logits, labels) + gap_classification_loss(
                out.coarse_logits, labels
            )
            losses = {"loss_cls": loss_cls}
        else:
            if out.cls_logits is None:
                raise ValueError("the stage-2 network must return cls_logits (SSNetStage2 does)")
            losses = {
                "loss_seg": segmentation_ce_loss(out.seg_logits, seg_batch["seg"]),
                "loss_cls": multilabel_soft_margin(out.cls_logits[:, 1:], labels),
            }
        sal_out: SSNetOutput = network(sal_batch["image"])
        losses["loss_sal"] = ssnet_saliency_loss(
            sal_out.saliency, sal_out.background, sal_batch["sal"], self.hparams.saliency_loss,
            seg_logits=sal_out.seg_logits, sal_scores=sal_out.sal_scores,
        )  # fmt: skip
        if self.training:
            self.collapse_guard.update(sal_out.saliency)
        return losses

    def on_train_epoch_end(self) -> None:
        """Stop (or warn) when the saliency map has collapsed to a constant over the epoch (see ``collapse.py``)."""
        super().on_train_epoch_end()
        mean_std = self.collapse_guard.epoch_mean()
        if mean_std is None:
            return
        mean_std = reduce_mean(mean_std, self.trainer.strategy)  # every rank decides on the same value
        self.log("train/saliency_std", mean_std, rank_zero_only=True)
        self.collapse_guard.check(mean_std, self.current_epoch, self.hparams.saliency_loss)

    def configure_optimizers(self):
        hp = self.hparams
        groups, factors = [], []
        for network, module, lr in ((1, self.stage1, hp.lr), (2, self.stage2, hp.stage2_lr)):
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": lr, "name": f"stage{network}"})
                factors.append(partial(self.group_lr_factor, network))
        optimizer = torch.optim.Adam(
            groups, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay, **self.optimizer_kernel_kwargs()
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _inactive_network(self) -> nn.Module:
        return self.stage1 if int(self.active_network) == 2 else self.stage2

    def group_lr_factor(self, network: int, step: int) -> float:
        """Multiplier of network ``network``'s group lr at ``step``: :meth:`lr_factor` when active, else 0."""
        return self.lr_factor(step) if network == int(self.active_network) else 0.0

    def decay_rule(self) -> tuple[int, float]:
        """``(steps, factor)`` of the active stage's step decay."""
        hp = self.hparams
        if int(self.active_network) == 2:
            return hp.stage2_decay_steps, hp.stage2_decay_factor
        return hp.stage1_decay_steps, hp.stage1_decay_factor

    def lr_factor(self, step: int) -> float:
        """``factor ** ⌊t / steps⌋`` with ``t`` = optimiser steps since the stage began (multiplies each group's lr)."""
        steps, factor = self.decay_rule()
        return factor ** (max(step - self.lr_segment_start, 0) // steps)

    def _reset_on_decay(self) -> None:
        """Clear the active network's Adam state at the first step of every decay period (official re-creation)."""
        if not self.hparams.reset_on_decay or self._trainer is None:
            return
        step = self.global_step
        elapsed = step - self.lr_segment_start
        steps, _ = self.decay_rule()
        if elapsed <= 0 or elapsed % steps or step == self._last_reset_step:
            return
        self._last_reset_step = step  # once per optimiser step, also with gradient accumulation
        for optimizer in self.trainer.optimizers:
            for parameter in self.network.parameters():
                optimizer.state.pop(parameter, None)

    # ------------------------------------------------------------------------------------------ inference

    def _forward_eval_size(self, images: Tensor) -> SSNetOutput:
        size = self.hparams.eval_input_size
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        return self.network(images)

    def segmentation_logits(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, C, H, W)`` logits of the active network (run at ``eval_input_size``)."""
        logits = self._forward_eval_size(images).seg_logits
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def saliency_probabilities(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, 1, H, W)`` SAM saliency ``S`` in [0, 1) of the active network."""
        saliency = self._forward_eval_size(images).saliency[:, None].float()
        return F.interpolate(saliency, size=images.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)

    @torch.no_grad()
    def visualize(self, images: Tensor, cls_label: Tensor) -> dict[str, Tensor]:
        """The active network at the input resolution ``(H, W)`` (see :meth:`WSSSModule.visualize`):

        * ``cam``: SSNet's class maps, the softmax probabilities ``P_c`` of the foreground classes (its
          segmentation head is trained from image labels through them), absent classes 0;
        * ``saliency``: the SAM saliency ``S = Σ_c v_c P_c``.
        """
        out = self._forward_eval_size(images)
        size = tuple(images.shape[-2:])
        probs = F.interpolate(out.seg_logits.float(), size=size, mode="bilinear", align_corners=False).softmax(1)
        present = (cls_label > 0).to(probs.device)[:, :, None, None]
        saliency = F.interpolate(out.saliency[:, None].float(), size=size, mode="bilinear", align_corners=False)
        return {"cam": probs[:, 1:] * present, "saliency": saliency[:, 0].clamp(0, 1)}

    def on_validation_epoch_end(self) -> None:
        results = self._compute_and_log("validate")
        # Also under the network's name, so SSNet-1 and SSNet-2 curves stay apart in the logs.
        prefix = f"val/ssnet{int(self.active_network)}"
        for per_mode in results["segmentation"].values():
            if per_mode:
                self.log(f"{prefix}/mIoU", next(iter(per_mode.values()))["mIoU"], sync_dist=False)
        for dataset, values in results["saliency"].items():
            for key in ("maxF", "MAE"):
                if key in values:
                    self.log(f"{prefix}/{dataset}/{key}", values[key], sync_dist=False)

    # ------------------------------------------------------------------------------------------ pseudo-labels

    def augment_copies(
        self, raw: np.ndarray, gt: np.ndarray, identifier: str
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The ``num_augmentations`` copies of one image (method_notes §1.5), each seeded by ``(id, t)``.

        Args:
            raw: ``uint8 (H, W, 3)`` the full-size image.
            gt: ``uint8 (H, W)`` its ground truth (255 where unknown), warped with the same geometry.

        Returns:
            images ``uint8 (S, S, 3)`` and warped GT ``uint8 (S, S)`` (nearest neighbour), ``S = label_image_size``.
        """
        hp = self.hparams
        transform = RotateCropResize(hp.label_image_size)
        blank = np.zeros(gt.shape, dtype=np.float32)
        images, gts = [], []
        for copy in range(hp.num_augmentations):
            image, warped, _ = transform(raw, gt, blank, seed=augmentation_seed(identifier, copy, hp.label_seed))
            images.append(np.ascontiguousarray(image))
            gts.append(np.ascontiguousarray(warped))
        return images, gts

    @torch.no_grad()
    def label_probabilities(self, images: list[np.ndarray], labels: Tensor) -> Tensor:
        """Stage-1 class probabilities of augmented copies, absent classes masked (method_notes §1.5).

        Args:
            images: ``N`` arrays ``uint8 (S, S, 3)``.
            labels: ``(N, C - 1)`` image labels of the copies.

        Returns:
            ``(N, C, S, S)`` float32 probabilities on the module's device.
        """
        batch = torch.stack([normalize_image(image) for image in images]).to(self.device)
        logits = self.stage1(batch).seg_logits.float()
        logits = mask_absent_class_logits(logits, labels.to(logits.device), self.hparams.label_mask_mode)
        return logits.softmax(dim=1)

    @torch.no_grad()
    def label_batch(self, batch: dict[str, Any], kind: str, label_set: LabelSet) -> LabelBatch:
        """Model side of the stage-2 label set for a batch of full-size training images.

        Args:
            batch: see :meth:`WSSSModule.label_batch`.
            kind: ``"ssnet"``.
            label_set: the set being written (a set of copies).

        Returns:
            one :class:`LabelJobGroup` per image (its manifest entry) holding ``num_augmentations``
            :class:`CRFLabelJob` named ``<id>_<t>`` (they write ``seg/``, ``images/`` and, for scored images with
            ground truth, ``gt/``); no extra label maps (nothing un-refined aligns with the GT).
        """
        if kind != LABEL_KIND:
            raise ValueError(f"SSNet writes label sets of kind {LABEL_KIND!r}, got {kind!r}")
        crf = self.crf if self.crf.labels is not None else None
        scored = batch.get("pseudo_eval")
        groups = []
        for index, (height, width) in enumerate(batch["ori_size"].tolist()):
            name = batch["name"][index]
            raw = batch["raw"][index, :height, :width].cpu().numpy()
            gt = batch["seg"][index, :height, :width].cpu().numpy().astype(np.uint8)
            images, gts = self.augment_copies(raw, gt, name)
            labels = batch["cls_label"][index : index + 1].expand(len(images), -1)
            probs = self.label_probabilities(images, labels)
            if crf is not None and not crf.runs_in_pool:  # a device CRF refines here; the jobs only argmax
                probs = torch.stack(
                    [crf.refine_labels(torch.from_numpy(im).to(p.device), p) for im, p in zip(images, probs)]
                )
            probs = probs.cpu().numpy()
            write_gt = bool((gt != 255).any()) and (scored is None or bool(scored[index]))
            classes = tuple(int(c) + 1 for c in torch.nonzero(batch["cls_label"][index] > 0).flatten().tolist())
            jobs = [
                CRFLabelJob(
                    name=f"{name}_{copy}",
                    out_dir=str(label_set.root),
                    probs=probs[copy],
                    image=images[copy],
                    crf=crf if crf is not None and crf.runs_in_pool else None,
                    save_image=True,
                    gt=gts[copy] if write_gt else None,
                    classes=classes,
                )
                for copy in range(len(images))
            ]
            groups.append(LabelJobGroup(name=name, jobs=jobs))
        return LabelBatch(groups)

    def label_layout(self, kind: str) -> LabelLayout:
        """A set of augmented copies ``<id>_<t>`` with their images (and warped GT for scored ids)."""
        return LabelLayout(kinds=("seg", "images", "gt"), copies=True)

    def networks(self) -> list[nn.Module]:
        return [self.stage1, self.stage2]

    def label_config(self, kind: str) -> dict[str, Any]:
        """What determines the label set (for the manifest's config hash)."""
        hp = self.hparams
        return {
            "method": "ssnet",
            "kind": kind,
            "num_augmentations": hp.num_augmentations,
            "label_image_size": hp.label_image_size,
            "augmentation": "rotate10_crop0.9_flip_resize",
            "mask_mode": hp.label_mask_mode,
            "seed": hp.label_seed,
        }
