"""The one dense CRF object of a run: a backend plus the parameter sets of its three uses.

A WSSS run uses a fully connected CRF in three places, each with its own preset (``pseudo/crf.py``):

* ``inference`` — the ``*_crf`` evaluation modes of ``wsss test`` / ``validate`` / ``predict`` (AuxSegNet:
  ``auxseg_inference``; SSNet: ``ssnet``);
* ``saliency`` — AuxSegNet's saliency update between stages (``auxseg_saliency``, 2 labels, temperature
  ``saliency_tau``); ``None`` fuses the saliency without a CRF;
* ``labels`` — SSNet's pseudo-label synthesis on the augmented copies (``ssnet``).

The method module holds one :class:`DenseCRF` (``model.init_args.crf`` in a config) and hands it to whatever
needs it: the inference modes, the label jobs of a refresh and ``wsss pseudolabel``. Two backends:

* :class:`PydenseCRF` (default): pydensecrf on the CPU, numpy in and out. ``runs_in_pool``: label jobs carry it to
  the CRF worker processes, overlapping the next forward pass.
* :class:`TorchCRF`: the permutohedral-lattice CRF of ``pseudo/crf_torch.py`` on the tensors' device (GPU or CPU),
  equal to pydensecrf to ~1e-8 on our presets. Label jobs call it in the main process before handing the results
  to the writer pool; on CUDA the ``*_batch`` methods filter a whole batch through one lattice (``batch_images``).

Configure::

    model:
      init_args:
        crf:
          class_path: wsss_lightning.pseudo.dense_crf.TorchCRF
          init_args: {inference: auxseg_inference, saliency: auxseg_saliency}
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from wsss_lightning.pseudo.crf import CRFParams, dense_crf, get_crf_params, saliency_crf

__all__ = ["DenseCRF", "PydenseCRF", "TorchCRF", "default_crf"]

Preset = str | CRFParams


def _resolve(preset: Preset | None) -> CRFParams | None:
    # jsonargparse hands ``--...labels null`` on the command line to ``str | CRFParams | None`` as the string "None"
    if preset is None or (isinstance(preset, str) and preset.strip().lower() in ("none", "null")):
        return None
    return get_crf_params(preset)


class DenseCRF(ABC):
    """A dense CRF backend with the parameter sets of the pipeline's three uses.

    Args:
        inference: preset of the ``*_crf`` evaluation modes.
        saliency: preset of the AuxSegNet saliency update, or ``None`` for no saliency CRF.
        labels: preset of SSNet's label synthesis, or ``None`` for a plain argmax.
        saliency_tau: temperature of the 2-label saliency unary (AuxSegNet: 1.05).
    """

    #: True: run in CPU worker processes on numpy arrays (picklable, no torch state); False: in the main process.
    runs_in_pool: ClassVar[bool] = True

    def __init__(
        self,
        inference: Preset = "auxseg_inference",
        saliency: Preset | None = "auxseg_saliency",
        labels: Preset | None = "ssnet",
        saliency_tau: float = 1.05,
    ) -> None:
        self.inference = get_crf_params(inference)
        self.saliency = _resolve(saliency)
        self.labels = _resolve(labels)
        self.saliency_tau = float(saliency_tau)

    # ---------------------------------------------------------------------------------- the backend

    @abstractmethod
    def marginals(self, image: Any, probs: Any, params: CRFParams) -> Any:
        """Mean-field marginals ``(C, H, W)`` of class probabilities ``(C, H, W)`` on a uint8 ``(H, W, 3)`` image."""

    @abstractmethod
    def saliency_marginal(self, image: Any, saliency: Any, params: CRFParams, tau: float) -> Any:
        """Foreground marginal ``(H, W)`` in [0, 1] of a saliency map ``(H, W)`` in [0, 1]."""

    # ---------------------------------------------------------------------------------- the three uses

    def refine_inference(self, image: Any, probs: Any) -> Any:
        """``inference`` preset: marginals of a predicted probability map (evaluation ``*_crf`` modes)."""
        return self.marginals(image, probs, self.inference)

    def refine_saliency(self, image: Any, saliency: Any) -> Any:
        """``saliency`` preset (AuxSegNet saliency update); the map itself when there is no saliency CRF."""
        if self.saliency is None:
            return saliency
        return self.saliency_marginal(image, saliency, self.saliency, self.saliency_tau)

    def refine_inference_batch(self, images: Sequence[Any], probs: Sequence[Any]) -> list[Any]:
        """:meth:`refine_inference` of several images (sizes may differ): a loop here; a device backend
        overrides it to filter the batch at once. Same results as the loop."""
        _check_lengths(images, probs, "probability maps")
        return [self.refine_inference(image, p) for image, p in zip(images, probs, strict=True)]

    def refine_saliency_batch(self, images: Sequence[Any], saliencies: Sequence[Any]) -> list[Any]:
        """:meth:`refine_saliency` of several images (sizes may differ); a loop here, batched by a device
        backend. Same results as the loop."""
        _check_lengths(images, saliencies, "saliency maps")
        return [self.refine_saliency(image, s) for image, s in zip(images, saliencies, strict=True)]

    def refine_labels(self, image: Any, probs: Any) -> Any:
        """``labels`` preset (SSNet label synthesis); the probabilities themselves without one."""
        return probs if self.labels is None else self.marginals(image, probs, self.labels)

    def describe(self) -> dict[str, Any]:
        """What determines the CRF's output (part of a label set's config hash)."""

        def fields(params: CRFParams | None) -> dict[str, float] | None:
            return None if params is None else dict(vars(params))

        return {
            "backend": type(self).__name__,
            "inference": fields(self.inference),
            "saliency": fields(self.saliency),
            "labels": fields(self.labels),
            "saliency_tau": self.saliency_tau,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class PydenseCRF(DenseCRF):
    """pydensecrf (``pydensecrf2``) on the CPU: numpy in, numpy out; run inside the CRF worker pool."""

    runs_in_pool = True

    def marginals(self, image: Any, probs: Any, params: CRFParams) -> np.ndarray:
        return dense_crf(_numpy(image), _numpy(probs), params)

    def saliency_marginal(self, image: Any, saliency: Any, params: CRFParams, tau: float) -> np.ndarray:
        return saliency_crf(_numpy(image), _numpy(saliency), params, tau)


class TorchCRF(DenseCRF):
    """The torch CRF (``pseudo/crf_torch.py``) on the device of its inputs: tensors in, tensors out (numpy in,
    numpy out). Call it in the main process, where the model's tensors are.

    Args:
        batch_images: how the ``*_batch`` methods (a refresh batch's saliency CRF, the ``*_crf`` modes of an eval
            batch) run: ``True`` filters the batch through one bilateral lattice (each image size's spatial lattice is
            cached either way), ``False`` one image at a time, ``None`` (default) batches on CUDA only. On a CPU one
            lattice for 4 images of 500x375 measured 0.5-0.8x the images/s of the loop (the larger working set
            leaves the caches: docs/benchmarks.md); on a GPU batching saves the per-image kernel launches (to be
            measured: ``benchmarks/crf_torch.py --device cuda --batch 4``). Results equal the loop's to ~1e-5.
        **presets: see :class:`DenseCRF`.
    """

    runs_in_pool = False

    def __init__(
        self,
        inference: Preset = "auxseg_inference",
        saliency: Preset | None = "auxseg_saliency",
        labels: Preset | None = "ssnet",
        saliency_tau: float = 1.05,
        batch_images: bool | None = None,
    ) -> None:
        super().__init__(inference, saliency, labels, saliency_tau)
        self.batch_images = batch_images

    def _batches(self, x: Any) -> bool:
        if self.batch_images is not None:
            return self.batch_images
        return getattr(getattr(x, "device", None), "type", "cpu") == "cuda"

    def marginals(self, image: Any, probs: Any, params: CRFParams) -> Any:
        from wsss_lightning.pseudo.crf_torch import dense_crf_torch

        with _float32(probs):
            return dense_crf_torch(image, probs, params)

    def saliency_marginal(self, image: Any, saliency: Any, params: CRFParams, tau: float) -> Any:
        from wsss_lightning.pseudo.crf_torch import saliency_crf_torch

        with _float32(saliency):
            return saliency_crf_torch(image, saliency, params, tau)

    def refine_inference_batch(self, images: Sequence[Any], probs: Sequence[Any]) -> list[Any]:
        """The whole batch in one CRF (``dense_crf_torch_batch``) when batching, else the loop."""
        from wsss_lightning.pseudo.crf_torch import dense_crf_torch_batch

        if not probs or not self._batches(probs[0]):
            return super().refine_inference_batch(images, probs)
        with _float32(probs[0]):
            return dense_crf_torch_batch(images, probs, self.inference)

    def refine_saliency_batch(self, images: Sequence[Any], saliencies: Sequence[Any]) -> list[Any]:
        """The whole batch in one CRF (``saliency_crf_torch_batch``) when batching, else the loop."""
        from wsss_lightning.pseudo.crf_torch import saliency_crf_torch_batch

        if self.saliency is None or not saliencies or not self._batches(saliencies[0]):
            return super().refine_saliency_batch(images, saliencies)  # the loop (the maps as they are without a preset)
        with _float32(saliencies[0]):
            return saliency_crf_torch_batch(images, saliencies, self.saliency, self.saliency_tau)


def _check_lengths(images: Sequence[Any], maps: Sequence[Any], what: str) -> None:
    if len(images) != len(maps):
        raise ValueError(f"got {len(images)} images but {len(maps)} {what}")


def _float32(x: Any) -> Any:
    """Autocast off on ``x``'s device: the lattice filtering is float32 maths even inside a bf16 refresh."""
    import torch

    device = x.device.type if isinstance(x, torch.Tensor) else "cpu"
    return torch.autocast(device_type=device, enabled=False)


def _numpy(x: Any) -> np.ndarray:
    """numpy view of an array or a tensor (torch is not imported here: CRF pool workers start light)."""
    return np.asarray(x) if isinstance(x, np.ndarray) or not hasattr(x, "detach") else x.detach().cpu().numpy()


def default_crf(
    crf: DenseCRF | None, inference: Preset = "auxseg_inference", labels: Preset | None = "ssnet"
) -> DenseCRF:
    """``crf`` itself, or a :class:`PydenseCRF` with a method's default presets when none is configured."""
    return crf if crf is not None else PydenseCRF(inference=inference, labels=labels)
