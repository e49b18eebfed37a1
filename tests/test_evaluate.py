"""`wsss evaluate` on tiny folders: numbers against a hand confusion matrix / pysodmetrics, exit codes, messages."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss_lightning.data.io import write_grey_png, write_palette_png
from wsss_lightning.evaluate import EvaluationError, evaluate_saliency, evaluate_segmentation, format_table, main
from wsss_lightning.metrics import SaliencyMetrics

py_sod_metrics = pytest.importorskip("py_sod_metrics")

# Same data as tests/test_metrics_segmentation.py: IoU 0.4, 0.6, 0.5 (classes 0, 1, 2), mIoU 0.5.
GT_A = np.array([[0, 0, 1, 1], [2, 2, 255, 0]], np.uint8)
PRED_A = np.array([[0, 1, 1, 1], [2, 0, 2, 255]], np.uint8)
GT_B = np.array([[1, 2, 2, 0]], np.uint8)
PRED_B = np.array([[1, 2, 1, 0]], np.uint8)


def seg_folders(tmp_path: Path) -> tuple[Path, Path]:
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    write_palette_png(gt_dir / "a.png", GT_A)
    write_palette_png(gt_dir / "b.png", GT_B)
    write_palette_png(pred_dir / "a.png", PRED_A)
    Image.fromarray(PRED_B, mode="L").save(pred_dir / "b.bmp")  # any extension, grey indices
    return pred_dir, gt_dir


def test_segmentation_numbers_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = seg_folders(tmp_path)
    write_palette_png(pred_dir / "extra.png", PRED_B)  # no GT: reported and skipped
    out = tmp_path / "res" / "seg.json"
    code = main(
        ["--task", "seg", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num_classes", "3", "--out", str(out)]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "1 predictions" in captured.err and "extra" in captured.err
    assert "| mIoU" in captured.out and "50.00" in captured.out and "background" in captured.out
    results = json.loads(out.read_text())
    assert results["IoU"] == pytest.approx({"background": 0.4, "class_1": 0.6, "class_2": 0.5})
    assert results["mIoU"] == pytest.approx(0.5)
    assert results["pixel_accuracy"] == pytest.approx(7 / 11)
    assert results["num_images"] == 2 and results["num_classes"] == 3 and results["task"] == "seg"
    assert results["pred_dir"] == str(pred_dir.resolve()) and results["gt_dir"] == str(gt_dir.resolve())
    assert "confusion matrix" in results["protocol"]
    assert results["skipped_predictions"] == {"count": 1, "examples": ["extra"]}


def test_segmentation_absent_class_is_null_and_voc_names(tmp_path: Path) -> None:
    pred_dir, gt_dir = seg_folders(tmp_path)
    results = evaluate_segmentation(pred_dir, gt_dir, num_classes=21, progress=False)
    assert results["IoU"]["background"] == pytest.approx(0.4)
    assert results["IoU"]["aeroplane"] == pytest.approx(0.6) and results["IoU"]["bicycle"] == pytest.approx(0.5)
    assert results["IoU"]["tvmonitor"] is None  # absent from GT and predictions: excluded from the mean
    assert results["mIoU"] == pytest.approx(0.5)
    assert "n/a" in format_table(results)


def test_missing_prediction_exit_code_and_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = seg_folders(tmp_path)
    for index in range(7):
        write_palette_png(gt_dir / f"extra_{index}.png", GT_B)
    code = main(["--task", "seg", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num_classes", "3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "7 of 9 ground-truth files have no prediction" in err
    assert str(gt_dir / "extra_0.png") in err and "... and 2 more" in err


def test_size_mismatch_is_an_error_unless_resize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = seg_folders(tmp_path)
    big = np.repeat(np.repeat(PRED_B, 2, axis=0), 2, axis=1)  # 2x8 instead of 1x4
    write_palette_png(pred_dir / "b.png", big)
    (pred_dir / "b.bmp").unlink()
    argv = ["--task", "seg", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num_classes", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "1 of 2 predictions differ in size" in err and "--resize" in err
    assert f"{pred_dir / 'b.png'} is 2x8, {gt_dir / 'b.png'} is 1x4" in err
    assert main([*argv, "--resize"]) == 0  # nearest resize of a 2x upsampled map restores it exactly
    assert "50.00" in capsys.readouterr().out


def test_invalid_gt_value_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = seg_folders(tmp_path)
    write_palette_png(gt_dir / "b.png", np.array([[1, 9, 2, 0]], np.uint8))
    assert main(["--task", "seg", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num_classes", "3"]) == 2
    err = capsys.readouterr().err
    assert str(gt_dir / "b.png") in err and "[9]" in err


def saliency_arrays() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    preds, gts = [], []
    for height, width in [(12, 17), (20, 15), (9, 9)]:
        yy, xx = np.mgrid[:height, :width]
        gt = np.where((yy - height / 2) ** 2 + (xx - width / 2.2) ** 2 < (min(height, width) / 3) ** 2, 255, 0)
        pred = np.clip(0.7 * gt + rng.normal(50, 40, gt.shape), 0, 255)
        preds.append(pred.astype(np.uint8))
        gts.append(gt.astype(np.uint8))
    return preds, gts


def test_saliency_numbers_match_pysodmetrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preds, gts = saliency_arrays()
    for index, (pred, gt) in enumerate(zip(preds, gts)):
        write_grey_png(tmp_path / "pred" / f"im{index}.png", pred)
        write_grey_png(tmp_path / "gt" / f"im{index}.png", gt)
    out = tmp_path / "sal.json"
    argv = ["--task", "sal", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out", str(out)]
    assert main(argv) == 0
    assert "| maxF" in capsys.readouterr().out
    results = json.loads(out.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fm, mae, sm, em = (
            py_sod_metrics.Fmeasure(),
            py_sod_metrics.MAE(),
            py_sod_metrics.Smeasure(),
            py_sod_metrics.Emeasure(),
        )
        for pred, gt in zip(preds, gts):
            for metric in (fm, mae, sm, em):
                metric.step(pred, gt)
    f, e = fm.get_results()["fm"], em.get_results()["em"]
    assert results["maxF"] == pytest.approx(f["curve"].max(), abs=1e-6)
    assert results["meanF"] == pytest.approx(f["curve"].mean(), abs=1e-6)
    assert results["adpF"] == pytest.approx(f["adp"], abs=1e-6)
    assert results["MAE"] == pytest.approx(mae.get_results()["mae"], abs=1e-6)
    assert results["Sm"] == pytest.approx(sm.get_results()["sm"], abs=1e-6)
    assert results["maxE"] == pytest.approx(e["curve"].max(), abs=1e-6)
    assert results["adpE"] == pytest.approx(e["adp"], abs=1e-6)
    assert (
        results["protocol"] == "sod"
        and results["num_images"] == 3
        and "pysodmetrics" in results["protocol_description"]
    )


def test_saliency_resize_is_bilinear_and_ssnet_protocol(tmp_path: Path) -> None:
    preds, gts = saliency_arrays()
    for index, (pred, gt) in enumerate(zip(preds, gts)):
        write_grey_png(tmp_path / "gt" / f"im{index}.png", gt)
        width, height = pred.shape[1] * 2, pred.shape[0] + 3
        write_grey_png(tmp_path / "pred" / f"im{index}.png", np.asarray(Image.fromarray(pred).resize((width, height))))
    with pytest.raises(EvaluationError, match="differ in size"):
        evaluate_saliency(tmp_path / "pred", tmp_path / "gt", progress=False)
    results = evaluate_saliency(tmp_path / "pred", tmp_path / "gt", protocol="ssnet", resize=True, progress=False)
    assert set(results) >= {"maxF", "meanF", "adpF", "MAE"} and "Sm" not in results
    # the same numbers as the metric on the PIL-bilinear-resized maps
    metric = SaliencyMetrics(protocol="ssnet")
    for index, gt in enumerate(gts):
        stored = np.asarray(Image.open(tmp_path / "pred" / f"im{index}.png"))
        resized = np.asarray(Image.fromarray(stored).resize(gt.shape[::-1], Image.Resampling.BILINEAR))
        metric.update(resized, gt)
    for key, value in metric.compute().items():
        assert results[key] == pytest.approx(float(value), abs=1e-12)
