"""Health of a pseudo-label set: is the pipeline learning, or training on empty / degenerate labels?

A WSSS run can go through every step and still learn nothing: a classifier whose CAM never fires for the
images' own classes gives labels with no foreground, and the stages then train on background only. These
figures say so after every label set (the initial one after the warm-up and every refresh):

Label figures (from the label maps written, one count per image; pure numpy, computed in the CPU jobs):

* ``empty_label_fraction``: images whose label holds no foreground pixel (1..C-1);
* ``missing_class_fraction``: (image, image-level class) pairs with no pixel of that class;
* ``ignored_fraction``: pixels labelled 255 (uncertain);
* ``background_fraction``: labelled (not 255) pixels that are background;
* ``full_label_fraction``: images whose labelled pixels are almost all foreground (under 1 % background): the
  saliency maps are bright everywhere (inverted, or a threshold below their background level).

CAM figures (from the model, per (image, present class) pair):

* ``cam_empty_fraction``: pairs whose CAM is zero everywhere after the ReLU (the classifier never fires).

Affinity figures (from the pairwise affinity ``A`` that propagates the CAMs, ``N`` positions, rows sum to ~1):

* ``affinity_row_peak``: mean over rows of ``max_j A(i, j) · N`` — 1 for uniform rows (an affinity that has not
  learned), up to ``N`` for one-hot rows;
* ``affinity_background_mass``: mean over background rows (CAM below threshold) of the mass they put on CAM
  foreground positions, ``Σ_{j ∈ fg} A(i, j)`` — how much propagation leaks foreground into background;
* ``affinity_row_spread``: mean over rows of the total-variation distance between a row and the mean row,
  ``½ Σ_j |A(i, j) − Ā(j)|`` in [0, 1] — 0 when every row is the same (e.g. the image mean).

:class:`HealthPolicy` turns the figures into a verdict: by default a degenerate set stops the run with the cause
and the fix (:class:`DegenerateLabelsError`); ``action="warn"`` only warns.

Across sets (where the labels are scored against ground truth): :meth:`HealthPolicy.trend` warns when a set's
``pseudo_mIoU`` falls more than ``max_label_drop`` below the previous set's (the network learning from its own
mistakes), and :func:`label_trajectory` is the one line a run ends with (``49.3 -> 52.8 -> 55.1``), loud when the
labels did not improve over the stages. A dip warns and never stops: single updates dip on healthy runs too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np

__all__ = [
    "DegenerateLabelsError",
    "HealthCounts",
    "HealthPolicy",
    "HEALTH_LOG_KEYS",
    "label_statistics",
    "label_trajectory",
]

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
#: a label whose labelled pixels are less than this fraction background counts as "full" (no background)
FULL_LABEL_BACKGROUND = 0.01

#: summary key -> logged metric name
HEALTH_LOG_KEYS: dict[str, str] = {
    "empty_label_fraction": "pseudo/empty_label_fraction",
    "missing_class_fraction": "pseudo/missing_class_fraction",
    "cam_empty_fraction": "pseudo/cam_empty_fraction",
    "label_ignored_fraction": "pseudo/label_ignored_fraction",
    "label_background_fraction": "pseudo/label_background_fraction",
    "full_label_fraction": "pseudo/full_label_fraction",
    "affinity_row_peak": "pseudo/affinity_row_peak",
    "affinity_background_mass": "pseudo/affinity_background_mass",
    "affinity_row_spread": "pseudo/affinity_row_spread",
}


class DegenerateLabelsError(RuntimeError):
    """A pseudo-label set is degenerate (no foreground, dead CAMs, an affinity that has not learned)."""


def label_statistics(label: np.ndarray, classes: Iterable[int], ignore_index: int = IGNORE_INDEX) -> dict[str, int]:
    """Counts of one label map for :class:`HealthCounts`.

    Args:
        label: ``uint8 (H, W)`` class indices, 0 background, ``ignore_index`` uncertain.
        classes: the image-level classes (indices 1..C-1) the label should contain.

    Returns:
        ``pixels``, ``ignored_pixels``, ``background_pixels``, ``empty`` (1 when no foreground pixel), ``full``
        (1 when some pixels are labelled and under :data:`FULL_LABEL_BACKGROUND` of them are background),
        ``classes`` (number of image classes) and ``missing_classes`` (image classes with no pixel).
    """
    label = np.asarray(label)
    counts = np.bincount(label.ravel(), minlength=256)
    present = counts > 0
    wanted = sorted({int(c) for c in classes})
    foreground = present[1:ignore_index].any() if ignore_index > 1 else False
    ignored = int(counts[ignore_index])
    labelled = int(label.size) - ignored
    background = int(counts[0])
    return {
        "pixels": int(label.size),
        "ignored_pixels": ignored,
        "background_pixels": background,
        "empty": int(not foreground),
        "full": int(labelled > 0 and background < FULL_LABEL_BACKGROUND * labelled),
        "classes": len(wanted),
        "missing_classes": sum(1 for c in wanted if not present[c]),
    }


@dataclass
class HealthCounts:
    """Sums over the images of a set (add per image, merge across ranks with :meth:`merge` / tensors).

    The affinity sums hold, per image, the mean over its rows, so the summaries are means over images.
    """

    images: int = 0
    empty_images: int = 0
    image_classes: int = 0
    missing_classes: int = 0
    pixels: int = 0
    ignored_pixels: int = 0
    background_pixels: int = 0
    full_images: int = 0
    # labelled pixels and images whose statistics carry the background figures (older manifests lack them)
    background_known_pixels: int = 0
    background_known_images: int = 0
    cam_classes: int = 0
    cam_empty: int = 0
    affinity_images: int = 0
    row_peak: float = 0.0
    row_spread: float = 0.0
    background_mass_images: int = 0
    background_mass: float = 0.0

    def add_label(self, stats: Mapping[str, int]) -> None:
        """Add the :func:`label_statistics` of one label map."""
        self.images += 1
        self.empty_images += int(stats["empty"])
        self.image_classes += int(stats["classes"])
        self.missing_classes += int(stats["missing_classes"])
        self.pixels += int(stats["pixels"])
        self.ignored_pixels += int(stats["ignored_pixels"])
        if "background_pixels" in stats:  # absent from the manifests of runs before these figures: unknown
            self.background_pixels += int(stats["background_pixels"])
            self.full_images += int(stats["full"])
            self.background_known_pixels += int(stats["pixels"]) - int(stats["ignored_pixels"])
            self.background_known_images += 1

    def add_cam(self, peaks: Sequence[float], threshold: float = 0.5) -> None:
        """Add the peaks of the max-normalised CAMs of one image's present classes.

        A max-normalised channel peaks at ``max / (max + 1e-5)``: below ``threshold`` (0.5) its raw CAM was zero
        everywhere after the ReLU (or below 1e-5), i.e. the classifier never fired for that class.
        """
        self.cam_classes += len(peaks)
        self.cam_empty += sum(1 for p in peaks if not p >= threshold)

    def add_affinity(self, row_peak: float, row_spread: float, background_mass: float | None) -> None:
        """Add one image's affinity figures (``background_mass`` None when it has no fg or no bg rows)."""
        self.affinity_images += 1
        self.row_peak += float(row_peak)
        self.row_spread += float(row_spread)
        if background_mass is not None:
            self.background_mass_images += 1
            self.background_mass += float(background_mass)

    def merge(self, other: HealthCounts) -> HealthCounts:
        return HealthCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def to_list(self) -> list[float]:
        """The counts as floats in field order (for an all-reduce across ranks)."""
        return [float(getattr(self, f.name)) for f in fields(self)]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> HealthCounts:
        defaults = cls()
        names = [f.name for f in fields(cls)]
        # the field's default tells its type (int counts, float sums of means)
        return cls(
            **{
                n: type(getattr(defaults, n))(v if isinstance(getattr(defaults, n), float) else round(v))
                for n, v in zip(names, values)
            }
        )

    def summary(self) -> dict[str, float]:
        """The figures of the module docstring; a figure without data is absent."""
        out: dict[str, float] = {}
        if self.images:
            out["empty_label_fraction"] = self.empty_images / self.images
        if self.image_classes:
            out["missing_class_fraction"] = self.missing_classes / self.image_classes
        if self.pixels:
            out["label_ignored_fraction"] = self.ignored_pixels / self.pixels
        # over the images whose statistics carry them (all of a set written by this version)
        if self.background_known_pixels:
            out["label_background_fraction"] = self.background_pixels / self.background_known_pixels
        if self.background_known_images:
            out["full_label_fraction"] = self.full_images / self.background_known_images
        if self.cam_classes:
            out["cam_empty_fraction"] = self.cam_empty / self.cam_classes
        if self.affinity_images:
            out["affinity_row_peak"] = self.row_peak / self.affinity_images
            out["affinity_row_spread"] = self.row_spread / self.affinity_images
        if self.background_mass_images:
            out["affinity_background_mass"] = self.background_mass / self.background_mass_images
        return out

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


