"""Affinity inference: peak memory and time against image size, chunked versus unchunked (full N×N).

``python benchmarks/affinity_memory.py [--quick] [--sizes 320x240,640x480,960x720] [--json out.json]``

What one label update / inference forward does after the backbone, without gradients: the cross-task affinity
(``CrossTaskAffinity``, 128 channels, pairwise = AuxSegNet or dual = AuxSegNet+) enhances both task features,
refines the seg + sal logits, propagates a 20-class CAM and (``--health``, on by default, as a label update does)
computes the affinity's health statistics, at stride 8 (``N = ⌈H/8⌉·⌈W/8⌉`` positions). ``unchunked`` builds the
N×N matrices in full (the official code); ``chunked`` (``chunk_size`` query rows at a time, the default 4096) never
holds the fusion's N×N temporaries and keeps the ``A_CT`` blocks it builds within ``cache_elements`` (the default);
``chunked_nocache`` (``cache_elements=0``) rebuilds every block on every pass (the path before the cache). 960×720
is a 640×480 image at scale 1.5 (multi-scale inference).

Each (size, variant) runs in its own process: peak memory = the growth of the peak RSS over the RSS after the
inputs are built, so the interpreter and torch are not counted. 1 warm-up + ``--repeats`` timed calls; outputs
of the chunked variants are compared with the unchunked ones.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import gib, machine, markdown_table, peak_rss_bytes, run_child, write_json  # noqa: E402

VARIANTS = ("unchunked", "chunked_nocache", "chunked")


def child(
    size: tuple[int, int], variant: str, mode: str, chunk_size: int, health: bool, repeats: int, out: str | None
) -> dict:
    from wsss_lightning.models.affinity import DEFAULT_CACHE_ELEMENTS, CrossTaskAffinity

    width, height = size
    h, w = math.ceil(height / 8), math.ceil(width / 8)
    n = h * w
    torch.manual_seed(0)
    chunk = chunk_size if variant != "unchunked" else n + 1
    cache = 0 if variant == "chunked_nocache" else DEFAULT_CACHE_ELEMENTS
    module = CrossTaskAffinity(128, mode=mode, cross_task=True, chunk_size=chunk, cache_elements=cache).eval()
    gen = torch.Generator().manual_seed(1)
    seg_f, sal_f = torch.randn(1, 128, h, w, generator=gen), torch.randn(1, 128, h, w, generator=gen)
    seg_l, sal_l = torch.randn(1, 21, h, w, generator=gen), torch.randn(1, 1, h, w, generator=gen)
    cam = torch.rand(1, 20, h, w, generator=gen)

    def run() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            result = module(seg_f, sal_f)
            r_seg, r_sal = module.refine(result, seg_l, sal_l)
            outputs = [result.seg_features, result.sal_features, r_seg, r_sal, result.seg_context.propagate(cam)]
            if health:
                stats = result.seg_context.row_statistics(cam[:, 0] > 0.5)  # about half the positions
                outputs += [stats["row_peak"], stats["row_spread"], stats["background_mass"]]
            return tuple(outputs)

    baseline = peak_rss_bytes()
    outputs = run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = run()
        times.append(time.perf_counter() - start)
    if out:
        torch.save(outputs, out)
    return {"positions": n, "seconds": min(times), "peak_bytes": peak_rss_bytes() - baseline}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes 160x120,320x240, chunk_size 256")
    parser.add_argument("--sizes", default="320x240,640x480,960x720", help="WxH,...")
    parser.add_argument("--mode", default="pairwise", choices=["pairwise", "dual"])
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--health",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also compute the row statistics a label update logs (two more passes over A_CT)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.chunk_size = "160x120,320x240", 256
    return args


def main(argv: list[str] | None = None) -> int:
    import tempfile

    args = parse(argv)
    if args.child:
        width, height, variant = args.child.split(":")
        size = (int(width), int(height))
        print(json.dumps(child(size, variant, args.mode, args.chunk_size, args.health, args.repeats, args.out)))
        return 0
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.sizes.split(","):
            width, height = (int(v) for v in spec.split("x"))
            common = ["--mode", args.mode, "--chunk-size", str(args.chunk_size), "--repeats", str(args.repeats)]
            common.append("--health" if args.health else "--no-health")
            for variant in VARIANTS:
                out = f"{tmp}/{spec}_{variant}.pt"
                child_args = [*common, "--child", f"{width}:{height}:{variant}", "--out", out]
                results[f"{spec}/{variant}"] = run_child("benchmarks.affinity_memory", child_args)
            reference = torch.load(f"{tmp}/{spec}_unchunked.pt")
            for variant in VARIANTS:
                outputs = torch.load(f"{tmp}/{spec}_{variant}.pt")
                diff = max(float((x - y).nan_to_num().abs().max()) for x, y in zip(reference, outputs))
                r = results[f"{spec}/{variant}"]
                r["max_abs_diff_vs_unchunked"] = diff
                r["speedup_vs_nocache"] = None
                rows.append([spec, r["positions"], variant, r["seconds"], gib(r["peak_bytes"]), f"{diff:.1e}"])
            nocache = results[f"{spec}/chunked_nocache"]["seconds"]
            results[f"{spec}/chunked"]["speedup_vs_nocache"] = nocache / results[f"{spec}/chunked"]["seconds"]
    health = " + health statistics" if args.health else ""
    print(f"Affinity inference ({args.mode}, cross-task, 128 channels, no grad, chunk_size {args.chunk_size}{health})")
    print(markdown_table(["image WxH", "N", "variant", "seconds", "peak extra memory (GiB)", "max |diff|"], rows))
    write_json(args.json, {"args": vars(args), "results": results, "parent": machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
