"""Training step: our LightningModule against a plain PyTorch loop over the same network and batches.

``python benchmarks/train_step.py [--quick] [--steps 3] [--warmup 1] [--json out.json]``

Each variant runs in its own process (so each has its own peak RSS), one after the other in one invocation:

* ``plain``: ``net(images)`` → the AuxSegNet losses (cls + 2 sal + 2 seg) → ``backward`` → SGD (two parameter
  groups, the module's) → poly ``LambdaLR`` step;
* ``lightning``: ``Trainer.fit`` of :class:`~wsss_lightning.modules.AuxSegNetModule` on the same network
  (seed 0), the same batches (seeded synthetic, one ``DataLoader(batch_size=None)``) and the same optimiser.

Step time = wall time between the ends of consecutive steps (so data fetching, hooks, logging and the optimiser
all count); the first ``--warmup`` steps are excluded. ``--timing step`` (default) synchronises the device after every
step, so each step is timed alone and the periodic slow step shows. ``--timing window`` synchronises only at the end of
the warm-up and after the last step and divides that window by the steps: a real run's rate, where the host queues the
next step while the device still works on this one, so only the loop's own synchronisations (in ``lightning`` the
NaN/Inf guard's one per step) stall the device. The overhead is ``lightning / plain - 1``. Defaults: the
papers' setting, ResNet-38 at 321×321, batch 4 (about 20 s a step on 2 CPU cores). ``--flops`` also counts the
FLOPs of one step (forward + backward, ``torch.utils.flop_counter``) in the plain process, after the timing.

Speed levers, each measured on its own (``benchmarks/gpu_session.sh`` runs them on a GPU): ``--cudnn-benchmark``,
``--compile`` (``--compile-mode reduce-overhead`` = CUDA graphs), ``--sgd foreach|fused``, ``--pin-memory``,
``--nonfinite-check deferred`` (Lightning's NaN/Inf guard without its per-step sync; with ``--sgd fused``),
``--dilated-conv space_to_batch`` (ResNet-38's dilated convs as dense ones on phase-split maps), ``--channels-last``
and ``--precision bf16-mixed``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/x.py` finds `benchmarks`

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    build_network,
    gib,
    machine,
    markdown_table,
    mean,
    peak_rss_bytes,
    run_child,
    training_batches,
    write_json,
)
from wsss_lightning.models.dilated_conv import DILATED_CONV_IMPLS  # noqa: E402
from wsss_lightning.modules.base import COMPILE_MODES, NONFINITE_CHECKS, OPTIMIZER_KERNELS  # noqa: E402

CHILDREN = ("plain", "lightning", "lightning-full", "lightning-cl", "lightning-bf16-cl")
OFFICIAL = {"images_per_s": 0.166, "step_s": 24.0, "peak_rss_gib": 7.4 * 1e9 / 2**30}


def _loss(net_out, batch) -> torch.Tensor:
    from wsss_lightning.losses import multilabel_soft_margin, saliency_bce_loss, segmentation_ce_loss

    loss = multilabel_soft_margin(net_out.cls_logits, batch["cls_label"])
    sal, seg = batch["sal"], batch["seg"]
    loss = loss + saliency_bce_loss(net_out.sal_logits, sal) + saliency_bce_loss(net_out.sal_refined, sal)
    return loss + segmentation_ce_loss(net_out.seg_logits, seg) + segmentation_ce_loss(net_out.seg_refined, seg)


def _setup(args):
    torch.manual_seed(0)
    net = build_network(args.backbone, affinity=args.affinity, dilated_conv=args.dilated_conv)
    batches = training_batches(args.warmup + args.steps, args.batch_size, args.crop)
    # --pin-memory: page-locked batches, so the (non_blocking) host-to-device copies overlap with compute.
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, pin_memory=args.pin_memory)
    return net, loader


def _autocast(args):
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32
    return torch.autocast(device.type, dtype=dtype, enabled=args.precision == "bf16-mixed")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _step_end(args, done: int, ends: list[float]) -> None:
    """Record the end of step ``done`` (1-based). ``--timing step``: after a device sync, every step. ``--timing
    window``: a sync only at the end of the warm-up and of the last step (the queue then runs ahead as in a real run;
    the other entries are the host's enqueue times)."""
    if args.timing == "step" or done in (args.warmup, args.warmup + args.steps):
        _sync(args.device)
    ends.append(time.perf_counter())


def _timing_result(args, ends: list[float]) -> dict:
    """The per-step times, and with ``--timing window`` the synchronised window over the measured steps."""
    result = {"step_s": [b - a for a, b in zip(ends, ends[1:])], "peak_rss": peak_rss_bytes()}
    if args.timing == "window":
        result["window_s"] = ends[args.warmup + args.steps] - ends[args.warmup]
    return result


def child_plain(args) -> dict:
    from wsss_lightning.modules import AuxSegNetModule

    net, loader = _setup(args)
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    net = net.to(device, memory_format=memory_format).train()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    # The module only supplies the optimiser recipe (same groups, lr, poly schedule, SGD kernel); the loop is plain
    # PyTorch.
    module = AuxSegNetModule(net, lr=7e-4, optimizer_kernel=args.sgd)
    steps = args.warmup + args.steps
    module.lr_segment_steps = lambda: steps  # type: ignore[method-assign]
    optim = module.configure_optimizers()
    optimizer, scheduler = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    if args.compile:
        net.compile(mode=args.compile_mode)
    ends = [time.perf_counter()]
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        images = batch["image"].contiguous(memory_format=memory_format)
        with _autocast(args):
            out = net(images)
            loss = _loss(out, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        _step_end(args, len(ends), ends)
    result = _timing_result(args, ends)
    if args.device.startswith("cuda"):
        result["peak_cuda"] = torch.cuda.max_memory_allocated()
    result["parameters"] = sum(p.numel() for p in net.parameters())
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode

        batch = {k: v.to(device) for k, v in next(iter(loader)).items()}
        with FlopCounterMode(display=False) as counter:
            with _autocast(args):
                loss = _loss(net(batch["image"].contiguous(memory_format=memory_format)), batch)
            loss.backward()
        result["flops_per_step"] = counter.get_total_flops()
        # Where the forward FLOPs go (the network's top-level parts): which levers can matter at all.
        with torch.no_grad(), FlopCounterMode(display=False, depth=2) as counter, _autocast(args):
            net(batch["image"].contiguous(memory_format=memory_format))
        result["forward_flops_by_part"] = {
            name.split(".", 1)[1]: sum(ops.values())
            for name, ops in counter.get_flop_counts().items()
            if name.count(".") == 1
        }
        result["forward_flops"] = counter.get_total_flops()
    if args.profile:
        result["profile"] = _profile(args, net, loader, optimizer, device, memory_format)
    return result


def _profile(args, net, loader, optimizer, device, memory_format) -> dict:
    """``--profile N``: N more steps under ``torch.profiler`` (benchmarks/step_profile.py), after the timing."""
    from benchmarks.step_profile import profile_steps

    cached = list(loader)
    batches = [{k: v.to(device) for k, v in cached[i % len(cached)].items()} for i in range(args.profile)]

    def forward(batch):
        with _autocast(args):
            return net(batch["image"].contiguous(memory_format=memory_format))

    def loss_of(out, batch):
        with _autocast(args):
            return _loss(out, batch)

    # The optimiser only: the poly schedule has no steps left after the timed ones.
    return profile_steps(net, batches, forward, loss_of, optimizer.step, device)


def child_lightning(args) -> dict:
    import lightning as L

    from wsss_lightning.modules import AuxSegNetModule

    net, loader = _setup(args)
    # Variants: "lightning", "lightning-cl" (channels-last switch), "lightning-bf16-cl" (+ bf16-mixed precision),
    # "lightning-full" (+ the callbacks `wsss fit` adds to every run: the stage progress bar and the throughput log).
    channels_last = args.channels_last or args.child.endswith("-cl")
    precision = "bf16-mixed" if "bf16" in args.child else args.precision
    module = AuxSegNetModule(
        net,
        lr=7e-4,
        channels_last=channels_last,
        compile=args.compile,
        compile_mode=args.compile_mode,
        optimizer_kernel=args.sgd,
        nonfinite_check=args.nonfinite_check,
    )
    ends: list[float] = []
    extra: list[L.Callback] = []
    if args.child == "lightning-full":
        from wsss_lightning.callbacks.progress import StageProgressBar
        from wsss_lightning.callbacks.throughput import Throughput

        extra = [StageProgressBar(), Throughput()]

    class StepClock(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            ends.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            _step_end(args, batch_idx + 1, ends)

    trainer = L.Trainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices=1,
        precision=precision,
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=bool(extra),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[StepClock(), *extra],
        benchmark=args.cudnn_benchmark,
    )
    trainer.fit(module, train_dataloaders=loader)
    result = _timing_result(args, ends)
    if args.device.startswith("cuda"):
        result["peak_cuda"] = torch.cuda.max_memory_allocated()
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny backbone, crop 96, batch 2 (seconds)")
    parser.add_argument("--backbone", default="resnet38", choices=["resnet38", "tiny"])
    parser.add_argument("--affinity", default="pairwise", choices=["pairwise", "dual"], help="AuxSegNet / AuxSegNet+")
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="measured steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument(
        "--timing",
        default="step",
        choices=["step", "window"],
        help="step: sync after every step (each step timed alone); window: sync only around the measured steps",
    )
    parser.add_argument("--flops", action="store_true", help="count the FLOPs of one step (plain process)")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="profile N more steps by part and op (plain process)"
    )
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark (Lightning: benchmark)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the network (the module's compile switch)"
    )
    parser.add_argument(
        "--compile-mode",
        default=None,
        choices=[mode for mode in COMPILE_MODES if mode is not None],
        help="torch.compile mode with --compile (reduce-overhead = CUDA graphs; the module's compile_mode)",
    )
    parser.add_argument(
        "--dilated-conv",
        default="native",
        choices=DILATED_CONV_IMPLS,
        help="ResNet-38's dilated 3x3 convs: native or as dense convs on phase-split maps (exact)",
    )
    parser.add_argument(
        "--pin-memory", action="store_true", help="pinned DataLoader batches (copies are non_blocking either way)"
    )
    parser.add_argument(
        "--sgd",
        default="default",
        choices=OPTIMIZER_KERNELS,
        help="SGD kernel (the module's optimizer_kernel, in both loops)",
    )
    parser.add_argument(
        "--nonfinite-check",
        default="sync",
        choices=NONFINITE_CHECKS,
        help="Lightning's NaN/Inf guard (the module's nonfinite_check; deferred needs --sgd fused)",
    )
    parser.add_argument(
        "--variants",
        default="plain,lightning",
        help="comma list of plain, lightning, lightning-full (+ wsss fit's progress bar and throughput callbacks), "
        "lightning-cl (channels-last), lightning-bf16-cl (+ bf16-mixed)",
    )
    parser.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:  # many short steps: the per-step framework overhead (ms) is what is measured here
        args.backbone, args.crop, args.batch_size = "tiny", 96, 2
        args.steps, args.warmup = max(args.steps, 30), max(args.warmup, 5)
    return args


