"""End-to-end time of the VOC pipeline on one GPU, ours next to the official code's, from measured rates (issue 13).

``python benchmarks/e2e_estimate.py [--session gpu_session.json] [--train-img-s 136.7] [--refresh-s-per-img 0.585]
[--val-s-per-img 0.011] [--json out.json]``

The VOC recipe (``configs/voc_auxseg.yaml``): 4 stages × 15 epochs over the 10,582 ``train_aug`` images, a pseudo-label
refresh after each stage (4 × 10,582 images at full size), and validation every 5 epochs (12 passes over the 1,449
``val`` images, single-scale)::

    T = S·E·N / r_train  +  R·N · t_refresh  +  P·V · t_val

with S = 4 stages, E = 15 epochs, N = 10,582, R = 4 refreshes, P = 12 validation passes, V = 1,449.

Default rates are the H200 figures of issue 13 (torch 2.11 + CUDA 13, ResNet-38, random weights):

* ours, training: the Lightning loop in bf16 + channels-last, 136.7 img/s at 321×321 batch 8 (the plain loop:
  146.2 img/s, ``--train-img-s 146.2``); official: fp32 73.6 img/s (the official code trains in fp32);
* ours, refresh: the sequential split at 500×375, forward + propagation 0.011 s + CRF + fusion + writes on the CPU
  0.574 s = 0.585 s per image (one image at a time, the CRF inline: an upper bound for the pipelined refresh, whose
  CRF workers were not measured on the GPU machine); official: ≈ 0.47 s per image;
* ours, validation: not measured on the GPU; the proxy is the refresh's forward + propagation, 0.011 s per image at
  500×375 (the same network at the same size, plus the CAM propagation that single-scale inference does not do);
  official: not measured (left out of its total, as in the issue's ≈ 8 h).

``--session`` takes the rates from a ``benchmarks/gpu_session.sh`` summary instead, where that run measured them:
the Lightning baseline (bf16 + channels-last) for training, the fastest pipelined refresh with the torch CRF, the
single-scale inference. Nothing here is measured: it is arithmetic on rates, and each rate's source is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table (``benchmarks.common`` has one too, but imports torch: this module stays light)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


ISSUE = "issue 13, H200"


@dataclass
class Rate:
    """A per-image cost (seconds) and where it comes from; ``None`` seconds = not measured."""

    seconds: float | None
    source: str


@dataclass
class Workload:
    stages: int = 4
    epochs: int = 15
    train_images: int = 10_582
    refreshes: int = 4
    val_images: int = 1_449
    val_passes: int = 12  # check_val_every_n_epoch 5 over 60 epochs

    @property
    def train_total(self) -> int:
        return self.stages * self.epochs * self.train_images

    @property
    def refresh_total(self) -> int:
        return self.refreshes * self.train_images

    @property
    def val_total(self) -> int:
        return self.val_passes * self.val_images


DEFAULT_OURS = {
    "train": Rate(1 / 136.7, f"{ISSUE}: ours, Lightning, bf16 + channels-last, 136.7 img/s"),
    "refresh": Rate(0.011 + 0.574, f"{ISSUE}: ours, forward + propagation 0.011 s + CRF/fusion/writes (CPU) 0.574 s"),
    "val": Rate(0.011, f"proxy: {ISSUE} refresh forward + propagation, 0.011 s/img at 500x375"),
}
DEFAULT_OFFICIAL = {
    "train": Rate(1 / 73.6, f"{ISSUE}: official, fp32, 73.6 img/s"),
    "refresh": Rate(0.47, "issue 13: official refresh ≈ 0.47 s/img"),
    "val": Rate(None, "not measured"),
}


def rates_from_session(summary: dict[str, Any]) -> dict[str, Rate]:
    """Our rates from a ``gpu_session.sh`` summary (``gpu_session.json``); absent ones are left out."""
    rates: dict[str, Rate] = {}
    train = summary.get("train", {})
    window = train.get("window", {}).get("mean_images_per_s", {})
    measured = train.get("pairwise_bf16_cl", {}).get("mean_images_per_s", {})
    # what `wsss fit` runs: Lightning with its progress bar and throughput callbacks, timed over a window as a real
    # run queues its steps when measured; else the same timed step by step; else the bare Lightning runs
    variant = "lightning-full" if measured.get("lightning-full") else "lightning"
    if window.get("lightning-full"):
        rate = window["lightning-full"]
        rates["train"] = Rate(1 / rate, f"gpu_session: ours, lightning-full over a window, bf16 + cl, {rate:.1f} img/s")
    elif measured.get(variant):
        rate = measured[variant]
        rates["train"] = Rate(1 / rate, f"gpu_session: ours, {variant}, bf16 + channels-last, {rate:.1f} img/s")
    refresh = summary.get("refresh", {}).get("torch", {}).get("paths", {})
    pipelined = {k: v for k, v in refresh.items() if k.startswith("pipeline") and v.get("images_per_s")}
    if pipelined:
        name, best = max(pipelined.items(), key=lambda kv: kv[1]["images_per_s"])
        rates["refresh"] = Rate(1 / best["images_per_s"], f"gpu_session: ours, torch CRF, {name}")
    inference = summary.get("inference", {}).get("torch", {}).get("seconds_per_image", {})
    forward = summary.get("refresh", {}).get("pydensecrf", {}).get("sequential_forward_s")
    if inference.get("ss"):
        rates["val"] = Rate(inference["ss"], "gpu_session: ours, single-scale inference at 500x375")
    elif forward:
        rates["val"] = Rate(forward, "proxy: gpu_session refresh forward + propagation at 500x375")
    return rates


def hours(seconds: float | None) -> str:
    return "not measured" if seconds is None else f"{seconds / 3600:.2f} h"


def estimate(ours: dict[str, Rate], official: dict[str, Rate], work: Workload) -> dict[str, Any]:
    counts = {"train": work.train_total, "refresh": work.refresh_total, "val": work.val_total}
    out: dict[str, Any] = {"workload": asdict(work), "terms": {}, "total_s": {}}
    for who, rates in (("ours", ours), ("official", official)):
        total, missing = 0.0, []
        for term, count in counts.items():
            rate = rates[term]
            seconds = None if rate.seconds is None else count * rate.seconds
            out["terms"].setdefault(term, {})[who] = {"seconds": seconds, "per_image_s": rate.seconds,
                                                      "source": rate.source}  # fmt: skip
            if seconds is None:
                missing.append(term)
            else:
                total += seconds
        out["total_s"][who] = {"seconds": total, "missing": missing}
    return out


def report(result: dict[str, Any]) -> str:
    work = Workload(**result["workload"])
    labels = {
        "train": f"training: {work.stages} stages × {work.epochs} epochs × {work.train_images:,} img",
        "refresh": f"refreshes: {work.refreshes} × {work.train_images:,} img",
        "val": f"validation: {work.val_passes} passes × {work.val_images:,} img",
    }
    rows = []
    for term, both in result["terms"].items():
        cells = []
        for who in ("ours", "official"):
            t = both[who]
            rate = "-" if t["per_image_s"] is None else f"{t['per_image_s']:.4g} s/img"
            cells.append(f"{hours(t['seconds'])} ({rate})")
        rows.append([labels[term], *cells, f"ours: {both['ours']['source']}; official: {both['official']['source']}"])
    totals = []
    for who in ("ours", "official"):
        total = result["total_s"][who]
        extra = f" + {', '.join(total['missing'])} (not measured)" if total["missing"] else ""
        totals.append(f"**{hours(total['seconds'])}**{extra}")
    rows.append(["**total**", *totals, "T = S·E·N / r_train + R·N · t_refresh + P·V · t_val"])
    return markdown_table(["term", "ours", "official", "rate sources"], rows)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--session", default=None, help="gpu_session.json (benchmarks/gpu_session.sh) for our rates")
    parser.add_argument("--train-img-s", type=float, default=None, help="ours, training images/s")
    parser.add_argument("--refresh-s-per-img", type=float, default=None, help="ours, refresh seconds per image")
    parser.add_argument("--val-s-per-img", type=float, default=None, help="ours, validation seconds per image")
    parser.add_argument("--official-train-img-s", type=float, default=73.6)
    parser.add_argument("--official-refresh-s-per-img", type=float, default=0.47)
    for name, default in asdict(Workload()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    ours = dict(DEFAULT_OURS)
    if args.session:
        ours.update(rates_from_session(json.loads(Path(args.session).read_text())))
    if args.train_img_s:
        ours["train"] = Rate(1 / args.train_img_s, f"--train-img-s {args.train_img_s}")
    if args.refresh_s_per_img:
        ours["refresh"] = Rate(args.refresh_s_per_img, f"--refresh-s-per-img {args.refresh_s_per_img}")
    if args.val_s_per_img:
        ours["val"] = Rate(args.val_s_per_img, f"--val-s-per-img {args.val_s_per_img}")
    official = dict(DEFAULT_OFFICIAL)
    if args.official_train_img_s != 73.6:
        official["train"] = Rate(1 / args.official_train_img_s, f"--official-train-img-s {args.official_train_img_s}")
    if args.official_refresh_s_per_img != 0.47:
        value = args.official_refresh_s_per_img
        official["refresh"] = Rate(value, f"--official-refresh-s-per-img {value}")
    work = Workload(**{name: getattr(args, name) for name in asdict(Workload())})
    result = estimate(ours, official, work)
    print("End-to-end estimate, VOC pipeline on one GPU (arithmetic on measured rates, see the sources)")
    print(report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        payload = {"command": " ".join(sys.argv), "args": vars(args), "estimate": result}
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
