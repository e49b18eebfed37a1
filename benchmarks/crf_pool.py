"""Dense-CRF process pool scaling: images/s of :class:`~wsss_lightning.pseudo.crf.CRFPool` with 0 (inline), 1, 2, …

``python benchmarks/crf_pool.py [--quick] [--images 8] [--max-workers N] [--json out.json]``

Two job kinds on seeded 375×500 images: the label update's 2-label saliency CRF (``auxseg_saliency``, 1 iteration)
and the inference CRF (``auxseg_inference``, 21 labels, 10 iterations). The pool's workers are started before the
clock (a refresh over 10k images pays that once). Results are checked equal to the inline ones.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.common import machine, markdown_table, write_json  # noqa: E402
from wsss_lightning.pseudo.crf import CRFPool, dense_crf, saliency_crf  # noqa: E402


def crf_inputs(count: int, height: int, width: int, labels: int, seed: int = 0) -> list[tuple]:
    """Seeded (image uint8 (H, W, 3), saliency (H, W), class probabilities (labels, H, W)) triples."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        blocks = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3))
        image = np.kron(blocks, np.ones((25, 25, 1)))[:height, :width]
        image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
        saliency = rng.random((height, width), dtype=np.float32)
        logits = rng.normal(0, 2, (labels, height, width)).astype(np.float32)
        probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
        out.append((image, saliency, probs))
    return out


def run(kind: str, inputs: list[tuple], workers: int) -> tuple[float, list[np.ndarray]]:
    """Seconds for all jobs of ``kind`` with ``workers`` processes, and the results in job order."""
    if kind == "saliency":
        fn, jobs = saliency_crf, [(image, sal, "auxseg_saliency") for image, sal, _ in inputs]
    else:
        fn, jobs = dense_crf, [(image, probs, "auxseg_inference") for image, _, probs in inputs]
    with CRFPool(workers) as pool:
        if workers:  # start (forkserver) and import in every worker before the clock
            list(pool.map_unordered(abs, [(1,)] * (2 * workers)))
        start = time.perf_counter()
        results = dict(pool.map_unordered(fn, jobs))
        seconds = time.perf_counter() - start
    return seconds, [results[i] for i in range(len(jobs))]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 images of 188x250")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--max-workers", type=int, default=None, help="default: the usable cores")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.height, args.width = 4, 188, 250
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    max_workers = args.max_workers or cores
    inputs = crf_inputs(args.images, args.height, args.width, 21)
    rows, results = [], {}
    for kind in ("saliency", "inference"):
        base_seconds, reference = run(kind, inputs, 0)
        results[kind] = {"0": base_seconds}
        rows.append([kind, "inline", args.images / base_seconds, 1.0, "-"])
        for workers in range(1, max_workers + 1):
            seconds, out = run(kind, inputs, workers)
            same = all(np.array_equal(a, b) for a, b in zip(reference, out))
            results[kind][str(workers)] = seconds
            rows.append([kind, workers, args.images / seconds, base_seconds / seconds, same])
    print(f"CRF pool, {args.images} images of {args.height}x{args.width}, {cores} usable cores")
    print(markdown_table(["CRF", "workers", "images / s", "speed-up vs inline", "same result"], rows))
    write_json(args.json, {"args": vars(args), "seconds": results, "parent": machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
