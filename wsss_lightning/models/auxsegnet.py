"""AuxSegNet (ICCV 2021) and AuxSegNet+ (TNNLS 2025) networks: backbone + classifier + seg/sal branches + affinity.

docs/method_notes.md §2.3 (layers), §2.4 (affinity), §2.12 (AuxSegNet+), §2.14 (plan). A plain ``nn.Module``; losses,
optimisation and stages live in ``modules/``. The backbone is injected and must follow the contract::

    backbone.feature_channels: tuple[int, ...]; backbone.feature_strides: tuple[int, ...]; backbone.out_channels: int
    backbone(x: (B, 3, H, W)) -> list[Tensor]   # shallow -> deep; the last one (stride 8) is used here
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from wsss_lightning.models.affinity import (
    DEFAULT_CACHE_ELEMENTS,
    AffinityContext,
    AffinityMode,
    CrossTaskAffinity,
    UnaryFusionMode,
)
from wsss_lightning.models.heads import ClassificationHead, TaskBranch

__all__ = ["AuxSegNetOutput", "AuxSegNet", "AuxSegNetPlus"]


@dataclass
class AuxSegNetOutput:
    """Everything one forward pass produces, at feature resolution ``h × w`` (stride 8).

    Attributes:
        cls_logits: ``(B, C-1)`` image-level logits (dropout active in training mode).
        cam: ``(B, C-1, h, w)`` raw ``fc8`` map, unbounded (ReLU + max-normalise downstream).
        sal_logits: ``(B, 1, h, w)`` saliency logits ``L_sal``.
        sal_refined: ``(B, 1, h, w)`` affinity-refined saliency logits ``R_sal``.
        seg_logits: ``(B, C, h, w)`` segmentation logits ``L_seg``.
        seg_refined: ``(B, C, h, w)`` affinity-refined segmentation logits ``R_seg``.
        affinity: the segmentation-side context; its pairwise part (``A_CT`` when cross-task) propagates CAMs.
    """

    cls_logits: Tensor
    cam: Tensor
    sal_logits: Tensor
    sal_refined: Tensor
    seg_logits: Tensor
    seg_refined: Tensor
    affinity: AffinityContext


class AuxSegNet(nn.Module):
    """Multi-task network: classification (``fc8``), saliency and segmentation branches with (dual-)affinity.

    Defaults reproduce AuxSegNet (pairwise, cross-task). ``affinity="dual"`` is our UNCONFIRMED AuxSegNet+ reading.

    ``num_classes`` comes first so configs can give the network as a factory of the class count
    (``Callable[[int], nn.Module]``), which the CLI links to the data's ``num_classes``.

    Args:
        num_classes: ``C`` including background (21 VOC, 81 COCO); the classifier predicts ``C - 1``.
        backbone: stride-8 feature extractor following the module-level contract.
        affinity: "none" | "pairwise" | "unary" | "dual".
        cross_task: fuse seg/sal affinities for refinement and CAM propagation.
        head_channels: branch width (128).
        dilations: dilations of conv1, conv2, conv3 in each branch ((6, 12, 18)).
        unary_fusion, whiten_pairwise, average_terms, unary_refinement, unary_gate, renormalize_rows, chunk_size,
            cache_elements: see :class:`~wsss_lightning.models.affinity.CrossTaskAffinity`.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        affinity: AffinityMode = "pairwise",
        cross_task: bool = True,
        head_channels: int = 128,
        dilations: Sequence[int] = (6, 12, 18),
        unary_fusion: UnaryFusionMode = "conv",
        whiten_pairwise: bool = False,
        average_terms: bool = False,
        unary_refinement: bool = True,
        unary_gate: bool = False,
        renormalize_rows: bool = False,
        chunk_size: int = 4096,
        cache_elements: int = DEFAULT_CACHE_ELEMENTS,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
        in_channels = int(backbone.out_channels)
        self.backbone = backbone
        self.num_classes = num_classes
        self.classifier = ClassificationHead(in_channels, num_classes - 1)
        self.seg_branch = TaskBranch(in_channels, num_classes, head_channels, dilations)
        self.sal_branch = TaskBranch(in_channels, 1, head_channels, dilations)
        self.affinity = CrossTaskAffinity(
            head_channels,
            mode=affinity,
            cross_task=cross_task,
            unary_fusion=unary_fusion,
            whiten_pairwise=whiten_pairwise,
            average_terms=average_terms,
            unary_refinement=unary_refinement,
            unary_gate=unary_gate,
            renormalize_rows=renormalize_rows,
            chunk_size=chunk_size,
            cache_elements=cache_elements,
        )
        # A PSA/AuxSegNet classifier checkpoint given to the backbone also holds ``fc8``: the classifier
        # head takes it from the backbone's load report (the "learned classification parameters" of stage 0).
        report = getattr(backbone, "load_report", None)
        head_state = getattr(report, "unexpected_state", None) or {}
        if any(key.endswith("fc8.weight") for key in head_state):
            self.load_head_weights(head_state)

    def forward(self, x: Tensor) -> AuxSegNetOutput:
        """Run all branches.

        Args:
            x: normalised images ``(B, 3, H, W)``.

        Returns:
            :class:`AuxSegNetOutput` at the backbone's last (stride-8) resolution.
        """
        feats = self.backbone(x)[-1]
        cls_logits = self.classifier(feats)
        cam = self.classifier.cam(feats)
        aff = self.affinity(self.seg_branch.encode(feats), self.sal_branch.encode(feats))
        seg_logits = self.seg_branch.decode(aff.seg_features)
        sal_logits = self.sal_branch.decode(aff.sal_features)
        seg_refined, sal_refined = self.affinity.refine(aff, seg_logits, sal_logits)
        return AuxSegNetOutput(
            cls_logits=cls_logits,
            cam=cam,
            sal_logits=sal_logits,
            sal_refined=sal_refined,
            seg_logits=seg_logits,
            seg_refined=seg_refined,
            affinity=aff.seg_context,
        )

    def forward_cam(self, x: Tensor) -> Tensor:
        """Raw class activation maps only ``(B, C-1, h, w)``: backbone + ``fc8``, skipping the branches and the
        N×N affinity (cheap multi-scale CAMs for the initial pseudo-labels)."""
        return self.classifier.cam(self.backbone(x)[-1])

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Learning-rate groups as the code (docs/method_notes.md §2.10), every parameter in exactly one group.

        ``"backbone"`` (base lr): backbone + cross-task fusion convs (the code's ``cross_att``).
        ``"classifier"`` (the code: ×10 like the heads): ``fc8``. ``"heads"`` (×10 lr): both branches, the per-task
        θ/φ/g/W/unary convs — with ``fc8``, the parameters whose names contain ``seg``/``sal``/``fc8``. Frozen
        (``requires_grad=False``) parameters are included too; the optimizer simply never updates them.
        """
        heads = [self.seg_branch, self.sal_branch, self.affinity.seg, self.affinity.sal]
        head_params = [p for m in heads for p in m.parameters()]
        classifier_params = list(self.classifier.parameters())
        taken = {id(p) for p in head_params + classifier_params}
        base_params = [p for p in self.parameters() if id(p) not in taken]
        return {"backbone": base_params, "classifier": classifier_params, "heads": head_params}

    def load_head_weights(self, state: Mapping[str, Tensor]) -> None:
        """Copy ``fc8.weight`` from a PSA ResNet-38 classifier state dict into the classifier.

        Accepts any key ending in ``fc8.weight`` (e.g. ``fc8.weight``, ``module.fc8.weight``).

        Args:
            state: a state dict; its ``fc8.weight`` must have shape ``(C-1, C_in, 1, 1)`` (``(20, 4096, 1, 1)``).

        Raises:
            KeyError: no (or more than one) ``fc8.weight`` entry.
            ValueError: wrong shape.
        """
        keys = [k for k in state if k == "fc8.weight" or k.endswith(".fc8.weight")]
        if len(keys) != 1:
            raise KeyError(f"expected exactly one 'fc8.weight' entry in the checkpoint, found {keys or 'none'}")
        weight = state[keys[0]]
        target = self.classifier.fc8.weight
        if tuple(weight.shape) != tuple(target.shape):
            raise ValueError(
                f"checkpoint '{keys[0]}' has shape {tuple(weight.shape)}, the classifier needs "
                f"{tuple(target.shape)} (num_classes={self.num_classes}, backbone channels={target.shape[1]})"
            )
        with torch.no_grad():
            target.copy_(weight.to(dtype=target.dtype, device=target.device))


class AuxSegNetPlus(AuxSegNet):
    """AuxSegNet+ (TNNLS 2025): :class:`AuxSegNet` with the cross-task **dual** affinity (pairwise + unary).

    The unary term, its cross-task fusion and the refinement sum are our UNCONFIRMED DNL/GCNet-style reading
    of the paper (docs/method_notes.md §2.12); only the pairwise affinity propagates CAMs (confirmed by the abstract).
    Every other argument is :class:`AuxSegNet`'s.
    """

    def __init__(self, num_classes: int, backbone: nn.Module, affinity: AffinityMode = "dual", **kwargs: Any) -> None:
        super().__init__(num_classes, backbone, affinity=affinity, **kwargs)
