"""Dense CRF wrappers, presets and the CPU pool (wsss_lightning/pseudo/crf.py)."""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import numpy as np
import pytest

from wsss_lightning.pseudo.crf import (
    CRF_PRESETS,
    CRFParams,
    CRFPool,
    dense_crf,
    get_crf_params,
    saliency_crf,
    saliency_unary,
)
from wsss_lightning.pseudo.dense_crf import PydenseCRF

dcrf = pytest.importorskip("pydensecrf.densecrf")

SIZE = 32


def _two_region_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dark left half / bright right half; noisy P(right) with ~20% of pixels on the wrong side of 0.5."""
    rng = np.random.default_rng(seed)
    image = np.full((SIZE, SIZE, 3), 30, np.uint8)
    image[:, SIZE // 2 :] = 200
    truth = np.zeros((SIZE, SIZE), np.int64)
    truth[:, SIZE // 2 :] = 1
    p_fg = np.clip(np.where(truth == 1, 0.7, 0.3) + rng.uniform(-0.35, 0.35, truth.shape), 0.01, 0.99)
    return image, truth, p_fg


def test_presets_are_the_table_rows() -> None:
    as_rows = {name: dataclasses.astuple(p) for name, p in CRF_PRESETS.items()}
    assert as_rows == {
        "auxseg_inference": (4, 3, 83, 5, 3, 10),
        "psa": (3, 3, 80, 13, 10, 10),
        "ssnet": (3, 3, 80, 13, 10, 5),
        "auxseg_saliency": (3, 3, 60, 5, 5, 1),
        "toco": (1, 1, 121, 5, 4, 10),
        "afa": (3, 3, 64, 5, 4, 10),
    }


def test_get_crf_params() -> None:
    assert get_crf_params("psa") is CRF_PRESETS["psa"]
    custom = CRFParams(2, 1, 50, 5, 10, 3)
    assert get_crf_params(custom) is custom
    assert get_crf_params(dataclasses.asdict(custom)) == custom
    with pytest.raises(ValueError, match="unknown CRF preset"):
        get_crf_params("deeplab")
    with pytest.raises(ValueError, match="iterations"):
        CRFParams(3, 3, 80, 13, 10, -1)


def test_dense_crf_returns_distributions_and_sharpens() -> None:
    image, truth, p_fg = _two_region_scene()
    probs = np.stack([1 - p_fg, p_fg]).astype(np.float32)
    before = (probs.argmax(0) == truth).mean()
    for name in ("psa", "auxseg_inference", "ssnet"):
        q = dense_crf(image, probs, name)
        assert q.dtype == np.float32 and q.shape == (2, SIZE, SIZE)
        np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)
        after = (q.argmax(0) == truth).mean()
        assert before < 0.85 and after > 0.99, (name, before, after)


def test_dense_crf_matches_pydensecrf_recipe() -> None:
    # The PSA / AuxSegNet recipe written with pydensecrf's own helpers is the reference.
    from pydensecrf.utils import unary_from_softmax

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(4), size=(12, 16)).transpose(2, 0, 1).astype(np.float32)
    crf = dcrf.DenseCRF2D(16, 12, 4)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=4, compat=3)
    crf.addPairwiseBilateral(sxy=83, srgb=5, rgbim=np.copy(image), compat=3)
    expected = np.array(crf.inference(10)).reshape(4, 12, 16)
    np.testing.assert_allclose(dense_crf(image, probs, "auxseg_inference"), expected, rtol=1e-6, atol=1e-7)


def test_dense_crf_zero_iterations_is_the_clipped_unary() -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=(4, 5)).transpose(2, 0, 1).astype(np.float32)
    probs[:, 0, 0] = [0.0, 0.25, 0.75]  # a zero is clipped to 1e-5 before -log
    image = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    q = dense_crf(image, probs, dataclasses.replace(CRF_PRESETS["psa"], iterations=0))
    clipped = np.clip(probs, 1e-5, 1.0)
    np.testing.assert_allclose(q, clipped / clipped.sum(0), atol=1e-6)


def test_dense_crf_input_errors() -> None:
    image, _, p_fg = _two_region_scene()
    probs = np.stack([1 - p_fg, p_fg])
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), probs, "psa")
    with pytest.raises(ValueError, match="probs"):
        dense_crf(image, probs[:, :-1], "psa")


def test_saliency_unary_by_hand() -> None:
    sal = np.array([[0.0, 0.5, 1.0, 0.25]])
    u = saliency_unary(sal)
    assert u.dtype == np.float32 and u.shape == (2, 1, 4)

    def sig(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x))

    for j, s in enumerate([0.0, 0.5, 1.0, 0.25]):
        bg = -math.log(1.0 - s + 1e-8) / (1.05 * sig(1.0 - s))
        fg = -math.log(s + 1e-8) / (1.05 * sig(s))
        assert u[0, 0, j] == pytest.approx(bg, rel=1e-6, abs=1e-7)
        assert u[1, 0, j] == pytest.approx(fg, rel=1e-6, abs=1e-7)
    # s = 0: E_fg = -ln(1e-8) / (1.05 * 0.5) = 18.4207 / 0.525 = 35.087; E_bg ~ 0. Mirror image at s = 1.
    assert u[1, 0, 0] == pytest.approx(35.0870, abs=1e-3) and abs(u[0, 0, 0]) < 1e-6
    assert u[0, 0, 2] == pytest.approx(35.0870, abs=1e-3) and abs(u[1, 0, 2]) < 1e-6
    # s = 0.5: both energies ln 2 / (1.05 * sigmoid(0.5)) = 0.693147 / 0.653582 = 1.060535.
    assert u[0, 0, 1] == pytest.approx(1.060535, abs=1e-5) and u[1, 0, 1] == pytest.approx(1.060535, abs=1e-5)
    # tau scales both energies by 1 / tau.
    np.testing.assert_allclose(saliency_unary(sal, tau=2.1), u / 2, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        saliency_unary(np.array([[0.5, 255.0]]))


def test_saliency_crf_cleans_noisy_saliency() -> None:
    image, truth, p_fg = _two_region_scene(seed=2)
    out = saliency_crf(image, p_fg)
    assert out.dtype == np.float32 and out.shape == (SIZE, SIZE)
    assert out.min() >= 0.0 and out.max() <= 1.0
    mae_before = np.abs(p_fg - truth).mean()
    mae_after = np.abs(out - truth).mean()
    assert mae_after < 0.5 * mae_before, (mae_before, mae_after)


def test_saliency_crf_matches_official_recipe() -> None:
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
    sal = rng.uniform(0, 1, (10, 14))
    # crf_for_sal, written with pydensecrf directly (its defaults are DIAG_KERNEL + NORMALIZE_SYMMETRIC).
    crf = dcrf.DenseCRF2D(14, 10, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(saliency_unary(sal).reshape(2, -1)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=60, srgb=5, rgbim=np.copy(image), compat=5)
    expected = np.array(crf.inference(1)).astype(np.float32)[1].reshape(10, 14)
    np.testing.assert_allclose(saliency_crf(image, sal), expected, rtol=1e-6, atol=1e-7)


def test_missing_pydensecrf_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    image, _, p_fg = _two_region_scene()
    with pytest.raises(ImportError, match="pydensecrf2"):
        dense_crf(image, np.stack([1 - p_fg, p_fg]), "psa")


def _jobs() -> list[tuple[np.ndarray, np.ndarray, str]]:
    jobs = []
    for seed in range(3):
        image, _, p_fg = _two_region_scene(seed)
        jobs.append((image, np.stack([1 - p_fg, p_fg]).astype(np.float32), "psa"))
    return jobs


def test_crf_pool_inline_and_process_agree() -> None:
    jobs = _jobs()
    with CRFPool(0) as inline:
        first = inline.submit(dense_crf, *jobs[0]).result()
        inline_results = dict(inline.map_unordered(dense_crf, jobs))
        failed = inline.submit(dense_crf, jobs[0][0], jobs[0][1][:, :-1], "psa")
        assert isinstance(failed.exception(), ValueError)

    with CRFPool(1) as pool:
        pooled_first = pool.submit(dense_crf, *jobs[0]).result()
        pooled_results = dict(pool.map_unordered(dense_crf, jobs, max_pending=2))
        assert pool.submit(os.getenv, "OMP_NUM_THREADS").result() == "1"
        with pytest.raises(ValueError, match="probs"):
            pool.submit(dense_crf, jobs[0][0], jobs[0][1][:, :-1], "psa").result()

    np.testing.assert_array_equal(first, pooled_first)
    assert sorted(inline_results) == sorted(pooled_results) == [0, 1, 2]
    for index in range(3):
        np.testing.assert_array_equal(inline_results[index], pooled_results[index])
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(dense_crf, *jobs[0])


def test_crf_pool_rejects_fork() -> None:
    with pytest.raises(ValueError, match="fork"):
        CRFPool(1, start_method="fork")
    with pytest.raises(ValueError, match="num_workers"):
        CRFPool(-1)


def test_read_only_image_is_accepted() -> None:
    """``np.asarray(PIL image)`` is read-only; pydensecrf needs a writable buffer, so the CRF copies it."""
    image = np.zeros((6, 8, 3), np.uint8)
    image[:, 4:] = 200
    image.flags.writeable = False
    probs = np.full((2, 6, 8), 0.5, np.float32)
    probs[1, :, 4:], probs[0, :, 4:] = 0.9, 0.1
    out = dense_crf(image, probs, "auxseg_inference")
    assert out.shape == (2, 6, 8) and np.allclose(out.sum(0), 1.0, atol=1e-5)


def test_null_preset_from_the_command_line_means_no_crf() -> None:
    """``--model.init_args.crf.init_args.labels null`` reaches the backend as the string "None": no CRF, no error."""
    for spelling in (None, "None", "null", " NULL "):
        crf = PydenseCRF(inference="ssnet", saliency=spelling, labels=spelling)
        assert crf.labels is None and crf.saliency is None
    assert PydenseCRF(labels="ssnet").labels == CRF_PRESETS["ssnet"]
    with pytest.raises(ValueError, match="nonexistent"):
        PydenseCRF(labels="nonexistent")
