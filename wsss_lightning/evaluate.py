"""``wsss evaluate``: score a folder of predictions against ground truth, no model needed.

* ``--task seg``: class-index maps (palette or grey PNGs, 255 = ignore) -> per-class IoU and mIoU from one
  dataset-level confusion matrix (:class:`~wsss_lightning.metrics.SegmentationIoU`).
* ``--task sal``: grey saliency maps -> maxF / meanF / adpF / MAE (+ Sm, maxE, meanE, adpE for ``sod``)
  (:class:`~wsss_lightning.metrics.SaliencyMetrics`, protocol ``sod`` = pysodmetrics, ``ssnet`` = jsws).

Files are matched by stem, whatever their image extension. A ground truth without prediction, or a prediction
whose size differs from its ground truth (without ``--resize``), is an error (exit code 2) that lists the files;
predictions without ground truth are reported and skipped. ``--resize`` resizes predictions to the GT size with
PIL: nearest for labels, bilinear for saliency maps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from wsss_lightning.data.io import DatasetError, atomic_write_bytes, list_images, read_label, read_saliency
from wsss_lightning.data.palette import default_class_names
from wsss_lightning.data.splits import read_id_list
from wsss_lightning.metrics.saliency import SaliencyMetrics
from wsss_lightning.metrics.segmentation import SegmentationIoU

__all__ = ["EvaluationError", "evaluate_saliency", "evaluate_segmentation", "format_table", "main"]

SHOWN = 5  # how many file names an error message lists before "... and N more"
EXIT_DATA_ERROR = 2

SEG_PROTOCOL = (
    "dataset-level confusion matrix over all images at GT resolution; GT 255 ignored; predicted values outside "
    "[0, num_classes) count as misses; mIoU = mean over classes present in GT or prediction"
)
SAL_PROTOCOLS = {
    "sod": "pysodmetrics 1.6.2 definitions: GT > 128, per-image min-max, beta^2 = 0.3, 256 thresholds, "
    "maxF/meanF of the mean per-image F curve, adaptive threshold min(2 mean, 1), S-measure alpha 0.5",
    "ssnet": "jsws evaluate_sal.py (SSNet): GT != 0, per-image min-max, beta^2 = 0.3, 21 thresholds, "
    "maxF/meanF of F(image-mean P, image-mean R), adaptive threshold min(2 mean, 1)",
}
SAL_KEYS = ("maxF", "meanF", "adpF", "MAE", "Sm", "maxE", "meanE", "adpE")


class EvaluationError(DatasetError):
    """Prediction and ground-truth folders do not match (missing predictions, size mismatches)."""


def _listing(lines: Sequence[str]) -> str:
    shown = [f"  {line}" for line in lines[:SHOWN]]
    if len(lines) > SHOWN:
        shown.append(f"  ... and {len(lines) - SHOWN} more")
    return "\n".join(shown)


def _match(
    pred_dir: Path, gt_dir: Path, ids: Sequence[str] | None = None
) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pairs ``(stem, pred, gt)`` in GT order (only ``ids`` when given) and the stems of predictions without GT."""
    for role, folder in (("prediction", pred_dir), ("ground-truth", gt_dir)):
        if not folder.is_dir():
            raise EvaluationError(f"{role} folder {folder} does not exist or is not a folder")
    gts, preds = list_images(gt_dir), list_images(pred_dir)
    unmatched = [stem for stem in preds if stem not in gts]  # predictions outside the listed ids are not counted
    if ids is not None:
        absent = [name for name in ids if name not in gts]
        if absent:
            raise EvaluationError(
                f"{len(absent)} of the {len(ids)} listed ids have no ground truth in {gt_dir}:\n" + _listing(absent)
            )
        gts = {name: gts[name] for name in ids}
    if not gts:
        raise EvaluationError(f"no image files in the ground-truth folder {gt_dir}")
    missing = [stem for stem in gts if stem not in preds]
    if missing:
        raise EvaluationError(
            f"{len(missing)} of {len(gts)} ground-truth files have no prediction in {pred_dir} (matched by file "
            f"name without extension):\n" + _listing([str(gts[stem]) for stem in missing])
        )
    return [(stem, preds[stem], gts[stem]) for stem in gts], unmatched


def _resize(array: np.ndarray, size_hw: tuple[int, ...], resample: Image.Resampling) -> np.ndarray:
    image = Image.fromarray(array).resize((size_hw[1], size_hw[0]), resample=resample)
    return np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays


