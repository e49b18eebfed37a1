"""LightningModule for AuxSegNet (ICCV 2021) and AuxSegNet+ (TNNLS 2025): losses, optimisation, label jobs.

* Losses (method_notes §2.5): ``L = λ1·L_cls + λ2·(L_sal1 + L_sal2) + λ3·(L_seg1 + L_seg2)``; in the classification
  warm-up phase only ``L_cls``.
* Optimiser (§2.10): SGD with two parameter groups (backbone + cross-task fusion at ``lr``, heads at
  ``lr × head_lr_mult``) and a poly schedule that restarts at every stage (the stage callback sets the
  segment). The official code's positional-argument quirk makes its SGD effectively momentum 0 and
  weight decay 0: that is the default here (``configs/model/auxsegnet_r38.yaml``); the paper-intended
  momentum 0.9 / weight decay 1e-5 is a config (``configs/recipes/auxsegnet_paper.yaml``).
* Pseudo-label jobs (§2.6–2.8): initial labels from multi-scale + flip CAMs fused with the off-the-shelf
  saliency; label updates from CAMs propagated by the learned (cross-task) pairwise affinity, fused with
  the CRF-refined mean of the predicted and the off-the-shelf saliency.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_lightning.losses import multilabel_soft_margin, saliency_bce_loss, segmentation_ce_loss
from wsss_lightning.modules.base import WSSSModule
from wsss_lightning.modules.protocol import LabelBatch, MethodParts
from wsss_lightning.pseudo.cam import multiscale_cam, normalize_cam, upsample_cam
from wsss_lightning.pseudo.dense_crf import DenseCRF
from wsss_lightning.pseudo.fusion import CAM_THRESHOLD, SALIENCY_THRESHOLD, fuse_cam_saliency
from wsss_lightning.pseudo.jobs import FusionJob
from wsss_lightning.pseudo.label_set import LabelLayout, LabelSet

log = logging.getLogger(__name__)

NetworkFactory = Callable[[int], nn.Module]
Phase = Literal["warmup", "multitask"]


def build_network(network: nn.Module | NetworkFactory, num_classes: int) -> nn.Module:
    """An injected module is used as is (its class count must match); a factory is called with ``num_classes``."""
    if isinstance(network, nn.Module):
        built = network
    else:
        built = network(num_classes)
    found = built.num_classes  # a network states its class count (AuxSegNet, SSNet: the constructor argument)
    if found != num_classes:
        raise ValueError(f"the network predicts {found} classes but the data has {num_classes}")
    return built


class AuxSegNetModule(WSSSModule):
    """AuxSegNet / AuxSegNet+ training, inference and pseudo-label jobs.

    Args:
        network: an ``AuxSegNet``/``AuxSegNetPlus`` module, or (from configs) a factory called with
            ``num_classes``.
        num_classes, class_names: see :class:`WSSSModule` (linked from the data by the CLI).
        cls_loss_weight, sal_loss_weight, seg_loss_weight: λ1, λ2, λ3 (1, 1, 1).
        pairwise_loss_weight: weight of an extra segmentation loss on the pairwise-only refinement ``A·L_seg``
            (0 = off, the method). An ablation for AuxSegNet+ (UNCONFIRMED reading): its ``R = A·L + 1·(uᵀL)`` lets
            the global unary term carry the seg loss, this gives the pairwise rows (which propagate the CAMs) their
            own signal. Logged as ``train/loss_seg_pairwise``.
        lr: base learning rate (7e-4 code, 1e-3 paper); ``head_lr_mult`` for the heads (10).
        classifier_lr_mult: multiplier of the classifier ``fc8`` (None: ``head_lr_mult``, as the code). A new
            linear classifier on a pretrained backbone learns like a linear probe, at a far higher rate than
            the backbone tolerates (docs/results.md: the demo recipe's choice).
        momentum, weight_decay, nesterov: SGD (code-effective 0 / 0; paper-intended 0.9 / 1e-5).
        optimizer: ``sgd`` (the method, §2.10) or ``adam`` (Adam with ``adam_betas`` and ``weight_decay``, the same
            parameter groups, multipliers and poly schedule; a measured option for short CPU schedules that train
            the whole backbone: docs/results.md).
        adam_betas: Adam's betas (0.9, 0.999).
        poly_power: poly schedule exponent (0.9).
        saliency_threshold: binarisation of the saliency pseudo-label inside the loss (0.5).
        cam_scales, cam_flip: multi-scale CAM protocol of the initial labels (PSA: 1, 0.5, 1.5, 2 with flip).
        refresh_cam_scales, refresh_cam_flip: CAM protocol of the label updates (the code: one view, scale 1, no
            flip). Set them to ``cam_scales`` / ``cam_flip`` to compare initial and refreshed labels under the same
            protocol: every view is propagated by its own affinity and the views are averaged.
        refresh_cam: the CAM a label update fuses: ``propagated`` (the method, §2.8) by the learned pairwise
            affinity, or ``raw`` (the network's own CAM; the affinity then shapes the label through training only).
            Either way the set also records the label the other CAM would give (``raw_fused`` /
            ``propagated_fused``) and both CAM-only maps, so the affinity's effect stays measured.
        refresh_cam_norm: ``before`` (the code): the CAM is max-normalised before the propagation only, so the
            propagated map's peaks fall below 1 and fewer pixels pass ``cam_threshold``; ``after``: the propagated
            (upsampled) CAM is max-normalised again per class, so the threshold means what it means for the raw CAM
            (a measured deviation: docs/results.md).
        refresh_saliency: the saliency that a label update fuses with the CAM and writes as the next saliency
            target. ``update`` (the code, §2.8): the mean of the predicted saliency and the off-the-shelf map,
            refined by the CRF's ``saliency`` preset; ``mean``: that mean without the CRF; ``given``: the
            off-the-shelf map, as in the initial labels (a measured deviation: docs/results.md).
        cam_threshold, fusion_saliency_threshold: fusion thresholds (0.2, 0.06).
        crf: the run's dense CRF; its ``saliency`` preset refines the saliency update (``auxseg_saliency``, τ 1.05;
            None: no CRF) and its ``inference`` preset the ``*_crf`` test modes (``auxseg_inference``).
        **kwargs: evaluation arguments and speed switches of :class:`WSSSModule` (``val_modes``, ``test_modes``,
            ``eval_scales``, ``scale_fusion``, ``saliency_protocol``, ``predict_mode``, ``channels_last``,
            ``compile``, ``compile_backend``, ``compile_mode``, ``optimizer_kernel``, ``nonfinite_check``; under
            ``bf16-mixed`` the affinity softmaxes still run in float32).
    """

    parts = MethodParts(saliency=True, cam=True, affinity=True, classifier=True)

    def __init__(
        self,
        network: nn.Module | NetworkFactory,
        num_classes: int = 21,
        class_names: list[str] | None = None,
        cls_loss_weight: float = 1.0,
        sal_loss_weight: float = 1.0,
        seg_loss_weight: float = 1.0,
        pairwise_loss_weight: float = 0.0,
        lr: float = 7e-4,
        head_lr_mult: float = 10.0,
        classifier_lr_mult: float | None = None,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        optimizer: Literal["sgd", "adam"] = "sgd",
        adam_betas: tuple[float, float] = (0.9, 0.999),
        poly_power: float = 0.9,
        saliency_threshold: float = 0.5,
        cam_scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
        cam_flip: bool = True,
        refresh_cam_scales: Sequence[float] = (1.0,),
        refresh_cam_flip: bool = False,
        refresh_cam: Literal["propagated", "raw"] = "propagated",
        refresh_cam_norm: Literal["before", "after"] = "before",
        refresh_saliency: Literal["update", "mean", "given"] = "update",
        cam_threshold: float = CAM_THRESHOLD,
        fusion_saliency_threshold: float = SALIENCY_THRESHOLD,
        crf: DenseCRF | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, class_names, crf=crf, **kwargs)
        if refresh_cam not in ("propagated", "raw"):
            raise ValueError(f"refresh_cam must be 'propagated' or 'raw', got {refresh_cam!r}")
        if refresh_cam_norm not in ("before", "after"):
            raise ValueError(f"refresh_cam_norm must be 'before' or 'after', got {refresh_cam_norm!r}")
        if refresh_saliency not in ("update", "mean", "given"):
            raise ValueError(f"refresh_saliency must be 'update', 'mean' or 'given', got {refresh_saliency!r}")
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
        self.save_hyperparameters(ignore=["network", "crf"])
        self.network = build_network(network, num_classes)
        self.phase: Phase = "multitask"

    # ------------------------------------------------------------------------------------------ training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.network(self.prepare_images(batch["image"]))
        hp = self.hparams
        loss_cls = multilabel_soft_margin(out.cls_logits, batch["cls_label"])
        losses = {"loss_cls": loss_cls}
        total = hp.cls_loss_weight * loss_cls
        if self.phase == "multitask":
            sal, seg = batch["sal"], batch["seg"]
            loss_sal = saliency_bce_loss(out.sal_logits, sal, hp.saliency_threshold) + saliency_bce_loss(
                out.sal_refined, sal, hp.saliency_threshold
            )
            loss_seg = segmentation_ce_loss(out.seg_logits, seg) + segmentation_ce_loss(out.seg_refined, seg)
            losses.update(loss_sal=loss_sal, loss_seg=loss_seg)
            total = total + hp.sal_loss_weight * loss_sal + hp.seg_loss_weight * loss_seg
            if hp.pairwise_loss_weight > 0 and out.affinity.has_pairwise:
                # the pairwise-only refinement A·L_seg on its own (with a unary term, R = A·L + 1·(uᵀL) alone lets
                # the global term carry the loss): the rows that propagate the CAMs get their own signal
                loss_pair = segmentation_ce_loss(out.affinity.propagate(out.seg_logits), seg)
                losses["loss_seg_pairwise"] = loss_pair
                total = total + hp.pairwise_loss_weight * loss_pair
        else:
            # Warm-up trains the classifier only; a zero-weighted term keeps the branches in the graph so that
            # DDP's gradient reducer sees every parameter (no find_unused_parameters needed).
            total = total + 0.0 * (out.seg_refined.float().mean() + out.sal_refined.float().mean())
        batch_size = batch["image"].shape[0]
        self.log_training_losses(losses, total, batch_size)
        return total

    def configure_optimizers(self):
        hp = self.hparams
        groups = self.network.parameter_groups()
        multipliers = {
            "backbone": 1.0,
            "classifier": hp.head_lr_mult if hp.classifier_lr_mult is None else hp.classifier_lr_mult,
            "heads": hp.head_lr_mult,
        }
        param_groups = [
            {"params": [p for p in groups[name] if p.requires_grad], "lr": hp.lr * mult, "name": name}
            for name, mult in multipliers.items()
        ]
        groups_with_params = [g for g in param_groups if g["params"]]
        optimizer: torch.optim.Optimizer
        if hp.optimizer == "adam":
            betas = tuple(hp.adam_betas)  # as SSNetModule: a YAML list becomes Adam's tuple
            optimizer = torch.optim.Adam(
                groups_with_params,
                lr=hp.lr,
                betas=betas,
                weight_decay=hp.weight_decay,
                **self.optimizer_kernel_kwargs(),
            )
        else:
            optimizer = torch.optim.SGD(
                groups_with_params,
                lr=hp.lr,
                momentum=hp.momentum,
                weight_decay=hp.weight_decay,
                nesterov=hp.nesterov and hp.momentum > 0,
                **self.optimizer_kernel_kwargs(),
            )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.poly_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def poly_factor(self, step: int) -> float:
        """``(1 - t / T) ** power`` within the current segment (a stage), ``t`` steps since its start."""
        elapsed = step - self.lr_segment_start
        if elapsed <= 0:  # the segment's start (also when the scheduler is built, before the loaders exist)
            return 1.0
        progress = min(elapsed / self.lr_segment_steps(), 1.0)
        return (1.0 - progress) ** self.hparams.poly_power

    def enter_stage(self, stage: int, start_step: int, epochs: int | None, reset_optimizer: bool) -> None:
        super().enter_stage(stage, start_step, epochs, reset_optimizer)
        self.phase = "warmup" if stage < 0 else "multitask"

    # ------------------------------------------------------------------------------------------ inference

    def segmentation_logits(self, images: Tensor) -> Tensor:
        return self.network(self.prepare_images(images)).seg_refined

    def saliency_probabilities(self, images: Tensor) -> Tensor:
        return torch.sigmoid(self.network(self.prepare_images(images)).sal_refined.float())

    def class_presence(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, C-1)`` sigmoid of the multi-label classifier (the ``L_cls`` head), in [0, 1]."""
        return torch.sigmoid(self.network(self.prepare_images(images)).cls_logits.float())

    @torch.no_grad()
    def visualize(self, images: Tensor, cls_label: Tensor) -> dict[str, Tensor]:
        """One forward pass, at the input resolution ``(H, W)`` (see :meth:`WSSSModule.visualize`):

        * ``cam``: the single-scale CAM of the label updates (ReLU + per-class max normalisation), absent classes 0;
        * ``refined_cam``: that CAM propagated by the learned (cross-task) pairwise affinity, clipped to [0, 1];
        * ``saliency``: the refined saliency prediction ``sigmoid(R_sal)``.
        """
        out = self.network(self.prepare_images(images))
        present = (cls_label > 0).to(out.cam.device)[:, :, None, None]
        cam = normalize_cam(out.cam.float()) * present
        refined = out.affinity.propagate(cam)
        size = tuple(images.shape[-2:])
        saliency = F.interpolate(out.sal_refined.float(), size=size, mode="bilinear", align_corners=False)
        return {
            "cam": upsample_cam(cam, size).clamp(0, 1),
            "refined_cam": upsample_cam(refined, size).clamp(0, 1),
            "saliency": torch.sigmoid(saliency)[:, 0],
        }

    # ------------------------------------------------------------------------------------------ pseudo-labels

    def _peak(self, cams: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Max and argmax over the PRESENT classes of ``(B, K, H, W)`` CAMs (absent classes zeroed)."""
        present = (labels > 0)[:, :, None, None]
        masked = torch.where(present, cams, torch.zeros((), dtype=cams.dtype, device=cams.device))
        peak, peak_class = masked.max(dim=1)
        return peak, peak_class

    @torch.no_grad()
    def label_batch(self, batch: dict[str, Any], kind: str, label_set: LabelSet) -> LabelBatch:
        """Model side of a pseudo-label set for one batch of full-size training images (the runner sets eval mode
        and the trainer's precision context).

        Args:
            batch: see :meth:`WSSSModule.label_batch` (``sal`` is the off-the-shelf map).
            kind: ``initial`` (multi-scale CAM + raw saliency, §2.6–2.7) or ``refined`` (propagated CAM +
                CRF-refined saliency update, §2.8).
            label_set: the set being written.

        Returns:
            the fusion jobs; extra label maps ``cam`` (CAM-only: the peak class where the CAM exceeds
            ``cam_threshold``, else background) and, for ``refined``, ``raw_cam`` (the same without the affinity
            propagation); the CAM peaks and (``refined``) the affinity's row statistics for the health figures.
        """
        hp = self.hparams
        images, labels = batch["image"], batch["cls_label"]
        sizes = batch["ori_size"].tolist()
        # the files' sizes when a working resolution shrank the images: labels are written there
        full_sizes = [tuple(size) for size in batch["full_size"].tolist()] if "full_size" in batch else None
        height, width = images.shape[-2:]
        present = labels > 0
        offshelf = batch["sal"].float()
        affinity = None
        if kind == "initial":
            cams = multiscale_cam(self.network.forward_cam, images, tuple(hp.cam_scales), hp.cam_flip, labels).float()
            cam_peaks = cams.amax(dim=(-2, -1))
            saliency = offshelf
        elif kind == "refined":
            cams, raw, cam_peaks, predicted, affinity = self._refined_cams(images, present)
            saliency = self._update_saliency(predicted, offshelf)
        else:
            raise ValueError(f"unknown pseudo-label kind {kind!r}")
        label_cams = raw if kind == "refined" and hp.refresh_cam == "raw" else cams
        peak, peak_class = self._peak(label_cams, labels)
        # CAM-only labels of the (propagated) CAM and, for updates, of the raw one: the "+ affinity" ablation;
        # each CAM's peak is taken once
        extra_labels = {
            "cam": self._cam_only_labels(*((peak, peak_class) if label_cams is cams else self._peak(cams, labels)))
        }
        other = None  # the CAM of the fused ablation: the one the label does not use
        if kind == "refined":
            raw_peak = (peak, peak_class) if label_cams is raw else self._peak(raw, labels)
            extra_labels["raw_cam"] = self._cam_only_labels(*raw_peak)
            other = cams if label_cams is raw else raw
        crf = self._saliency_crf(kind)
        if crf is not None and not crf.runs_in_pool:  # a device CRF refines here, the batch at once; the jobs fuse
            saliency = saliency.clone()
            refined = crf.refine_saliency_batch(
                [batch["raw"][index, :h, :w] for index, (h, w) in enumerate(sizes)],
                [saliency[index, :h, :w].clamp(0, 1) for index, (h, w) in enumerate(sizes)],
            )
            for index, ((h, w), refined_map) in enumerate(zip(sizes, refined, strict=True)):
                saliency[index, :h, :w] = refined_map
            crf = None
        ablation = self._fused_ablation(kind)
        if ablation is not None and other is not None:  # the label from the other CAM, same saliency
            extra_labels[ablation] = fuse_cam_saliency(
                other, saliency.clamp(0, 1), labels, hp.cam_threshold, hp.fusion_saliency_threshold
            )
        jobs = []
        for index, (h, w) in enumerate(sizes):
            if kind == "initial" and bool((offshelf[index, :h, :w] == 255).all()):
                raise ValueError(f"{batch['name'][index]}: the initial labels need an off-the-shelf saliency map")
            jobs.append(
                FusionJob(
                    name=batch["name"][index],
                    out_dir=str(label_set.root),
                    peak=peak[index, :h, :w].cpu().numpy(),
                    peak_class=peak_class[index, :h, :w].to(torch.uint8).cpu().numpy(),
                    saliency=saliency[index, :h, :w].clamp(0, 1).cpu().numpy(),
                    image=batch["raw"][index, :h, :w].cpu().numpy() if crf is not None else None,
                    crf=crf,
                    cam_threshold=hp.cam_threshold,
                    saliency_threshold=hp.fusion_saliency_threshold,
                    write_saliency=kind == "refined",
                    classes=tuple(int(c) + 1 for c in torch.nonzero(present[index]).flatten().tolist()),
                    full_size=full_sizes[index] if full_sizes is not None else None,
                )
            )
        return LabelBatch(jobs, extra_labels, cam_peaks=cam_peaks, present=present, affinity=affinity)

    def _refined_cams(
        self, images: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """The label update's CAMs (§2.8) under the ``refresh_cam_scales`` / ``refresh_cam_flip`` protocol.

        One view (scale 1, no flip) is the official code exactly: ``M̂ = normalize_cam(M)`` at feature resolution,
        propagated once by the learned pairwise affinity, upsampled — max-normalised before, not after, the
        propagation. Several views follow the initial labels' (PSA) protocol: per view the ReLU'd raw CAM and the
        propagated ``M̂`` are upsampled to the image and summed, and the sums are max-normalised.

        Returns:
            propagated and raw CAMs ``(B, K, H, W)`` (absent classes 0), the raw CAM peaks ``(B, K)`` (scale 1), the
            predicted saliency ``sigmoid(R_sal)`` ``(B, H, W)`` (scale 1) and the affinity row statistics (scale 1).
        """
        hp = self.hparams
        size = tuple(images.shape[-2:])
        mask = present[:, :, None, None]
        views = [
            (float(s), flipped) for s in hp.refresh_cam_scales for flipped in (False, True)[: 1 + hp.refresh_cam_flip]
        ]
        if (1.0, False) not in views:
            raise ValueError(f"refresh_cam_scales must contain 1.0, got {list(hp.refresh_cam_scales)}")
        propagated, raw = torch.zeros(()), torch.zeros(())
        for scale, flipped in views:
            x = (
                images
                if scale == 1.0
                else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
            )
            out = self.network(self.prepare_images(x.flip(-1) if flipped else x))
            cam = normalize_cam(out.cam.float()) * mask
            prop = upsample_cam(out.affinity.propagate(cam), size)
            view_raw = upsample_cam(cam if len(views) == 1 else F.relu(out.cam.float()) * mask, size)
            if flipped:
                prop, view_raw = prop.flip(-1), view_raw.flip(-1)
            propagated, raw = propagated + prop, raw + view_raw
            if (scale, flipped) == (1.0, False):
                cam_peaks = cam.amax(dim=(-2, -1))
                predicted = torch.sigmoid(F.interpolate(out.sal_refined.float(), size, mode="bilinear"))[:, 0]
                # health of the propagating affinity: CAM foreground (present classes, above threshold)
                affinity = out.affinity.row_statistics(cam.amax(dim=1) > hp.cam_threshold)
        if len(views) > 1:
            propagated, raw = normalize_cam(propagated), normalize_cam(raw)
        elif hp.refresh_cam_norm == "after":
            propagated = normalize_cam(propagated)
        return propagated, raw, cam_peaks, predicted, affinity

    def _update_saliency(self, predicted: Tensor, offshelf: Tensor) -> Tensor:
        """The label update's saliency ``(B, H, W)`` in [0, 1] before any CRF, per ``refresh_saliency``: where an
        image has no off-shelf map (255 padding or missing) the prediction stands in for it."""
        missing = offshelf == 255
        if self.hparams.refresh_saliency == "given":
            return torch.where(missing, predicted, offshelf)
        return torch.where(missing, predicted, (predicted + offshelf) / 2)

    def _cam_only_labels(self, peak: Tensor, peak_class: Tensor) -> Tensor:
        """CAM-only labels (B, H, W) uint8: the peak class where the CAM exceeds ``cam_threshold``, else background."""
        return torch.where(peak > self.hparams.cam_threshold, peak_class + 1, 0).to(torch.uint8)

    def extra_label_kinds(self, kind: str) -> tuple[str, ...]:
        """Extra label maps ``label_jobs`` returns for ablations: CAM-only labels, and for label updates the
        same single-scale CAM without the affinity propagation (``raw_cam``), and — when the fused saliency is final
        before the CRF pool (no pool CRF on it) — the fused label from the CAM the set does not use (``raw_fused``
        or ``propagated_fused``): the label update's "+ affinity" ablation on the label itself."""
        if kind != "refined":
            return ("cam",)
        ablation = self._fused_ablation(kind)
        return ("cam", "raw_cam") if ablation is None else ("cam", "raw_cam", ablation)

    def _fused_ablation(self, kind: str) -> str | None:
        """Name of the fused "+ affinity" ablation label of a set (``raw_fused`` when the label is propagated,
        ``propagated_fused`` when it is not), or None when there is none: initial sets, and label updates whose
        saliency a pool CRF refines after this module (the ablation would see another saliency)."""
        crf = self._saliency_crf(kind)
        if kind != "refined" or (crf is not None and crf.runs_in_pool):
            return None
        return "propagated_fused" if self.hparams.refresh_cam == "raw" else "raw_fused"

    def _saliency_crf(self, kind: str) -> DenseCRF | None:
        """The CRF that refines a label set's saliency: the run's CRF for a ``refresh_saliency: update`` label
        update when it has a ``saliency`` preset, else None."""
        hp = self.hparams
        refine = kind == "refined" and hp.refresh_saliency == "update" and self.crf.saliency is not None
        return self.crf if refine else None

    def label_config(self, kind: str) -> dict[str, Any]:
        """What determines a label set (for the manifest's config hash)."""
        hp = self.hparams
        config = {
            "method": "auxsegnet",
            "kind": kind,
            "cam_threshold": hp.cam_threshold,
            "saliency_threshold": hp.fusion_saliency_threshold,
        }
        if kind == "initial":
            config.update(cam_scales=list(hp.cam_scales), cam_flip=hp.cam_flip)
        else:
            config.update(
                cam_scales=list(hp.refresh_cam_scales),
                cam_flip=hp.refresh_cam_flip,
                refresh_cam=hp.refresh_cam,
                refresh_cam_norm=hp.refresh_cam_norm,
                refresh_saliency=hp.refresh_saliency,
            )
        return config

    def label_layout(self, kind: str) -> LabelLayout:
        """Per-image sets: ``seg`` maps, plus the updated ``sal`` maps of a label update."""
        return LabelLayout(kinds=("seg", "sal") if kind == "refined" else ("seg",))

    def networks(self) -> list[nn.Module]:
        return [self.network]
