"""Fully connected CRF (pydensecrf) for pseudo-labels, saliency and inference, plus a CPU process pool.

``pydensecrf`` (PyPI ``pydensecrf2``) is imported lazily inside the functions, so the rest of the package
works without it. Everything here is numpy-only (no torch import), so pool workers start light.

Presets (ecosystem.md §2.6; Gaussian ``sxy``/``compat``, bilateral ``sxy``/``srgb``/``compat``, iterations):

=====================  =========  ============  =====  ===============================================
name                   Gaussian   bilateral     iters  source
=====================  =========  ============  =====  ===============================================
``auxseg_inference``   4 / 3      83 / 5 / 3    10     AuxSegNet ``tool/imutils.py::crf_inference_inf``
``psa``                3 / 3      80 / 13 / 10  10     PSA ``tool/imutils.py::crf_inference``
``ssnet``              3 / 3      80 / 13 / 10  5      jsws ``syn_stage1.py::one_dcrf``
``auxseg_saliency``    3 / 3      60 / 5 / 5    1      AuxSegNet ``tool/imutils.py::crf_for_sal``
``toco``               1 / 1      121 / 5 / 4   10     ToCo ``tools/infer_seg_voc.py``
``afa``                3 / 3      64 / 5 / 4    10     AFA (author, afa issue #6)
=====================  =========  ============  =====  ===============================================

All kernels are ``DIAG_KERNEL`` with ``NORMALIZE_SYMMETRIC`` (pydensecrf's defaults, and what jsws sets
explicitly).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "CRF_PRESETS",
    "CRFParams",
    "CRFPool",
    "default_num_workers",
    "dense_crf",
    "get_crf_params",
    "saliency_crf",
    "saliency_unary",
]

R = TypeVar("R")

#: Probabilities are clipped to this before ``-log`` (pydensecrf ``unary_from_softmax``'s default).
UNARY_CLIP = 1e-5


@dataclass(frozen=True)
class CRFParams:
    """Pairwise parameters of a 2D dense CRF.

    Attributes:
        gaussian_sxy: spatial std (pixels) of the smoothness kernel.
        gaussian_compat: weight (Potts compatibility) of the smoothness kernel.
        bilateral_sxy: spatial std (pixels) of the appearance kernel.
        bilateral_srgb: colour std (0..255 units) of the appearance kernel.
        bilateral_compat: weight of the appearance kernel.
        iterations: mean-field iterations (0 returns the normalised ``exp(-unary)``).
    """

    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float
    iterations: int

    def __post_init__(self) -> None:
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"CRFParams.{name} must be > 0, got {getattr(self, name)}")
        if int(self.iterations) != self.iterations or self.iterations < 0:
            raise ValueError(f"CRFParams.iterations must be a non-negative integer, got {self.iterations}")


CRF_PRESETS: dict[str, CRFParams] = {
    "auxseg_inference": CRFParams(4, 3, 83, 5, 3, 10),
    "psa": CRFParams(3, 3, 80, 13, 10, 10),
    "ssnet": CRFParams(3, 3, 80, 13, 10, 5),
    "auxseg_saliency": CRFParams(3, 3, 60, 5, 5, 1),
    "toco": CRFParams(1, 1, 121, 5, 4, 10),
    "afa": CRFParams(3, 3, 64, 5, 4, 10),
}


def get_crf_params(name_or_params: str | CRFParams | Mapping[str, Any]) -> CRFParams:
    """Resolve a preset name, a :class:`CRFParams`, or a mapping of its fields (e.g. from a YAML config)."""
    if isinstance(name_or_params, CRFParams):
        return name_or_params
    if isinstance(name_or_params, str):
        try:
            return CRF_PRESETS[name_or_params]
        except KeyError:
            raise ValueError(
                f"unknown CRF preset {name_or_params!r}; choose one of {sorted(CRF_PRESETS)} or pass CRFParams"
            ) from None
    if isinstance(name_or_params, Mapping):
        return CRFParams(**name_or_params)
    raise TypeError(f"expected a preset name, CRFParams or a mapping, got {type(name_or_params).__name__}")


def _import_densecrf() -> ModuleType:
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise ImportError(
            "the dense CRF needs pydensecrf, installed from the 'pydensecrf2' package: `pip install pydensecrf2` "
            "(the PyPI 'pydensecrf' 1.0rc3 does not build on Python >= 3.11)"
        ) from err
    return dcrf


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        # The bilateral kernel's srgb is in 0..255 units and pydensecrf only accepts uint8.
        raise ValueError(f"image must be uint8 (0..255), got {image.dtype}; pass the un-normalised image")
    # pydensecrf takes a writable buffer: a read-only view (e.g. np.asarray(PIL image)) must be copied
    return np.ascontiguousarray(image) if image.flags.writeable else image.copy(order="C")


def _run_crf(image: np.ndarray, unary: np.ndarray, params: CRFParams) -> np.ndarray:
    """Mean-field inference. ``image`` uint8 (H, W, 3) contiguous; ``unary`` (C, H, W) energies. -> (C, H, W)."""
    dcrf = _import_densecrf()
    num_labels, height, width = unary.shape
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(num_labels, -1), dtype=np.float32))
    crf.addPairwiseGaussian(
        sxy=params.gaussian_sxy,
        compat=params.gaussian_compat,
        kernel=dcrf.DIAG_KERNEL,
        normalization=dcrf.NORMALIZE_SYMMETRIC,
    )
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=image,
        compat=params.bilateral_compat,
        kernel=dcrf.DIAG_KERNEL,
        normalization=dcrf.NORMALIZE_SYMMETRIC,
    )
    marginals = crf.inference(int(params.iterations))
    return np.asarray(marginals, dtype=np.float32).reshape(num_labels, height, width)


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    params: str | CRFParams | Mapping[str, Any],
) -> np.ndarray:
    """Dense CRF on class probabilities; returns the mean-field marginals.

    The unary is ``-log(clip(probs, 1e-5, 1))`` (pydensecrf ``unary_from_softmax``), so scores that do not
    sum to 1 are accepted too (PSA feeds ``[(1 - max CAM)^alpha, CAMs]``).

    Args:
        image: uint8 RGB image (H, W, 3), not normalised.
        probs: float (C, H, W) class probabilities (normally summing to 1 over C).
        params: preset name (see :data:`CRF_PRESETS`), :class:`CRFParams` or a mapping of its fields.

    Returns:
        float32 (C, H, W) marginals; each pixel sums to 1.
    """
    resolved = get_crf_params(params)
    image = _check_image(image)
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probs must be (C, H, W) with (H, W) = {image.shape[:2]}, got shape {probs.shape}")
    unary = -np.log(np.clip(probs.astype(np.float32, copy=False), UNARY_CLIP, 1.0))
    return _run_crf(image, unary, resolved)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def saliency_unary(saliency: np.ndarray, tau: float = 1.05, eps: float = 1e-8) -> np.ndarray:
    """AuxSegNet's 2-label saliency unary (``tool/imutils.py::crf_for_sal``).

    ``E_bg = -log(1 - s + eps) / (tau * sigmoid(1 - s))`` and ``E_fg = -log(s + eps) / (tau * sigmoid(s))``.

    Args:
        saliency: float (H, W) in [0, 1].
        tau: temperature (1.05 in the code).
        eps: keeps the log finite at 0 and 1 (1e-8 in the code).

    Returns:
        float32 (2, H, W): channel 0 background energy, channel 1 foreground energy.
    """
    s = np.asarray(saliency, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"saliency must be (H, W), got shape {s.shape}")
    if not np.all(np.isfinite(s)) or s.min(initial=0.0) < 0.0 or s.max(initial=0.0) > 1.0:
        raise ValueError("saliency must be finite and in [0, 1] (divide 8-bit maps by 255)")
    bg = -np.log(1.0 - s + eps) / (tau * _sigmoid(1.0 - s))
    fg = -np.log(s + eps) / (tau * _sigmoid(s))
    return np.stack([bg, fg]).astype(np.float32)


def saliency_crf(
    image: np.ndarray,
    saliency: np.ndarray,
    params: str | CRFParams | Mapping[str, Any] = "auxseg_saliency",
    tau: float = 1.05,
) -> np.ndarray:
    """AuxSegNet saliency refinement: 2-label dense CRF with :func:`saliency_unary`; returns P(salient).

    Args:
        image: uint8 RGB image (H, W, 3).
        saliency: float (H, W) in [0, 1] (AuxSegNet: mean of the model's and the off-the-shelf saliency).
        params: pairwise parameters; default ``CRF_PRESETS["auxseg_saliency"]`` (3/3, 60/5/5, 1 iteration).
        tau: unary temperature.

    Returns:
        float32 (H, W) foreground marginal in [0, 1].
    """
    resolved = get_crf_params(params)
    image = _check_image(image)
    saliency = np.asarray(saliency)
    if saliency.shape != image.shape[:2]:
        raise ValueError(f"saliency must be (H, W) = {image.shape[:2]}, got shape {saliency.shape}")
    return _run_crf(image, saliency_unary(saliency, tau=tau), resolved)[1]


_THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def _limit_worker_threads() -> None:
    """Pool-worker initialiser: one BLAS/OpenMP thread per worker, so N workers use N cores, not N x cores."""
    for var in _THREAD_ENV_VARS:
        os.environ[var] = "1"  # for libraries loaded later in this worker
    try:  # libraries the worker already loaded (e.g. while importing the parent's __main__)
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1)
    except ImportError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


class CRFPool:
    """Run picklable CPU jobs (CRFs, PNG encoding) in worker processes, or inline when ``num_workers == 0``.

    Workers start with ``forkserver`` (``spawn`` where unavailable), never plain ``fork``: forking a parent
    whose torch/OpenMP thread pools are running can deadlock the child. Each worker is limited to one
    BLAS/OpenMP thread. Jobs must be module-level functions with picklable arguments.

    Example::

        with CRFPool(4) as pool:
            for index, marginals in pool.map_unordered(dense_crf, ((img, p, "psa") for img, p in items)):
                ...
    """

    def __init__(self, num_workers: int, start_method: str | None = None) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers = int(num_workers)
        self._closed = False
        self._executor: ProcessPoolExecutor | None = None
        if self.num_workers > 0:
            if start_method is None:
                start_method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            if start_method == "fork":
                raise ValueError("start_method 'fork' can deadlock with torch threads; use 'forkserver' or 'spawn'")
            self._executor = ProcessPoolExecutor(
                max_workers=self.num_workers,
                mp_context=multiprocessing.get_context(start_method),
                initializer=_limit_worker_threads,
            )

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        """Schedule ``fn(*args, **kwargs)``. Inline mode runs it now and returns a finished future."""
        if self._closed:
            raise RuntimeError("CRFPool is closed")
        if self._executor is not None:
            return self._executor.submit(fn, *args, **kwargs)
        future: Future[R] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # same contract as a process pool: the error surfaces at .result()
            future.set_exception(err)
        return future

    def map_unordered(
        self,
        fn: Callable[..., R],
        jobs: Iterable[Sequence[Any]],
        max_pending: int | None = None,
    ) -> Iterator[tuple[int, R]]:
        """Apply ``fn(*job)`` to every job; yield ``(job_index, result)`` in completion order.

        At most ``max_pending`` jobs (default ``2 * num_workers``) are in flight, so a long lazy job stream
        (e.g. 10k images) is never materialised at once. Inline mode yields in order, one job at a time.
        The first failing job raises here.
        """
        if self._executor is None:
            for index, job in enumerate(jobs):
                yield index, self.submit(fn, *job).result()
            return
        limit = max_pending if max_pending is not None else 2 * self.num_workers
        if limit < 1:
            raise ValueError(f"max_pending must be >= 1, got {limit}")
        pending: dict[Future[R], int] = {}
        for index, job in enumerate(jobs):
            pending[self.submit(fn, *job)] = index
            if len(pending) >= limit:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield pending.pop(future), future.result()

    def close(self, cancel_pending: bool = False) -> None:
        """Wait for running jobs and stop the workers (idempotent)."""
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=cancel_pending)
            self._executor = None

    def __enter__(self) -> CRFPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(cancel_pending=exc is not None)


def default_num_workers() -> int:
    """CPU workers for CRF jobs: the cores this process may use, minus one for the parent (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)
