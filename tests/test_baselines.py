"""``wsss data baselines`` on a hand-made two-image VOC root: every number computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsss_lightning.data.baselines import (
    compare_to_bar,
    compute_baselines,
    confusion_matrix,
    iou_scores,
    label_free_bar,
    labels_saliency_prediction,
    main,
    oracle_prediction,
    saliency_max_f,
)
from wsss_lightning.data.io import DatasetError, write_grey_png, write_palette_png
from wsss_lightning.data.palette import VOC_CLASSES

# Image "a": classes aeroplane (1) and bird (3); the XML lists bird first, but the "first listed class" of the
# image label (a multi-hot vector) is the lowest index, aeroplane. Pixel (1, 1) is the 255 band.
GT_A = np.array([[0, 3, 3, 1], [0, 255, 1, 1]], dtype=np.uint8)
SAL_A = np.array([[200, 200, 100, 255], [0, 255, 255, 20]], dtype=np.uint8)
# Image "b": bicycle (2) only.
GT_B = np.array([[2, 2, 0], [0, 0, 0]], dtype=np.uint8)
SAL_B = np.array([[255, 0, 0], [255, 0, 0]], dtype=np.uint8)


def _xml(*names: str) -> str:
    objects = "".join(f"<object><name>{n}</name><difficult>0</difficult></object>" for n in names)
    return f"<annotation><filename>x.jpg</filename>{objects}</annotation>"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A VOC-layout root with two images: split lists, palette GT, XML annotations, grey saliency maps."""
    (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("a\nb\n")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations/a.xml").write_text(_xml("bird", "aeroplane", "bird"))
    (tmp_path / "Annotations/b.xml").write_text(_xml("bicycle"))
    for name, gt, sal in (("a", GT_A, SAL_A), ("b", GT_B, SAL_B)):
        write_palette_png(tmp_path / "SegmentationClass" / f"{name}.png", gt)
        write_grey_png(tmp_path / "saliency_map" / f"{name}.png", sal)
    return tmp_path


def test_predictions_by_hand() -> None:
    np.testing.assert_array_equal(
        labels_saliency_prediction(SAL_A, [1, 3], 0.5), [[1, 1, 0, 1], [0, 1, 1, 0]]
    )  # > 127.5
    np.testing.assert_array_equal(labels_saliency_prediction(SAL_A, [1, 3], 0.3), [[1, 1, 1, 1], [0, 1, 1, 0]])
    np.testing.assert_array_equal(labels_saliency_prediction(SAL_A, [1, 3], 0.06), [[1, 1, 1, 1], [0, 1, 1, 1]])
    assert not labels_saliency_prediction(SAL_A, [], 0.5).any()  # no class: all background
    # the oracle: salient GT-class pixels keep their class, salient background gets the first class
    np.testing.assert_array_equal(oracle_prediction(SAL_A, GT_A, [1, 3], 0.5), [[1, 3, 0, 1], [0, 1, 1, 0]])
    np.testing.assert_array_equal(oracle_prediction(SAL_B, GT_B, [2], 0.5), [[2, 0, 0], [2, 0, 0]])


def test_confusion_and_iou_by_hand() -> None:
    confmat = confusion_matrix(np.array([[1, 1], [0, 0]]), np.array([[1, 255], [1, 0]]), 3)
    np.testing.assert_array_equal(confmat, [[1, 0, 0], [1, 1, 0], [0, 0, 0]])  # 255 skipped
    scores = iou_scores(confmat)
    assert scores["IoU"] == [pytest.approx(0.5), pytest.approx(0.5), None]  # class 2 absent: excluded
    assert scores["mIoU"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([[255]]), np.array([[0]]), 3)


def test_saliency_max_f_by_hand() -> None:
    # a: fg levels {200, 100, 255, 255, 20}, bg {200, 0} (the band pixel is left out); best threshold ~20:
    # P = 5/6, R = 1, F = 1.3 * 5/6 / (0.25 + 1) = 13/15. b at any threshold in (0, 255]: P = R = 1/2, F = 1/2.
    assert saliency_max_f([SAL_A, SAL_B], [GT_A, GT_B]) == pytest.approx((13 / 15 + 1 / 2) / 2)
    perfect = np.where((GT_A > 0) & (GT_A < 255), 255, 0).astype(np.uint8)
    assert saliency_max_f([perfect], [GT_A]) == pytest.approx(1.0)


def test_compute_baselines_by_hand(root: Path) -> None:
    results = compute_baselines(root, "val", "saliency_map")
    assert results["num_images"] == 2 and results["thresholds"] == [0.5, 0.3, 0.06]
    # all background: 6 GT-background pixels of 13 valid ones; classes 1-3 score 0 -> (6/13) / 4
    assert results["all_background"]["mIoU"] == pytest.approx(6 / 13 / 4)
    # labels + saliency > 0.5: confusion rows gt0 [4,1,1,0], gt1 [1,2,0,0], gt2 [1,0,1,0], gt3 [1,1,0,0]
    naive = results["labels_saliency"]["0.5"]
    assert naive["IoU"][:4] == [pytest.approx(v) for v in (4 / 9, 2 / 5, 1 / 3, 0.0)]
    assert naive["IoU"][4:] == [None] * 17 and naive["mIoU"] == pytest.approx(53 / 180)
    # the oracle moves the bird pixel (0, 1) from aeroplane to bird: IoU 4/9, 1/2, 1/3, 1/2
    assert results["oracle"]["0.5"]["mIoU"] == pytest.approx(4 / 9)
    assert results["saliency_maxF"] == pytest.approx((13 / 15 + 1 / 2) / 2)
    # labels from the masks give the same classes here
    assert compute_baselines(root, label_source="masks")["labels_saliency"] == results["labels_saliency"]


def test_the_bar_is_the_best_threshold_and_scores_nothing_else(root: Path) -> None:
    bar = label_free_bar(root, "val", root / "saliency_map", root / "SegmentationClass", VOC_CLASSES)
    # > 0.3 (76.5): a's (1, 3) (level 20) turns background; b as at 0.5. Rows gt0 [4,1,1,0], gt1 [1,2,0,0],
    # gt2 [1,0,1,0], gt3 [0,2,0,0]: IoU 1/2, 1/3, 1/3, 0 = 7/24. > 0.06 (15.3): (1, 3) is aeroplane again, rows
    # gt0 [4,1,1,0], gt1 [0,3,0,0], gt2 [1,0,1,0], gt3 [0,2,0,0]: IoU 4/7, 1/2, 1/3, 0 = 59/168, the best
    assert bar["by_threshold"] == {
        "0.5": pytest.approx(53 / 180), "0.3": pytest.approx(7 / 24), "0.06": pytest.approx(59 / 168)
    }  # fmt: skip
    assert bar["threshold"] == 0.06 and bar["mIoU"] == pytest.approx(59 / 168)
    assert bar["num_images"] == 2 and bar["split"] == "val" and bar["all_background"] == pytest.approx(6 / 13 / 4)
    lean = compute_baselines(root, "val", "saliency_map", bounds=False)
    assert "oracle" not in lean and "saliency_maxF" not in lean
    (root / "saliency_map/b.png").unlink()
    with pytest.raises(DatasetError, match="1 of the 2 ids of split val have no saliency map"):
        label_free_bar(root, "val", root / "saliency_map", root / "SegmentationClass", VOC_CLASSES)


def test_compare_to_bar_sets_each_mode_against_it_and_shouts_when_none_clears_it() -> None:
    bar = {"split": "val", "num_images": 2, "threshold": 0.06, "mIoU": 0.35}
    line, warning = compare_to_bar({"ss": {"mIoU": 0.30}, "ms_crf": {"mIoU": 0.3625}}, bar)
    assert "no-training bar on split 'val' (2 images)" in line and "saliency > 0.06" in line and "= 35.00 mIoU" in line
    assert "ss 30.00 (-5.00)   ms_crf 36.25 (+1.25)" in line
    assert warning is None
    _, warning = compare_to_bar({"ss": {"mIoU": 0.30}, "ms": {"mIoU": 0.34}}, bar)
    assert warning is not None and warning.startswith("NO TEST MODE BEATS THE NO-TRAINING BAR on split 'val'")
    assert "the best, ms 34.00 mIoU, is 1.00 points below" in warning
    _, tie = compare_to_bar({"ss": {"mIoU": 0.35}}, bar)
    assert tie is not None  # level with the bar is not above it


def test_cli_writes_json_and_reports_errors(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "baselines.json"
    assert main(["--root", str(root), "--split", "val", "--thresholds", "0.5", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| labels + saliency, first class | > 0.5 | 29.44 |" in printed and "maxF" in printed
    assert json.loads(out.read_text())["oracle"]["0.5"]["mIoU"] == pytest.approx(4 / 9)
    write_grey_png(root / "saliency_map/b.png", np.zeros((5, 5), np.uint8))
    assert main(["--root", str(root)]) == 2
    assert "saliency_map/b.png" in capsys.readouterr().err
    (root / "saliency_map/b.png").unlink()  # maps that cover other ids: one line naming the count and the fix
    assert main(["--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "1 of the 2 ids of split val have no saliency map" in err and "saliency_map/b.png" in err
    assert "--split train" in err


def test_saliency_max_f_matches_the_sod_metric_without_a_band() -> None:
    """Without 255 pixels the maxF is pysodmetrics' (the package's ``SaliencyMetrics(protocol="sod")``)."""
    from wsss_lightning.metrics.saliency import SaliencyMetrics

    rng = np.random.default_rng(0)
    maps, labels = [], []
    for _ in range(4):
        label = np.zeros((30, 40), np.uint8)
        label[rng.integers(0, 15) :, rng.integers(0, 20) : 35] = rng.integers(1, 21)
        maps.append(np.clip(rng.normal(60 + 120 * (label > 0), 50), 0, 255).astype(np.uint8))
        labels.append(label)
    metric = SaliencyMetrics(protocol="sod")
    metric.update(maps, [np.where(label > 0, 255, 0).astype(np.uint8) for label in labels])
    assert saliency_max_f(maps, labels) == pytest.approx(float(metric.compute()["maxF"]), abs=1e-12)


def test_wsss_test_reports_the_bar_or_says_why_not(
    root: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from wsss_lightning.data.datamodule import WSSSDataModule
    from wsss_lightning.trainer import WSSSTrainer

    logged: list[dict] = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append(metrics), save=lambda: None)
    monkeypatch.chdir(root.parent)  # a relative --data.root, as `make demo` passes it
    datamodule = WSSSDataModule(root=root.name, saliency_dir="saliency_map", val_split="val")
    trainer = SimpleNamespace(datamodule=datamodule, loggers=[logger], global_step=7)
    results: dict = {"segmentation": {"val": {"ss": {"mIoU": 0.30}, "ms": {"mIoU": 0.36}}}}
    WSSSTrainer._report_bar(trainer, results)  # type: ignore[arg-type]
    assert results["bar"]["val"]["mIoU"] == pytest.approx(59 / 168)
    assert logged == [{"test/bar/mIoU": pytest.approx(59 / 168)}]
    assert "test: ss 30.00 (-5.12)   ms 36.00 (+0.88)" in capsys.readouterr().out
    (root / "saliency_map/b.png").unlink()  # maps of the training ids only: not scored, and the reason
    results = {"segmentation": {"val": {"ss": {"mIoU": 0.30}}}}
    WSSSTrainer._report_bar(trainer, results)  # type: ignore[arg-type]
    printed = capsys.readouterr().out
    assert "no-training bar on split 'val': not scored (1 of the 2 ids of split val have no saliency map" in printed
    assert "wsss data baselines --split" in printed and "bar" not in results
    no_maps = SimpleNamespace(datamodule=WSSSDataModule(root=str(root), saliency_dir=None), loggers=[], global_step=0)
    WSSSTrainer._report_bar(no_maps, results)  # type: ignore[arg-type]
    assert "not scored (no off-the-shelf saliency maps configured)" in capsys.readouterr().out
