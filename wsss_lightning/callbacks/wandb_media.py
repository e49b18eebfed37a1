"""What a W&B run page of a WSSS run shows beyond the scalar curves: tables, image panels, stage charts, artifacts.

:class:`WandbMedia` (a callback; everything on rank 0, nothing inside training steps):

* after every validation (``fit`` and ``wsss validate``, not the sanity check): ``val/IoU_table`` (per-class IoU
  per inference mode), ``val/saliency_table`` (if saliency sets are validated) and one image panel per fixed id,
  ``val_media/<id>``;
* after ``wsss test``: ``test/IoU_table``, ``test/saliency_table`` (every metric per saliency test set) and panels
  ``test_media/<id>``;
* after every pseudo-label set of the stage pipeline: ``pseudo_quality/table`` (one row per set so far),
  ``pseudo_quality/chart`` (mIoU / precision / recall against the stage), ``pseudo_health/chart`` (empty labels,
  dead CAMs, ignored pixels, affinity leak and spread against the stage) and panels ``pseudo_media/<id>``; the
  scalars ``pseudo/*`` (logged by the stage callback) are plotted against ``pseudo/stage``;
* online runs only: the best (else the last) checkpoint as a ``model`` artifact at the end of ``fit``; label sets
  are uploaded as ``pseudo_labels`` artifacts by :func:`log_label_set_artifact` (called for every finished set).

A panel is a row of images of one id: the image with W&B's interactive masks (ground truth, prediction,
pseudo-label; class names from the data), the same label maps in VOC colours, CAM heatmaps of the present classes,
the affinity-refined CAMs, and the saliency maps (predicted, off-the-shelf, updated). The ids are fixed — the first
``num_images`` of the validation split and of the scored training ids — so the step slider compares the same images
across epochs and stages. Without a ``WandbLogger`` the callback does nothing (the scalar metrics still go to every
logger from the module and the stage callback).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from wsss_lightning.callbacks.pseudo_label_refresh import PseudoLabelRefresh
from wsss_lightning.data.datamodule import WSSSDataModule
from wsss_lightning.data.io import read_image, read_label, read_saliency
from wsss_lightning.data.palette import IGNORE_INDEX
from wsss_lightning.data.transforms import normalize_image
from wsss_lightning.data.working_size import resize_labels, resize_saliency
from wsss_lightning.modules.base import WSSSModule
from wsss_lightning.modules.protocol import LabelSetListener
from wsss_lightning.pseudo.label_set import LabelSet
from wsss_lightning.utils.visualize import (
    colorize_label,
    grey,
    overlay_heatmap,
    resize_image,
    resize_label,
)

log = logging.getLogger(__name__)

__all__ = [
    "Panel",
    "WandbMedia",
    "build_panel",
    "class_labels",
    "iou_table_rows",
    "label_set_artifact",
    "log_label_set_artifact",
    "quality_table_rows",
    "run_is_online",
    "saliency_table_rows",
    "wandb_loggers",
]

QUALITY_COLUMNS = (
    "stage", "kind", "pseudo_mIoU", "pseudo_precision", "pseudo_recall", "pseudo_ignored_fraction", "cam_mIoU",
    "raw_cam_mIoU", "raw_fused_mIoU", "propagated_fused_mIoU", "empty_label_fraction", "missing_class_fraction",
    "cam_empty_fraction", "label_ignored_fraction",
    "affinity_row_peak", "affinity_background_mass", "affinity_row_spread", "images", "reused", "seconds",
)  # fmt: skip
#: health figures drawn in ``pseudo_health/chart`` (fractions in [0, 1], against the stage)
HEALTH_CHART_KEYS = (
    "empty_label_fraction", "full_label_fraction", "missing_class_fraction", "cam_empty_fraction",
    "label_ignored_fraction", "affinity_background_mass", "affinity_row_spread",
)  # fmt: skip


# ------------------------------------------------------------------------------------------------ loggers


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    """The trainer's W&B loggers (empty when it logs elsewhere or nowhere)."""
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def run_is_online(logger: WandbLogger) -> bool:
    """True when the logger's run streams to a W&B server (not offline, not disabled). Rank 0 only."""
    if logger._offline:
        return False
    return logger.experiment.settings.mode == "online"


# ------------------------------------------------------------------------------------------------ tables


