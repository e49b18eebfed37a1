"""LightningModule for AuxSegNet (ICCV 2021) and AuxSegNet+ (TNNLS 2025): losses, optimisation, label jobs.

* Losses (methods §2.5): ``L = λ1·L_cls + λ2·(L_sal1 + L_sal2) + λ3·(L_seg1 + L_seg2)``; in the classification
  warm-up phase only ``L_cls``.
* Optimiser (§2.10): SGD with two parameter groups (backbone + cross-task fusion at ``lr``, heads at
  ``lr × head_lr_mult``) and a poly schedule that restarts at every stage (the stage callback sets the
  segment). The official code's positional-argument quirk makes its SGD effectively momentum 0 and
  weight decay 0: that is the default here (``configs/model/auxsegnet_code.yaml``); the paper-intended
  momentum 0.9 / weight decay 1e-5 is a config (``configs/model/auxsegnet_paper.yaml``).
* Pseudo-label jobs (§2.6–2.8): initial labels from multi-scale + flip CAMs fused with the off-the-shelf
  saliency; label updates from CAMs propagated by the learned (cross-task) pairwise affinity, fused with
  the CRF-refined mean of the predicted and the off-the-shelf saliency.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_lightning.losses import multilabel_soft_margin, saliency_bce_loss, segmentation_ce_loss
from wsss_lightning.modules.base import WSSSModule
from wsss_lightning.modules.inference import ScaleFusion
from wsss_lightning.pseudo.cam import multiscale_cam, normalize_cam, upsample_cam
from wsss_lightning.pseudo.crf import get_crf_params
from wsss_lightning.pseudo.fusion import CAM_THRESHOLD, SALIENCY_THRESHOLD
from wsss_lightning.pseudo.jobs import FusionJob

log = logging.getLogger(__name__)

NetworkFactory = Callable[[int], nn.Module]
Phase = Literal["warmup", "multitask"]


def build_network(network: nn.Module | NetworkFactory, num_classes: int) -> nn.Module:
    """An injected module is used as is (its class count must match); a factory is called with ``num_classes``."""
    if isinstance(network, nn.Module):
        built = network
    else:
        built = network(num_classes)
    found = getattr(built, "num_classes", num_classes)
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
        lr: base learning rate (7e-4 code, 1e-3 paper); ``head_lr_mult`` for the heads (10).
        classifier_lr_mult: multiplier of the classifier ``fc8`` (None: ``head_lr_mult``, as the code). A new
            linear classifier on a pretrained backbone learns like a linear probe, at a far higher rate than
            the backbone tolerates (docs/results.md: the demo recipe's choice).
        momentum, weight_decay, nesterov: SGD (code-effective 0 / 0; paper-intended 0.9 / 1e-5).
        poly_power: poly schedule exponent (0.9).
        saliency_threshold: binarisation of the saliency pseudo-label inside the loss (0.5).
        cam_scales, cam_flip: multi-scale CAM protocol of the initial labels (PSA: 1, 0.5, 1.5, 2 with flip).
        cam_threshold, fusion_saliency_threshold: fusion thresholds (0.2, 0.06).
        saliency_crf: CRF preset of the saliency update (``auxseg_saliency``), or None to skip it;
            ``saliency_crf_tau`` its unary temperature (1.05).
        channels_last, compile, compile_backend: speed switches, see :class:`WSSSModule` (under
            ``--trainer.precision bf16-mixed`` the affinity softmaxes still run in float32).
        remaining arguments: evaluation, see :class:`WSSSModule`.
    """

    def __init__(
        self,
        network: nn.Module | NetworkFactory,
        num_classes: int = 21,
        class_names: list[str] | None = None,
        cls_loss_weight: float = 1.0,
        sal_loss_weight: float = 1.0,
        seg_loss_weight: float = 1.0,
        lr: float = 7e-4,
        head_lr_mult: float = 10.0,
        classifier_lr_mult: float | None = None,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        poly_power: float = 0.9,
        saliency_threshold: float = 0.5,
        cam_scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
        cam_flip: bool = True,
        cam_threshold: float = CAM_THRESHOLD,
        fusion_saliency_threshold: float = SALIENCY_THRESHOLD,
        saliency_crf: str | None = "auxseg_saliency",
        saliency_crf_tau: float = 1.05,
        val_modes: list[str] | None = None,
        test_modes: list[str] | None = None,
        eval_scales: list[float] | None = None,
        scale_fusion: ScaleFusion = "max",
        crf_preset: str = "auxseg_inference",
        saliency_protocol: str = "sod",
        predict_mode: str = "ss",
        channels_last: bool = False,
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__(
            num_classes, class_names, val_modes, test_modes, eval_scales, scale_fusion, crf_preset,
            saliency_protocol, predict_mode,
            channels_last=channels_last, compile=compile, compile_backend=compile_backend,
        )  # fmt: skip
        self.save_hyperparameters(ignore=["network"])
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
        else:
            # Warm-up trains the classifier only; a zero-weighted term keeps the branches in the graph so that
            # DDP's gradient reducer sees every parameter (no find_unused_parameters needed).
            total = total + 0.0 * (out.seg_refined.float().mean() + out.sal_refined.float().mean())
        batch_size = batch["image"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), batch_size=batch_size)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=batch_size)
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
        optimizer = torch.optim.SGD(
            [g for g in param_groups if g["params"]],
            lr=hp.lr,
            momentum=hp.momentum,
            weight_decay=hp.weight_decay,
            nesterov=hp.nesterov and hp.momentum > 0,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.poly_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def poly_factor(self, step: int) -> float:
        """``(1 - t / T) ** power`` within the current segment (a stage), ``t`` steps since its start."""
        progress = min(max(step - self.lr_segment_start, 0) / self.lr_segment_steps(), 1.0)
        return (1.0 - progress) ** self.hparams.poly_power

    def enter_stage(self, stage: int, start_step: int, epochs: int | None, reset_optimizer: bool) -> None:
        super().enter_stage(stage, start_step, epochs, reset_optimizer)
        self.phase = "warmup" if stage < 0 else "multitask"

    # ------------------------------------------------------------------------------------------ inference

    def segmentation_logits(self, images: Tensor) -> Tensor:
        return self.network(self.prepare_images(images)).seg_refined

    def saliency_probabilities(self, images: Tensor) -> Tensor:
        return torch.sigmoid(self.network(self.prepare_images(images)).sal_refined.float())

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
    def label_jobs(self, batch: dict[str, Any], kind: str, out_dir: str) -> tuple[list[FusionJob], dict[str, Tensor]]:
        """Model side of a pseudo-label set for one batch of full-size training images.

        Args:
            batch: from ``datamodule.refresh_dataset()`` (``raw``, ``sal`` = off-the-shelf map, ``seg`` = GT or 255).
            kind: ``initial`` (multi-scale CAM + raw saliency, §2.6–2.7) or ``refined`` (propagated CAM +
                CRF-refined saliency update, §2.8).
            out_dir: the set's folder.

        Returns:
            the CPU jobs, and extra label maps (B, H, W) uint8 for the ablation rows: ``cam_labels`` (CAM-only:
            the peak class where the CAM exceeds ``cam_threshold``, else background) and, for ``refined``,
            ``raw_cam_labels`` (the same without affinity propagation).
        """
        hp = self.hparams
        images, labels = batch["image"], batch["cls_label"]
        sizes = batch["ori_size"].tolist()
        height, width = images.shape[-2:]
        offshelf = batch["sal"].float()
        if kind == "initial":
            with self._precision_context():
                cams = multiscale_cam(self.network.forward_cam, images, tuple(hp.cam_scales), hp.cam_flip, labels)
            cams = cams.float()
            cam_peaks = cams.amax(dim=(-2, -1))
            saliency = offshelf
            crf = None
        elif kind == "refined":
            with self._precision_context():
                out = self.network(self.prepare_images(images))
            cam = normalize_cam(out.cam.float())
            cam_peaks = cam.amax(dim=(-2, -1))
            cams = out.affinity.propagate(cam)
            cams = upsample_cam(cams, (height, width))
            predicted = torch.sigmoid(F.interpolate(out.sal_refined.float(), (height, width), mode="bilinear"))[:, 0]
            saliency = torch.where(offshelf == 255, predicted, (predicted + offshelf) / 2)
            crf = get_crf_params(hp.saliency_crf) if hp.saliency_crf else None
        else:
            raise ValueError(f"unknown pseudo-label kind {kind!r}")
        peak, peak_class = self._peak(cams, labels)
        present = labels > 0
        extras: dict[str, Any] = {
            "cam_labels": self._cam_only_labels(peak, peak_class), "cam_peaks": cam_peaks, "present": present,
        }  # fmt: skip
        if kind == "refined":  # the same CAM without the affinity propagation: the "+ affinity" ablation
            raw = upsample_cam(cam, (height, width))
            extras["raw_cam_labels"] = self._cam_only_labels(*self._peak(raw, labels))
            # health of the propagating affinity: CAM foreground (present classes, above threshold) at feature size
            foreground = (cam * present[:, :, None, None]).amax(dim=1) > hp.cam_threshold
            extras["affinity"] = out.affinity.row_statistics(foreground)
        jobs = []
        for index, (h, w) in enumerate(sizes):
            missing = bool((offshelf[index, :h, :w] == 255).all()) and kind == "initial"
            if missing:
                raise ValueError(f"{batch['name'][index]}: the initial labels need an off-the-shelf saliency map")
            jobs.append(
                FusionJob(
                    name=batch["name"][index],
                    out_dir=out_dir,
                    peak=peak[index, :h, :w].cpu().numpy(),
                    peak_class=peak_class[index, :h, :w].to(torch.uint8).cpu().numpy(),
                    saliency=saliency[index, :h, :w].clamp(0, 1).cpu().numpy(),
                    image=batch["raw"][index, :h, :w].cpu().numpy() if crf is not None else None,
                    saliency_crf=crf,
                    tau=hp.saliency_crf_tau,
                    cam_threshold=hp.cam_threshold,
                    saliency_threshold=hp.fusion_saliency_threshold,
                    write_saliency=kind == "refined",
                    classes=tuple(int(c) + 1 for c in torch.nonzero(present[index]).flatten().tolist()),
                )
            )
        return jobs, extras

    def _precision_context(self) -> contextlib.AbstractContextManager:
        """The trainer's precision context for label forwards (bf16 autocast under ``bf16-mixed``), so a refresh runs
        at the training precision (Lightning applies it to the step methods only); a no-op without a trainer. The
        affinity maths stays float32 either way, and everything after the network runs in float32."""
        plugin = getattr(self._trainer, "precision_plugin", None) if self._trainer is not None else None
        return plugin.forward_context() if plugin is not None else contextlib.nullcontext()

    def _cam_only_labels(self, peak: Tensor, peak_class: Tensor) -> Tensor:
        """CAM-only labels (B, H, W) uint8: the peak class where the CAM exceeds ``cam_threshold``, else background."""
        return torch.where(peak > self.hparams.cam_threshold, peak_class + 1, 0).to(torch.uint8)

    def extra_label_kinds(self, kind: str) -> tuple[str, ...]:
        """Extra label maps ``label_jobs`` returns for ablations: CAM-only labels, and for label updates the
        same single-scale CAM without the affinity propagation (``raw_cam``)."""
        return ("cam", "raw_cam") if kind == "refined" else ("cam",)

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
            config.update(saliency_crf=hp.saliency_crf, tau=hp.saliency_crf_tau)
        return config
