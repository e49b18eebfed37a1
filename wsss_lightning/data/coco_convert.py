"""Convert MS COCO 2014 instance annotations to WSSS-form semantic masks and image-level labels.

WSSS code on COCO (method_notes §2.13, §3.3) wants, per image, a class-index PNG (0 = background, 1..80 = the 80
thing classes in increasing COCO category-id order, 255 = ignore) and the list of classes present. This
module builds both from ``annotations/instances_{train,val}2014.json`` with ``pycocotools.mask``::

    wsss data coco-masks --instances annotations/instances_val2014.json --out SegmentationClass/val2014 \\
        --labels cls_labels_val2014.json

Rules (fixed here, stated so results are comparable):

* Category ids (1..90 with gaps) map to contiguous class indices 1..K by sorted category id.
* Overlapping instances are painted in *decreasing* mask area (ties keep the JSON order), so a small object
  on top of a large one stays visible: a cup on a dining table keeps its pixels.
* Crowd regions (``iscrowd=1``): ``"ignore"`` (default) paints them 255 *underneath* every non-crowd instance
  (crowd outlines are coarse, individual instances inside them are reliable); ``"class"`` treats them as
  ordinary instances of their class (area order included); ``"skip"`` leaves their pixels untouched.
* Image-level labels come from non-crowd instances (plus crowd ones with ``crowd="class"``), whether or not
  an instance stays visible after painting; images without annotations get an all-background mask and ``[]``.
* Masks are single-channel (mode "L") PNGs named ``<file_name stem>.png``, sized by the JSON's
  ``height``/``width``, written atomically. With ``overwrite=False`` a readable PNG of the right size is
  kept (resume); a damaged or wrong-sized one is rewritten. Nothing is ever deleted. A resume does not know
  which ``crowd`` mode wrote the kept files: pass ``overwrite=True`` after changing it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from wsss_lightning.data.io import (
    DatasetError,
    atomic_write_bytes,
    atomic_write_text,
    existing_label_state,
    grey_png_bytes,
)
from wsss_lightning.data.palette import IGNORE_INDEX

CrowdMode = Literal["ignore", "class", "skip"]
CROWD_MODES: tuple[str, ...] = ("ignore", "class", "skip")

_FIX = "the file is truncated, damaged or not a COCO instances file: re-extract annotations_trainval2014.zip"


# ------------------------------------------------------------------------------------------------ reading


def load_instances(path: str | Path) -> dict[str, Any]:
    """Read and shape-check a COCO instances JSON (``images``, ``annotations``, ``categories`` lists)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{path} does not exist; expected annotations/instances_train2014.json or instances_val2014.json "
            "from annotations_trainval2014.zip"
        )
    try:
        with path.open("r", encoding="utf-8-sig") as stream:
            data = json.load(stream)
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); {_FIX}"
        ) from error
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path} is not UTF-8 text ({error.reason}); {_FIX}") from error
    if not isinstance(data, dict):
        raise DatasetError(f"{path} holds a JSON {type(data).__name__}, not an object; {_FIX}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path} has no '{key}' list; {_FIX} (captions/keypoints files are not instances)")
    return data


def _field(entry: Any, key: str, kind: type | tuple[type, ...], where: str, path: Path) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise DatasetError(f"{path}: {where} has no '{key}' field; {_FIX}")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetError(f"{path}: {where} has '{key}' = {value!r}, expected {getattr(kind, '__name__', kind)}")
    return value


def category_mapping(categories: list[dict[str, Any]], path: Path) -> tuple[list[int], list[str]]:
    """Sorted COCO category ids and their names; class index ``k`` (1..K) is ``category_ids[k - 1]``."""
    names: dict[int, str] = {}
    for position, category in enumerate(categories):
        where = f"categories[{position}]"
        category_id = _field(category, "id", int, where, path)
        if category_id in names:
            raise DatasetError(f"{path}: category id {category_id} appears twice in 'categories'; {_FIX}")
        names[category_id] = str(_field(category, "name", str, where, path))
    if not names:
        raise DatasetError(f"{path} has an empty 'categories' list; {_FIX}")
    if len(names) >= IGNORE_INDEX:  # indices must fit in uint8 below the ignore value
        raise DatasetError(f"{path} has {len(names)} categories; at most {IGNORE_INDEX - 1} fit in a uint8 mask")
    ids = sorted(names)
    return ids, [names[i] for i in ids]


