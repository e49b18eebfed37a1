"""Build VOC 2012's ``SegmentationClassAug`` and ``train_aug.txt`` from the SBD release (``wsss data sbd-masks``).

The Semantic Boundaries Dataset (Hariharan et al., ICCV 2011) is published as ``benchmark.tgz``, which unpacks to
``benchmark_RELEASE/dataset/{img,cls,inst}/`` with ``train.txt`` (8,498 ids) and ``val.txt`` (2,857 ids); its class
masks are MATLAB files, ``cls/<id>.mat`` holding a struct ``GTcls`` whose ``Segmentation`` field is the
``(H, W)`` class-index map (0 background, 1..20 the VOC classes, no boundary label). WSSS code instead reads the
DeepLab "augmented" set: ``VOC2012/SegmentationClassAug/<id>.png`` and the 10,582-id ``train_aug`` list. This
module builds both, following DeepLab's ``voc2012`` preparation (convert every SBD mask, then copy the VOC masks
over them)::

    wsss data sbd-masks --sbd benchmark_RELEASE --voc VOCdevkit/VOC2012

Rules (fixed here, stated so results are comparable):

* Every id of SBD ``train.txt`` ∪ ``val.txt`` gets its ``GTcls.Segmentation`` as a grey (mode "L") PNG.
* Every id of VOC ``ImageSets/Segmentation/{train,val}.txt`` gets its ``SegmentationClass`` mask (palette PNG read
  as indices, its 255 boundary kept) instead: where both exist, VOC's annotation wins.
* ``train_aug = (SBD train ∪ SBD val ∪ VOC train) − VOC val``, sorted; 10,582 ids on the real sets. It is written to
  ``ImageSets/Segmentation/train_aug.txt`` unless a list with other ids is there already (kept, with a warning;
  ``--overwrite`` replaces it).
* Each mask must have its ``JPEGImages/<id>.jpg``'s size; every value must be a class index (0..20) or 255
  (VOC's boundary band; the SBD release has none). Everything is checked before the first write, so a broken file
  fails fast.
* Writes are atomic. Without ``--overwrite`` a readable PNG of the right size is kept (resume); a damaged or
  wrong-sized one is rewritten. Nothing is deleted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from wsss_lightning.data.io import (
    DatasetError,
    atomic_write_bytes,
    atomic_write_text,
    existing_label_state,
    grey_png_bytes,
    read_label,
)
from wsss_lightning.data.palette import IGNORE_INDEX
from wsss_lightning.data.splits import read_id_list

__all__ = ["EXPECTED_TRAIN_AUG", "find_sbd_dataset", "read_sbd_mask", "train_aug_ids", "convert_sbd", "main"]

#: Size of ``train_aug`` on the real SBD + VOC 2012 sets.
EXPECTED_TRAIN_AUG = 10582
_NUM_CLASSES = 21  # VOC: background + 20
_SBD_FIX = "re-extract benchmark.tgz (benchmark_RELEASE/dataset/cls/<id>.mat)"


def find_sbd_dataset(root: str | Path) -> Path:
    """The folder holding ``cls/``, ``train.txt`` and ``val.txt``: ``root`` itself or ``root/dataset``."""
    root = Path(root)
    for candidate in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir() and (candidate / "train.txt").is_file() and (candidate / "val.txt").is_file():
            return candidate
    raise DatasetError(
        f"{root} holds no SBD release: expected cls/, train.txt and val.txt in it or in {root / 'dataset'}; "
        "pass the folder benchmark.tgz unpacks to (benchmark_RELEASE) as --sbd"
    )


def _invalid_values(mask: np.ndarray) -> list[int]:
    """Up to 5 values of ``mask`` that are neither a VOC class index (0..20) nor the ignore label (255)."""
    values = np.unique(mask)
    return values[((values < 0) | (values >= _NUM_CLASSES)) & (values != IGNORE_INDEX)].tolist()[:5]


def read_sbd_mask(path: str | Path) -> np.ndarray:
    """``GTcls.Segmentation`` of an SBD ``cls/<id>.mat`` as ``uint8 (H, W)``: 0..20 (the release's values), 255
    accepted as ignore (re-saved masks with a void band)."""
    from scipy.io import loadmat  # scipy comes with albumentations; only this command needs it

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; {_SBD_FIX}")
    try:
        content = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as error:  # scipy raises MatReadError, ValueError, IndexError, ... on damaged files
        raise DatasetError(f"{path} is not a readable MATLAB file ({error!r}); {_SBD_FIX}") from error
    try:
        segmentation = np.asarray(content["GTcls"].Segmentation)
    except (KeyError, AttributeError) as error:
        raise DatasetError(
            f"{path} has no GTcls.Segmentation (an inst/ file holds GTinst: pass the class masks, cls/); {_SBD_FIX}"
        ) from error
    # a mask re-saved from MATLAB as double (the release's are uint8): whole numbers are class indices
    whole_floats = (
        segmentation.ndim == 2
        and np.issubdtype(segmentation.dtype, np.floating)
        and bool(np.isfinite(segmentation).all() and (segmentation == np.round(segmentation)).all())
    )
    if whole_floats:
        segmentation = segmentation.astype(np.int64)
    if segmentation.ndim != 2 or not np.issubdtype(segmentation.dtype, np.integer):
        raise DatasetError(
            f"{path}: GTcls.Segmentation is {segmentation.dtype} of shape {segmentation.shape}, not a 2-D class map; "
            f"{_SBD_FIX}"
        )
    bad = _invalid_values(segmentation)
    if bad:
        raise DatasetError(
            f"{path}: GTcls.Segmentation holds values {bad}, outside the class indices "
            f"0..{_NUM_CLASSES - 1} (and {IGNORE_INDEX}, ignore); {_SBD_FIX}"
        )
    return segmentation.astype(np.uint8)


def _ids(path: Path) -> list[str]:
    return [entry.id for entry in read_id_list(path)]


def train_aug_ids(sbd_train: list[str], sbd_val: list[str], voc_train: list[str], voc_val: list[str]) -> list[str]:
    """``(SBD train ∪ SBD val ∪ VOC train) − VOC val``, sorted (the DeepLab / WSSS ``train_aug`` split)."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def _image_size(voc: Path, identifier: str) -> tuple[int, int]:
    """``(H, W)`` of ``JPEGImages/<id>.jpg`` from its header (nothing is decoded)."""
    path = voc / "JPEGImages" / f"{identifier}.jpg"
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError as error:
        raise DatasetError(
            f"{path} does not exist, but {identifier} has a mask; --voc must be the VOC 2012 trainval folder "
            "(VOCdevkit/VOC2012, whose JPEGImages hold every SBD image)"
        ) from error
    except OSError as error:
        raise DatasetError(
            f"{path} is not a readable image ({error}); re-extract VOCtrainval_11-May-2012.tar"
        ) from error
    return height, width


def _read_source(path: Path) -> np.ndarray:
    """A mask to copy: an SBD ``.mat`` or a VOC ``SegmentationClass`` PNG, range-checked, ``uint8 (H, W)``."""
    if path.suffix == ".mat":
        return read_sbd_mask(path)
    mask = read_label(path)
    bad = _invalid_values(mask)
    if bad:
        raise DatasetError(
            f"{path} holds values {bad}, not VOC class indices (0..20, 255 boundary); it may be a "
            "colour image saved without its palette: re-extract VOCtrainval_11-May-2012.tar"
        )
    return mask


def convert_sbd(
    sbd_root: str | Path, voc_root: str | Path, overwrite: bool = False, progress: bool = True
) -> dict[str, int | str]:
    """Write ``SegmentationClassAug/<id>.png`` and ``ImageSets/Segmentation/train_aug.txt`` under ``voc_root``.

    Args:
        sbd_root: ``benchmark_RELEASE`` (or its ``dataset`` folder).
        voc_root: ``VOCdevkit/VOC2012`` with ``JPEGImages``, ``SegmentationClass`` and
            ``ImageSets/Segmentation/{train,val}.txt``.
        overwrite: rewrite masks that exist and replace a differing ``train_aug.txt``.

    Returns:
        counts: ``sbd_masks`` / ``voc_masks`` (ids taking their mask from each source), ``written``, ``skipped``
        (valid masks kept), ``repaired`` (damaged or wrong-sized files rewritten), ``train_aug`` (ids in the list),
        and ``train_aug_file``: ``written``, ``unchanged`` or ``kept`` (another list was there).
    """
    sbd = find_sbd_dataset(sbd_root)
    voc = Path(voc_root)
    lists = voc / "ImageSets" / "Segmentation"
    for required in (voc / "JPEGImages", voc / "SegmentationClass", lists / "train.txt", lists / "val.txt"):
        if not required.exists():
            raise DatasetError(
                f"{required} does not exist; --voc must be VOCdevkit/VOC2012 from VOCtrainval_11-May-2012.tar"
            )
    sbd_train, sbd_val = _ids(sbd / "train.txt"), _ids(sbd / "val.txt")
    voc_train, voc_val = _ids(lists / "train.txt"), _ids(lists / "val.txt")
    voc_ids = sorted(set(voc_train) | set(voc_val))
    sbd_only = sorted((set(sbd_train) | set(sbd_val)) - set(voc_ids))
    train_aug = train_aug_ids(sbd_train, sbd_val, voc_train, voc_val)

    # Check every source before the first write: readability, values and sizes.
    out = voc / "SegmentationClassAug"
    jobs: list[tuple[Path, Path, bool]] = []  # source, target, whether the target exists damaged or wrong-sized
    skipped = 0
    checks = [(i, sbd / "cls" / f"{i}.mat") for i in sbd_only] + [
        (i, voc / "SegmentationClass" / f"{i}.png") for i in voc_ids
    ]
    for identifier, source in tqdm(checks, desc="sbd check", unit="mask", disable=not progress, dynamic_ncols=True):
        mask = _read_source(source)
        size = _image_size(voc, identifier)
        if mask.shape != size:
            raise DatasetError(
                f"{source} is {mask.shape[1]}x{mask.shape[0]} but {voc / 'JPEGImages' / (identifier + '.jpg')} is "
                f"{size[1]}x{size[0]}; the mask belongs to another image: re-extract the archive it came from"
            )
        target = out / f"{identifier}.png"
        state = existing_label_state(target, size)
        if state and not overwrite:
            skipped += 1  # a valid PNG from an earlier run is kept (resume)
        else:
            jobs.append((source, target, state is False))

    # Masks are read again here rather than held: the 10,582 of VOC would take about 2 GB.
    out.mkdir(parents=True, exist_ok=True)
    for source, target, _ in tqdm(jobs, desc="sbd masks", unit="mask", disable=not progress, dynamic_ncols=True):
        atomic_write_bytes(target, grey_png_bytes(_read_source(source)))  # uint8 -> mode "L", values kept
    summary: dict[str, int | str] = {
        "sbd_masks": len(sbd_only),
        "voc_masks": len(voc_ids),
        "written": len(jobs),
        "skipped": skipped,
        "repaired": sum(repaired for _, _, repaired in jobs),
        "train_aug": len(train_aug),
    }

    list_path = lists / "train_aug.txt"
    text = "".join(f"{i}\n" for i in train_aug)
    if not list_path.exists() or overwrite:
        atomic_write_text(list_path, text)
        summary["train_aug_file"] = "written"
    else:
        try:
            existing = sorted(_ids(list_path))
        except DatasetError:
            existing = []
        summary["train_aug_file"] = "unchanged" if existing == train_aug else "kept"
    return summary


def main(argv: list[str] | None = None) -> int:
    """``wsss data sbd-masks``: see :func:`convert_sbd`. Returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="wsss data sbd-masks",
        description="Build VOC2012/SegmentationClassAug (SBD cls/*.mat masks, VOC masks where they exist) and "
        "ImageSets/Segmentation/train_aug.txt from the SBD release. Resumable: existing valid masks are kept.",
    )
    parser.add_argument("--sbd", required=True, help="benchmark_RELEASE (the folder benchmark.tgz unpacks to)")
    parser.add_argument("--voc", required=True, help="VOCdevkit/VOC2012")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing masks and train_aug.txt")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    try:
        summary = convert_sbd(args.sbd, args.voc, overwrite=args.overwrite, progress=not args.no_progress)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    voc = Path(args.voc)
    print(
        f"{summary['sbd_masks']} masks from SBD, {summary['voc_masks']} from VOC SegmentationClass: "
        f"{summary['written']} written ({summary['repaired']} repaired), {summary['skipped']} kept "
        f"-> {voc / 'SegmentationClassAug'}"
    )
    list_path = voc / "ImageSets" / "Segmentation" / "train_aug.txt"
    if summary["train_aug_file"] == "kept":
        print(
            f"warning: {list_path} exists with other ids than the {summary['train_aug']} computed here; it was kept "
            "(--overwrite replaces it)",
            file=sys.stderr,
        )
    else:
        print(f"train_aug: {summary['train_aug']} ids -> {list_path} ({summary['train_aug_file']})")
    if summary["train_aug"] != EXPECTED_TRAIN_AUG:
        print(
            f"note: train_aug has {summary['train_aug']} ids; the real SBD + VOC 2012 sets give {EXPECTED_TRAIN_AUG}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