NO_FOREGROUND_FIX = (
    "the classifier never fires for the images' own classes: train the warm-up longer, raise the learning rate, "
    "or load pretrained weights"
)


@dataclass(frozen=True)
class HealthPolicy:
    """When a label set counts as degenerate, and what happens then.

    Args:
        action: ``error`` (default) stops the run with :class:`DegenerateLabelsError`; ``warn`` logs a warning and
            goes on; ``off`` only reports the figures (no warning, including the end-of-run verdict).
        max_empty_label_fraction: more images than this without any foreground pixel is degenerate (0.5).
        max_cam_empty_fraction: more (image, class) pairs than this with an all-zero CAM is degenerate (0.5).
        max_missing_class_fraction: more image classes than this without a single pixel is degenerate (0.9).
        max_ignored_fraction: more pixels than this marked uncertain (255) is degenerate (0.9).
        max_full_label_fraction: more images than this whose labels hold (almost) no background is degenerate
            (0.5; VOC's ground truth is about 70 % background).
        max_label_drop: a scored set whose mIoU (in [0, 1]) is more than this below the previous scored set's
            gets a warning (0.02: two points; healthy demo runs dip by at most 0.5 at a single update).
        min_affinity_row_spread: a propagating affinity whose rows differ less than this (total variation from
            the mean row) has not learned: propagation would blur every CAM to the image mean (0.05).
    """

    action: Literal["error", "warn", "off"] = "error"
    max_empty_label_fraction: float = 0.5
    max_cam_empty_fraction: float = 0.5
    max_missing_class_fraction: float = 0.9
    max_ignored_fraction: float = 0.9
    max_full_label_fraction: float = 0.5
    max_label_drop: float = 0.02
    min_affinity_row_spread: float = 0.05

    def problems(self, summary: Mapping[str, float]) -> list[str]:
        """Human-readable causes and fixes of every rule the summary breaks (empty when healthy)."""
        found: list[str] = []
        empty = summary.get("empty_label_fraction")
        if empty is not None and empty > self.max_empty_label_fraction:
            found.append(f"{100 * empty:.0f} % of the labels hold no foreground pixel: {NO_FOREGROUND_FIX}")
        cam_empty = summary.get("cam_empty_fraction")
        if cam_empty is not None and cam_empty > self.max_cam_empty_fraction:
            found.append(
                f"the CAM is zero everywhere for {100 * cam_empty:.0f} % of the images' own classes: "
                + NO_FOREGROUND_FIX
            )
        missing = summary.get("missing_class_fraction")
        if missing is not None and missing > self.max_missing_class_fraction:
            found.append(
                f"{100 * missing:.0f} % of the image-level classes got no pixel: the CAM and the saliency map never "
                "agree (check that the saliency maps belong to the images, and the CAM / saliency thresholds)"
            )
        ignored = summary.get("label_ignored_fraction")
        if ignored is not None and ignored > self.max_ignored_fraction:
            found.append(
                f"{100 * ignored:.0f} % of the pixels are ignored (255): the network would learn from almost nothing"
            )
        full = summary.get("full_label_fraction")
        if full is not None and full > self.max_full_label_fraction:
            found.append(
                f"{100 * full:.0f} % of the labels hold (almost) no background pixel: the saliency maps are bright "
                "almost everywhere. Check that they are not inverted (objects must be white on black) and that the "
                "saliency threshold lies above their background level (`wsss data check` samples the maps)"
            )
        spread = summary.get("affinity_row_spread")
        if spread is not None and spread < self.min_affinity_row_spread:
            found.append(
                f"the affinity has not learned (rows differ from the mean row by {spread:.3f} < "
                f"{self.min_affinity_row_spread}): propagation blurs every CAM to the image mean; train the stage "
                "longer, raise the head learning rate, or drop weight decay on the affinity heads"
            )
        return found

    def check(self, summary: Mapping[str, float], where: str) -> list[str]:
        """Apply the policy to one set's summary; raises :class:`DegenerateLabelsError` under ``action="error"``."""
        found = self.problems(summary) if self.action != "off" else []
        if not found:
            return []
        message = f"degenerate pseudo-labels in {where}:\n  - " + "\n  - ".join(found)
        if self.action == "error":
            raise DegenerateLabelsError(
                message + "\n(set `health.action: warn` on the stage callback to continue anyway)"
            )
        log.warning(message)
        return found

    def trend(self, records: Sequence[Mapping[str, Any]], where: str) -> str | None:
        """Warn when the newest scored set in ``records`` (set records in order) fell more than ``max_label_drop``
        below the previous scored one; returns the warning (None when there is none, or under ``action="off"``)."""
        scored = [r for r in records if "pseudo_mIoU" in r]
        if self.action == "off" or len(scored) < 2:
            return None
        before, now = scored[-2], scored[-1]
        drop = float(before["pseudo_mIoU"]) - float(now["pseudo_mIoU"])
        if drop <= self.max_label_drop:
            return None
        message = (
            f"the pseudo-labels got worse in {where}: mIoU {100 * before['pseudo_mIoU']:.1f} (stage "
            f"{before['stage']}) -> {100 * now['pseudo_mIoU']:.1f} (stage {now['stage']}), {100 * drop:.1f} points "
            "down. The network is learning from the errors of its own labels: check the previous set's images "
            "(wsss pseudolabel / the W&B media), train the stage longer, or stop at the best set "
            f"({label_trajectory(records)})"
        )
        log.warning(message)
        return message

    def verdict(self, records: Sequence[Mapping[str, Any]]) -> list[str]:
        """The end-of-run warnings on a fit's scored label sets (set records in order), each already logged.

        Two cases: the last set is no better than the first (the stages did not improve the labels), or it ended
        more than ``max_label_drop`` below the best set (a slow slide no single update flagged). Empty with fewer
        than two scored sets or under ``action="off"``.
        """
        scored = [r for r in records if "pseudo_mIoU" in r]
        if self.action == "off" or len(scored) < 2:
            return []
        line = label_trajectory(records)
        first, last = float(scored[0]["pseudo_mIoU"]), float(scored[-1]["pseudo_mIoU"])
        if last <= first:
            message = (
                f"THE PSEUDO-LABELS DID NOT IMPROVE OVER THE STAGES ({line}): the stages trained on labels no better "
                "than the initial ones. Check the label sets' images and health figures (pseudo/*), and the recipe "
                "(learning rate, epochs per stage, saliency maps)"
            )
        else:
            peak = max(scored, key=lambda r: float(r["pseudo_mIoU"]))
            drop = float(peak["pseudo_mIoU"]) - last
            if drop <= self.max_label_drop:
                return []
            message = (
                f"the pseudo-labels peaked at stage {peak['stage']} (mIoU {100 * float(peak['pseudo_mIoU']):.1f}) "
                f"and ended {100 * drop:.1f} points lower: the last stages trained on worse labels than that set. "
                "Fewer stages (--stages.init_args.num_stages) or the peak set's labels may serve better"
            )
        log.warning(message)
        return [message]


def label_trajectory(records: Sequence[Mapping[str, Any]]) -> str | None:
    """``pseudo-label mIoU by set (stage 0 -> 2): 49.3 -> 52.8 -> 55.1, +5.8`` from set records in order; None
    when fewer than one set is scored (no ground truth)."""
    scored = [r for r in records if "pseudo_mIoU" in r]
    if not scored:
        return None
    values = [100 * float(r["pseudo_mIoU"]) for r in scored]
    line = f"pseudo-label mIoU by set (stage {scored[0]['stage']} -> {scored[-1]['stage']}): " + " -> ".join(
        f"{v:.1f}" for v in values
    )
    return line if len(values) == 1 else f"{line}, {values[-1] - values[0]:+.1f}"