# ------------------------------------------------------------------------------------------------ RLE


def _counts_from_string(counts: bytes) -> list[int]:
    """Decode COCO's compressed RLE counts string (``maskApi.c: rleFrString``) in Python.

    Used only to validate untrusted strings before pycocotools' C decoder sees them: a corrupt string
    makes that decoder read or write out of bounds instead of failing.
    """
    values: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("the counts string ends inside a value")
            chunk = counts[position] - 48
            if not 0 <= chunk < 64:
                raise ValueError(f"invalid character {chr(counts[position])!r} in the counts string")
            value |= (chunk & 0x1F) << (5 * shift)
            more = bool(chunk & 0x20)
            position += 1
            shift += 1
            if not more and chunk & 0x10:
                value |= -1 << (5 * shift)  # sign extension, as the C code does
        if len(values) > 2:
            value += values[-2]  # counts after the second are stored as differences
        values.append(value)
    return values


def _check_counts(counts: list[int], height: int, width: int) -> None:
    if any(value < 0 for value in counts) or sum(counts) != height * width:
        raise ValueError(f"RLE counts must be non-negative and sum to {height}x{width} = {height * width} pixels")


def instance_rle(segmentation: Any, height: int, width: int) -> dict[str, Any] | None:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as one compressed RLE.

    Polygons are in pixel-corner coordinates (a box ``[x0, y0, x1, y0, x1, y1, x0, y1]`` covers rows
    ``y0..y1-1`` and columns ``x0..x1-1``) and are clipped to the image. Polygons with fewer than three points
    enclose nothing and are dropped (pycocotools would read a 4-number list as a *box*). Returns ``None`` when
    nothing is left. Raises ``ValueError`` on malformed input.
    """
    if isinstance(segmentation, list):
        polygons: list[list[float]] = []
        for polygon in segmentation:
            if not isinstance(polygon, list):
                raise ValueError(f"a polygon must be a list of numbers, got {type(polygon).__name__}")
            if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in polygon):
                raise ValueError("polygon coordinates must be finite numbers")
            if len(polygon) % 2:
                raise ValueError(f"a polygon has an odd number of coordinates ({len(polygon)})")
            if len(polygon) >= 6:
                polygons.append([float(v) for v in polygon])
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = segmentation["size"]
        if not isinstance(size, list) or size != [height, width]:
            raise ValueError(f"RLE size {size!r} differs from the image size [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
                raise ValueError("uncompressed RLE counts must be integers")
            _check_counts(counts, height, width)
            return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        if isinstance(counts, str | bytes):
            encoded = counts.encode("ascii") if isinstance(counts, str) else counts
            _check_counts(_counts_from_string(encoded), height, width)
            return {"size": [height, width], "counts": encoded}
        raise ValueError(f"RLE counts must be a list or a string, got {type(counts).__name__}")
    raise ValueError(f"segmentation must be a polygon list or an RLE dict, got {type(segmentation).__name__}")


def paint_mask(
    height: int, width: int, instances: Sequence[tuple[int, dict[str, Any] | None]], ignore_rles: Sequence[dict]
) -> np.ndarray:
    """Paint one image's semantic mask, ``uint8 (height, width)``: 0 background, classes, 255 ignore.

    ``ignore_rles`` (crowd regions) are painted 255 first; ``instances`` (class index, RLE or None) are then
    painted in decreasing area (stable, so ties keep the given order): smaller objects end up on top.
    """
    label = np.zeros((height, width), dtype=np.uint8)
    present = [(class_index, rle) for class_index, rle in instances if rle is not None]
    areas = [int(mask_utils.area(rle)) for _, rle in present]
    with warnings.catch_warnings():
        # pycocotools 2.0.x's Cython array wrapper predates NumPy 2's `copy=` protocol; harmless here.
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        if ignore_rles:
            label[mask_utils.decode(mask_utils.merge(list(ignore_rles))).astype(bool)] = IGNORE_INDEX
        for position in sorted(range(len(present)), key=lambda i: -areas[i]):
            class_index, rle = present[position]
            label[mask_utils.decode(rle).astype(bool)] = class_index
    return label


# ------------------------------------------------------------------------------------------------ resume


# ------------------------------------------------------------------------------------------------ convert


def convert_coco_instances(
    instances_json: str | Path,
    out_mask_dir: str | Path,
    labels_json: str | Path | None = None,
    crowd: CrowdMode = "ignore",
    overwrite: bool = False,
    image_ids: Sequence[int] | None = None,
    progress: bool = True,
    list_file: str | Path | None = None,
) -> dict[str, int]:
    """Write a semantic mask PNG per image and, optionally, the image-level labels JSON.

    Args:
        instances_json: COCO ``instances_*.json``.
        out_mask_dir: folder for ``<file_name stem>.png`` masks (created if missing).
        labels_json: where to write ``{"num_classes", "class_names", "category_ids", "labels"}``; class
            ``k`` has name ``class_names[k]`` and COCO id ``category_ids[k]`` (index 0 = background, id 0);
            ``labels`` maps each file stem to its sorted class indices (1..K).
        crowd: ``"ignore"`` (255), ``"class"`` (their class) or ``"skip"`` (untouched) for crowd regions.
        overwrite: rewrite masks that already exist and are valid.
        image_ids: convert only these COCO image ids (all when ``None``).
        progress: show a tqdm bar.
        list_file: where to write the split list of the images with at least one class, one file stem per line
            (sorted). It is the list WSSS work trains and scores on: train2014 holds 82,783 images of which
            82,081 have a class, val2014 40,504 / 40,137. An image without one has an all-background mask and
            no CAM to learn from.

    Returns:
        counts: ``images``, ``written``, ``skipped`` (valid masks kept), ``repaired`` (damaged or wrong-sized
        masks rewritten, included in ``written``), ``annotations``, ``crowd_annotations``,
        ``images_without_annotations``, ``images_without_labels``, ``num_classes``.
    """
    if crowd not in CROWD_MODES:
        raise ValueError(f"crowd must be one of {CROWD_MODES}, got {crowd!r}")
    path = Path(instances_json)
    data = load_instances(path)
    category_ids, names = category_mapping(data["categories"], path)
    class_of = {category_id: index + 1 for index, category_id in enumerate(category_ids)}

    images: dict[int, dict[str, Any]] = {}
    stems: dict[str, int] = {}
    for position, image in enumerate(data["images"]):
        where = f"images[{position}]"
        image_id = _field(image, "id", int, where, path)
        file_name = _field(image, "file_name", str, where, path)
        height = _field(image, "height", int, where, path)
        width = _field(image, "width", int, where, path)
        if height <= 0 or width <= 0:
            raise DatasetError(f"{path}: {where} ({file_name}) has size {height}x{width}; {_FIX}")
        stem = Path(file_name).stem
        if image_id in images or stem in stems:
            raise DatasetError(f"{path}: {where} repeats image id {image_id} or file name {file_name}; {_FIX}")
        images[image_id] = {"stem": stem, "height": height, "width": width, "annotations": []}
        stems[stem] = image_id

    # Validate every annotation before writing anything: a broken file fails fast, not after hours.
    for position, annotation in enumerate(data["annotations"]):
        where = f"annotations[{position}] (id {annotation.get('id') if isinstance(annotation, dict) else None})"
        image_id = _field(annotation, "image_id", int, where, path)
        category_id = _field(annotation, "category_id", int, where, path)
        if image_id not in images:
            raise DatasetError(
                f"{path}: {where} refers to image_id {image_id}, which is not in 'images'; "
                "the file is truncated or mixes splits: re-extract annotations_trainval2014.zip"
            )
        if category_id not in class_of:
            raise DatasetError(f"{path}: {where} refers to category_id {category_id}, which is not in 'categories'")
        if "segmentation" not in annotation:
            raise DatasetError(f"{path}: {where} has no 'segmentation'; {_FIX}")
        images[image_id]["annotations"].append(annotation)

    if image_ids is None:
        selected = sorted(images)
    else:
        unknown = sorted({int(i) for i in image_ids} - set(images))
        if unknown:
            raise DatasetError(f"{path}: image ids {unknown[:10]} are not in 'images' (requested in image_ids)")
        selected = sorted({int(i) for i in image_ids})

    summary = {
        "images": len(selected),
        "written": 0,
        "skipped": 0,
        "repaired": 0,
        "annotations": 0,
        "crowd_annotations": 0,
        "images_without_annotations": 0,
        "images_without_labels": 0,
        "num_classes": len(category_ids) + 1,
    }
    labels: dict[str, list[int]] = {}
    for image_id in selected:
        image = images[image_id]
        classes = {
            class_of[a["category_id"]] for a in image["annotations"] if not a.get("iscrowd", 0) or crowd == "class"
        }
        labels[image["stem"]] = sorted(classes)
        summary["annotations"] += len(image["annotations"])
        summary["crowd_annotations"] += sum(1 for a in image["annotations"] if a.get("iscrowd", 0))
        summary["images_without_annotations"] += not image["annotations"]
        summary["images_without_labels"] += not classes

    if labels_json is not None:
        document = {
            "num_classes": len(category_ids) + 1,
            "class_names": ["background", *names],
            "category_ids": [0, *category_ids],
            "labels": dict(sorted(labels.items())),
        }
        atomic_write_text(labels_json, json.dumps(document, indent=1) + "\n")
    if list_file is not None:
        listed = sorted(stem for stem, classes in labels.items() if classes)
        atomic_write_text(list_file, "".join(f"{stem}\n" for stem in listed))

    out_dir = Path(out_mask_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(selected, desc="coco masks", unit="img", disable=not progress, dynamic_ncols=True)
    for image_id in bar:
        image = images[image_id]
        height, width = image["height"], image["width"]
        target = out_dir / f"{image['stem']}.png"
        state = existing_label_state(target, (height, width))
        if state and not overwrite:
            summary["skipped"] += 1
        else:
            label = _image_mask(image, class_of, crowd, path)
            atomic_write_bytes(target, grey_png_bytes(label))  # uint8 -> mode "L", values kept
            summary["written"] += 1
            summary["repaired"] += state is False
        bar.set_postfix(
            written=summary["written"], skipped=summary["skipped"], repaired=summary["repaired"], refresh=False
        )
    bar.close()
    return summary


def _image_mask(image: dict[str, Any], class_of: dict[int, int], crowd: str, path: Path) -> np.ndarray:
    height, width = image["height"], image["width"]
    instances: list[tuple[int, dict[str, Any] | None]] = []
    ignore_rles: list[dict[str, Any]] = []
    for annotation in image["annotations"]:
        is_crowd = bool(annotation.get("iscrowd", 0))
        if is_crowd and crowd == "skip":
            continue
        try:
            rle = instance_rle(annotation["segmentation"], height, width)
        except ValueError as error:
            raise DatasetError(
                f"{path}: annotation id {annotation.get('id')} of {image['stem']} has a malformed segmentation "
                f"({error}); {_FIX}"
            ) from error
        if is_crowd and crowd == "ignore":
            if rle is not None:
                ignore_rles.append(rle)
        else:
            instances.append((class_of[annotation["category_id"]], rle))
    return paint_mask(height, width, instances, ignore_rles)


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    """``wsss data coco-masks``: see :func:`convert_coco_instances`. Returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="wsss data coco-masks",
        description="Convert COCO instance annotations to semantic class-index PNGs (0 background, 1..80, 255 "
        "ignore) and image-level labels JSON. Resumable: existing valid masks are kept.",
    )
    parser.add_argument("--instances", required=True, help="annotations/instances_{train,val}2014.json")
    parser.add_argument("--out", required=True, help="output folder for <image stem>.png masks")
    parser.add_argument("--labels", default=None, help="write image-level labels JSON here")
    parser.add_argument(
        "--list",
        default=None,
        help="write the split list of the images with at least one class here (e.g. <root>/train.txt: the "
        "82,081 train2014 images WSSS work uses)",
    )
    parser.add_argument("--crowd", choices=CROWD_MODES, default="ignore", help="crowd regions (default: ignore)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite masks that already exist")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        summary = convert_coco_instances(
            args.instances,
            args.out,
            labels_json=args.labels,
            crowd=args.crowd,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            list_file=args.list,
        )
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"{summary['images']} images: {summary['written']} masks written ({summary['repaired']} repaired), "
        f"{summary['skipped']} kept; {summary['annotations']} annotations ({summary['crowd_annotations']} crowd); "
        f"{summary['images_without_labels']} images without labels; {summary['num_classes']} classes -> {args.out}"
        + (f"; labels -> {args.labels}" if args.labels else "")
        + (
            f"; list of the {summary['images'] - summary['images_without_labels']} labelled -> {args.list}"
            if args.list
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
