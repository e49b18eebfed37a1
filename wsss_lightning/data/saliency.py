"""Salient-object datasets in their published layouts: DUTS-TR for training, five test sets for scoring.

Published layouts (``root`` is the folder the archive unpacks to; the parent folder also works):

=============  ======================================  =========================================
dataset        images                                  masks
=============  ======================================  =========================================
DUTS-TR        ``DUTS-TR-Image/*.jpg``                 ``DUTS-TR-Mask/*.png``
DUTS-TE        ``DUTS-TE-Image/*.jpg``                 ``DUTS-TE-Mask/*.png``
ECSSD          ``images/*.jpg``                        ``ground_truth_mask/*.png``
PASCAL-S       ``datasets/imgs/pascal/*.jpg``          ``datasets/masks/pascal/*.png``
HKU-IS         ``imgs/*.png``                          ``gt/*.png``
DUT-OMRON      ``DUT-OMRON-image/*.jpg``               ``pixelwiseGT-new-PNG/*.png``
=============  ======================================  =========================================

Re-packaged copies common in SOD code are found too (``Image/Mask``, ``Imgs/GT``, ``images/masks`` as jsws
uses, ``im/gt``), and ``image_dir`` / ``mask_dir`` override everything. Many SOD toolboxes ship a set as one
folder holding images and masks side by side (``ECSSD/Imgs/0001.jpg`` next to ``ECSSD/Imgs/0001.png``; also
HKU-IS and DUT-OMRON re-packs): when no two-folder layout matches, a folder ``Imgs``, ``imgs``, ``images``,
``Image`` or the root itself (or these below ``<name>/``) holding a ``.png`` and a ``.jpg`` / ``.jpeg`` /
``.bmp`` of one name is taken as such, as is ``image_dir == mask_dir``. In such a folder the ``.png`` files
are the masks and the other image files the images. The image set is defined by the
masks (as jsws and the SOD toolboxes do): an image without a mask is skipped (``wsss data check`` reports
it), a mask without an image is an error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from wsss_lightning.data.io import IMAGE_EXTENSIONS, DatasetError, list_images, read_image, read_saliency
from wsss_lightning.data.sampling import SeededIndex
from wsss_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_image
from wsss_lightning.data.working_size import resize_saliency, shrink_image, working_size

PUBLISHED_LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    # the archive's folder, its parent, or a DUTS/ folder holding both archives
    "DUTS-TR": tuple((f"{p}DUTS-TR-Image", f"{p}DUTS-TR-Mask") for p in ("", "DUTS-TR/", "DUTS/DUTS-TR/")),
    "DUTS-TE": tuple((f"{p}DUTS-TE-Image", f"{p}DUTS-TE-Mask") for p in ("", "DUTS-TE/", "DUTS/DUTS-TE/")),
    "ECSSD": (("images", "ground_truth_mask"), ("ECSSD/images", "ECSSD/ground_truth_mask")),
    "PASCAL-S": (
        ("datasets/imgs/pascal", "datasets/masks/pascal"),
        ("pascal-s/datasets/imgs/pascal", "pascal-s/datasets/masks/pascal"),
        ("salObj/datasets/imgs/pascal", "salObj/datasets/masks/pascal"),  # the archive is salObj.zip
        ("imgs/pascal", "masks/pascal"),
    ),
    "HKU-IS": (("imgs", "gt"), ("HKU-IS/imgs", "HKU-IS/gt")),
    # DUT-OMRON-image.zip and DUT-OMRON-gt-pixelwise.zip.zip unpack separately; unzip tools may add a folder
    # named after either archive, so every image folder is paired with every mask folder.
    "DUT-OMRON": tuple(
        (images, masks)
        for images in ("DUT-OMRON-image", "DUT-OMRON-image/DUT-OMRON-image")
        for masks in (
            "pixelwiseGT-new-PNG",
            "DUT-OMRON-gt-pixelwise/pixelwiseGT-new-PNG",
            "DUT-OMRON-gt-pixelwise.zip/pixelwiseGT-new-PNG",
        )
    ),
}
# Folders that may hold images and their masks side by side (tried after every two-folder layout); "" is the root.
SIDE_BY_SIDE_FOLDERS: tuple[str, ...] = ("Imgs", "imgs", "images", "Image", "")
# In a folder holding both, the masks are the PNG files and the images every other image file.
MASK_EXTENSIONS: tuple[str, ...] = (".png",)
PHOTO_EXTENSIONS: tuple[str, ...] = tuple(e for e in IMAGE_EXTENSIONS if e not in MASK_EXTENSIONS)
_SIDE_BY_SIDE_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".bmp")
GENERIC_LAYOUTS: tuple[tuple[str, str], ...] = (
    ("Image", "Mask"),
    ("Imgs", "GT"),
    ("images", "masks"),
    ("image", "mask"),
    ("Image", "GT"),
    ("im", "gt"),
    ("img", "gt"),
    ("imgs", "masks"),
)
_ALIASES = {
    "dutstr": "DUTS-TR",
    "dutstrain": "DUTS-TR",
    "duttrain": "DUTS-TR",
    "dutste": "DUTS-TE",
    "dutstest": "DUTS-TE",
    "duttest": "DUTS-TE",
    "ecssd": "ECSSD",
    "pascals": "PASCAL-S",
    "hkuis": "HKU-IS",
    "dutomron": "DUT-OMRON",
    "omron": "DUT-OMRON",
}


def canonical_name(name: str) -> str:
    """'pascal-s' / 'PASCALS' -> 'PASCAL-S'; unknown names are returned unchanged."""
    return _ALIASES.get(re.sub(r"[^a-z0-9]", "", name.lower()), name)


def _has_images(folder: Path) -> bool:
    """True if ``folder`` is a directory with at least one image file directly inside (stops at the first)."""
    if not folder.is_dir():
        return False
    return any(
        not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in folder.iterdir()
    )


def _holds_images_and_masks(folder: Path) -> bool:
    """True if ``folder`` holds a ``.png`` file and a ``.jpg`` / ``.jpeg`` / ``.bmp`` file of one stem: images next
    to their masks, as SOD toolboxes pack ``ECSSD/Imgs``."""
    if not folder.is_dir():
        return False
    masks: set[str] = set()
    images: set[str] = set()
    for path in folder.iterdir():
        suffix = path.suffix.lower()
        if path.name.startswith(".") or suffix not in (*MASK_EXTENSIONS, *_SIDE_BY_SIDE_IMAGE_EXTENSIONS):
            continue  # hidden files: macOS AppleDouble "._0001.jpg" and the like
        if path.is_file():
            (masks if suffix in MASK_EXTENSIONS else images).add(path.stem)
    return bool(masks & images)


def resolve_layout(
    root: str | Path, name: str | None = None, image_dir: str | None = None, mask_dir: str | None = None
) -> tuple[Path, Path]:
    """Find the image and mask folders of a saliency dataset under ``root``.

    Raises DatasetError listing the layouts tried.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"saliency dataset root {root} does not exist")
    if image_dir is not None or mask_dir is not None:
        if image_dir is None or mask_dir is None:
            raise DatasetError("give both image_dir and mask_dir for a saliency dataset, or neither")
        images, masks = root / image_dir, root / mask_dir
        for folder in (images, masks):
            if not folder.is_dir():
                raise DatasetError(f"{folder} does not exist")
        return images, masks
    canonical = canonical_name(name) if name else None
    layouts = PUBLISHED_LAYOUTS.get(canonical, ()) + GENERIC_LAYOUTS if canonical else GENERIC_LAYOUTS
    if canonical:
        # The archive's top folder may be the root or one level below it (DUTS/DUTS-TE/..., ECSSD/...).
        layouts = layouts + tuple((f"{canonical}/{i}", f"{canonical}/{m}") for i, m in layouts)
    for images, masks in layouts:
        # a folder holding only the nested copy (DUT-OMRON-image/DUT-OMRON-image) is not the image folder
        if _has_images(root / images) and _has_images(root / masks):
            return root / images, root / masks
    # One folder holding images and masks side by side (ECSSD/Imgs/0001.jpg next to 0001.png), tried last: a
    # two-folder layout is never mistaken for it.
    shared = SIDE_BY_SIDE_FOLDERS
    if canonical:
        shared = shared + tuple(f"{canonical}/{folder}".rstrip("/") for folder in shared)
    for folder in shared:
        if _holds_images_and_masks(root / folder):
            return root / folder, root / folder
    tried = "; ".join(f"{i} + {m}" for i, m in layouts[:8])
    raise DatasetError(
        f"no {canonical or 'saliency'} image/mask folders holding images under {root} (tried {tried}; and "
        f"one folder of images next to their .png masks: {', '.join(f or '.' for f in shared)}); "
        "point the root at the unpacked dataset or set image_dir and mask_dir"
    )


