"""The segmentation dataset shared by VOC, COCO and custom layouts, and the batch collation helpers.

A sample is a dict with the design's batch keys:

* ``image``     ``float32 (3, H, W)``, ImageNet-normalised RGB;
* ``cls_label`` ``float32 (C-1,)`` multi-hot image-level label (no background entry);
* ``seg``       ``uint8 (H, W)`` class indices (ground truth or pseudo-label), 255 = ignore / unknown;
* ``sal``       ``float32 (H, W)`` saliency in [0, 1] (off-the-shelf map or pseudo-label), 255 = ignore;
* ``name``      the image id; ``ori_size`` ``int64 (2,)`` = (H, W) of the image before any augmentation (its
  un-padded extent in an evaluation batch); ``full_size`` ``int64 (2,)`` = (H, W) of the file, which differs from
  ``ori_size`` only when ``max_side`` shrank the image (``data/working_size.py``);
* ``index``     position in the dataset; ``raw`` ``uint8 (H, W, 3)`` when ``return_raw`` (for the CRF).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from wsss_lightning.data.io import DatasetError, read_image, read_label, read_saliency
from wsss_lightning.data.labels import ImageLabels
from wsss_lightning.data.sampling import SeededIndex
from wsss_lightning.data.splits import ListEntry
from wsss_lightning.data.transforms import IGNORE_SALIENCY, IMAGENET_MEAN, IMAGENET_STD, normalize_image
from wsss_lightning.data.working_size import resize_labels, resize_saliency, shrink_image, working_size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG", ".bmp")
Transform = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]


def find_image(folder: Path, identifier: str, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> Path | None:
    """The image file of ``identifier`` in ``folder`` (first existing suffix), or None."""
    for suffix in suffixes:
        candidate = folder / f"{identifier}{suffix}"
        if candidate.is_file():
            return candidate
    return None


class SegmentationDataset(Dataset):
    """Images of a split with image-level labels, optional label maps and optional saliency maps.

    Args:
        entries: the split's ids (with list file and line, for error messages).
        image_dir: folder of ``<id>.jpg`` (or .png) images.
        num_classes: C including background.
        labels: image-level label source, or None (zeros, e.g. for a folder of user images).
        seg_dir: folder of ``<id>.png`` label maps served as ``seg`` (ground truth or pseudo-labels).
        sal_dir: folder of ``<id>.png`` grey saliency maps served as ``sal``.
        seg_required / sal_required: a missing file is an error (else the map is all 255 = ignore).
        transform: a paired transform (see ``data/transforms.py``), or None to keep the original size.
        defer_transform: return raw arrays and let a collate function augment the batch together
            (the official per-batch random scale).
        return_raw: add the unnormalised ``uint8`` image as ``raw`` (for CRFs).
        max_side: shrink every image (and its saliency map) so its long side is at most this many pixels, before
            any transform (``data/working_size.py``); None keeps the files' sizes.
        full_size_seg: keep ``seg`` at the file's size under ``max_side`` (evaluation: predictions are scored at
            full size); otherwise ``seg`` is shrunk with its image (training, label updates).
    """

    def __init__(
        self,
        entries: Sequence[ListEntry],
        image_dir: Path,
        num_classes: int,
        labels: ImageLabels | None = None,
        seg_dir: Path | None = None,
        sal_dir: Path | None = None,
        seg_required: bool = False,
        sal_required: bool = False,
        transform: Transform | None = None,
        defer_transform: bool = False,
        return_raw: bool = False,
        max_side: int | None = None,
        full_size_seg: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.entries = list(entries)
        self.image_dir = Path(image_dir)
        self.num_classes = num_classes
        self.labels = labels
        self.seg_dir = Path(seg_dir) if seg_dir is not None else None
        self.sal_dir = Path(sal_dir) if sal_dir is not None else None
        self.seg_required = seg_required
        self.sal_required = sal_required
        self.transform = transform
        self.defer_transform = defer_transform
        self.return_raw = return_raw
        if max_side is not None and max_side < 1:
            raise ValueError(f"max_side must be a positive number of pixels or None, got {max_side}")
        self.max_side = max_side
        self.full_size_seg = full_size_seg
        self.mean = tuple(mean)
        self.std = tuple(std)

    @property
    def ids(self) -> list[str]:
        return [entry.id for entry in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def image_path(self, entry: ListEntry) -> Path:
        path = find_image(self.image_dir, entry.id)
        if path is None:
            raise DatasetError(f"{self.image_dir / (entry.id + '.jpg')} is missing ({entry.where()})")
        return path

    def _optional_map(self, folder: Path | None, entry: ListEntry, required: bool, what: str) -> Path | None:
        if folder is None:
            return None
        path = folder / f"{entry.id}.png"
        if path.is_file():
            return path
        if required:
            hint = ""
            if folder.name in ("SegmentationClassAug", "SegmentationClass"):
                hint = (
                    f"; the SBD release's masks become {folder.parent / 'SegmentationClassAug'} with "
                    f"`wsss data sbd-masks --sbd benchmark_RELEASE --voc {folder.parent}`"
                )
            raise DatasetError(f"{path} is missing ({entry.where()}); the {what} of every listed id is needed{hint}")
        return None

    def load_arrays(self, index: int) -> dict[str, Any]:
        """Read one sample as arrays, no transform: image uint8 (H,W,3), seg uint8 (H,W), sal float32 (H,W)."""
        entry = self.entries[index]
        image_path = self.image_path(entry)
        image = read_image(image_path)
        height, width = image.shape[:2]
        seg_path = self._optional_map(self.seg_dir, entry, self.seg_required, "label map")
        if seg_path is None:
            seg = np.full((height, width), 255, dtype=np.uint8)
        else:
            seg = read_label(seg_path)
            self._check_size(seg, image.shape[:2], image_path, seg_path)
            self._check_values(seg, seg_path, entry)
        sal_path = self._optional_map(self.sal_dir, entry, self.sal_required, "saliency map")
        if sal_path is None:
            sal = np.full((height, width), IGNORE_SALIENCY, dtype=np.float32)
        else:
            grey = read_saliency(sal_path)
            self._check_size(grey, image.shape[:2], image_path, sal_path)
            sal = grey.astype(np.float32) / 255.0
        cls_label = self.labels.get(entry.id) if self.labels is not None else np.zeros(self.num_classes - 1, np.float32)
        size = working_size(height, width, self.max_side)
        if size != (height, width):  # checked at the files' size above; shrunk for the network here
            image = shrink_image(image, size)
            sal = resize_saliency(sal, size)
            if not self.full_size_seg:
                seg = resize_labels(seg, size)
        return {
            "image": image,
            "seg": seg,
            "sal": sal,
            "cls_label": cls_label,
            "name": entry.id,
            "ori_size": size,
            "full_size": (height, width),
            "index": index,
        }

    @staticmethod
    def _check_size(array: np.ndarray, image_shape: tuple[int, int], image_path: Path, path: Path) -> None:
        if array.shape[:2] != tuple(image_shape):
            raise DatasetError(
                f"{path} is {array.shape[1]}x{array.shape[0]} but {image_path} is "
                f"{image_shape[1]}x{image_shape[0]}; maps must have their image's size"
            )

    def _check_values(self, seg: np.ndarray, path: Path, entry: ListEntry) -> None:
        counts = np.bincount(seg.reshape(-1), minlength=256)
        bad = np.flatnonzero(counts[self.num_classes : 255]) + self.num_classes
        if bad.size:
            raise DatasetError(
                f"{path} holds class values {bad.tolist()} outside 0..{self.num_classes - 1} and 255 "
                f"({entry.where()}); check num_classes or the mask folder"
            )

    def finish(self, arrays: dict[str, Any]) -> dict[str, Any]:
        """Arrays (already transformed, if at all) -> the tensor sample."""
        sample = {
            "image": normalize_image(arrays["image"], self.mean, self.std),
            "cls_label": torch.from_numpy(np.asarray(arrays["cls_label"], dtype=np.float32)),
            "seg": torch.from_numpy(np.ascontiguousarray(arrays["seg"], dtype=np.uint8)),
            "sal": torch.from_numpy(np.ascontiguousarray(arrays["sal"], dtype=np.float32)),
            "name": arrays["name"],
            "ori_size": torch.tensor(arrays["ori_size"], dtype=torch.int64),
            "full_size": torch.tensor(arrays.get("full_size", arrays["ori_size"]), dtype=torch.int64),
            "index": arrays["index"],
        }
        if self.return_raw:
            sample["raw"] = torch.from_numpy(np.ascontiguousarray(arrays["image"]))
        return sample

    def __getitem__(self, key: int | SeededIndex) -> dict[str, Any]:
        """A sample by index; a :class:`~wsss_lightning.data.sampling.SeededIndex` (training batches) also fixes the
        seed of its augmentation, so the sample does not depend on which worker served it or what came before."""
        index, seed = (key.index, key.seed) if isinstance(key, SeededIndex) else (int(key), None)
        arrays = self.load_arrays(index)
        if self.defer_transform:
            arrays["seed"] = seed
            return arrays
        if self.transform is not None:
            arrays["image"], arrays["seg"], arrays["sal"] = self.transform(
                arrays["image"], arrays["seg"], arrays["sal"], seed=seed
            )
        return self.finish(arrays)
