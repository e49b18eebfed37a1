"""benchmarks/affinity_memory.py: each variant's child runs the label update's affinity passes and the chunked
variants (with and without the block cache) give the unchunked outputs (the script is not timed here)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.affinity_memory import VARIANTS, child  # noqa: E402


def test_every_variant_runs_and_matches_the_unchunked_outputs(tmp_path: Path) -> None:
    outputs = {}
    for variant in VARIANTS:
        out = tmp_path / f"{variant}.pt"
        record = child((48, 40), variant, "dual", chunk_size=8, health=True, repeats=1, out=str(out))
        assert record["positions"] == 6 * 5 and record["seconds"] > 0
        outputs[variant] = torch.load(out)
    reference = outputs["unchunked"]
    assert len(reference) == 8  # F'_seg, F'_sal, R_seg, R_sal, propagated CAM, the three health figures
    for variant in ("chunked_nocache", "chunked"):
        for x, y in zip(reference, outputs[variant], strict=True):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_the_training_step_probe_runs_forward_and_backward() -> None:
    from benchmarks.affinity_step import measure

    result = measure(batch_size=2, size=5, mode="dual", steps=1)
    assert result["median_seconds"] > 0 and (result["batch_size"], result["size"]) == (2, 5)
