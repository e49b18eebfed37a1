"""Set-level sanity of saliency maps: the three ways a folder of readable maps still carries no saliency.

Each map can be a valid PNG of the right size and the folder still be wrong for training:

* **0/1 maps**: masks saved with the values 0 and 1 instead of 0 and 255 (``Image.fromarray(mask)`` of a boolean
  array cast to ``uint8``). Read as grey levels they are black: every pseudo-label is background, every saliency
  loss trains towards "nothing is salient".
* **constant maps**: one grey level per map (all black or all white), e.g. a failed export.
* **inverted maps**: objects dark on a white background. Salient objects rarely fill the image frame, so in a
  right-way-up set the border is darker than the centre in most maps; an inverted set is bright on the border
  and bright on average.

:func:`diagnose_saliency_maps` reads an evenly spaced sample of a folder's maps (32 by default: a fraction of a
second) and returns what is wrong with the set, or None. Single odd maps are normal (an image with no salient
object is black; an object touching the border is bright there), so every rule needs a majority of the sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsss_lightning.data.io import DatasetError, read_saliency

__all__ = ["MapStatistics", "diagnose_saliency_maps", "map_statistics"]

#: at least this fraction of the sampled maps must show a fault for the set to be reported
MAJORITY = 0.5
#: an inverted set: this fraction of the maps is brighter on the border than in the centre ...
INVERTED_BORDER_FRACTION = 0.7
#: ... and the maps' median mean grey level (in [0, 1]) is above this
INVERTED_MEAN = 0.5


@dataclass(frozen=True)
class MapStatistics:
    """Grey-level figures of one saliency map, values in [0, 1] but ``maximum`` (the raw uint8 level)."""

    maximum: int
    single_level: bool
    mean: float
    border_mean: float
    centre_mean: float


def map_statistics(saliency: np.ndarray) -> MapStatistics:
    """Figures of one map ``uint8 (H, W)``: the border is the outer tenth of each side (at least one pixel), the
    centre the middle half of each side."""
    height, width = saliency.shape
    values = saliency.astype(np.float32) / 255.0
    band = max(1, min(height, width) // 10)
    frame = np.ones((height, width), dtype=bool)
    frame[band : height - band, band : width - band] = False
    centre = values[height // 4 : height - height // 4, width // 4 : width - width // 4]  # never empty
    return MapStatistics(
        maximum=int(saliency.max(initial=0)),
        single_level=bool(saliency.min(initial=255) == saliency.max(initial=0)),
        mean=float(values.mean()),
        border_mean=float(values[frame].mean()),
        centre_mean=float(centre.mean()),
    )


def _sample(paths: Sequence[Path], count: int) -> list[Path]:
    if len(paths) <= count:
        return list(paths)
    picks = np.linspace(0, len(paths) - 1, count).round().astype(int)
    return [paths[i] for i in picks]


def diagnose_saliency_maps(paths: Sequence[Path], sample: int = 32) -> str | None:
    """What is wrong with a set of saliency maps (sorted paths), judged on an evenly spaced sample; None if nothing.

    Missing or unreadable maps are left out (the per-file check reports them). The message names the fault, how many of
    the sampled maps show it and the fix.
    """
    stats: list[MapStatistics] = []
    for path in _sample(paths, sample):
        try:
            stats.append(map_statistics(read_saliency(path)))
        except DatasetError:
            continue
    if not stats:
        return None
    count = len(stats)

    def share(flags: list[bool]) -> tuple[int, float]:
        hits = sum(flags)
        return hits, hits / count

    hits, fraction = share([s.maximum == 1 for s in stats])
    if fraction >= MAJORITY:
        return (
            f"{hits} of {count} sampled maps hold only the grey levels 0 and 1: they were saved as 0/1 masks and "
            "read as black (nothing salient). Rewrite them with the levels 0 and 255 (value * 255), or point the "
            "setting at the 0-255 maps"
        )
    hits, fraction = share([s.single_level for s in stats])
    if fraction >= MAJORITY:
        levels = sorted({s.maximum for s in stats if s.single_level})
        return (
            f"{hits} of {count} sampled maps are a single grey level ({', '.join(map(str, levels[:4]))}): they "
            "carry no saliency. Re-export them, or point the setting at the folder of real maps"
        )
    hits, fraction = share([s.border_mean > s.centre_mean for s in stats])
    median_mean = float(np.median([s.mean for s in stats]))
    if fraction >= INVERTED_BORDER_FRACTION and median_mean > INVERTED_MEAN:
        return (
            f"the maps look inverted (objects dark on a white background): {hits} of {count} sampled maps are "
            f"brighter on the border than in the centre and their median grey level is {median_mean:.2f} of the "
            "maximum. Salient objects should be white (255) on black; invert them (255 - value)"
        )
    return None
