"""The summary of a ``benchmarks/gpu_session.sh`` run: one JSON and one markdown report, against issue 13's figures.

``python benchmarks/gpu_session_summary.py WORK_DIR OUT_DIR``

Reads what the session's steps left in ``WORK_DIR`` (``steps.jsonl``: one line per step with its command, exit
status and seconds; ``env.json``; each benchmark's ``--json``; ``pytest_gpu.xml``) and writes
``OUT_DIR/gpu_session.json`` (every raw result plus the derived figures) and ``OUT_DIR/gpu_session.md``. Missing or
failed steps are reported as such: nothing is filled in. Run after every step, so a session cut short still leaves
its summary.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.e2e_estimate import markdown_table  # noqa: E402  (no torch import: runs after every step)

# Issue 13's reference figures: one H200, torch 2.11 + CUDA 13, ResNet-38 321x321 batch 8, 3 warm-up + 10 steps.
OFFICIAL = {
    "bf16_cl_images_per_s": 146.8,
    "bf16_cl_peak_gib": 5.35,
    "fp32_images_per_s": 73.6,
    "fp32_peak_gib": 7.41,
    "refresh_s_per_image": 0.47,
}
EARLIER_OURS = {"plain_bf16_cl": 146.2, "lightning_bf16_cl": 136.7, "plain_fp32": 71.8, "dual_plain_bf16_cl": 142.8}
TARGETS = {
    "train_images_per_s": 220.0,
    "lightning_overhead": 0.03,
    "bf16_peak_share": 0.35,
    "refresh_images_per_s": 20.0,
    "crf_equal_labels": 0.99,
}
BF16_PEAK_TFLOPS = 989.0  # H200 / H100 SXM dense bf16, vendor datasheet

TRAIN_RUNS = {  # step name -> what it varies (bf16 + channels-last ResNet-38 pairwise batch 8 unless named)
    "train_pairwise_bf16_cl": "baseline: bf16 + channels-last, plain and Lightning (bare and with wsss fit's "
    "callbacks), both orders",
    "train_lever_cudnn_benchmark": "cudnn.benchmark (plain; Lightning benchmark=True)",
    "train_lever_sgd_foreach": "SGD foreach (plain)",
    "train_lever_sgd_fused": "SGD fused (plain)",
    "train_lever_dilated_s2b": "dilated convs as dense convs on phase-split maps, space_to_batch (plain)",
    "train_lever_pin_memory": "pinned memory + non_blocking copies (plain)",
    "train_lever_compile": "torch.compile of the network (plain)",
    "train_lever_cuda_graphs": "torch.compile mode reduce-overhead = CUDA graphs (plain)",
    "train_dual_bf16_cl": "AuxSegNet+ (dual affinity)",
    "train_pairwise_fp32": "fp32 (TF32 convolutions), 20 steps: the periodic slow step",
    "train_profile": "torch.profiler: device time by part (forward/<part>, loss, backward, optimizer) and top ops",
    "train_window": "baseline with fused SGD, timed over the whole window (no per-step sync: a real run's "
    "queueing), plain and Lightning with wsss fit's callbacks, both orders",
    "train_window_deferred": "the same Lightning run with the NaN/Inf guard deferred (nonfinite_check: deferred)",
}


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _kind(variant: str) -> str:
    return variant.split("#")[0]


def train_summary(raw: dict[str, Any]) -> dict[str, Any]:
    results, args = raw["results"], raw["args"]
    flops = raw.get("summary", {}).get("tflop_per_image")
    variants = {}
    for name, r in results.items():
        variants[name] = {
            "images_per_s": r["images_per_s"],
            "mean_step_s": r["mean_step_s"],
            "median_step_s": r.get("median_step_s"),
            "max_step_s": r.get("max_step_s"),
            "slow_steps": r.get("slow_steps"),
            "peak_cuda_gib": r["peak_cuda"] / 2**30 if "peak_cuda" in r else None,
        }
        if flops:
            tflops = flops * r["images_per_s"]
            variants[name].update(achieved_tflops=tflops, bf16_peak_share=tflops / BF16_PEAK_TFLOPS)
    by_kind: dict[str, list[float]] = {}
    for name, v in variants.items():
        by_kind.setdefault(_kind(name), []).append(v["images_per_s"])
    mean_images = {kind: sum(values) / len(values) for kind, values in by_kind.items()}
    out = {
        "args": {  # .get: JSON files of earlier versions lack the newer switches
            k: args.get(k)
            for k in (
                "affinity",
                "precision",
                "channels_last",
                "batch_size",
                "steps",
                "warmup",
                "cudnn_benchmark",
                "compile",
                "compile_mode",
                "sgd",
                "dilated_conv",
                "pin_memory",
                "timing",
                "nonfinite_check",
            )
        },  # fmt: skip
        "variants": variants,
        "mean_images_per_s": mean_images,
        "tflop_per_image": flops,
    }
    if "profile" in results.get("plain", {}):
        out["profile"] = results["plain"]["profile"]
    if "plain" in mean_images and "lightning" in mean_images:
        out["lightning_overhead"] = mean_images["plain"] / mean_images["lightning"] - 1  # step time ratio - 1
    if "plain" in mean_images and "lightning-full" in mean_images:  # + wsss fit's progress bar and throughput log
        out["lightning_full_overhead"] = mean_images["plain"] / mean_images["lightning-full"] - 1
    return out


def crf_summary(raw: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for preset, r in raw["results"].items():
        out[preset] = {
            "pydensecrf_images_per_s": r["pydensecrf_images_per_s"],
            "torch_images_per_s": r["torch_images_per_s"],
            "torch_batch_images_per_s": r.get("torch_batch_images_per_s"),
            "speedup": r["speedup"],
            "equal_labels_min": r["agreement"]["equal_labels_min"],
            "equal_labels_mean": r["agreement"]["equal_labels_mean"],
            "meets_99_percent": r["agreement"]["equal_labels_min"] >= TARGETS["crf_equal_labels"],
        }
    return {"images": raw["args"]["images"], "size": raw["args"]["size"], "presets": out}


def refresh_summary(raw: dict[str, Any]) -> dict[str, Any]:
    paths = {}
    for name, r in raw["results"].items():
        paths[name] = {"s_per_image": r["seconds"] / r["images"], "images_per_s": r["images"] / r["seconds"],
                       "label_pixels_equal": r.get("label_pixels_equal")}  # fmt: skip
    seq = raw["results"].get("sequential", {})
    best = max((p["images_per_s"] for n, p in paths.items() if n.startswith("pipeline")), default=None)
    return {"crf": raw["args"].get("crf", "pydensecrf"), "images": raw["args"]["images"], "paths": paths,
            "sequential_forward_s": seq.get("forward_s"), "sequential_cpu_jobs_s": seq.get("crf_fusion_write_s"),
            "best_pipeline_images_per_s": best}  # fmt: skip


def pytest_summary(path: Path) -> dict[str, Any] | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    tests = {}
    for case in root.iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = child.tag
            elif child.tag == "skipped":
                outcome = "skipped: " + (child.get("message") or "")
        tests[f"{case.get('classname')}::{case.get('name')}"] = {"outcome": outcome, "seconds": float(case.get("time"))}
    return tests


def summarize(work: Path) -> dict[str, Any]:
    steps = []
    if (work / "steps.jsonl").exists():
        steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines() if line.strip()]
    summary: dict[str, Any] = {"env": _load(work / "env.json"), "steps": steps, "train": {}, "refresh": {},
                               "inference": {}, "official": OFFICIAL, "earlier_ours": EARLIER_OURS,
                               "targets": TARGETS}  # fmt: skip
    for step in TRAIN_RUNS:
        raw = _load(work / f"{step}.json")
        if raw:
            summary["train"][step.removeprefix("train_")] = {"what": TRAIN_RUNS[step], **train_summary(raw)}
    raw = _load(work / "crf_torch.json")
    if raw:
        summary["crf"] = crf_summary(raw)
    for crf in ("torch", "pydensecrf", "torch_loop"):
        raw = _load(work / f"refresh_{crf}.json")
        if raw:
            summary["refresh"][crf] = refresh_summary(raw)
        raw = _load(work / f"inference_{crf}.json")
        if raw:
            summary["inference"][crf] = {"seconds_per_image": raw["seconds_per_image"]}
    summary["pytest_gpu"] = pytest_summary(work / "pytest_gpu.xml")
    summary["verdicts"] = verdicts(summary)
    from benchmarks.e2e_estimate import DEFAULT_OFFICIAL, DEFAULT_OURS, Workload, estimate, rates_from_session

    ours = {**DEFAULT_OURS, **rates_from_session(summary)}
    summary["e2e_estimate"] = estimate(ours, dict(DEFAULT_OFFICIAL), Workload())
    return summary


def verdicts(s: dict[str, Any]) -> list[list[str]]:
    """[issue 13 target, measured here, ratio / verdict] rows; 'not measured' where the step gave nothing."""
    rows = []
    base = s["train"].get("pairwise_bf16_cl")
    if base and "plain" in base["mean_images_per_s"]:
        plain = base["mean_images_per_s"]["plain"]
        peaks = [v["peak_cuda_gib"] for k, v in base["variants"].items() if _kind(k) == "plain" and v["peak_cuda_gib"]]
        memory = f"{max(peaks):.2f} GiB" if peaks else "no GPU memory figure"
        rows.append(["training ≥ 220 img/s bf16 (1.5× official 146.8), memory ≤ 5.35 GiB",
                     f"plain {plain:.1f} img/s, {memory}",
                     f"{plain / OFFICIAL['bf16_cl_images_per_s']:.2f}× official"])  # fmt: skip
        if "lightning_overhead" in base:
            rows.append(["Lightning within 3 % of plain", f"{100 * base['lightning_overhead']:+.1f} %",
                         "met" if base["lightning_overhead"] <= 0.03 else "missed"])  # fmt: skip
        if "lightning_full_overhead" in base:
            full = base["lightning_full_overhead"]
            rows.append(["same, with wsss fit's progress bar + throughput callbacks", f"{100 * full:+.1f} %",
                         "met" if full <= 0.03 else "missed"])  # fmt: skip
        share = [v.get("bf16_peak_share") for k, v in base["variants"].items() if _kind(k) == "plain"]
        if share and share[0]:
            rows.append(["≥ 35 % of the bf16 peak (989 TFLOP/s)", f"{100 * max(share):.1f} %",
                         "met" if max(share) >= 0.35 else "missed"])  # fmt: skip
    else:
        rows.append(["training ≥ 220 img/s bf16", "not measured (step failed or skipped)", "-"])
    window = s["train"].get("window")
    if window and "lightning_full_overhead" in window:
        full = window["lightning_full_overhead"]
        rows.append(["same, fused SGD, timed over the window (no per-step sync; the NaN guard's one sync remains)",
                     f"{100 * full:+.1f} %", "met" if full <= 0.03 else "missed"])  # fmt: skip
        deferred = s["train"].get("window_deferred", {}).get("mean_images_per_s", {}).get("lightning-full")
        if deferred and "plain" in window["mean_images_per_s"]:
            over = window["mean_images_per_s"]["plain"] / deferred - 1
            rows.append(["same, the NaN guard deferred (nonfinite_check: deferred, no sync)", f"{100 * over:+.1f} %",
                         "met" if over <= 0.03 else "missed"])  # fmt: skip
    for name in (n.removeprefix("train_") for n in TRAIN_RUNS if n.startswith("train_lever_")):
        run = s["train"].get(name)
        if run and base and "plain" in run["mean_images_per_s"] and "plain" in base["mean_images_per_s"]:
            ratio = run["mean_images_per_s"]["plain"] / base["mean_images_per_s"]["plain"]
            rows.append([f"lever: {TRAIN_RUNS['train_' + name]}", f"{run['mean_images_per_s']['plain']:.1f} img/s",
                         f"{ratio:.3f}× the baseline plain loop"])  # fmt: skip
        else:
            rows.append([f"lever: {TRAIN_RUNS['train_' + name]}", "not measured", "-"])
    crf = s.get("crf")
    for preset in ("auxseg_saliency", "auxseg_inference"):
        p = crf["presets"].get(preset) if crf else None
        if p:
            verdict = ("met" if p["meets_99_percent"] else "missed") + f"; {p['speedup']:.2f}× pydensecrf's speed"
            rows.append([f"torch CRF on the GPU = pydensecrf on ≥ 99 % of label pixels ({preset})",
                         f"{100 * p['equal_labels_min']:.3f} % (min over images); {p['torch_images_per_s']:.1f} img/s "
                         f"vs pydensecrf {p['pydensecrf_images_per_s']:.2f} img/s", verdict])  # fmt: skip
        else:
            rows.append([f"torch CRF agreement ({preset})", "not measured", "-"])
    refresh = s["refresh"].get("torch")
    if refresh and refresh["best_pipeline_images_per_s"]:
        best = refresh["best_pipeline_images_per_s"]
        verdict = ("met" if best >= 20 else "missed") + f", {best * OFFICIAL['refresh_s_per_image']:.1f}× official"
        rows.append(["refresh ≥ 20 img/s at 500×375 (official ≈ 2.1 img/s)", f"{best:.1f} img/s (torch CRF)", verdict])
    else:
        rows.append(["refresh ≥ 20 img/s at 500×375", "not measured", "-"])
    loop = s["refresh"].get("torch_loop")
    shared = sorted(set(loop["paths"]) & set(refresh["paths"])) if (loop and refresh) else []
    shared = [name for name in shared if name.startswith("pipeline")]
    if shared:
        name = shared[-1]
        batched, single = refresh["paths"][name]["images_per_s"], loop["paths"][name]["images_per_s"]
        rows.append([f"lever: the torch CRF's batch through one lattice vs one image at a time ({name})",
                     f"{batched:.1f} vs {single:.1f} img/s",
                     f"{batched / single:.2f}× (keep `batch_images: null` = on for CUDA if > 1)"])  # fmt: skip
    else:
        rows.append(["lever: the torch CRF's batch through one lattice vs one image at a time", "not measured", "-"])
    tests = s.get("pytest_gpu") or {}
    ddp = {k: v for k, v in tests.items() if "ddp_gpu" in k}
    if ddp:
        outcome = ", ".join(f"{v['outcome']} ({v['seconds']:.0f} s)" for v in ddp.values())
        rows.append(["DDP with NCCL: fit → refresh → test equal to one process", outcome, "-"])
    else:
        rows.append(["DDP with NCCL (tests/test_ddp_gpu.py)", "not run", "-"])
    return rows


def markdown(s: dict[str, Any]) -> str:
    from benchmarks.e2e_estimate import report

    env = s.get("env") or {}
    lines = [f"# GPU session: {env.get('gpu', '?')}, torch {env.get('torch', '?')}, {env.get('date', '?')}", ""]
    lines.append(markdown_table(["issue 13 target", "measured", "verdict"], s["verdicts"]))
    lines += ["", "## Steps", ""]
    rows = [[st["name"], st["status"], st.get("rc"), f"{st.get('seconds', 0):.0f}", st.get("command", "")]
            for st in s["steps"]]  # fmt: skip
    lines.append(markdown_table(["step", "status", "rc", "s", "command"], rows))
    lines += ["", "## Training (ResNet-38 321×321 batch 8)", ""]
    rows = []
    for name, run in s["train"].items():
        for variant, v in run["variants"].items():
            gib = "-" if v["peak_cuda_gib"] is None else f"{v['peak_cuda_gib']:.2f}"
            rows.append([name, variant, f"{v['images_per_s']:.1f}", gib, f"{v['median_step_s']:.4f}",
                         f"{v['max_step_s']:.4f}", v["slow_steps"]])  # fmt: skip
    lines.append(
        markdown_table(["run", "variant", "img/s", "peak GiB", "median s", "slowest s", "steps > 1.5× med"], rows)
    )
    for name, run in s["train"].items():
        if "profile" in run:
            from benchmarks.step_profile import report as profile_report

            lines += ["", f"## Where the step's time goes ({name})", "", profile_report(run["profile"])]
    for crf, r in s["refresh"].items():
        lines += ["", f"## Refresh, {crf} CRF, 500×375", ""]
        rows = [[n, f"{p['s_per_image']:.4f}", f"{p['images_per_s']:.2f}", p["label_pixels_equal"]]
                for n, p in r["paths"].items()]  # fmt: skip
        lines.append(markdown_table(["path", "s / image", "img/s", "label pixels equal to sequential"], rows))
    for crf, r in s["inference"].items():
        lines += ["", f"## Inference modes, {crf} CRF, 500×375 (s / image)", ""]
        lines.append(
            markdown_table(["mode", "s / image"], [[m, f"{v:.4f}"] for m, v in r["seconds_per_image"].items()])
        )
    lines += ["", "## End-to-end estimate (benchmarks/e2e_estimate.py)", "", report(s["e2e_estimate"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__)
        return 2
    work, out = Path(argv[0]), Path(argv[1])
    summary = summarize(work)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_session.json").write_text(json.dumps(summary, indent=1))
    text = markdown(summary)
    (out / "gpu_session.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