def child_args(args: argparse.Namespace) -> list[str]:
    out = ["--backbone", args.backbone, "--affinity", args.affinity, "--crop", str(args.crop)]
    out += ["--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    out += ["--device", args.device, "--precision", args.precision, "--timing", args.timing]
    out += ["--channels-last"] if args.channels_last else []
    out += ["--flops"] if args.flops else []
    out += ["--profile", str(args.profile)] if args.profile else []
    out += ["--cudnn-benchmark"] if args.cudnn_benchmark else []
    out += ["--compile"] if args.compile else []
    out += ["--compile-mode", args.compile_mode] if args.compile_mode else []
    out += ["--dilated-conv", args.dilated_conv]
    out += ["--pin-memory"] if args.pin_memory else []
    out += ["--sgd", args.sgd, "--nonfinite-check", args.nonfinite_check]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        fn = child_plain if args.child == "plain" else child_lightning
        print(json.dumps(fn(args)))
        return 0
    results = {}
    for variant in args.variants.split(","):
        # A variant named twice (both run orders in one invocation) is kept as "<variant>#2", "#3", ...
        key = variant if variant not in results else f"{variant}#{sum(k.split('#')[0] == variant for k in results) + 1}"
        results[key] = run_child("benchmarks.train_step", [*child_args(args), "--child", variant])
        measured = results[key]["step_s"][args.warmup :]
        # --timing window: the synchronised window; the per-step entries are then host enqueue times
        mean_step = results[key]["window_s"] / args.steps if "window_s" in results[key] else mean(measured)
        results[key]["mean_step_s"] = mean_step
        results[key]["images_per_s"] = args.batch_size / mean_step
        # The periodic slow step: the median, the slowest step and how many took over 1.5x the median.
        median = sorted(measured)[len(measured) // 2]
        results[key]["median_step_s"] = median
        results[key]["max_step_s"] = max(measured)
        results[key]["slow_steps"] = sum(step > 1.5 * median for step in measured)
    rows = []
    cuda = args.device.startswith("cuda")
    for variant, r in results.items():
        rows.append([variant, r["mean_step_s"], r["images_per_s"], gib(r["peak_rss"])])
        if cuda:
            rows[-1] += [gib(r["peak_cuda"]), r["median_step_s"], r["max_step_s"]]
    if args.backbone == "resnet38" and args.crop == 321 and args.batch_size == 4 and args.device == "cpu":
        ref = OFFICIAL
        rows.append(["official AuxSegNet (reference)", ref["step_s"], ref["images_per_s"], ref["peak_rss_gib"]])
    print(f"Training step, {args.backbone} {args.affinity} {args.crop}x{args.crop} batch {args.batch_size}, "
          f"{args.device} {args.precision}, {args.warmup} warm-up + {args.steps} measured steps, "
          f"timing: {args.timing}")  # fmt: skip
    header = ["variant", "s / step", "images / s", "peak RSS (GiB)"]
    header += ["peak GPU memory (GiB)", "median s / step", "slowest s / step"] if cuda else []
    print(markdown_table(header, rows))
    summary = {}
    if "plain" in results and "lightning" in results:
        # Repeated variants (both orders): the mean over their runs.
        plain_s = mean([r["mean_step_s"] for k, r in results.items() if k.split("#")[0] == "plain"])
        lightning_s = mean([r["mean_step_s"] for k, r in results.items() if k.split("#")[0] == "lightning"])
        summary["lightning_overhead"] = lightning_s / plain_s - 1
        delta_ms = 1000 * (lightning_s - plain_s)
        summary["lightning_minus_plain_ms"] = delta_ms
        print(f"\nLightning overhead: {delta_ms:+.1f} ms per step, {100 * summary['lightning_overhead']:+.1f}% "
              "(target <= 5%). The variant run first is slower on a shared machine: compare both orders "
              "(--variants lightning,plain), see docs/benchmarks.md.")  # fmt: skip
    if "flops_per_step" in results.get("plain", {}):
        per_image = results["plain"]["flops_per_step"] / args.batch_size
        summary["tflop_per_image"] = per_image / 1e12
        summary["parameters"] = results["plain"]["parameters"]
        print(f"FLOPs (forward + backward): {per_image / 1e12:.3f} TFLOP per image; "
              f"{results['plain']['parameters'] / 1e6:.1f} M parameters")  # fmt: skip
        forward = results["plain"]["forward_flops"]
        summary["forward_flop_share"] = {k: v / forward for k, v in results["plain"]["forward_flops_by_part"].items()}
        shares = ", ".join(f"{k} {100 * v:.2f} %" for k, v in summary["forward_flop_share"].items())
        print(f"Forward FLOPs by part: {shares} of the forward FLOPs (parts the counter attributes)")
    if "profile" in results.get("plain", {}):
        from benchmarks.step_profile import report

        print("\n" + report(results["plain"]["profile"]))
    write_json(args.json, {"args": vars(args), "results": results, "summary": summary, "parent": machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