def pair_files(image_dir: Path, mask_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Match images and masks by stem. Returns (pairs, image stems without mask).

    Two folders: every image file of one is paired with the image file of the same stem in the other. One
    folder (``image_dir == mask_dir``, images next to their masks): the ``.png`` files are the masks and the
    other image files (``.jpg``, ``.jpeg``, ``.bmp``, ...) the images. Two files of one stem in one role raise
    (:func:`~wsss_lightning.data.io.list_images`).

    Raises DatasetError if a mask has no image or there are no masks.
    """
    if image_dir.resolve() == mask_dir.resolve():
        images = list_images(image_dir, PHOTO_EXTENSIONS)
        masks = list_images(mask_dir, MASK_EXTENSIONS)
        if not masks:
            raise DatasetError(
                f"{mask_dir} holds no .png masks; a folder given as both image and mask folder must hold images "
                f"({', '.join(PHOTO_EXTENSIONS)}) next to their .png masks"
            )
        where = f"{image_dir} (images next to their masks: the .png files are masks, the others images)"
    else:
        images = list_images(image_dir, IMAGE_EXTENSIONS)
        masks = list_images(mask_dir, IMAGE_EXTENSIONS)
        if not masks:
            raise DatasetError(f"{mask_dir} holds no mask images")
        where = str(image_dir)
    orphans = [stem for stem in masks if stem not in images]
    if orphans:
        raise DatasetError(f"{len(orphans)} masks in {mask_dir} have no image in {where} (e.g. {masks[orphans[0]]})")
    pairs = [(stem, images[stem], path) for stem, path in masks.items()]
    return pairs, [stem for stem in images if stem not in masks]


class SaliencyDataset(Dataset):
    """Image + binary saliency ground truth pairs of one salient-object dataset.

    Samples: ``image`` float32 (3,H,W) normalised; ``sal`` float32 (H,W) GT in [0, 1] (grey/255; the metrics
    binarise at 0.5, i.e. > 128 as pysodmetrics); ``name``; ``ori_size`` (H, W) of the image the network sees;
    ``full_size`` (H, W) of the files; ``index``; ``source``
    ("sal/<name>"), plus zero ``cls_label`` and all-255 ``seg`` so saliency batches collate like VOC ones.
    """

    def __init__(
        self,
        root: str | Path,
        name: str | None = None,
        image_dir: str | None = None,
        mask_dir: str | None = None,
        transform=None,
        num_classes: int = 21,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        max_side: int | None = None,
    ) -> None:
        """``max_side``: shrink each image so its long side is at most this many pixels (``data/working_size.py``);
        without a transform (evaluation) the mask keeps the file's size and predictions are scored there, with
        one (training) the mask is shrunk with its image."""
        self.name = canonical_name(name) if name else Path(root).name
        self.image_dir, self.mask_dir = resolve_layout(root, name, image_dir, mask_dir)
        self.pairs, self.images_without_mask = pair_files(self.image_dir, self.mask_dir)
        self.transform = transform
        self.num_classes = num_classes
        self.mean, self.std = mean, std
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def ids(self) -> list[str]:
        return [stem for stem, _, _ in self.pairs]

    def __getitem__(self, key: int | SeededIndex) -> dict[str, Any]:
        """A pair by index; a :class:`~wsss_lightning.data.sampling.SeededIndex` also fixes its augmentation's seed."""
        index, seed = (key.index, key.seed) if isinstance(key, SeededIndex) else (int(key), None)
        stem, image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        mask = read_saliency(mask_path)
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but {image_path} is "
                f"{image.shape[1]}x{image.shape[0]}; masks must have their image's size"
            )
        full_size = image.shape[:2]
        sal = mask.astype(np.float32) / 255.0
        height, width = working_size(*full_size, self.max_side)
        if (height, width) != full_size:
            image = shrink_image(image, (height, width))
            if self.transform is not None:
                sal = resize_saliency(sal, (height, width))
        seg = np.full(sal.shape, 255, dtype=np.uint8)
        if self.transform is not None:
            image, seg, sal = self.transform(image, seg, sal, seed=seed)
        return {
            "image": normalize_image(image, self.mean, self.std),
            "sal": torch.from_numpy(np.ascontiguousarray(sal, dtype=np.float32)),
            "seg": torch.from_numpy(np.ascontiguousarray(seg)),
            "cls_label": torch.zeros(self.num_classes - 1),
            "name": stem,
            "ori_size": torch.tensor((height, width), dtype=torch.int64),
            "full_size": torch.tensor(full_size, dtype=torch.int64),
            "index": index,
            "source": f"sal/{self.name}",
        }