def iou_table_rows(results: dict[str, Any]) -> list[list[Any]]:
    """Rows ``[split, mode, class, IoU]`` of a results dict (``WSSSModule`` layout); classes absent everywhere: None."""
    rows: list[list[Any]] = []
    for split, per_mode in results.get("segmentation", {}).items():
        for mode, values in per_mode.items():
            rows.append([split, mode, "mIoU", values["mIoU"]])
            rows.extend([split, mode, name, iou] for name, iou in values["IoU"].items())
    return rows


def saliency_table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Columns ``[dataset, protocol, <metrics>...]`` and one row per saliency set."""
    saliency = results.get("saliency", {})
    metrics: list[str] = []
    for values in saliency.values():
        metrics += [k for k in values if k != "protocol" and k not in metrics]
    rows = [[name, values.get("protocol"), *(values.get(k) for k in metrics)] for name, values in saliency.items()]
    return ["dataset", "protocol", *metrics], rows


def quality_table_rows(records: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """One row per pseudo-label set record (``label_sets.LabelSetRun.finish``) in :data:`QUALITY_COLUMNS` order."""
    return [[record.get(column) for column in QUALITY_COLUMNS] for record in records]


# ------------------------------------------------------------------------------------------------ panels


def class_labels(class_names: Sequence[str]) -> dict[int, str]:
    """W&B mask legend: class index -> name, plus ``255: "ignore"``."""
    return {**{index: name for index, name in enumerate(class_names)}, IGNORE_INDEX: "ignore"}


@dataclass
class Panel:
    """A row of pictures of one image id, ready for ``WandbLogger.log_image``.

    ``images`` are ``uint8 (H, W, 3)``; ``masks`` has one entry per image: None, or ``{name: (H, W) label map}``
    for W&B's interactive overlay (the first image carries them).
    """

    name: str
    images: list[np.ndarray] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    masks: list[dict[str, np.ndarray] | None] = field(default_factory=list)

    def add(self, image: np.ndarray, caption: str, masks: dict[str, np.ndarray] | None = None) -> None:
        self.images.append(image)
        self.captions.append(caption)
        self.masks.append(masks)

    def wandb_masks(self, class_names: Sequence[str]) -> list[dict[str, dict[str, Any]] | None]:
        legend = class_labels(class_names)
        return [
            None if masks is None else {k: {"mask_data": v, "class_labels": legend} for k, v in masks.items()}
            for masks in self.masks
        ]


def _scale(shape: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    height, width = shape
    if max_side is None or max(height, width) <= max_side:
        return height, width
    factor = max_side / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def build_panel(
    name: str,
    image: np.ndarray,
    class_names: Sequence[str],
    present: Sequence[int] = (),
    ground_truth: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    pseudo_label: np.ndarray | None = None,
    maps: dict[str, np.ndarray] | None = None,
    offshelf_saliency: np.ndarray | None = None,
    updated_saliency: np.ndarray | None = None,
    max_classes: int = 3,
    max_side: int | None = 320,
) -> Panel:
    """Assemble the pictures of one id (all inputs at the image's resolution ``(H, W)``).

    Args:
        name: the image id.
        image: ``uint8 (H, W, 3)``.
        class_names: C names (index 0 background) for the mask legend and captions.
        present: foreground indices ``k`` (0..C-2, the CAM channels) of the image-level label; their CAMs are shown.
        ground_truth / prediction / pseudo_label: ``(H, W)`` class indices (255 ignore), each optional.
        maps: from ``WSSSModule.visualize`` for this image: ``cam`` / ``refined_cam`` ``(C-1, H, W)`` and
            ``saliency`` ``(H, W)``, floats in [0, 1]; any may be missing.
        offshelf_saliency / updated_saliency: ``(H, W)`` in [0, 1] (the map the labels start from / the stage's update).
        max_classes: at most this many present classes get CAM panels.
        max_side: downscale everything so the longer side is at most this (None keeps the size).

    Returns:
        The :class:`Panel`: image (+ masks), ground truth, prediction, pseudo-label, CAM <class>...,
        refined CAM <class>..., saliency (predicted), saliency (off-the-shelf), saliency (updated) — those given.
    """
    size = _scale(image.shape[:2], max_side)
    rgb = resize_image(image, size)
    labels = {
        key: resize_label(value, size)
        for key, value in (("ground_truth", ground_truth), ("prediction", prediction), ("pseudo_label", pseudo_label))
        if value is not None
    }
    panel = Panel(name)
    panel.add(rgb, name, labels or None)
    titles = {"ground_truth": "ground truth", "prediction": "prediction", "pseudo_label": "pseudo-label"}
    for key, label in labels.items():
        panel.add(colorize_label(label), titles[key])
    maps = maps or {}
    for key, title in (("cam", "CAM"), ("refined_cam", "refined CAM")):
        if key not in maps:
            continue
        for index in list(present)[:max_classes]:
            heat = resize_image(overlay_heatmap(image, maps[key][index]), size)
            panel.add(heat, f"{title} {class_names[index + 1]}")
    for title, values in (
        ("saliency (predicted)", maps.get("saliency")),
        ("saliency (off-the-shelf)", offshelf_saliency),
        ("saliency (updated)", updated_saliency),
    ):
        if values is not None:
            panel.add(resize_image(grey(values), size), title)
    return panel


# ------------------------------------------------------------------------------------------------ artifacts


def label_set_artifact(record: dict[str, Any], run_name: str | None = None):
    """A ``pseudo_labels`` W&B artifact of a finished label set folder (``record["dir"]``), with its quality as
    metadata. Files are referenced in place until upload (``immutable``: no copy of a large set)."""
    import wandb

    folder = Path(record["dir"])
    prefix = f"{run_name}-" if run_name else ""
    metadata = {k: v for k, v in record.items() if isinstance(v, int | float | str | bool) or v is None}
    artifact = wandb.Artifact(f"{prefix}pseudo_labels-stage{record['stage']}", type="pseudo_labels", metadata=metadata)
    artifact.add_dir(str(folder), policy="immutable")
    return artifact


def log_label_set_artifact(trainer: L.Trainer, record: dict[str, Any]) -> int:
    """Upload a finished label set to every ONLINE W&B run (rank 0). Returns the number of runs it went to."""
    if not trainer.is_global_zero or not Path(record.get("dir", "")).is_dir():
        return 0
    sent = 0
    for logger in wandb_loggers(trainer):
        if run_is_online(logger):
            run = logger.experiment
            run.log_artifact(label_set_artifact(record, run.id), aliases=["latest", f"stage{record['stage']}"])
            sent += 1
    return sent


# ------------------------------------------------------------------------------------------------ the callback


def _stage_callback(trainer: L.Trainer) -> PseudoLabelRefresh | None:
    for callback in trainer.callbacks:
        if isinstance(callback, PseudoLabelRefresh):
            return callback
    return None


class WandbMedia(Callback, LabelSetListener):
    """Tables, image panels, per-stage charts and (online) checkpoint artifacts on the W&B run page.

    Args:
        num_images: fixed ids per panel group (the first of the validation / test split and of the scored
            training ids). W&B advises fewer than 50 images per step: a panel holds about 6–12.
        val_every_n_epochs: panels after every n-th validation (tables after every one).
        max_classes: CAM panels for at most this many present classes per image.
        max_side: panels are downscaled to this longer side (pixels).
        log_checkpoint: upload the best (else last) checkpoint at the end of ``fit`` when the run is online (skipped
            when the logger's own ``log_model`` is on).
    """

    def __init__(
        self,
        num_images: int = 4,
        val_every_n_epochs: int = 1,
        max_classes: int = 3,
        max_side: int = 320,
        log_checkpoint: bool = True,
    ) -> None:
        if num_images < 0 or val_every_n_epochs < 1:
            raise ValueError("num_images must be >= 0 and val_every_n_epochs >= 1")
        self.num_images = num_images
        self.val_every_n_epochs = val_every_n_epochs
        self.max_classes = max_classes
        self.max_side = max_side
        self.log_checkpoint = log_checkpoint
        self.logged_records = 0  # pseudo-label sets already shown (kept in checkpoints: a resume does not repeat)
        self.validations = 0
        self.seconds = 0.0  # time spent here, for the cost of media logging
        self._datasets: dict[str, Any] = {}

    # -------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {"logged_records": self.logged_records, "validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.logged_records = int(state_dict.get("logged_records", 0))
        self.validations = int(state_dict.get("validations", 0))

    # -------------------------------------------------------------------------------------- hooks

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._datasets = {}
        if stage != "fit" or not trainer.is_global_zero:
            return
        for logger in wandb_loggers(trainer):
            run = logger.experiment
            # Pseudo-label quality is plotted against the stage, not the step (setup runs before any refresh).
            run.define_metric("pseudo/stage")
            run.define_metric("pseudo/*", step_metric="pseudo/stage")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:  # fit's validations and `wsss validate`; never the sanity check
            return
        self.validations += 1
        panels = (self.validations - 1) % self.val_every_n_epochs == 0
        self._log_results(trainer, pl_module, "val", panels)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_results(trainer, pl_module, "test", True)

    def on_label_set_end(self, trainer: L.Trainer, pl_module: L.LightningModule, record: dict[str, Any]) -> None:
        """Called by the label-set runner (rank 0) when a set is finished, before the next stage begins."""
        log_label_set_artifact(trainer, record)  # online W&B runs only: the set becomes a `pseudo_labels` artifact
        if trainer.state.fn == "fit":  # the stage pipeline (``wsss pseudolabel`` has no stages to compare)
            self._log_new_label_sets(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_new_label_sets(trainer, pl_module)  # a set not shown yet (e.g. finished before a resume)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_new_label_sets(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.log_checkpoint and trainer.is_global_zero):
            return
        callback = trainer.checkpoint_callback
        if not isinstance(callback, ModelCheckpoint):
            return
        path = callback.best_model_path or callback.last_model_path
        if not path or not Path(path).is_file():
            return
        online = [logger for logger in wandb_loggers(trainer) if run_is_online(logger) and not logger._log_model]
        if not online:  # inert without an online W&B logger: wandb is never imported then
            return
        import wandb

        alias = "best" if path == callback.best_model_path else "last"
        for logger in online:
            run = logger.experiment
            artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata={"path": str(path)})
            artifact.add_file(str(path), name="model.ckpt")
            run.log_artifact(artifact, aliases=["latest", alias])

    # -------------------------------------------------------------------------------------- results

    def _log_results(self, trainer: L.Trainer, pl_module: L.LightningModule, prefix: str, panels: bool) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers or not trainer.is_global_zero:
            return
        start = time.perf_counter()
        results = pl_module.eval_results.get(prefix) if isinstance(pl_module, WSSSModule) else None
        step = trainer.global_step
        if results:
            rows = iou_table_rows(results)
            if rows:
                for logger in loggers:
                    logger.log_table(f"{prefix}/IoU_table", ["split", "mode", "class", "IoU"], rows, step=step)
            columns, rows = saliency_table_rows(results)
            if rows:
                for logger in loggers:
                    logger.log_table(f"{prefix}/saliency_table", columns, rows, step=step)
        if panels and self.num_images:
            datamodule = trainer.datamodule
            if isinstance(datamodule, WSSSDataModule):
                split = datamodule.test_split if prefix == "test" else datamodule.hparams.val_split
                dataset = self._dataset(f"eval:{split}", lambda: datamodule.eval_dataset(split))
                ids = list(range(min(self.num_images, len(dataset))))
                self._log_panels(trainer, pl_module, loggers, f"{prefix}_media", dataset, ids)
        self.seconds += time.perf_counter() - start

    def _dataset(self, key: str, make) -> Any:
        if key not in self._datasets:
            self._datasets[key] = make()
        return self._datasets[key]

    def _offshelf_saliency(self, datamodule: Any, name: str) -> np.ndarray | None:
        folder = datamodule.path(datamodule.hparams.saliency_dir) if datamodule.hparams.saliency_dir else None
        path = folder / f"{name}.png" if folder is not None else None
        return read_saliency(path).astype(np.float32) / 255.0 if path is not None and path.is_file() else None

    @torch.no_grad()
    def _model_outputs(
        self, pl_module: L.LightningModule, image: np.ndarray, cls_label: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The single-scale prediction ``(H, W)`` and the ``visualize`` maps of one image (eval mode)."""
        from wsss_lightning.modules.inference import InferenceMode

        device = pl_module.device
        images = normalize_image(image)[None].to(device)
        labels = torch.as_tensor(np.asarray(cls_label, dtype=np.float32))[None].to(device)
        sizes = torch.tensor([image.shape[:2]], device=device)
        was_training = pl_module.training
        pl_module.eval()
        try:
            maps = pl_module.visualize(images, labels)
            prediction = pl_module.predict_labels(images, sizes, InferenceMode.parse("ss"))[0]
        finally:
            pl_module.train(was_training)
        return prediction.cpu().numpy(), {k: v[0].float().cpu().numpy() for k, v in maps.items()}

    def _log_panels(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        loggers: list[WandbLogger],
        prefix: str,
        dataset: Any,
        indices: Sequence[int],
        label_set: Path | None = None,
        caption: str = "",
    ) -> None:
        datamodule = trainer.datamodule
        class_names = list(pl_module.class_names)
        for index in indices:
            arrays = dataset.load_arrays(index)
            name, image, cls_label = arrays["name"], arrays["image"], arrays["cls_label"]
            gt = arrays["seg"] if (arrays["seg"] != IGNORE_INDEX).any() else None
            pseudo = updated = None
            files: dict[str, Path] = {}
            if label_set is not None:
                files = LabelSet(label_set).files_of(name) or {}
                if not files:
                    continue
                pseudo = read_label(files["seg"])
                if "images" in files:  # an augmented copy: its own image and warped ground truth
                    image = read_image(files["images"])
                    gt = read_label(files["gt"]) if "gt" in files else None
                if "sal" in files:
                    updated = read_saliency(files["sal"]).astype(np.float32) / 255.0
            # under a working resolution the image is shrunk while GT and label files keep the file's size
            shape = image.shape[:2]
            gt = None if gt is None else resize_labels(gt, shape)
            pseudo = None if pseudo is None else resize_labels(pseudo, shape)
            updated = None if updated is None else resize_saliency(updated, shape)
            prediction, maps = self._model_outputs(pl_module, image, cls_label)
            offshelf = None if "images" in files else self._offshelf_saliency(datamodule, name)
            offshelf = None if offshelf is None else resize_saliency(offshelf, shape)
            present = [int(k) for k in np.flatnonzero(np.asarray(cls_label) > 0)]
            panel = build_panel(
                name, image, class_names, present, gt, prediction, pseudo, maps, offshelf, updated,
                self.max_classes, self.max_side,
            )  # fmt: skip
            # The set is named once, under the image: the other captions stay short enough to read.
            captions = [f"{panel.captions[0]} {caption}".strip(), *panel.captions[1:]]
            for logger in loggers:
                logger.log_image(
                    f"{prefix}/{name}", panel.images, step=trainer.global_step, caption=captions,
                    masks=panel.wandb_masks(class_names),
                )  # fmt: skip

    # -------------------------------------------------------------------------------------- label sets

    def _pseudo_indices(self, datamodule: Any, dataset: Any) -> list[int]:
        """The first ``num_images`` training ids that are scored (pseudo-eval split, with a GT file)."""
        eval_ids = datamodule.pseudo_eval_ids()
        gt_dir = datamodule.train_gt_dir()
        chosen: list[int] = []
        for index, name in enumerate(dataset.ids):
            if len(chosen) == self.num_images:
                break
            if (eval_ids is None or name in eval_ids) and gt_dir is not None and (gt_dir / f"{name}.png").is_file():
                chosen.append(index)
        return chosen

    def _log_new_label_sets(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stages = _stage_callback(trainer)
        if stages is None or len(stages.history) <= self.logged_records:
            return
        records = list(stages.history)
        new = records[self.logged_records :]
        self.logged_records = len(records)
        loggers = wandb_loggers(trainer)
        if not loggers or not trainer.is_global_zero:
            return
        import wandb

        start = time.perf_counter()
        step = trainer.global_step
        rows = quality_table_rows(records)
        scored = [r for r in records if "pseudo_mIoU" in r]
        for logger in loggers:
            logger.log_table("pseudo_quality/table", list(QUALITY_COLUMNS), rows, step=step)
            if scored:
                chart = wandb.plot.line_series(
                    xs=[r["stage"] for r in scored],
                    ys=[[r[f"pseudo_{k}"] for r in scored] for k in ("mIoU", "precision", "recall")],
                    keys=["mIoU", "precision", "recall"],
                    title="Pseudo-label quality by stage",
                    xname="stage",
                )
                logger.log_metrics({"pseudo_quality/chart": chart}, step=step)
            keys = [k for k in HEALTH_CHART_KEYS if any(k in r for r in records)]
            if keys:  # a missing figure (e.g. no affinity before the first refresh) is drawn as 0
                health = wandb.plot.line_series(
                    xs=[r["stage"] for r in records],
                    ys=[[float(r.get(k, 0.0)) for r in records] for k in keys],
                    keys=keys,
                    title="Pseudo-label health by stage",
                    xname="stage",
                )
                logger.log_metrics({"pseudo_health/chart": health}, step=step)
        datamodule = trainer.datamodule
        if self.num_images and isinstance(datamodule, WSSSDataModule):
            dataset = self._dataset("refresh", datamodule.refresh_dataset)
            indices = self._pseudo_indices(datamodule, dataset)
            for record in new:
                self._log_panels(
                    trainer, pl_module, loggers, "pseudo_media", dataset, indices, Path(record["dir"]),
                    caption=f"(stage {record['stage']}, {record['kind']})",
                )  # fmt: skip
        self.seconds += time.perf_counter() - start
