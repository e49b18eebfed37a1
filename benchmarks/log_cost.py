"""Host time spent inside ``LightningModule.log`` per training step (the Lightning variant of train_step.py).

``python benchmarks/log_cost.py [--steps 200] [--every-step] [--json out.json]``

Every ``self.log`` call costs Lightning's bookkeeping on the host (the stored metric is moved to the value's device
on each call). The modules log the loss components only on the steps whose values reach the loggers
(``wsss_lightning/utils/log_cadence.py``); ``--every-step`` restores logging them at every step, for comparison.
Tiny network, 96x96 batch 2 (``train_step.py --quick``), on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/x.py` finds `benchmarks`

from benchmarks.common import machine, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every-step", action="store_true", help="log every value at every step (the old way)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import lightning.pytorch.core.module as lightning_module

    import wsss_lightning.modules.base as base
    from benchmarks import train_step

    if args.every_step:
        base.logs_this_step = lambda trainer: True  # type: ignore[assignment]
    spent = {"seconds": 0.0, "calls": 0}
    original = lightning_module.LightningModule.log

    def timed(self, *a, **k):
        start = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            spent["seconds"] += time.perf_counter() - start
            spent["calls"] += 1

    lightning_module.LightningModule.log = timed  # type: ignore[method-assign]
    step_args = train_step.parse(["--quick", "--steps", str(args.steps), "--child", "lightning"])
    train_step.child_lightning(step_args)
    steps = step_args.warmup + step_args.steps
    result = {
        "every_step": args.every_step,
        "steps": steps,
        "log_calls": spent["calls"],
        "log_calls_per_step": spent["calls"] / steps,
        "log_ms_per_step": 1000 * spent["seconds"] / steps,
    }
    mode = "every value every step" if args.every_step else "components on logged steps only"
    print(f"self.log: {result['log_calls_per_step']:.2f} calls and {result['log_ms_per_step']:.2f} ms of host time "
          f"per step ({mode})")  # fmt: skip
    write_json(args.json, {"args": vars(args), "result": result, "machine": machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
