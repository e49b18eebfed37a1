"""CPU jobs that turn model outputs into pseudo-label files (run in worker processes; pure numpy).

Each job writes its files atomically under the set's folder and returns ``{"name", "files": {rel: sha256},
"stats": [...]}`` for the manifest (``stats``: the :func:`~wsss_lightning.pseudo.health.label_statistics` of each
label map the entry wrote). Jobs are plain dataclasses so they pickle to workers cheaply.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsss_lightning.data.io import atomic_write_bytes, grey_png_bytes, palette_png_bytes
from wsss_lightning.data.working_size import resize_labels, resize_scores
from wsss_lightning.pseudo.dense_crf import DenseCRF
from wsss_lightning.pseudo.fusion import CAM_THRESHOLD, SALIENCY_THRESHOLD, fuse_peak_saliency
from wsss_lightning.pseudo.health import label_statistics
from wsss_lightning.pseudo.label_set import LabelKind, relative_path


def _write(out_dir: Path, kind: LabelKind, name: str, data: bytes) -> tuple[str, str]:
    relative = relative_path(kind, name)
    atomic_write_bytes(out_dir / relative, data)
    return relative, hashlib.sha256(data).hexdigest()


@dataclass
class FusionJob:
    """AuxSegNet pseudo-label: optional saliency CRF, then CAM + saliency fusion (method_notes §2.7–2.8).

    Attributes:
        name: image id.
        out_dir: the set's folder (``seg/`` and ``sal/`` are written below it).
        peak: ``float32 (H, W)`` max over the present classes of the (propagated) CAM, in [0, 1].
        peak_class: ``uint8 (H, W)`` argmax foreground index (0..K-1).
        saliency: ``float32 (H, W)`` in [0, 1]: the off-the-shelf map (initial labels) or
            (saliency prediction + off-the-shelf map) / 2 (label update).
        image: ``uint8 (H, W, 3)`` for the saliency CRF (None without CRF).
        crf: the run's CRF, whose ``refine_saliency`` runs here (a pool CRF), or None to fuse the saliency as is
            (initial labels, §2.7; or a device CRF that already ran in the main process).
        write_saliency: also write the (CRF-refined) saliency as the next stage's saliency pseudo-label.
        classes: the image-level classes (1..C-1), for the label's health statistics.
        full_size: ``(H, W)`` of the image file when the maps above are at a smaller working resolution
            (``data/working_size.py``): the (CRF-refined) saliency and the CAM peak are upsampled bilinearly, the
            peak class by nearest neighbour, and the label is fused and written at the file's size.
    """

    name: str
    out_dir: str
    peak: np.ndarray
    peak_class: np.ndarray
    saliency: np.ndarray
    image: np.ndarray | None = None
    crf: DenseCRF | None = None
    cam_threshold: float = CAM_THRESHOLD
    saliency_threshold: float = SALIENCY_THRESHOLD
    write_saliency: bool = False
    classes: tuple[int, ...] = ()
    full_size: tuple[int, int] | None = None


def run_fusion_job(job: FusionJob) -> dict:
    saliency = job.saliency.astype(np.float32)
    if job.crf is not None:
        if job.image is None:
            raise ValueError(f"{job.name}: the saliency CRF needs the image")
        saliency = np.asarray(job.crf.refine_saliency(job.image, np.clip(saliency, 0.0, 1.0)), dtype=np.float32)
    peak, peak_class = job.peak, job.peak_class
    if job.full_size is not None and tuple(job.full_size) != saliency.shape:
        size = (int(job.full_size[0]), int(job.full_size[1]))
        saliency = np.clip(resize_scores(saliency, size), 0.0, 1.0)
        peak, peak_class = resize_scores(peak, size), resize_labels(peak_class, size)
    label = fuse_peak_saliency(peak, peak_class, saliency, job.cam_threshold, job.saliency_threshold)
    out_dir = Path(job.out_dir)
    files = dict([_write(out_dir, "seg", job.name, palette_png_bytes(label))])
    if job.write_saliency:
        rel, digest = _write(out_dir, "sal", job.name, grey_png_bytes(np.clip(saliency, 0.0, 1.0)))
        files[rel] = digest
    return {"name": job.name, "files": files, "stats": [label_statistics(label, job.classes)]}


@dataclass
class CRFLabelJob:
    """SSNet pseudo-label: dense CRF on class-masked probabilities, argmax (method_notes §1.5).

    Attributes:
        name: output name (``<id>_<t>`` for the t-th augmented copy).
        out_dir: the set's folder (``seg/`` and, with ``save_image``, ``images/``).
        probs: ``float32 (C, H, W)`` class probabilities (absent classes already masked).
        image: ``uint8 (H, W, 3)`` the (augmented) image the probabilities belong to.
        crf: the run's CRF, whose ``refine_labels`` runs here (a pool CRF), or None for a plain argmax (also when
            a device CRF already refined ``probs`` in the main process).
        save_image: write the image too (SSNet stage 2 trains on the augmented copies).
        gt: ``uint8 (H, W)`` ground truth warped with the copy's geometry, written as ``gt/<name>.png`` so the
            copy's label can be scored (None: not written).
        classes: the image-level classes (1..C-1), for the label's health statistics.
    """

    name: str
    out_dir: str
    probs: np.ndarray
    image: np.ndarray
    crf: DenseCRF | None = None
    save_image: bool = True
    gt: np.ndarray | None = None
    classes: tuple[int, ...] = ()


def run_crf_label_job(job: CRFLabelJob) -> dict:
    probs = np.asarray(job.crf.refine_labels(job.image, job.probs)) if job.crf is not None else job.probs
    label = probs.argmax(0).astype(np.uint8)
    out_dir = Path(job.out_dir)
    files = dict([_write(out_dir, "seg", job.name, palette_png_bytes(label))])
    if job.save_image:
        from PIL import Image

        from wsss_lightning.data.io import encode_png

        rel, digest = _write(out_dir, "images", job.name, encode_png(Image.fromarray(job.image, mode="RGB")))
        files[rel] = digest
    if job.gt is not None:
        rel, digest = _write(out_dir, "gt", job.name, palette_png_bytes(job.gt.astype(np.uint8)))
        files[rel] = digest
    return {"name": job.name, "files": files, "stats": [label_statistics(label, job.classes)]}


@dataclass
class LabelJobGroup:
    """Several jobs recorded as ONE manifest entry ``name`` (SSNet: the copies ``<id>_<t>`` of training id ``<id>``).

    The manifest, resume and the set's expected names stay keyed by training id: an id counts as written
    only when all of its jobs are.
    """

    name: str
    jobs: list[CRFLabelJob]


def run_label_job_group(group: LabelJobGroup) -> dict:
    files: dict[str, str] = {}
    stats: list[dict[str, int]] = []
    for job in group.jobs:
        result = run_label_job(job)
        files.update(result["files"])
        stats.extend(result["stats"])  # every copy counts as one labelled image
    return {"name": group.name, "files": files, "stats": stats}


def run_label_job(job: FusionJob | CRFLabelJob | LabelJobGroup) -> dict:
    """Run any label job (the function handed to the worker pool)."""
    if isinstance(job, FusionJob):
        return run_fusion_job(job)
    if isinstance(job, CRFLabelJob):
        return run_crf_label_job(job)
    if isinstance(job, LabelJobGroup):
        return run_label_job_group(job)
    raise TypeError(f"unknown label job {type(job).__name__}")
