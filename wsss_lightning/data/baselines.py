"""``wsss data baselines``: what image labels + off-the-shelf saliency give without any training.

For a VOC-layout root, a split and a folder of saliency maps, this scores (mIoU over the classes, one
dataset-level confusion matrix, GT 255 ignored, the VOC protocol of ``wsss evaluate``):

* ``all_background``: every pixel background;
* ``labels_saliency`` at each threshold t: pixels with saliency ``> t`` (grey / 255) get the image's first
  listed class (the lowest class index of its image-level label), the others background: the naive
  "label + saliency" pseudo-label a trained pipeline has to beat;
* ``oracle`` at each threshold: the salient pixels get their GT class where that class is in the image label,
  the image's first listed class elsewhere (a salient pixel is foreground under saliency-based labelling),
  the others background: the upper bound of any rule that labels the salient pixels with image classes;
* ``saliency_maxF``: maxF of the saliency maps against the mask foreground (classes 1..C-1), pysodmetrics
  protocol (per-image min-max, 256 thresholds, beta^2 = 0.3, max of the image-mean F curve) with GT 255 pixels
  left out of both histograms.

Pure numpy / PIL: no model, no torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsss_lightning.data.io import DatasetError, atomic_write_text, read_label, read_saliency
from wsss_lightning.data.labels import labels_from_mask, labels_from_xml
from wsss_lightning.data.palette import IGNORE_INDEX, VOC_CLASSES
from wsss_lightning.data.splits import read_id_list, resolve_split_file

DEFAULT_THRESHOLDS = (0.5, 0.3, 0.06)
BETA2 = 0.3
GT_DIRS = ("SegmentationClass", "SegmentationClassAug")  # tried in order, per id


class MissingSaliencyMaps(DatasetError):
    """Some ids of the scored split have no saliency map (each caller names its own fix)."""


# ------------------------------------------------------------------------------------------------ metrics


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """``int64 (C, C)``, rows = GT class, columns = predicted class; GT 255 pixels skipped.

    ``pred``, ``gt``: integer class maps of one shape; predictions must lie in ``[0, C)``.
    """
    valid = gt != IGNORE_INDEX
    truth, guess = gt[valid].astype(np.int64), pred[valid].astype(np.int64)
    if truth.size and (truth.max() >= num_classes or guess.max() >= num_classes or guess.min() < 0):
        raise ValueError(f"class values outside [0, {num_classes}) (GT 255 excepted)")
    return np.bincount(truth * num_classes + guess, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def iou_scores(confmat: np.ndarray) -> dict[str, Any]:
    """Per-class IoU (None for a class absent from GT and prediction) and their mean over the others."""
    hits = np.diag(confmat).astype(np.float64)
    union = confmat.sum(axis=0) + confmat.sum(axis=1) - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, hits / union, np.nan)
    present = np.isfinite(iou)
    return {
        "mIoU": float(iou[present].mean()) if present.any() else None,
        "IoU": [float(x) if ok else None for x, ok in zip(iou, present)],
    }


def f_curve(saliency: np.ndarray, label: np.ndarray) -> np.ndarray:
    """pysodmetrics' F curve ``float64 (256,)`` of one map, thresholds 255..0; GT ``ignore`` pixels left out.

    ``saliency``: uint8 grey levels ``(H, W)``; ``label``: class indices ``(H, W)``, foreground = 1..254.
    """
    pred = saliency.astype(np.float64) / 255
    if pred.max() != pred.min():  # pysodmetrics' per-image min-max normalisation
        pred = (pred - pred.min()) / (pred.max() - pred.min())
    levels = (pred * 255).astype(np.uint8)
    valid = label != IGNORE_INDEX
    truth = valid & (label > 0)
    fg = np.cumsum(np.bincount(levels[truth], minlength=256)[::-1])
    bg = np.cumsum(np.bincount(levels[valid & ~truth], minlength=256)[::-1])
    predicted = fg + bg
    precision = fg / np.where(predicted == 0, 1, predicted)
    recall = fg / max(int(truth.sum()), 1)
    numerator = (1 + BETA2) * precision * recall
    return numerator / np.where(numerator == 0, 1, BETA2 * precision + recall)


def saliency_max_f(saliency_maps: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> float:
    """maxF of the image-mean F curve (pysodmetrics protocol, GT 255 ignored); foreground = classes > 0."""
    if not saliency_maps:
        raise ValueError("no saliency maps to score")
    return float(np.mean([f_curve(s, lab) for s, lab in zip(saliency_maps, labels)], axis=0).max())


# ------------------------------------------------------------------------------------------------ baselines


def labels_saliency_prediction(saliency: np.ndarray, classes: Sequence[int], threshold: float) -> np.ndarray:
    """``uint8 (H, W)``: the first of ``classes`` where ``saliency / 255 > threshold``, else 0 (no class: all 0)."""
    pred = np.zeros(saliency.shape, dtype=np.uint8)
    if len(classes):
        pred[saliency.astype(np.float64) / 255 > threshold] = classes[0]
    return pred


def oracle_prediction(saliency: np.ndarray, gt: np.ndarray, classes: Sequence[int], threshold: float) -> np.ndarray:
    """``uint8 (H, W)``: salient pixels get their GT class if the image label holds it, else the first of
    ``classes``; the other pixels background."""
    pred = labels_saliency_prediction(saliency, classes, threshold)
    salient = saliency.astype(np.float64) / 255 > threshold
    known = salient & np.isin(gt, np.asarray(classes, dtype=np.int64))
    pred[known] = gt[known]
    return pred


def _gt_path(root: Path, gt_dir: str | None, image_id: str) -> Path:
    folders = (gt_dir,) if gt_dir else GT_DIRS
    candidates = [(Path(f) if Path(f).is_absolute() else root / f) / f"{image_id}.png" for f in folders]
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetError(f"no ground truth for {image_id} (tried {', '.join(str(p) for p in candidates)})")


def _image_classes(root: Path, image_id: str, gt: np.ndarray, source: str, class_names: Sequence[str]) -> list[int]:
    """Class indices (1..C-1, ascending) of the image-level label: from the XML, or from the GT mask."""
    xml = root / "Annotations" / f"{image_id}.xml"
    if source == "xml" or (source == "auto" and xml.is_file()):
        vector = labels_from_xml(xml, class_names)
    else:
        vector = labels_from_mask(gt, len(class_names), image_id)
    return [int(i) + 1 for i in np.flatnonzero(vector)]


def compute_baselines(
    root: str | Path,
    split: str = "val",
    saliency_dir: str = "saliency_map",
    *,
    gt_dir: str | None = None,
    label_source: str = "auto",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    class_names: Sequence[str] = VOC_CLASSES,
    bounds: bool = True,
) -> dict[str, Any]:
    """Score the baselines of the module docstring on ``split`` of a VOC-layout ``root``.

    ``saliency_dir`` / ``gt_dir`` are relative to ``root`` unless absolute; without ``gt_dir`` each id's GT is
    ``SegmentationClass/<id>.png``, else ``SegmentationClassAug/<id>.png``. ``label_source``: ``xml``
    (``Annotations/<id>.xml``), ``masks`` (classes of the GT) or ``auto`` (the XML when it exists).
    Returns ``{"split", "num_images", "thresholds", "all_background", "labels_saliency": {t: scores},
    "oracle": {t: scores}, "saliency_maxF", "class_names"}``; scores are ``{"mIoU", "IoU" (C,)}``.
    ``bounds=False`` leaves out ``oracle`` and ``saliency_maxF`` (and keeps no map in memory): the bar alone.
    """
    root = Path(root)
    sal_root = Path(saliency_dir) if Path(saliency_dir).is_absolute() else root / saliency_dir
    ids = [entry.id for entry in read_id_list(resolve_split_file(root, split))]
    if not ids:
        raise DatasetError(f"split {split} under {root} lists no ids")
    absent = [image_id for image_id in ids if not (sal_root / f"{image_id}.png").is_file()]
    if absent:  # before any scoring: one line for the whole split, not a failure at the first absent map
        raise MissingSaliencyMaps(
            f"{len(absent)} of the {len(ids)} ids of split {split} have no saliency map in {sal_root} (e.g. "
            f"{sal_root / (absent[0] + '.png')}); off-the-shelf maps often cover the training ids only"
        )
    num_classes = len(class_names)
    empty = np.zeros((num_classes, num_classes), dtype=np.int64)
    background = empty.copy()
    naive = {t: empty.copy() for t in thresholds}
    oracle = {t: empty.copy() for t in thresholds}
    saliency_maps, labels = [], []
    for image_id in ids:
        gt = read_label(_gt_path(root, gt_dir, image_id))
        sal_path = sal_root / f"{image_id}.png"
        saliency = read_saliency(sal_path)
        if saliency.shape != gt.shape:
            raise DatasetError(f"{sal_path} is {saliency.shape[::-1]} but its ground truth is {gt.shape[::-1]} (W, H)")
        classes = _image_classes(root, image_id, gt, label_source, class_names)
        background += confusion_matrix(np.zeros_like(gt), gt, num_classes)
        for t in thresholds:
            naive[t] += confusion_matrix(labels_saliency_prediction(saliency, classes, t), gt, num_classes)
            if bounds:
                oracle[t] += confusion_matrix(oracle_prediction(saliency, gt, classes, t), gt, num_classes)
        if bounds:
            saliency_maps.append(saliency)
            labels.append(gt)
    results: dict[str, Any] = {
        "split": split,
        "num_images": len(ids),
        "thresholds": list(thresholds),
        "all_background": iou_scores(background),
        "labels_saliency": {str(t): iou_scores(m) for t, m in naive.items()},
    }
    if bounds:
        results["oracle"] = {str(t): iou_scores(m) for t, m in oracle.items()}
        results["saliency_maxF"] = saliency_max_f(saliency_maps, labels)
    results["class_names"] = list(class_names)
    return results


def label_free_bar(
    root: str | Path,
    split: str,
    saliency_dir: str | Path,
    gt_dir: str | Path,
    class_names: Sequence[str],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """The bar a trained network's test mIoU must clear: the best ``labels_saliency`` baseline over
    ``thresholds`` on ``split`` (the image-level labels as ``wsss data baselines`` reads them).

    Returns ``{"split", "num_images", "threshold", "mIoU" (in [0, 1]), "all_background", "by_threshold": {t:
    mIoU}}``. Raises :class:`DatasetError` when a map or a ground truth is missing or of another size.
    """
    scores = compute_baselines(
        root, split, str(saliency_dir), gt_dir=str(gt_dir), thresholds=thresholds, class_names=class_names,
        bounds=False,
    )  # fmt: skip
    by_threshold = {t: float(v["mIoU"]) for t, v in scores["labels_saliency"].items()}
    best = max(by_threshold, key=lambda t: by_threshold[t])
    return {
        "split": split,
        "num_images": scores["num_images"],
        "threshold": float(best),
        "mIoU": by_threshold[best],
        "all_background": float(scores["all_background"]["mIoU"]),
        "by_threshold": by_threshold,
    }


def compare_to_bar(per_mode: dict[str, dict[str, Any]], bar: dict[str, Any]) -> tuple[str, str | None]:
    """The line that sets each test mode's mIoU against the bar, and a loud warning when none clears it.

    ``per_mode``: mode name -> ``{"mIoU": value in [0, 1], ...}`` (a split of ``wsss test``'s results);
    ``bar``: :func:`label_free_bar`'s result. Returns ``(line, warning or None)``.
    """
    head = (
        f"no-training bar on split '{bar['split']}' ({bar['num_images']} images): ground-truth image labels + "
        f"saliency > {bar['threshold']:g}, each salient pixel the image's first class = {100 * bar['mIoU']:.2f} mIoU"
    )
    cells = [f"{mode} {100 * v['mIoU']:.2f} ({100 * (v['mIoU'] - bar['mIoU']):+.2f})" for mode, v in per_mode.items()]
    line = head + "\n  test: " + "   ".join(cells)
    if not per_mode:
        return line, None
    best_mode = max(per_mode, key=lambda m: per_mode[m]["mIoU"])
    best = per_mode[best_mode]["mIoU"]
    if best > bar["mIoU"]:
        return line, None
    warning = (
        f"NO TEST MODE BEATS THE NO-TRAINING BAR on split '{bar['split']}': the best, {best_mode} "
        f"{100 * best:.2f} mIoU, is {100 * (bar['mIoU'] - best):.2f} points below what the ground-truth image labels "
        f"and the saliency maps give without any network ({100 * bar['mIoU']:.2f}; the network has no image labels "
        "at test time, so this bar is strict). The network segments no better than its inputs: check the fit's "
        "label trajectory (its last lines), train longer (the paper schedules: configs/voc_*.yaml), and compare "
        "the fully supervised bound (--data.init_args.train_target gt --stages null)"
    )
    return line, warning


def format_baselines(results: dict[str, Any]) -> str:
    """A short markdown table of the mIoUs (percent) and the saliency maxF."""
    lines = [
        f"split {results['split']} ({results['num_images']} images)",
        "| baseline | threshold | mIoU % |",
        "|---|---|---|",
        f"| all background | - | {100 * results['all_background']['mIoU']:.2f} |",
    ]
    for name, key in (("labels + saliency, first class", "labels_saliency"), ("oracle class on saliency", "oracle")):
        for t, scores in results[key].items():
            lines.append(f"| {name} | > {t} | {100 * scores['mIoU']:.2f} |")
    lines.append(f"saliency maxF (GT 255 ignored): {results['saliency_maxF']:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``wsss data baselines --root VOC2012 [--split val] [--saliency-dir saliency_map] [--json FILE]``."""
    parser = argparse.ArgumentParser(
        prog="wsss data baselines", description="mIoU of label + saliency baselines, and the saliency maxF."
    )
    parser.add_argument("--root", required=True, help="VOC-layout dataset folder (VOCdevkit/VOC2012)")
    parser.add_argument("--split", default="val", help="split name or list file (default val)")
    parser.add_argument("--saliency-dir", default="saliency_map", help="saliency maps, relative to the root")
    parser.add_argument("--gt-dir", default=None, help="GT folder (default SegmentationClass, then ...Aug)")
    parser.add_argument("--label-source", choices=("auto", "xml", "masks"), default="auto")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS))
    parser.add_argument("--json", default=None, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    try:
        results = compute_baselines(
            args.root,
            args.split,
            args.saliency_dir,
            gt_dir=args.gt_dir,
            label_source=args.label_source,
            thresholds=args.thresholds,
        )
    except MissingSaliencyMaps as error:
        print(f"error: {error}: try --split train, or point --saliency-dir at maps of this split", file=sys.stderr)
        return 2
    except (DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_baselines(results))
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
