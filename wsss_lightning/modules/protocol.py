"""The contract between a WSSS method and the pipeline that trains, evaluates, refreshes and visualises it.

A method is a LightningModule (training: ``training_step``, ``configure_optimizers``) that also provides what
:class:`WSSSMethod` lists. :class:`~wsss_lightning.modules.base.WSSSModule` implements the shared parts
(evaluation modes, metrics, result tables, the stage schedule hook); a method subclasses it and implements the
abstract ones. The pipeline — the stage callback, the label-set runner (``label_runner.py``), ``wsss
pseudolabel``, the W&B panels — calls these methods and nothing else.

Required of every method:

* ``segmentation_logits(images)`` — ``(B, 3, H, W)`` normalised images -> ``(B, C, h, w)`` logits (inference);
* ``label_config(kind)``, ``label_layout(kind)``, ``label_batch(batch, kind, label_set)`` — one pseudo-label set
  (what determines it, what it holds, the model side of one batch of it).

Optional parts, declared in ``parts`` (:class:`MethodParts`) so callers know without probing:

* ``saliency`` — ``saliency_probabilities(images)`` ``(B, 1, h, w)`` in [0, 1] (scored on saliency test sets,
  written by ``wsss predict``, drawn in panels);
* ``cam`` — ``visualize()`` returns class activation maps ``cam``;
* ``affinity`` — ``visualize()`` also returns the affinity-propagated ``refined_cam``;
* ``classifier`` — ``class_presence(images)`` ``(B, C-1)`` image-level class probabilities in [0, 1] (the
  ``_gate`` inference modes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor

from wsss_lightning.pseudo.dense_crf import DenseCRF
from wsss_lightning.pseudo.label_set import LabelLayout, LabelSet

__all__ = ["LabelBatch", "LabelSetListener", "MethodParts", "WSSSMethod"]


@dataclass(frozen=True)
class MethodParts:
    """The optional parts a method has (see the module docstring)."""

    saliency: bool = True
    cam: bool = True
    affinity: bool = False
    classifier: bool = False


@dataclass
class LabelBatch:
    """The model side of one batch of a pseudo-label set.

    Attributes:
        jobs: CPU jobs (``pseudo/jobs.py``) that write the files, one manifest entry each.
        extra_labels: label maps ``(B, H, W)`` uint8 scored next to the set for ablations, by name (e.g. ``cam``:
            CAM-only labels); the names are those of ``extra_label_kinds(kind)``.
        cam_peaks: ``(B, K)`` peak of each max-normalised foreground CAM (health: dead CAMs), or None.
        present: ``(B, K)`` bool, the image-level classes (with ``cam_peaks``).
        affinity: the propagating affinity's ``row_statistics`` (health), or None.
    """

    jobs: list[Any]
    extra_labels: dict[str, Tensor] = field(default_factory=dict)
    cam_peaks: Tensor | None = None
    present: Tensor | None = None
    affinity: dict[str, Tensor] | None = None


class WSSSMethod(Protocol):
    """What the pipeline asks of a method (implemented by :class:`~wsss_lightning.modules.base.WSSSModule`)."""

    parts: MethodParts
    num_classes: int
    class_names: list[str]
    crf: DenseCRF

    def segmentation_logits(self, images: Tensor) -> Tensor: ...

    def saliency_probabilities(self, images: Tensor) -> Tensor: ...

    def visualize(self, images: Tensor, cls_label: Tensor) -> dict[str, Tensor]: ...

    def enter_stage(self, stage: int, start_step: int, epochs: int | None, reset_optimizer: bool) -> None: ...

    def initial_label_kind(self) -> str: ...

    def refresh_kind(self, stage: int) -> str: ...

    def label_config(self, kind: str) -> dict[str, Any]: ...

    def label_layout(self, kind: str) -> LabelLayout: ...

    def extra_label_kinds(self, kind: str) -> tuple[str, ...]: ...

    def label_batch(self, batch: dict[str, Any], kind: str, label_set: LabelSet) -> LabelBatch: ...


class LabelSetListener:
    """A callback that wants every finished label set (e.g. the W&B panels): the runner calls
    :meth:`on_label_set_end` on every trainer callback that subclasses this, on rank 0."""

    def on_label_set_end(self, trainer: Any, module: Any, record: dict[str, Any]) -> None:
        """``record``: the set's record (``quality.json``), with the model that generated it."""
