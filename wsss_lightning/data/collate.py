"""Batch assembly: padding for full-size evaluation, and one random scale per training batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from wsss_lightning.data.transforms import IGNORE_SALIENCY, ScaleCropFlip, draw_seed

PAD_VALUES = {"image": 0.0, "seg": 255, "sal": IGNORE_SALIENCY, "raw": 0}


def pad_collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples of different sizes by padding bottom/right to the largest H and W of the batch, per key.

    Padding: image 0 (the mean colour after normalisation), ``seg`` 255, ``sal`` 255 (both ignored),
    ``raw`` 0. ``ori_size`` keeps each sample's true size so outputs can be cropped back before scoring. Each
    key pads to its own largest size: under a working resolution an evaluation ``seg`` keeps the file's size
    while its image is shrunk (``data/working_size.py``).
    """
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in PAD_VALUES:
            spatial = (0, 1) if key == "raw" else (-2, -1)  # raw is (H, W, 3), the rest (..., H, W)
            height = max(int(v.shape[spatial[0]]) for v in values)
            width = max(int(v.shape[spatial[1]]) for v in values)
            padded = []
            for value in values:
                if key == "raw":
                    pad = (0, 0, 0, width - value.shape[1], 0, height - value.shape[0])
                else:
                    pad = (0, width - value.shape[-1], 0, height - value.shape[-2])
                padded.append(torch.nn.functional.pad(value, pad, value=PAD_VALUES[key]))
            batch[key] = torch.stack(padded)
        else:
            batch[key] = default_collate(values)
    return batch


class BatchScaleCollate:
    """Augment a list of raw samples with ONE random scale for the whole batch (the official AuxSegNet code).

    The dataset must return raw arrays (``defer_transform=True``); ``finish`` turns augmented arrays into the
    tensor sample.
    """

    def __init__(self, transform: ScaleCropFlip, finish) -> None:
        self.transform = transform
        self.finish = finish

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        # the first sample's seed (SeededBatchSampler) fixes the batch's scale; draw one for other samplers
        seed = samples[0].get("seed") if samples else None
        seed = draw_seed() if seed is None else int(seed)
        scale = self.transform.sample_scale(np.random.default_rng(seed))
        out = []
        for offset, arrays in enumerate(samples):
            arrays = dict(arrays)
            arrays["image"], arrays["seg"], arrays["sal"] = self.transform(
                arrays["image"], arrays["seg"], arrays["sal"], scale=scale, seed=seed + offset + 1
            )
            out.append(self.finish(arrays))
        return default_collate(out)
