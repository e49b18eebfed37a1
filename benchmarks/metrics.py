"""Benchmarks of the platform: metrics and data loading. ``python benchmarks/metrics.py [--part saliency|loading]``.

Parts (``PARTS``): ``loading`` measures the VOC DataModule's images/s with 0 and 2 workers; ``saliency`` times
:class:`wsss_lightning.metrics.SaliencyMetrics` (protocol ``sod``, batched torch) against pysodmetrics'
``Fmeasure + MAE + Smeasure + Emeasure`` (numpy, one image at a time) on the same seeded, structured maps
(blurred elliptic blobs with noise and a distractor vs. their GT), checks that all eight numbers agree to 1e-6,
and prints images/s and the speed ratio as markdown tables. Only the metric calls are timed, interleaved chunk by
chunk (both see the same machine load); the maps are generated outside the timers so memory stays small. torch
runs on one thread by default, like numpy: on a shared machine, multi-threaded torch ops wait for descheduled
threads and the timing becomes noise.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from wsss_lightning.metrics import SaliencyMetrics  # noqa: E402

SAL_KEYS = ("maxF", "meanF", "adpF", "MAE", "Sm", "maxE", "meanE", "adpE")
TOLERANCE = 1e-6


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = int(math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) float maps, reflect padding."""
    kernel = _gaussian_kernel(sigma)
    pad = kernel.numel() // 2
    x = F.pad(maps[:, None], (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0]


def _ellipses(count: int, height: int, width: int, generator: torch.Generator, blobs: int) -> torch.Tensor:
    """(count, H, W) bool: the union of ``blobs`` random ellipses per image, kept away from the border."""
    yy = torch.arange(height, dtype=torch.float32)[None, :, None]
    xx = torch.arange(width, dtype=torch.float32)[None, None, :]
    masks = torch.zeros(count, height, width, dtype=torch.bool)
    for _ in range(blobs):
        u = torch.rand(count, 5, generator=generator)
        cy, cx = (0.25 + 0.5 * u[:, 0]) * height, (0.25 + 0.5 * u[:, 1]) * width
        ry, rx = (0.08 + 0.17 * u[:, 2]) * height, (0.08 + 0.17 * u[:, 3]) * width
        present = u[:, 4] < 0.7
        inside = ((yy - cy[:, None, None]) / ry[:, None, None]) ** 2 + (
            (xx - cx[:, None, None]) / rx[:, None, None]
        ) ** 2
        masks |= (inside <= 1) & present[:, None, None]
    masks[:, height // 2 - 5 : height // 2 + 5, width // 2 - 5 : width // 2 + 5] = True  # never an empty GT
    return masks


def structured_maps(
    num: int, height: int, width: int, seed: int, chunk: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Chunks of (pred uint8 (B, H, W), GT uint8 {0, 255} (B, H, W)); deterministic for a seed."""
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, num, chunk):
        count = min(chunk, num - start)
        gt = _ellipses(count, height, width, generator, blobs=3)
        distractor = _ellipses(count, height, width, generator, blobs=1).float() * 0.5
        shift = torch.randint(-6, 7, (2,), generator=generator).tolist()
        soft = torch.roll(gt.float(), shifts=shift, dims=(1, 2)) * 0.8 + distractor
        soft = _blur(soft, sigma=4.0) + 0.15 * torch.randn(count, height, width, generator=generator)
        pred = (soft.clamp(0, 1) * 255).round().to(torch.uint8)
        yield pred, gt.to(torch.uint8) * 255


class _PysodReference:
    """pysodmetrics' four evaluators, stepped one image at a time, reported as its examples/test_metrics.py does."""

    def __init__(self) -> None:
        import py_sod_metrics

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Fmeasure's deprecation notice
            self.fm, self.mae = py_sod_metrics.Fmeasure(), py_sod_metrics.MAE()
            self.sm, self.em = py_sod_metrics.Smeasure(), py_sod_metrics.Emeasure()

    def step_batch(self, preds: np.ndarray, gts: np.ndarray) -> None:
        """(B, H, W) uint8 maps and masks, one image at a time (pysodmetrics' only mode)."""
        for pred, gt in zip(preds, gts):
            for metric in (self.fm, self.mae, self.sm, self.em):
                metric.step(pred=pred, gt=gt)

    def results(self) -> dict[str, float]:
        f, e = self.fm.get_results()["fm"], self.em.get_results()["em"]
        scores = {
            "maxF": f["curve"].max(),
            "meanF": f["curve"].mean(),
            "adpF": f["adp"],
            "MAE": self.mae.get_results()["mae"],
            "Sm": self.sm.get_results()["sm"],
            "maxE": e["curve"].max(),
            "meanE": e["curve"].mean(),
            "adpE": e["adp"],
        }
        return {key: float(value) for key, value in scores.items()}


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _timed(seconds: dict[str, float], name: str, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)``, adding its wall time to ``seconds[name]``."""
    start = time.perf_counter()
    result = call(*args)
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
    return result


def bench_saliency(args: argparse.Namespace) -> int:
    """Time SaliencyMetrics vs pysodmetrics on ``args.num`` maps; 0 if all numbers agree to 1e-6, else 1.

    Three rows: our metric on the uint8 maps (saved PNGs: the histogram path), on the same maps as float64
    grey level / 255 (model outputs: the per-pixel path), and pysodmetrics on the uint8 maps.
    """
    try:
        import py_sod_metrics  # noqa: F401
    except ImportError:
        print("pysodmetrics is not installed (pip install -e '.[dev]'); skipping the saliency benchmark")
        return 0
    torch.set_num_threads(args.threads)
    warm_up = next(structured_maps(2, args.height, args.width, args.seed + 1, chunk=2))
    SaliencyMetrics(protocol="sod").update(*warm_up)  # first-call overheads stay out of the timing
    SaliencyMetrics(protocol="sod").update(warm_up[0].double() / 255, warm_up[1])
    names = {
        "uint8": f"wsss_lightning SaliencyMetrics, uint8 maps (batch {args.batch})",
        "float": f"wsss_lightning SaliencyMetrics, float64 maps (batch {args.batch})",
        "pysod": "pysodmetrics Fmeasure+MAE+Smeasure+Emeasure, uint8 maps",
    }
    ours = {"uint8": SaliencyMetrics(protocol="sod"), "float": SaliencyMetrics(protocol="sod")}
    reference = _PysodReference()
    seconds: dict[str, float] = {}
    for pred, gt in structured_maps(args.num, args.height, args.width, args.seed, chunk=args.batch):
        as_float = pred.double() / 255  # converted outside the timers
        _timed(seconds, "uint8", ours["uint8"].update, pred, gt)
        _timed(seconds, "float", ours["float"].update, as_float, gt)
        _timed(seconds, "pysod", reference.step_batch, pred.numpy(), gt.numpy())
    scores = {
        key: {k: float(v) for k, v in _timed(seconds, key, metric.compute).items()} for key, metric in ours.items()
    }
    scores["pysod"] = _timed(seconds, "pysod", reference.results)

    num, threads = args.num, torch.get_num_threads()
    header = f"## Saliency metrics: {num} maps of {args.height}x{args.width}, seed {args.seed}"
    print(f"{header}, torch {torch.__version__}, {threads} thread(s)\n")
    rows = [[names[key], str(num), f"{seconds[key]:.2f}", f"{num / seconds[key]:.1f}"] for key in names]
    print(_table(["implementation", "images", "seconds", "images/s"], rows))
    for key in ours:
        print(f"\nspeed ratio, {key} maps (pysodmetrics time / ours): {seconds['pysod'] / seconds[key]:.2f}x", end="")
    print("\n")
    differences = {
        key: {metric: abs(scores[key][metric] - scores["pysod"][metric]) for metric in SAL_KEYS} for key in ours
    }
    rows = [
        [metric, f"{scores['uint8'][metric]:.6f}", f"{scores['pysod'][metric]:.6f}"]
        + [f"{differences[key][metric]:.1e}" for key in ours]
        for metric in SAL_KEYS
    ]
    print(_table(["metric", "ours", "pysodmetrics", "abs diff (uint8)", "abs diff (float)"], rows))
    worst = max(max(values.values()) for values in differences.values())
    agree = worst <= TOLERANCE
    print(f"\n{'agree' if agree else 'DISAGREE'}: largest difference {worst:.1e} (tolerance {TOLERANCE:.0e})")
    return 0 if agree else 1


def bench_loading(args: argparse.Namespace) -> int:
    """VOC DataModule throughput (images/s) with 0 and 2 workers on a VOC-sized synthetic set.

    The demo generator writes ``--loading_images`` images at VOC's typical size (350–500 px sides) in the real
    VOC layout; the training loader (scale 0.7–1.3, crop 321, flip, per-batch scale, batch 4) and the full-size
    evaluation loader (batch 1) are each read for two passes and the second pass is timed.
    """
    import tempfile

    from wsss_lightning.data.datamodule import WSSSDataModule
    from wsss_lightning.data.demo import generate_demo

    count = args.loading_images
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        generate_demo(
            folder, seed=args.seed, num_train_aug=count, num_train=count // 4, num_val=count // 2,
            num_duts_train=0, num_duts_test=0, num_ecssd=0, size_range=(350, 500),
        )  # fmt: skip
        for workers in (0, 2):
            datamodule = WSSSDataModule(
                root=f"{folder}/VOCdevkit/VOC2012", dataset="voc", saliency_dir="saliency_map", crop_size=321,
                batch_size=4, num_workers=workers,
                persistent_workers=True, check="off",
            )  # fmt: skip
            for name, loader in (("train (crop 321, batch 4)", datamodule.train_dataloader()),
                                 ("val (full size, batch 1)", datamodule.val_dataloader()[0])):  # fmt: skip
                for _ in loader:  # warm-up pass: worker start-up, file cache
                    pass
                start = time.perf_counter()
                images = sum(batch["image"].shape[0] for batch in loader)
                rows.append([name, str(workers), f"{images / (time.perf_counter() - start):.1f}"])
    print(f"\nVOC DataModule throughput, {count} synthetic images of 350-500 px (second pass timed)\n")
    print(_table(["loader", "workers", "images/s"], rows))
    return 0


PARTS: dict[str, Callable[[argparse.Namespace], int]] = {"saliency": bench_saliency, "loading": bench_loading}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", *PARTS], default="all", help="which benchmark to run")
    parser.add_argument("--num", type=int, default=1000, help="number of maps (develop with --num 50)")
    parser.add_argument("--height", type=int, default=300)
    parser.add_argument("--width", type=int, default=400)
    parser.add_argument("--batch", type=int, default=10, help="maps per SaliencyMetrics.update call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loading_images", type=int, default=200, help="images of the data-loading benchmark")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 = the same single core numpy uses)"
    )
    args = parser.parse_args(argv)
    parts = list(PARTS) if args.part == "all" else [args.part]
    return max(PARTS[part](args) for part in parts)


if __name__ == "__main__":
    sys.exit(main())
