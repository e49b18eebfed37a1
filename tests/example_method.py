"""A third WSSS method, added the way docs/extending.md describes: a network, a module and a config — nothing else.

**CAM + saliency** (the "image labels + saliency" family without any affinity): a backbone with a classifier whose
CAM, fused with the off-the-shelf saliency map, gives the pseudo-labels, and a segmentation head trained on them.
It has no saliency prediction and no affinity (``parts``), so it also proves those parts optional. Its label sets
reuse AuxSegNet's fusion job (CAM > 0.2 and saliency > 0.06); the refresh uses the trained classifier's CAM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_lightning.losses import multilabel_soft_margin, segmentation_ce_loss
from wsss_lightning.models.heads import ClassificationHead
from wsss_lightning.modules.auxsegnet import build_network
from wsss_lightning.modules.base import WSSSModule
from wsss_lightning.modules.protocol import LabelBatch, MethodParts
from wsss_lightning.pseudo.cam import multiscale_cam
from wsss_lightning.pseudo.fusion import CAM_THRESHOLD, SALIENCY_THRESHOLD
from wsss_lightning.pseudo.jobs import FusionJob
from wsss_lightning.pseudo.label_set import LabelLayout, LabelSet

# ------------------------------------------------------------------------------------------------ the network


class CamSaliencyNet(nn.Module):
    """Backbone (stride-8 contract of ``models/auxsegnet.py``) + classifier ``fc8`` + a 3×3 segmentation head.

    ``forward(x) -> (cls_logits (B, C-1), cam (B, C-1, h, w), seg_logits (B, C, h, w))``.
    """

    def __init__(self, num_classes: int, backbone: nn.Module) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        channels = int(backbone.out_channels)
        self.classifier = ClassificationHead(channels, num_classes - 1)
        self.seg_head = nn.Conv2d(channels, num_classes, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = self.backbone(x)[-1]
        return self.classifier(features), self.classifier.cam(features), self.seg_head(features)

    def forward_cam(self, x: Tensor) -> Tensor:
        return self.classifier.cam(self.backbone(x)[-1])


# ------------------------------------------------------------------------------------------------ the module


class CamSaliencyModule(WSSSModule):
    """Training (classification warm-up, then classification + segmentation on the pseudo-labels), inference with
    the segmentation head, and label sets from CAM + off-the-shelf saliency.

    Args:
        network: a :class:`CamSaliencyNet`, or (from configs) a factory called with ``num_classes``.
        lr: SGD learning rate (momentum 0.9).
        cam_scales: CAM protocol of the labels.
        **kwargs: evaluation arguments of :class:`WSSSModule`.
    """

    parts = MethodParts(saliency=False, cam=True, affinity=False)

    def __init__(
        self,
        network: nn.Module | Callable[[int], nn.Module],
        num_classes: int = 21,
        class_names: list[str] | None = None,
        lr: float = 0.01,
        cam_scales: tuple[float, ...] = (1.0,),
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, class_names, **kwargs)
        self.save_hyperparameters(ignore=["network", "crf"])
        self.network = build_network(network, num_classes)
        self.warmup = False

    def networks(self) -> list[nn.Module]:
        return [self.network]

    def enter_stage(self, stage: int, start_step: int, epochs: int | None, reset_optimizer: bool) -> None:
        super().enter_stage(stage, start_step, epochs, reset_optimizer)
        self.warmup = stage < 0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        cls_logits, _, seg_logits = self.network(batch["image"])
        loss = multilabel_soft_margin(cls_logits, batch["cls_label"])
        seg_loss = segmentation_ce_loss(seg_logits, batch["seg"])
        # warm-up: a zero-weighted term keeps the head in the graph (DDP) and skips labels that do not exist yet
        loss = loss + (0.0 if self.warmup else 1.0) * torch.nan_to_num(seg_loss)
        self.log("train/loss", loss.detach(), batch_size=batch["image"].shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(
            self.network.parameters(), lr=self.hparams.lr, momentum=0.9, **self.optimizer_kernel_kwargs()
        )

    def segmentation_logits(self, images: Tensor) -> Tensor:
        return self.network(images)[2]

    @torch.no_grad()
    def visualize(self, images: Tensor, cls_label: Tensor) -> dict[str, Tensor]:
        cam = multiscale_cam(self.network.forward_cam, images, (1.0,), False, cls_label)
        return {"cam": cam}

    # the pseudo-label contract

    def label_config(self, kind: str) -> dict[str, Any]:
        return {"method": "cam_saliency", "kind": kind, "cam_scales": list(self.hparams.cam_scales)}

    def label_layout(self, kind: str) -> LabelLayout:
        return LabelLayout(kinds=("seg",))

    def extra_label_kinds(self, kind: str) -> tuple[str, ...]:
        return ("cam",)

    @torch.no_grad()
    def label_batch(self, batch: dict[str, Any], kind: str, label_set: LabelSet) -> LabelBatch:
        labels = batch["cls_label"]
        cams = multiscale_cam(self.network.forward_cam, batch["image"], tuple(self.hparams.cam_scales), False, labels)
        present = labels > 0
        masked = torch.where(present[:, :, None, None], cams, torch.zeros(()))
        peak, peak_class = masked.max(dim=1)
        cam_only = torch.where(peak > CAM_THRESHOLD, peak_class + 1, 0).to(torch.uint8)
        jobs = [
            FusionJob(
                name=name,
                out_dir=str(label_set.root),
                peak=peak[i, :h, :w].cpu().numpy(),
                peak_class=peak_class[i, :h, :w].to(torch.uint8).cpu().numpy(),
                saliency=F.relu(batch["sal"][i, :h, :w].float()).clamp(0, 1).cpu().numpy(),
                cam_threshold=CAM_THRESHOLD,
                saliency_threshold=SALIENCY_THRESHOLD,
                classes=tuple(int(c) + 1 for c in torch.nonzero(present[i]).flatten().tolist()),
            )
            for i, (name, (h, w)) in enumerate(zip(batch["name"], batch["ori_size"].tolist()))
        ]
        return LabelBatch(jobs, {"cam": cam_only}, cam_peaks=cams.amax(dim=(-2, -1)), present=present)


# ------------------------------------------------------------------------------------------------ the config

#: what ``configs/<experiment>.yaml`` would hold for this method (the data, trainer and stage pieces are shared)
CONFIG = {
    "model": {
        "class_path": "example_method.CamSaliencyModule",
        "init_args": {
            "network": {
                "class_path": "example_method.CamSaliencyNet",
                "init_args": {
                    "backbone": {
                        "class_path": "wsss_lightning.models.TimmBackbone",
                        "init_args": {"name": "test_resnet", "output_stride": 8},
                    }
                },
            },
            "lr": 0.01,
            "test_modes": ["ss"],
        },
    }
}
