"""The cross-task affinity's share of a training step: forward + refinement + backward, with gradients (dense N×N).

``python benchmarks/affinity_step.py [--batch-size 4] [--size 41] [--mode pairwise|dual] [--steps 5]``

What a training step runs after the backbone at a 321×321 crop (41×41 stride-8 features, 128 channels):
``CrossTaskAffinity`` enhances both task features and refines 21 + 1 logits; a scalar loss of the outputs is
back-propagated to the features and the affinity's parameters. Reports the median of ``--steps`` timed steps after
one warm-up (random weights and inputs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def measure(batch_size: int, size: int, mode: str, steps: int) -> dict:
    from wsss_lightning.models.affinity import CrossTaskAffinity

    torch.manual_seed(0)
    module = CrossTaskAffinity(128, mode=mode, cross_task=True)  # type: ignore[arg-type]
    seg_f = torch.randn(batch_size, 128, size, size, requires_grad=True)
    sal_f = torch.randn(batch_size, 128, size, size, requires_grad=True)
    seg_l, sal_l = torch.randn(batch_size, 21, size, size), torch.randn(batch_size, 1, size, size)

    def step() -> None:
        out = module(seg_f, sal_f)
        r_seg, r_sal = module.refine(out, seg_l, sal_l)
        (r_seg.square().mean() + r_sal.square().mean() + out.seg_features.mean() + out.sal_features.mean()).backward()

    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"batch_size": batch_size, "size": size, "mode": mode, "median_seconds": statistics.median(times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=41, help="feature side (41 = a 321x321 crop at stride 8)")
    parser.add_argument("--mode", default="pairwise", choices=["pairwise", "dual"])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    result = measure(args.batch_size, args.size, args.mode, args.steps)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
