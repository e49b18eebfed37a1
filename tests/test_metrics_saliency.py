"""SaliencyMetrics against pysodmetrics ("sod") and a numpy transcription of jsws evaluate_sal.py ("ssnet")."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from wsss_lightning.metrics import SaliencyMetrics

py_sod_metrics = pytest.importorskip("py_sod_metrics")

SOD_KEYS = ("maxF", "meanF", "adpF", "MAE", "Sm", "maxE", "meanE", "adpE")
EPS = np.finfo(float).eps


def pysod_scores(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, float]:
    """The reference: pysodmetrics' Fmeasure, MAE, Smeasure, Emeasure, reported as examples/test_metrics.py does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure's deprecation notice
        fm, mae, sm, em = (py_sod_metrics.Fmeasure(), py_sod_metrics.MAE(), py_sod_metrics.Smeasure(),
                           py_sod_metrics.Emeasure())  # fmt: skip
        for pred, gt in zip(preds, gts):
            for metric in (fm, mae, sm, em):
                metric.step(pred=pred, gt=gt)
    f, e = fm.get_results()["fm"], em.get_results()["em"]
    return {
        "maxF": f["curve"].max(),
        "meanF": f["curve"].mean(),
        "adpF": f["adp"],
        "MAE": mae.get_results()["mae"],
        "Sm": sm.get_results()["sm"],
        "maxE": e["curve"].max(),
        "meanE": e["curve"].mean(),
        "adpE": e["adp"],
    }


def ours(preds, gts, protocol: str = "sod") -> dict[str, float]:
    metric = SaliencyMetrics(protocol=protocol)
    metric.update(preds, gts)
    return {key: float(value) for key, value in metric.compute().items()}


def convert(pred: np.ndarray, kind: str) -> np.ndarray | torch.Tensor:
    """``kind="float"``: a uint8 map as float64 grey level / 255, which takes the pixel-by-pixel path instead of
    the uint8 histogram path."""
    return pred if kind == "uint8" else torch.from_numpy(pred).double() / 255


def assert_close_to_pysod(preds: list[np.ndarray], gts: list[np.ndarray], kind: str = "uint8") -> None:
    expected = pysod_scores(preds, gts)
    got = ours([convert(pred, kind) for pred in preds], gts)
    assert list(got) == list(SOD_KEYS)
    for key in SOD_KEYS:
        assert np.isfinite(expected[key]), key
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