def _score_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    reader: Callable[[Path], np.ndarray],
    resample: Image.Resampling,
    update: Callable[[np.ndarray, np.ndarray], None],
    resize: bool,
    desc: str,
    progress: bool,
    ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Read every pair, check sizes (or resize), feed ``update(pred, gt)``; return the bookkeeping fields."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    pairs, unmatched = _match(pred_dir, gt_dir, ids)
    mismatched: list[str] = []
    for _, pred_path, gt_path in tqdm(pairs, desc=desc, unit="img", disable=not progress, dynamic_ncols=True):
        pred, gt = reader(pred_path), reader(gt_path)
        if pred.shape != gt.shape:
            if not resize:
                mismatched.append(
                    f"{pred_path} is {pred.shape[0]}x{pred.shape[1]}, {gt_path} is {gt.shape[0]}x{gt.shape[1]}"
                )
                continue
            pred = _resize(pred, gt.shape, resample)
        if mismatched:
            continue  # the run fails below; only keep collecting mismatches
        try:
            update(pred, gt)
        except (ValueError, TypeError) as error:
            raise EvaluationError(f"{gt_path} / {pred_path}: {error}") from error
    if mismatched:
        raise EvaluationError(
            f"{len(mismatched)} of {len(pairs)} predictions differ in size from their ground truth (H x W); pass "
            "--resize (resize=True) to resize predictions to the GT size:\n" + _listing(mismatched)
        )
    return {
        "num_images": len(pairs),
        "pred_dir": str(pred_dir.resolve()),
        "gt_dir": str(gt_dir.resolve()),
        "resize": resize,
        "skipped_predictions": {"count": len(unmatched), "examples": unmatched[:SHOWN]},
    }


def evaluate_segmentation(
    pred_dir: str | Path,
    gt_dir: str | Path,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    resize: bool = False,
    *,
    progress: bool = True,
    ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-class IoU and mIoU of the label maps in ``pred_dir`` against ``gt_dir`` (fractions in [0, 1]); only the
    ``ids`` when given (e.g. a split's list), else every GT file.

    Returns a JSON-ready dict: ``task``, ``protocol``, ``num_images``, ``num_classes``, ``pred_dir``, ``gt_dir``,
    ``resize``, ``skipped_predictions`` (``count`` and a few ``examples``), ``mIoU``, ``pixel_accuracy``,
    ``mean_accuracy`` and ``IoU`` (class name -> IoU, ``None`` for a class absent from GT and predictions).
    Raises :class:`EvaluationError` for missing predictions, size mismatches or invalid label values.
    """
    names = tuple(class_names) if class_names is not None else default_class_names(num_classes)
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given for num_classes={num_classes}")
    metric = SegmentationIoU(num_classes=num_classes)

    def update(pred: np.ndarray, gt: np.ndarray) -> None:
        metric.update(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None])

    info = _score_folders(
        pred_dir, gt_dir, read_label, Image.Resampling.NEAREST, update, resize, "evaluate seg", progress, ids
    )
    scores = metric.compute()
    return {
        "task": "seg",
        "protocol": SEG_PROTOCOL,
        "num_classes": num_classes,
        **info,
        "mIoU": _number(scores["mIoU"]),
        "pixel_accuracy": _number(scores["pixel_accuracy"]),
        "mean_accuracy": _number(scores["mean_accuracy"]),
        "IoU": {name: _number(value) for name, value in zip(names, scores["IoU"])},
    }


def evaluate_saliency(
    pred_dir: str | Path,
    gt_dir: str | Path,
    protocol: Literal["sod", "ssnet"] = "sod",
    resize: bool = False,
    *,
    progress: bool = True,
    ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Saliency scores of the grey maps in ``pred_dir`` against the masks in ``gt_dir`` (fractions in [0, 1]); only
    the ``ids`` when given.

    Returns a JSON-ready dict: ``task``, ``protocol``, ``protocol_description``, ``num_images``, ``pred_dir``,
    ``gt_dir``, ``resize``, ``skipped_predictions`` and the scores of :class:`SaliencyMetrics` for the protocol
    (``maxF``, ``meanF``, ``adpF``, ``MAE``; + ``Sm``, ``maxE``, ``meanE``, ``adpE`` for ``sod``).
    """
    metric = SaliencyMetrics(protocol=protocol)

    def update(pred: np.ndarray, gt: np.ndarray) -> None:
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt))

    info = _score_folders(
        pred_dir, gt_dir, read_saliency, Image.Resampling.BILINEAR, update, resize, "evaluate sal", progress, ids
    )
    scores = {key: _number(value) for key, value in metric.compute().items()}
    return {"task": "sal", "protocol": protocol, "protocol_description": SAL_PROTOCOLS[protocol], **info, **scores}


def _number(value: torch.Tensor | float) -> float | None:
    """A plain float for JSON; NaN (undefined) becomes ``None``."""
    number = float(value)
    return None if math.isnan(number) else number


def _cell(value: float | None, scale: float = 1.0, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)) + " |"

    return [line(header), "|" + "|".join("-" * (width + 2) for width in widths) + "|", *[line(r) for r in rows]]


