"""GPU: training images/s and achieved TFLOP/s of AuxSegNet(+) on ResNet-38 at 321×321, fp32 versus bf16, and the
pseudo-label refresh images/s. Needs a CUDA device.

``python benchmarks/gpu_train.py [--affinity dual] [--batch-size 8] [--steps 10] [--peak-tflops 989] [--json out]``

FLOPs are counted once per configuration with ``torch.utils.flop_counter.FlopCounterMode`` (forward + backward of
one training step, matmul/conv FLOPs = 2 × MACs), achieved TFLOP/s = FLOPs per step / measured step time, and the
fraction of the GPU's dense bf16 peak (``--peak-tflops``; looked up from the device name when known). Each
configuration runs in its own process (``benchmarks/train_step.py --device cuda``): plain PyTorch loop and
LightningModule, fp32 (``32-true``) and ``bf16-mixed`` with channels-last.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import ROOT, machine, markdown_table, run_child, write_json  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "A10": 125.0, "RTX 4090": 165.0}  # fmt: skip


def peak_for(name: str) -> float | None:
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--affinity", default="dual", choices=["pairwise", "dual"], help="dual = AuxSegNet+")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--refresh-images", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured")
        return 1
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or peak_for(name)
    base = ["--backbone", "resnet38", "--affinity", args.affinity, "--crop", str(args.crop), "--device", "cuda"]
    base += ["--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    configs = {
        "fp32": ["--precision", "32-true"],
        "bf16": ["--precision", "bf16-mixed"],
        "bf16 + channels_last": ["--precision", "bf16-mixed", "--channels-last"],
    }
    rows, results = [], {}
    for label, extra in configs.items():
        for variant in ("plain", "lightning"):
            flags = [*base, *extra, "--child", variant] + (["--flops"] if variant == "plain" else [])
            r = run_child("benchmarks.train_step", flags)
            measured = r["step_s"][args.warmup :]
            r["mean_step_s"] = sum(measured) / len(measured)
            results[f"{label}/{variant}"] = r
        flops = results[f"{label}/plain"]["flops_per_step"]
        for variant in ("plain", "lightning"):
            r = results[f"{label}/{variant}"]
            tflops = flops / r["mean_step_s"] / 1e12
            r["achieved_tflops"] = tflops
            share = f"{100 * tflops / peak:.1f}%" if peak else "-"
            rows.append([label, variant, args.batch_size / r["mean_step_s"], tflops, share, r["peak_cuda"] / 2**30])
    method = "AuxSegNet+" if args.affinity == "dual" else "AuxSegNet"
    print(f"GPU training, {name}, ResNet-38 {method} {args.crop}x{args.crop} batch {args.batch_size}; "
          f"FLOPs/step {flops / 1e12:.2f} T; bf16 peak {peak} TFLOP/s")  # fmt: skip
    print(markdown_table(["precision", "loop", "images / s", "TFLOP/s", "of bf16 peak", "peak GPU memory (GiB)"], rows))
    refresh = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/pseudo_refresh.py"), "--device", "cuda", "--affinity", args.affinity,
         "--images", str(args.refresh_images), "--configs", "1x4,4x4"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    print("\n" + refresh.stdout)
    write_json(args.json, {"args": vars(args), "results": results, "refresh": refresh.stdout, "parent": machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
