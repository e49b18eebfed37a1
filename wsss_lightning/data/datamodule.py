"""One LightningDataModule for VOC 2012 (+SBD), MS COCO 2014 and custom layouts, with saliency data.

What it serves:

* ``train_dataloader``: the training split with image-level labels, the current pseudo-labels
  (``pseudo_label_dir``; swapped between stages by the pseudo-label callback) or the ground truth
  (``train_target="gt"``, the fully supervised upper bound), and saliency maps (the off-the-shelf
  ``saliency_dir`` or the updated ``pseudo_saliency_dir``). With ``saliency_train_root`` (SSNet) the batch
  is a dict ``{"seg": VOC batch, "sal": DUTS-TR batch}`` from a ``CombinedLoader`` (max_size_cycle).
* ``val_dataloader`` / ``test_dataloader``: the segmentation split at full size (``seg/<split>``) followed
  by each configured saliency set (``sal/<name>``); ``loader_names(stage)`` says which is which.
* ``refresh_dataset()``: the training ids at full size with GT (where it exists) and the off-the-shelf
  saliency maps, for pseudo-label generation.
* ``predict_dataloader``: a folder of the user's images (``predict_dir``) or the validation split.

Relative folder arguments are resolved against ``root``; ``{split}`` in a folder name is replaced by the
split's name (COCO: ``{split}2014``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import CombinedLoader, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from wsss_lightning.data.collate import BatchScaleCollate, pad_collate
from wsss_lightning.data.dataset import SegmentationDataset
from wsss_lightning.data.io import IMAGE_EXTENSIONS, DatasetError, list_images
from wsss_lightning.data.labels import AugmentedCopyLabels, ImageLabels, LabelSourceName
from wsss_lightning.data.palette import COCO_CLASSES, VOC_CLASSES, default_class_names
from wsss_lightning.data.saliency import SaliencyDataset, canonical_name, resolve_layout
from wsss_lightning.data.sampling import (
    EpochSampler,
    EpochSubset,
    ResumableDataLoader,
    SeededBatchSampler,
    global_seed,
)
from wsss_lightning.data.splits import ListEntry, read_id_list, resolve_split_file
from wsss_lightning.data.transforms import ResizeOnly, RotateCropResize, ScaleCropFlip
from wsss_lightning.pseudo.label_set import LabelSet

log = logging.getLogger(__name__)

DatasetName = Literal["voc", "coco", "custom"]
Augmentation = Literal["scale_crop", "rotate_crop_resize", "resize", "none"]

# Folder defaults per dataset layout: (image_dir, train_gt_dir candidates, val_gt_dir candidates).
LAYOUT_DEFAULTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "voc": ("JPEGImages", ("SegmentationClassAug", "SegmentationClass"), ("SegmentationClass", "SegmentationClassAug")),
    "custom": (
        "JPEGImages",
        ("SegmentationClassAug", "SegmentationClass"),
        ("SegmentationClass", "SegmentationClassAug"),
    ),
    "coco": ("{split}2014", ("SegmentationClass/{split}2014",), ("SegmentationClass/{split}2014",)),
}


class WSSSDataModule(L.LightningDataModule):
    """VOC / COCO / custom segmentation data with image-level labels, saliency maps and pseudo-labels.

    Args:
        root: dataset folder (``VOCdevkit/VOC2012``, the COCO folder, or the demo's VOC folder).
        dataset: layout defaults (folders, class names) — ``voc``, ``coco`` or ``custom``.
        num_classes: C including background (default: 21 VOC, 81 COCO, len(class_names)).
        class_names: C names, background first (default VOC / COCO names).
        train_split, val_split, test_split: split names (``train_aug``, ``val``, ...) or list-file paths.
        pseudo_eval_split: ids whose pseudo-labels are scored against GT (``train`` = VOC's 1,464, as in
            AuxSegNet's Fig. 6); None scores every training id that has GT.
        image_dir, train_gt_dir, val_gt_dir, annotation_dir: folder overrides.
        label_source, labels_file, allow_pickle_labels: image-level labels (see ``data/labels.py``).
        saliency_dir: off-the-shelf saliency maps (``<id>.png``, grey) for the training ids.
        pseudo_label_dir / pseudo_saliency_dir: current pseudo-labels (set by the stage callback).
        train_target: what ``seg`` holds in training: ``pseudo`` labels, ``gt`` (fully supervised upper
            bound) or ``none`` (classification only).
        augmentation: ``scale_crop`` (AuxSegNet), ``rotate_crop_resize`` (SSNet), ``resize`` or ``none``.
        label_set_augmentation: augmentation of a label set that carries its own augmented images (SSNet
            stage 2 trains on them as they are: ``none``).
        crop_size, scale_range, scale_mode, flip, color_jitter, seg_pad_value, sal_pad_value: augmentation
            (``scale_mode="batch"`` draws one scale per batch as the official AuxSegNet code; ``seg_pad_value``
            0 reproduces its background padding, 255 ignores padding).
        max_image_side: the working resolution: every image (training, label updates, evaluation, prediction,
            the saliency sets) is shrunk so its long side is at most this many pixels before anything else, and
            what is written or scored is mapped back to the file's size (``data/working_size.py``). It keeps a
            recipe's crop-to-image ratio on larger photographs (the CPU demo's 128-px crops of 128–176 px images);
            None (the paper configs) keeps the files' sizes.
        saliency_train_root / saliency_train_name: DUTS-TR for joint training (SSNet).
        joint_epoch: how long an epoch of joint training is: ``longest`` (Lightning's ``max_size_cycle``: until the
            longer loader is through, the shorter one cycling) or ``segmentation`` (one pass over the segmentation
            set; the saliency loader draws as many batches, from a fresh random subset of the saliency set each
            epoch, ``data/sampling.py`` ``EpochSubset``). They differ only when the saliency set is the longer: a
            recipe measured in steps per epoch (the SSNet demo) keeps its schedule next to the full DUTS-TR.
        saliency_val_sets / saliency_test_sets: ``{name: root}`` of saliency sets scored at val / test.
        missing_saliency_sets: what a val / test saliency set that is not on disk (no root, or no image / mask
            folders of its layouts under it) does: ``skip`` it with a warning naming the set and the fix (its
            scores are then absent from the results), or stop with an ``error``. A set that is on disk but broken
            is always an error, and so is a missing training set (DUTS-TR).
        predict_dir: folder of images for ``wsss predict``.
        batch_size, saliency_batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers: loaders.
        prefetch_factor: batches each worker loads ahead (PyTorch's default 2 when None; only with workers).
        check: dataset validation in ``setup``: ``quick`` (existence and sizes from headers), ``full``
            (decode everything) or ``off``.
    """

    def __init__(
        self,
        root: str,
        dataset: DatasetName = "voc",
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        train_split: str = "train_aug",
        val_split: str = "val",
        test_split: str | None = None,
        pseudo_eval_split: str | None = "train",
        image_dir: str | None = None,
        train_gt_dir: str | None = None,
        val_gt_dir: str | None = None,
        annotation_dir: str | None = "Annotations",
        label_source: LabelSourceName = "auto",
        labels_file: str | None = None,
        allow_pickle_labels: bool = False,
        saliency_dir: str | None = None,
        pseudo_label_dir: str | None = None,
        pseudo_saliency_dir: str | None = None,
        train_target: Literal["pseudo", "gt", "none"] = "pseudo",
        augmentation: Augmentation = "scale_crop",
        label_set_augmentation: Augmentation = "none",
        crop_size: int = 321,
        scale_range: tuple[float, float] = (0.7, 1.3),
        scale_mode: Literal["image", "batch"] = "batch",
        flip: bool = True,
        color_jitter: tuple[float, float, float, float] | None = None,
        seg_pad_value: int = 255,
        sal_pad_value: float = 255.0,
        max_image_side: int | None = None,
        saliency_train_root: str | None = None,
        saliency_train_name: str = "DUTS-TR",
        joint_epoch: Literal["longest", "segmentation"] = "longest",
        saliency_val_sets: dict[str, str] | None = None,
        saliency_test_sets: dict[str, str] | None = None,
        missing_saliency_sets: Literal["skip", "error"] = "skip",
        predict_dir: str | None = None,
        batch_size: int = 4,
        saliency_batch_size: int | None = None,
        eval_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int | None = None,
        check: Literal["quick", "full", "off"] = "quick",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.root = Path(root)
        self.dataset_name = dataset
        if class_names is None:
            default = {"voc": VOC_CLASSES, "coco": COCO_CLASSES}.get(dataset)
            if default is None and num_classes is None:
                raise ValueError("a custom dataset needs class_names (background first) or num_classes")
            class_names = list(default if num_classes is None else default_class_names(num_classes))
            if default is not None and num_classes not in (None, len(default)):
                class_names = list(default_class_names(num_classes))
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names were given")
        if max_image_side is not None and max_image_side < 1:
            raise ValueError(f"max_image_side must be a positive number of pixels or null, got {max_image_side}")
        self.class_names: list[str] = list(class_names)
        self.num_classes: int = len(self.class_names)
        # The label set training reads (the stage callback's current set, or a given one); None: the folders
        # pseudo_label_dir / pseudo_saliency_dir as configured.
        self.label_set: LabelSet | None = None
        self._entries: dict[str, list[ListEntry]] = {}
        self._train_labels: ImageLabels | None = None
        self._missing_saliency: dict[str, dict[str, str]] = {}  # val | test -> {name: why} of the sets not on disk

    # ------------------------------------------------------------------------------------------ paths

    def path(self, folder: str | None, split: str | None = None) -> Path | None:
        """Resolve a folder argument: relative to root, ``{split}`` substituted."""
        if folder is None:
            return None
        if split is not None and "{split}" in folder:
            folder = folder.replace("{split}", split)
        candidate = Path(folder)
        return candidate if candidate.is_absolute() else self.root / candidate

    def _layout(self) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        return LAYOUT_DEFAULTS["custom" if self.dataset_name == "custom" else self.dataset_name]

    def image_dir(self, split: str) -> Path:
        return self.path(self.hparams.image_dir or self._layout()[0], split)

    def _first_existing(self, override: str | None, candidates: Sequence[str], split: str) -> Path | None:
        if override is not None:
            return self.path(override, split)
        for candidate in candidates:
            path = self.path(candidate, split)
            if path.is_dir():
                return path
        return None

    def train_gt_dir(self) -> Path | None:
        return self._first_existing(self.hparams.train_gt_dir, self._layout()[1], self.hparams.train_split)

    def val_gt_dir(self, split: str | None = None) -> Path | None:
        return self._first_existing(self.hparams.val_gt_dir, self._layout()[2], split or self.hparams.val_split)

    @property
    def test_split(self) -> str:
        return self.hparams.test_split or self.hparams.val_split

    # ------------------------------------------------------------------------------------------ ids and labels

    def entries(self, split: str) -> list[ListEntry]:
        """The ids of a split (cached). COCO without list files falls back to the split's image folder."""
        if split not in self._entries:
            try:
                source = resolve_split_file(self.root, split)
            except DatasetError:
                image_dir = self.image_dir(split)
                if self.dataset_name != "coco" or not image_dir.is_dir():
                    raise
                source = image_dir
                entries = [ListEntry(stem, image_dir, 0) for stem in list_images(image_dir)]
            else:
                entries = read_id_list(source)  # a broken list file is an error, never a silent fallback
            if not entries:
                raise DatasetError(f"{source} lists no ids for split '{split}'; add ids or fix the list file")
            self._entries[split] = entries
        return self._entries[split]

    def train_labels(self) -> ImageLabels:
        if self._train_labels is None:
            self._train_labels = ImageLabels(
                self.hparams.label_source,
                self.num_classes,
                self.class_names,
                annotation_dir=self.path(self.hparams.annotation_dir),
                mask_dir=self.train_gt_dir(),
                labels_file=self.path(self.hparams.labels_file, self.hparams.train_split),
                allow_pickle=self.hparams.allow_pickle_labels,
            )
        return self._train_labels

    def pseudo_eval_ids(self) -> set[str] | None:
        """Training ids whose pseudo-labels are scored (None: every id with a GT mask)."""
        split = self.hparams.pseudo_eval_split
        if split is None:
            return None
        try:
            return {entry.id for entry in self.entries(split)}
        except DatasetError:
            log.warning("pseudo_eval_split '%s' not found; scoring pseudo-labels on every id with GT", split)
            return None

    # ------------------------------------------------------------------------------------------ pseudo-labels

    def use_label_set(self, label_set: LabelSet | None) -> None:
        """Train on ``label_set`` from the next ``train_dataloader()`` on (the stage callback calls this at every
        stage switch): its ``seg`` maps, its ``sal`` maps where it has them (else the off-the-shelf saliency), and
        for a set of copies its own images (SSNet stage 2)."""
        self.label_set = label_set

    def given_label_set(self) -> LabelSet | None:
        """The label set a configured ``pseudo_label_dir`` belongs to (``<set>/seg`` or the set folder itself;
        relative paths resolve against root), or None when it is not a set's folder."""
        if self.hparams.pseudo_label_dir is None:
            return None
        given = self.path(self.hparams.pseudo_label_dir)
        for label_set in (LabelSet(given), LabelSet(given.parent)):  # the set folder itself, or <set>/seg
            if given in (label_set.root, label_set.folder("seg")) and label_set.folder("seg").is_dir():
                return label_set
        return None

    def pseudo_label_folders(self) -> tuple[Path | None, Path | None]:
        """The folders training reads its segmentation and saliency pseudo-labels from (None: none / the
        off-the-shelf saliency): the current label set's, else the configured ``pseudo_label_dir`` /
        ``pseudo_saliency_dir``."""
        hp = self.hparams
        if self.label_set is not None:
            return self.label_set.folder("seg"), self.label_set.folder_if("sal")
        return self.path(hp.pseudo_label_dir), self.path(hp.pseudo_saliency_dir)

    # ------------------------------------------------------------------------------------------ datasets

    def _train_transform(self, augmentation: str | None = None):
        hp = self.hparams
        augmentation = augmentation or hp.augmentation
        if augmentation == "scale_crop":
            return ScaleCropFlip(
                hp.crop_size, tuple(hp.scale_range), hp.flip, hp.color_jitter, hp.seg_pad_value, hp.sal_pad_value
            )
        if augmentation == "rotate_crop_resize":
            return RotateCropResize(hp.crop_size, flip=hp.flip, color_jitter=hp.color_jitter)
        if augmentation == "resize":
            return ResizeOnly(hp.crop_size)
        return None

    def uses_label_set(self) -> bool:
        """True when training iterates a label set of copies with their own images (SSNet stage 2)."""
        return self.hparams.train_target == "pseudo" and self.label_set is not None and self.label_set.layout().copies

    def train_dataset(self) -> SegmentationDataset:
        hp = self.hparams
        split = hp.train_split
        if self.uses_label_set():
            return self.label_set_dataset()
        pseudo_seg, pseudo_sal = self.pseudo_label_folders()
        if hp.train_target == "gt":
            seg_dir, seg_required = self.train_gt_dir(), True
        elif hp.train_target == "pseudo" and pseudo_seg is not None:
            seg_dir, seg_required = pseudo_seg, True
        else:
            seg_dir, seg_required = None, False
        sal_dir = pseudo_sal or self.path(hp.saliency_dir)
        transform = self._train_transform()
        return SegmentationDataset(
            self.entries(split),
            self.image_dir(split),
            self.num_classes,
            labels=self.train_labels(),
            seg_dir=seg_dir,
            sal_dir=sal_dir,
            seg_required=seg_required,
            sal_required=sal_dir is not None,
            transform=transform,
            defer_transform=hp.scale_mode == "batch" and isinstance(transform, ScaleCropFlip),
            max_side=hp.max_image_side,
        )

    def label_set_dataset(self) -> SegmentationDataset:
        """Training on a label set with its own images ``<id>_<t>`` (SSNet stage 2): labels of the parent id,
        augmentation ``label_set_augmentation`` (the copies are augmented already)."""
        if self.label_set is None:
            raise DatasetError("no label set of copies to train on")
        seg_dir = self.label_set.folder("seg")
        entries = [ListEntry(stem, seg_dir, 0) for stem in list_images(seg_dir, (".png",))]
        if not entries:
            raise DatasetError(f"{seg_dir} holds no pseudo-labels")
        augmentation = self.hparams.label_set_augmentation
        return SegmentationDataset(
            entries,
            self.label_set.folder("images"),
            self.num_classes,
            labels=AugmentedCopyLabels(self.train_labels()),
            seg_dir=seg_dir,
            seg_required=True,
            transform=None if augmentation == "none" else self._train_transform(augmentation),
        )

    def eval_dataset(self, split: str) -> SegmentationDataset:
        """A split at full size with its ground truth (and labels derived from it)."""
        gt_dir = self.val_gt_dir(split)
        if gt_dir is None:
            raise DatasetError(
                f"no ground-truth folder for split '{split}' under {self.root} (tried {self._layout()[2]}); "
                "set --data.val_gt_dir"
            )
        return SegmentationDataset(
            self.entries(split),
            self.image_dir(split),
            self.num_classes,
            labels=ImageLabels("masks", self.num_classes, self.class_names, mask_dir=gt_dir),
            seg_dir=gt_dir,
            seg_required=True,
            max_side=self.hparams.max_image_side,
            full_size_seg=True,  # predictions are scored at the file's size
        )

    def refresh_dataset(self) -> SegmentationDataset:
        """Training ids at full size for pseudo-label generation: raw image, labels, GT where it exists,
        the ORIGINAL off-the-shelf saliency maps (the label update always fuses with them, method_notes §2.8)."""
        split = self.hparams.train_split
        saliency = self.path(self.hparams.saliency_dir)
        return SegmentationDataset(
            self.entries(split),
            self.image_dir(split),
            self.num_classes,
            labels=self.train_labels(),
            seg_dir=self.train_gt_dir(),
            sal_dir=saliency,
            sal_required=saliency is not None,
            return_raw=True,
            max_side=self.hparams.max_image_side,  # labels are fused small and written at full size
        )

    def saliency_dataset(self, name: str, root: str, train: bool = False) -> SaliencyDataset:
        transform = self._train_transform() if train else None
        return SaliencyDataset(
            self.path(root) or root,
            name=name,
            transform=transform,
            num_classes=self.num_classes,
            max_side=self.hparams.max_image_side,
        )

    def predict_dataset(self) -> Dataset:
        if self.hparams.predict_dir is None:
            dataset = self.eval_dataset(self.hparams.val_split)
            dataset.return_raw = True
            return dataset
        folder = Path(self.hparams.predict_dir)
        images = list_images(folder, IMAGE_EXTENSIONS)
        if not images:
            raise DatasetError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        entries = [ListEntry(stem, folder, 0) for stem in images]
        return SegmentationDataset(
            entries, folder, self.num_classes, return_raw=True, max_side=self.hparams.max_image_side, full_size_seg=True
        )

    # ------------------------------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str | None = None) -> None:
        if not self.root.is_dir():  # one line before anything else looks inside it
            raise DatasetError(
                f"--data.root {self.root} is not a folder; point it at the dataset folder (e.g. VOCdevkit/VOC2012)"
            )
        if self.label_set is None:  # a configured label set (e.g. SSNet stage 2 on copies written earlier)
            self.label_set = self.given_label_set()
        if self.hparams.check == "off":
            return
        from wsss_lightning.data.check import check_datamodule

        report = check_datamodule(self, stage=stage, full=self.hparams.check == "full")
        if report.errors:
            raise DatasetError(report.error_message())

    def _loader_options(self) -> dict[str, Any]:
        hp = self.hparams
        return {
            "num_workers": hp.num_workers,
            "pin_memory": torch.cuda.is_available() if hp.pin_memory is None else hp.pin_memory,
            "persistent_workers": hp.persistent_workers and hp.num_workers > 0,
            "prefetch_factor": hp.get("prefetch_factor") if hp.num_workers > 0 else None,
            # its own generator: creating an iterator (worker base seeds) never draws from torch's global RNG, whose
            # state belongs to the training steps (dropout) and is restored exactly on resume
            "generator": torch.Generator().manual_seed(global_seed()),
        }

    def _loader(self, dataset: Dataset, batch_size: int, collate_fn=None, sampler=None) -> DataLoader:
        """An evaluation loader: in order, every sample."""
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, **self._loader_options()
        )

    def _train_loader(self, dataset: Dataset, batch_size: int, collate_fn=None) -> ResumableDataLoader:
        """A training loader that resumes exactly (``data/sampling.py``): epoch-seeded order, seeded samples, its
        position in checkpoints; Lightning swaps in a ``DistributedSampler`` under DDP."""
        batch_sampler = SeededBatchSampler(EpochSampler(dataset), batch_size, drop_last=True)
        return ResumableDataLoader(
            dataset, batch_sampler=batch_sampler, collate_fn=collate_fn, position=self._train_position,
            **self._loader_options(),
        )  # fmt: skip

    def _train_position(self) -> tuple[int, int]:
        """``(epoch, batches trained on in it)`` from the trainer's progress (``(0, 0)`` without a trainer)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self):
        dataset = self.train_dataset()
        collate = BatchScaleCollate(dataset.transform, dataset.finish) if dataset.defer_transform else None
        seg_loader = self._train_loader(dataset, self.hparams.batch_size, collate)
        if self.hparams.saliency_train_root is None:
            return seg_loader
        saliency = self.saliency_dataset(self.hparams.saliency_train_name, self.hparams.saliency_train_root, True)
        sal_batch = self.hparams.saliency_batch_size or self.hparams.batch_size
        if self.hparams.joint_epoch == "segmentation":  # as many saliency batches as segmentation ones
            needed = (len(dataset) // self.hparams.batch_size) * sal_batch
            if 0 < needed < len(saliency):
                saliency = EpochSubset(saliency, needed)
        sal_loader = self._train_loader(saliency, sal_batch)
        return CombinedLoader({"seg": seg_loader, "sal": sal_loader}, mode="max_size_cycle")

    def _configured_saliency_sets(self, stage: str) -> tuple[str, dict[str, str]]:
        """``("test", saliency_test_sets)`` for ``test``, else ``("val", saliency_val_sets)``."""
        hp = self.hparams
        if stage == "test":
            return "test", dict(hp.saliency_test_sets or {})
        return "val", dict(hp.saliency_val_sets or {})

    def saliency_eval_sets(self, stage: str) -> dict[str, str]:
        """The ``{name: root}`` saliency sets scored at ``stage`` (``validate``/``fit``: the val sets, ``test``)
        that are on disk; with ``missing_saliency_sets: error`` every configured set."""
        _, sets = self._configured_saliency_sets(stage)
        if self.hparams.missing_saliency_sets == "error":
            return sets
        missing = self.missing_saliency_sets(stage)
        return {name: root for name, root in sets.items() if name not in missing}

    def missing_saliency_sets(self, stage: str) -> dict[str, str]:
        """``{name: why}`` of the val / test saliency sets of ``stage`` that are not on disk (see
        ``missing_saliency_sets``). Looked up once per process and kind, with one warning per set then."""
        kind, sets = self._configured_saliency_sets(stage)
        if kind not in self._missing_saliency:
            missing: dict[str, str] = {}
            for name, root in sets.items():
                try:
                    resolve_layout(self.path(root) or root, name)
                except DatasetError as error:
                    missing[name] = str(error)
                    rank_zero_warn(
                        f"saliency {kind} set {name} is not on disk and is skipped: its scores will be missing from "
                        f"the results ({error}). Put it at {os.path.normpath(self.path(root))}, point "
                        f"--data.saliency_{kind}_sets at it, or drop it from that setting "
                        "(--data.missing_saliency_sets error makes this an error)"
                    )
            self._missing_saliency[kind] = missing
        return self._missing_saliency[kind]

    def loader_names(self, stage: str) -> list[str]:
        """Names of the val/test loaders in order: ``seg/<split>`` then ``sal/<name>`` (the sets on disk)."""
        split = self.hparams.val_split if stage == "validate" else self.test_split
        sets = self.saliency_eval_sets("validate" if stage == "validate" else "test")
        return [f"seg/{split}"] + [f"sal/{canonical_name(name)}" for name in sets]

    @staticmethod
    def _eval_sampler(dataset: Dataset):
        """Under DDP: each rank scores a disjoint share of the images, none twice.

        Lightning's default DistributedSampler pads the last shard with repeated images, which changes a
        dataset-level mIoU; an unrepeated sampler keeps the multi-GPU result equal to the single-process one.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None
        if torch.distributed.get_world_size() == 1:
            return None
        return UnrepeatedDistributedSampler(dataset, shuffle=False)

    def _eval_loaders(self, split: str, sets: dict[str, str] | None) -> list[DataLoader]:
        batch = self.hparams.eval_batch_size
        datasets = [self.eval_dataset(split)]
        datasets += [self.saliency_dataset(name, root) for name, root in (sets or {}).items()]
        return [self._loader(dataset, batch, pad_collate, sampler=self._eval_sampler(dataset)) for dataset in datasets]

    def val_dataloader(self):
        return self._eval_loaders(self.hparams.val_split, self.saliency_eval_sets("validate"))

    def test_dataloader(self):
        return self._eval_loaders(self.test_split, self.saliency_eval_sets("test"))

    def predict_dataloader(self):
        return self._loader(self.predict_dataset(), self.hparams.eval_batch_size, pad_collate)