def format_table(results: dict[str, Any]) -> str:
    """A markdown table of :func:`evaluate_segmentation` (IoU in %) or :func:`evaluate_saliency` results."""
    title = f"{results['num_images']} images, predictions {results['pred_dir']}, ground truth {results['gt_dir']}"
    if results["task"] == "seg":
        rows = [[name, _cell(value, 100, 2)] for name, value in results["IoU"].items()]
        rows.append(["mIoU", _cell(results["mIoU"], 100, 2)])
        lines = [f"Segmentation, {title}", *_markdown(["class", "IoU (%)"], rows)]
        lines.append(
            f"pixel accuracy {_cell(results['pixel_accuracy'], 100, 2)} %, "
            f"mean class accuracy {_cell(results['mean_accuracy'], 100, 2)} %"
        )
    else:
        keys = [key for key in SAL_KEYS if key in results]
        lines = [
            f"Saliency (protocol {results['protocol']}), {title}",
            *_markdown(keys, [[_cell(results[key]) for key in keys]]),
        ]
    skipped = results.get("skipped_predictions", {}).get("count", 0)
    if skipped:
        lines.append(f"{skipped} predictions without ground truth were skipped")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsss evaluate",
        description="Score a folder of predictions against ground truth (files matched by name without extension).",
    )
    parser.add_argument("--task", choices=("seg", "sal"), required=True, help="segmentation or saliency")
    parser.add_argument("--pred", type=Path, required=True, help="folder of predictions")
    parser.add_argument("--gt", type=Path, required=True, help="folder of ground truth")
    parser.add_argument("--num_classes", type=int, default=None, help="seg: classes incl. background (default 21 VOC)")
    parser.add_argument(
        "--class_names", default=None, help="seg: class names, background first: comma-separated or a file, one a line"
    )
    parser.add_argument(
        "--ids", type=Path, default=None,
        help="score only these ids: a split's list file (plain ids or DeepLab path pairs), e.g. "
        "ImageSets/Segmentation/val.txt",
    )  # fmt: skip
    parser.add_argument(
        "--config", default=None,
        help="take the class names (and, with --split, the ids) from a wsss config's data section",
    )  # fmt: skip
    parser.add_argument("--split", default=None, help="with --config: the split whose ids are scored (e.g. val)")
    parser.add_argument("--data_root", default=None, help="with --config: the dataset root (the config's data.root)")
    parser.add_argument(
        "--protocol", choices=("sod", "ssnet"), default="sod", help="sal: pysodmetrics (sod) or SSNet's jsws (ssnet)"
    )
    parser.add_argument(
        "--resize", action="store_true", help="resize predictions to the GT size (nearest for seg, bilinear for sal)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON to this file")
    return parser


def _names_and_ids(args: argparse.Namespace) -> tuple[list[str] | None, list[str] | None]:
    """Class names and ids from ``--class_names`` / ``--ids``, or from a config's data section (``--config``)."""
    names: list[str] | None = None
    ids = [entry.id for entry in read_id_list(args.ids)] if args.ids is not None else None
    if args.class_names is not None:
        source = Path(args.class_names)
        text = source.read_text(encoding="utf-8") if source.is_file() else args.class_names.replace(",", "\n")
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if args.config is not None:
        from wsss_lightning.cli import data_parser
        from wsss_lightning.config_files import expand_config_args

        parser = data_parser([])
        config_args = expand_config_args(["--config", args.config, "--data.init_args.check", "off"])
        if args.data_root is not None:
            config_args += ["--data.init_args.root", args.data_root]
        datamodule = parser.instantiate(parser.parse_args(config_args))
        names = names or list(datamodule.data.class_names)
        if args.split is not None and ids is None:
            ids = [entry.id for entry in datamodule.data.entries(args.split)]
    if names is not None and args.num_classes is not None and len(names) != args.num_classes:
        raise ValueError(f"{len(names)} class names but --num_classes {args.num_classes}")
    return names, ids


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``wsss evaluate``; returns the exit code (0 success, 2 data error)."""
    args = build_parser().parse_args(argv)
    try:
        names, ids = _names_and_ids(args)
        if args.task == "seg":
            num_classes = len(names) if names is not None else (args.num_classes or 21)
            results = evaluate_segmentation(
                args.pred, args.gt, num_classes, class_names=names, resize=args.resize, ids=ids
            )
        else:
            results = evaluate_saliency(args.pred, args.gt, protocol=args.protocol, resize=args.resize, ids=ids)
    except (DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_DATA_ERROR
    skipped = results["skipped_predictions"]
    if skipped["count"]:
        print(
            f"note: {skipped['count']} predictions in {args.pred} have no ground truth and were skipped, e.g. "
            + ", ".join(skipped["examples"]),
            file=sys.stderr,
        )
    print(format_table(results))
    if args.out is not None:
        atomic_write_bytes(args.out, (json.dumps(results, indent=2) + "\n").encode("utf-8"))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