def blob_gt(height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return np.where((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2, 255, 0).astype(np.uint8)


def structured_pair(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A disc GT and a noisy, shifted soft version of it as prediction (uint8 both)."""
    gt = blob_gt(height, width, rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width, min(height, width) / 4)
    shifted = np.roll(gt.astype(np.float64), (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    pred = np.clip(0.6 * shifted + rng.normal(40, 30, gt.shape), 0, 255).astype(np.uint8)
    return pred, gt


# ---------------------------------------------------------------------------------------------------- "sod"


@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_random_maps_of_different_sizes_match_pysodmetrics(kind: str) -> None:
    rng = np.random.default_rng(0)
    preds, gts = [], []
    for height, width in [(9, 13), (17, 11), (24, 31), (5, 8), (12, 12)]:
        preds.append(rng.integers(0, 256, (height, width), dtype=np.uint8))
        gts.append(np.where(rng.random((height, width)) < rng.uniform(0.2, 0.6), 255, 0).astype(np.uint8))
    preds.append(structured_pair(rng, 30, 40)[0])
    gts.append(structured_pair(rng, 30, 40)[1])
    assert_close_to_pysod(preds, gts, kind)


def test_batch_tensor_equals_list_and_pysodmetrics() -> None:
    rng = np.random.default_rng(1)
    pairs = [structured_pair(rng, 20, 27) for _ in range(4)]
    preds, gts = [p for p, _ in pairs], [g for _, g in pairs]
    batch = ours(torch.from_numpy(np.stack(preds)), torch.from_numpy(np.stack(gts)))
    listed = ours([torch.from_numpy(p) for p in preds], [torch.from_numpy(g) for g in gts])
    expected = pysod_scores(preds, gts)
    for key in SOD_KEYS:
        assert batch[key] == pytest.approx(listed[key], abs=1e-12)
        assert batch[key] == pytest.approx(expected[key], abs=1e-6)


def _edge_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(2)
    blob = blob_gt(16, 21, 7.3, 10.2, 5)  # every S-measure quadrant holds GT fg and bg
    noise = rng.integers(0, 256, (16, 21), dtype=np.uint8)
    return {
        "all_black_gt": (noise, np.zeros_like(noise)),
        "all_white_gt": (noise, np.full_like(noise, 255)),
        "all_black_gt_const_pred": (np.full((6, 7), 90, np.uint8), np.zeros((6, 7), np.uint8)),
        "all_white_gt_const_pred": (np.full((6, 7), 90, np.uint8), np.full((6, 7), 255, np.uint8)),
        "const_pred_0": (np.zeros_like(blob), blob),
        "const_pred_255": (np.full_like(blob, 255), blob),
        "const_pred_mid": (np.full_like(blob, 128), blob),
        "binary_pred": (blob_gt(16, 21, 8, 9, 4), blob),
        "perfect_pred": (blob, blob),
        "inverted_pred": (255 - blob, blob),
        "gt_threshold_128": (noise, np.where(noise > 100, 128, 129).astype(np.uint8)),  # 128 is background
        "tiny_1x1_fg": (np.array([[37]], np.uint8), np.array([[255]], np.uint8)),
        "tiny_1x1_bg": (np.array([[37]], np.uint8), np.array([[0]], np.uint8)),
        "tiny_3x3": (np.array([[0, 50, 90], [10, 255, 40], [5, 60, 30]], np.uint8), blob_gt(3, 3, 1, 1, 0)),
        "odd_7x5": (rng.integers(0, 256, (7, 5), dtype=np.uint8), blob_gt(7, 5, 3, 2, 1.5)),
        "odd_13x17": structured_pair(rng, 13, 17),
    }


@pytest.mark.parametrize("kind", ["uint8", "float"])
@pytest.mark.parametrize("case", list(_edge_cases()))
def test_edge_cases_match_pysodmetrics(case: str, kind: str) -> None:
    pred, gt = _edge_cases()[case]
    assert_close_to_pysod([pred], [gt], kind)


def test_hand_values_for_degenerate_maps() -> None:
    blob = blob_gt(16, 21, 7.3, 10.2, 5)
    fg = (blob > 128).mean()
    perfect = ours(blob, blob)
    assert perfect["maxF"] == pytest.approx(1.0) and perfect["MAE"] == 0.0 and perfect["Sm"] == pytest.approx(1.0)
    black = ours(np.zeros_like(blob), blob)  # constant 0: nothing predicted at any threshold but t = 0
    assert black["MAE"] == pytest.approx(fg)
    # at t = 0 every pixel is foreground: P = fg share, R = 1; the other 255 thresholds give F = 0
    assert black["maxF"] == pytest.approx(1.3 * fg / (0.3 * fg + 1))
    assert black["meanF"] == pytest.approx(black["maxF"] / 256)


def test_float_and_bool_inputs_equal_uint8() -> None:
    rng = np.random.default_rng(3)
    pred, gt = structured_pair(rng, 18, 25)
    reference = ours(pred, gt)
    as_float = ours(torch.from_numpy(pred).double() / 255, torch.from_numpy(gt > 128))
    as_float32_mask = ours(torch.from_numpy(pred).double() / 255, torch.from_numpy(gt > 128).float())
    for key in SOD_KEYS:
        assert as_float[key] == pytest.approx(reference[key], abs=1e-12)
        assert as_float32_mask[key] == pytest.approx(reference[key], abs=1e-12)


@pytest.mark.parametrize("protocol", ["sod", "ssnet"])
def test_float_grey_level_targets_follow_the_uint8_rule(protocol: str) -> None:
    # Soft GT edges: 128 is background for "sod" (> 128), 1 is foreground for "ssnet" (!= 0); a float32 v / 255
    # mask must give the same result as the uint8 mask it came from.
    rng = np.random.default_rng(9)
    pred = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    gt = rng.choice(np.array([0, 1, 127, 128, 129, 255], np.uint8), size=(10, 12))
    as_uint8 = ours(pred, gt, protocol)
    as_float32 = ours(pred, torch.from_numpy(gt).float() / 255, protocol)
    assert as_float32 == as_uint8


def test_curves_match_pysodmetrics_reversed() -> None:
    rng = np.random.default_rng(4)
    pairs = [structured_pair(rng, 15, 19) for _ in range(3)]
    metric = SaliencyMetrics()
    for pred, gt in pairs:
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
    curves = {key: value.numpy() for key, value in metric.curves().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fm, em = py_sod_metrics.Fmeasure(), py_sod_metrics.Emeasure()
        for pred, gt in pairs:
            fm.step(pred, gt)
            em.step(pred, gt)
    # pysodmetrics orders its curves from threshold 255 down to 0; ours ascend.
    np.testing.assert_allclose(curves["precision"], fm.get_results()["pr"]["p"][::-1], atol=1e-12)
    np.testing.assert_allclose(curves["recall"], fm.get_results()["pr"]["r"][::-1], atol=1e-12)
    np.testing.assert_allclose(curves["fmeasure"], fm.get_results()["fm"]["curve"][::-1], atol=1e-12)
    np.testing.assert_allclose(curves["emeasure"], em.get_results()["em"]["curve"][::-1], atol=1e-12)
    np.testing.assert_allclose(curves["thresholds"], np.arange(256) / 255)


@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_empty_quadrant_contributes_zero_where_pysodmetrics_gives_nan(kind: str) -> None:
    # GT in the last column: centroid column rounds to W - 1, so the split column is W and the right quadrants
    # are empty. pysodmetrics averages NaN into Sm there; we take the two non-empty quadrants.
    pred = np.array([[0, 255], [0, 255]], np.uint8)
    gt = np.array([[0, 255], [0, 255]], np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(pysod_scores([pred], [gt])["Sm"])
    assert ours(convert(pred, kind), gt)["Sm"] == pytest.approx(1.0)  # a perfect prediction

    pred = np.array([[0, 200, 255], [100, 50, 180]], np.uint8)
    gt = np.array([[0, 0, 255], [0, 0, 255]], np.uint8)
    reference = py_sod_metrics.Smeasure()
    p, g = pred / 255.0, gt > 128  # min 0, max 255: min-max is the identity
    # centroid (0.5, 2) -> rounded (0, 2) -> split at row 1, column 3 = W: top-left is row 0, bottom-left row 1
    region = reference.ssim(p[0:1, :], g[0:1, :]) * 3 / 6 + reference.ssim(p[1:2, :], g[1:2, :]) * 3 / 6
    expected = 0.5 * reference.object(p, g) + 0.5 * region
    assert ours(convert(pred, kind), gt)["Sm"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_uniform_gt_and_constant_prediction_quadrant_scores_one(kind: str) -> None:
    # Left half of a 12x20 GT is foreground; the prediction is a constant 128. Centroid (5.5, 4.5) rounds half to
    # even to (6, 4) -> split at row 7, column 5: top-left (7x5 = 35 px, all fg) and bottom-left (5x5, all fg)
    # have uniform GT and a constant prediction, SSIM 0/0 -> 1 (35 summed copies of 128/255 do not divide back to
    # 128/255 exactly, hence the exact-mean rule); the right quadrants hold fg and bg, SSIM 0. (pysodmetrics 1.6.2
    # gives 0.452 here: numpy's rounded mean scores the top-left quadrant 0 and the bottom-left one 1.)
    gt = np.zeros((12, 20), np.uint8)
    gt[:, :10] = 255
    c = 128 / 255
    region = 1.0 * (7 * 5 / 240) + 0.0 * (7 * 15 / 240) + 1.0 * (5 * 5 / 240) + 0.0 * (5 * 15 / 240)
    object_score = 0.5 * (2 * c / (c**2 + 1 + EPS)) + 0.5 * (2 * (1 - c) / ((1 - c) ** 2 + 1 + EPS))
    pred = convert(np.full((12, 20), 128, np.uint8), kind)
    assert ours(pred, gt)["Sm"] == pytest.approx(0.5 * object_score + 0.5 * region)


@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_constant_prediction_on_uniform_gt_right_quadrants_scores_one(kind: str) -> None:
    # GT: right half foreground -> centroid (5.5, 14.5) rounds to (6, 14) -> split at row 7, column 15. The right
    # quadrants are all foreground with a constant prediction (SSIM 1); the left ones are mixed and noisy (SSIM from
    # pysodmetrics' own helper). Seed 1 with level 37 is a case where a rounding-sensitive implementation of the
    # centred sums gets a tiny non-zero variance on the right and scores those quadrants 0.
    height, width, cy, cx = 12, 20, 7, 15
    gt = np.zeros((height, width), np.uint8)
    gt[:, 10:] = 255
    pred = np.full((height, width), 37, np.uint8)
    pred[:, :10] = np.random.default_rng(1).integers(0, 256, (height, 10))
    reference = py_sod_metrics.Smeasure()
    p, g = (pred / 255 - pred.min() / 255) / (pred.max() / 255 - pred.min() / 255), gt > 128  # prepare_data
    left = (
        reference.ssim(p[:cy, :cx], g[:cy, :cx]) * cy * cx
        + reference.ssim(p[cy:, :cx], g[cy:, :cx]) * (height - cy) * cx
    )
    region = (left + 1.0 * cy * (width - cx) + 1.0 * (height - cy) * (width - cx)) / (height * width)
    expected = 0.5 * reference.object(p, g) + 0.5 * region
    assert ours(convert(pred, kind), gt)["Sm"] == pytest.approx(expected, abs=1e-12)


# -------------------------------------------------------------------------------------------------- "ssnet"


def jsws_reference(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, float]:
    """docs/method_notes.md §4.3 in numpy: per-image min-max (+eps), GT != 0, 21 thresholds, F of image-mean P and R."""
    precisions, recalls, adaptive, maes = [], [], [], []
    for pred, gt in zip(preds, gts):
        s = pred.astype(np.float64)
        s = (s - s.min()) / (s.max() - s.min() + EPS)
        g = (gt != 0).astype(np.float64)
        maes.append(np.abs(g - s).mean())
        th = min(2 * s.mean(), 1.0)
        b = (s >= th).astype(np.float64)
        pre, rec = (b * g).sum() / (b.sum() + EPS), (b * g).sum() / (g.sum() + EPS)
        adaptive.append(1.3 * pre * rec / (0.3 * pre + rec + EPS))
        ps, rs = [], []
        for t in np.linspace(0, 1, 21):
            b = (s >= t).astype(np.float64)
            ps.append((b * g).sum() / (b.sum() + EPS))
            rs.append((b * g).sum() / (g.sum() + EPS))
        precisions.append(ps)
        recalls.append(rs)
    p, r = np.mean(precisions, axis=0), np.mean(recalls, axis=0)
    f = 1.3 * p * r / (0.3 * p + r + EPS)
    return {"maxF": f.max(), "meanF": f.mean(), "adpF": np.mean(adaptive), "MAE": np.mean(maes)}


def test_ssnet_protocol_matches_jsws_reference() -> None:
    rng = np.random.default_rng(5)
    preds, gts = [], []
    for height, width in [(11, 14), (20, 9), (16, 16)]:
        pred, gt = structured_pair(rng, height, width)
        preds.append(pred)
        gts.append(np.where(gt > 0, rng.integers(1, 256, gt.shape), 0).astype(np.uint8))  # any non-zero is fg
    preds.append(np.full((8, 10), 77, np.uint8))  # constant map -> all zeros after (p - min) / (0 + eps)
    gts.append(blob_gt(8, 10, 4, 5, 2))
    preds.append(np.arange(255, -1, -1, dtype=np.uint8).reshape(16, 16))  # hits every threshold exactly
    gts.append(blob_gt(16, 16, 3, 4, 5))
    got = ours(preds, gts, protocol="ssnet")
    expected = jsws_reference(preds, gts)
    assert list(got) == ["maxF", "meanF", "adpF", "MAE"]
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


def test_ssnet_curves_and_float_input() -> None:
    rng = np.random.default_rng(6)
    pred, gt = structured_pair(rng, 12, 15)
    metric = SaliencyMetrics(protocol="ssnet")
    metric.update(torch.from_numpy(pred).float() / 255, torch.from_numpy(gt > 0))
    curves = metric.curves()
    np.testing.assert_array_equal(curves["thresholds"].numpy(), np.linspace(0, 1, 21))
    assert float(curves["fmeasure"].max()) == pytest.approx(jsws_reference([pred], [gt])["maxF"], abs=1e-6)


# --------------------------------------------------------------------------------------- reduction, errors


@pytest.mark.parametrize("protocol", ["sod", "ssnet"])
def test_merge_state_equals_one_metric_on_all_data(protocol: str) -> None:
    rng = np.random.default_rng(7)
    pairs = [structured_pair(rng, int(rng.integers(8, 20)), int(rng.integers(8, 20))) for _ in range(6)]
    whole, first, second = (SaliencyMetrics(protocol=protocol) for _ in range(3))
    for index, (pred, gt) in enumerate(pairs):
        whole.update(pred, gt)
        (first if index < 3 else second).update(pred, gt)
    first.merge_state(second)
    merged, expected = first.compute(), whole.compute()
    for key, value in expected.items():
        assert float(merged[key]) == pytest.approx(float(value), abs=1e-12), key
    assert int(first.num_images) == 6


def test_no_update_gives_nan_and_bad_inputs_raise() -> None:
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert all(np.isnan(float(v)) for v in SaliencyMetrics().compute().values())
    metric = SaliencyMetrics()
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(4, 5, dtype=torch.uint8), torch.zeros(5, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric.update(torch.full((3, 3), 2.0), torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="ambiguous"):
        metric.update(torch.zeros(3, 3, dtype=torch.uint8), torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="protocol"):
        SaliencyMetrics(protocol="matlab")  # type: ignore[arg-type]
    assert int(metric.num_images) == 0
