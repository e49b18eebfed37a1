"""Pseudo-label refresh: our pipeline against one image at a time with the CRF inline (the official code's way).

``python benchmarks/pseudo_refresh.py [--quick] [--images 6] [--height 375 --width 500]
[--crf pydensecrf|torch|torch-loop]
[--json out.json]``

Both paths run the same label-update job of :class:`~wsss_lightning.modules.AuxSegNetModule` (``kind="refined"``:
forward → CAM propagation by the cross-task affinity → saliency CRF (``auxseg_saliency``) → fusion → PNG writes)
on the same seeded synthetic images, in one process, one after the other:

* ``sequential``: for each image, ``label_batch`` on a batch of one, then the CRF/fusion/write job inline — the
  official ``infer_aff``-style loop. Its time is split into forward (+ propagation) and CRF + fusion + writes.
* ``pipeline (batch b, w workers)``: ``label_batch`` on batches of ``b`` while
  :class:`~wsss_lightning.pseudo.writer.PseudoLabelWriter` runs the CPU jobs in ``w`` worker processes, so the
  CRF of one batch overlaps the forward of the next (what ``PseudoLabelRefresh`` / ``wsss pseudolabel`` do).

Variants add channels-last weights/images (``+cl``: the module's ``channels_last`` switch, oneDNN's faster
convolutions, same labels up to float rounding) and bf16 autocast (``+bf16``: what a refresh does in a
``--trainer.precision bf16-mixed`` run, where ``label_batch`` runs the network in the trainer's precision context;
the affinity maths and everything after the network stay float32). The first image (batch) of each path is a warm-up
and is not timed. The labels written by each pipeline are compared pixel by pixel with the sequential path's.

``--crf`` picks the run's dense CRF (``pseudo/dense_crf.py``), as ``model.init_args.crf`` does in a config:
``pydensecrf`` (default; the saliency CRF runs in the CRF workers on the CPU) or ``torch`` (the permutohedral torch
CRF on ``--device``, in the main process, right after the forward; the workers then only fuse and write PNGs; on
CUDA a batch's images go through one lattice) or ``torch-loop`` (the same, one image at a time: ``batch_images:
false``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import build_network, machine, markdown_table, write_json  # noqa: E402

OFFICIAL = {"seconds_per_image": 3.70, "forward": 3.23, "propagation": 0.01, "crf": 0.46, "writes": 0.03}


def refresh_batches(count: int, height: int, width: int, num_classes: int = 21, seed: int = 0) -> list[dict]:
    """``count`` single-image batches shaped like ``datamodule.refresh_dataset()`` items after ``pad_collate``."""
    gen = torch.Generator().manual_seed(seed)
    items = []
    for index in range(count):
        raw = torch.randint(0, 256, (1, height, width, 3), generator=gen, dtype=torch.uint8)
        # Smooth-ish image so the CRF's bilateral kernel sees structure: blocks of colour plus noise.
        blocks = torch.randint(0, 256, (1, 3, height // 25 + 1, width // 25 + 1), generator=gen).float()
        smooth = torch.nn.functional.interpolate(blocks, size=(height, width), mode="nearest")[0].permute(1, 2, 0)
        raw = ((smooth + raw.float()[0] * 0.2) / 1.2).clamp(0, 255).to(torch.uint8)[None]
        cls_label = torch.zeros(1, num_classes - 1)
        cls_label[0, torch.randint(0, num_classes - 1, (2,), generator=gen)] = 1.0
        items.append(
            {
                "image": (raw.permute(0, 3, 1, 2).float() / 255.0 - 0.45) / 0.225,
                "raw": raw,
                "sal": torch.rand(1, height, width, generator=gen),
                "seg": torch.full((1, height, width), 255, dtype=torch.long),
                "cls_label": cls_label,
                "ori_size": torch.tensor([[height, width]]),
                "name": [f"img{index:05d}"],
            }
        )
    return items


def collate(items: list[dict]) -> dict:
    """Same-size images: concatenate (``pad_collate`` pads nothing here)."""
    out = {k: torch.cat([i[k] for i in items]) for k in items[0] if torch.is_tensor(items[0][k])}
    out["name"] = [n for i in items for n in i["name"]]
    return out


def run_sequential(module, items: list[dict], out_dir: Path) -> dict:
    from wsss_lightning.pseudo.jobs import run_label_job
    from wsss_lightning.pseudo.label_set import LabelSet

    forward, cpu, total = [], [], []
    for index, batch in enumerate(items):
        start = time.perf_counter()
        with torch.no_grad():
            jobs = module.label_batch(batch, "refined", LabelSet(out_dir)).jobs
        middle = time.perf_counter()
        for job in jobs:
            run_label_job(job)
        end = time.perf_counter()
        if index > 0:  # the first image is the warm-up
            forward.append(middle - start)
            cpu.append(end - middle)
            total.append(end - start)
    n = len(total)
    return {"seconds": sum(total), "images": n, "forward_s": sum(forward) / n, "crf_fusion_write_s": sum(cpu) / n}


def run_pipeline(module, items: list[dict], out_dir: Path, batch_size: int, workers: int, bf16: bool = False) -> dict:
    from wsss_lightning.pseudo.jobs import run_label_job
    from wsss_lightning.pseudo.label_set import LabelSet
    from wsss_lightning.pseudo.writer import PseudoLabelWriter

    writer = PseudoLabelWriter(LabelSet(out_dir), {"bench": True}, rank=0, workers=workers)
    batches = [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    # Warm-up: the first batch, and the pool's workers started (forkserver) and importing.
    with torch.no_grad():
        jobs = module.label_batch(batches[0], "refined", LabelSet(out_dir)).jobs
    for job in jobs:
        writer.submit(run_label_job, job)
    writer.close()
    writer = PseudoLabelWriter(LabelSet(out_dir), {"bench": True}, rank=0, workers=workers)
    if workers:  # start the workers before the clock (a refresh of 10k images pays this once)
        list(writer.pool.map_unordered(abs, [(1,)] * workers))
    start = time.perf_counter()
    for batch in batches[1:]:
        with torch.no_grad(), torch.autocast(module.device.type, dtype=torch.bfloat16, enabled=bf16):
            jobs = module.label_batch(batch, "refined", LabelSet(out_dir)).jobs
        for job in jobs:
            writer.submit(run_label_job, job)
    written = writer.close()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": written}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny backbone, 8 images of 188x250")
    parser.add_argument("--backbone", default="resnet38", choices=["resnet38", "tiny"])
    parser.add_argument("--affinity", default="pairwise", choices=["pairwise", "dual"])
    parser.add_argument("--images", type=int, default=6, help="timed images per path (+ 1 warm-up batch)")
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument(
        "--configs",
        default="1x1,2x1,2x1+cl,2x1+cl+bf16",
        help="pipeline variants <batch>x<workers>[+cl][+bf16],...: cl = channels-last, bf16 = bf16 autocast",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--cache-elements",
        type=int,
        default=None,
        help="the affinity's block cache in chunked mode (N > 4096 positions, e.g. 640x480); 0 = rebuild every "
        "pass; default: the network's",
    )
    parser.add_argument(
        "--crf",
        default="pydensecrf",
        choices=["pydensecrf", "torch", "torch-loop"],
        help="PydenseCRF, TorchCRF (a batch through one lattice on CUDA), or TorchCRF one image at a time",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.images, args.height, args.width = "tiny", 8, 188, 250
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from wsss_lightning.modules import AuxSegNetModule
    from wsss_lightning.pseudo.dense_crf import PydenseCRF, TorchCRF

    torch.manual_seed(0)
    device = torch.device(args.device)
    crf = {"torch": TorchCRF(), "torch-loop": TorchCRF(batch_images=False)}.get(args.crf, PydenseCRF())
    module = (
        AuxSegNetModule(
            build_network(args.backbone, affinity=args.affinity, cache_elements=args.cache_elements), crf=crf
        )
        .eval()
        .to(device)
    )
    configs = []
    for spec in args.configs.split(","):
        sizes, *flags = spec.split("+")
        batch_size, workers = (int(v) for v in sizes.split("x"))
        configs.append((batch_size, workers, "cl" in flags, "bf16" in flags))
    configs.sort(key=lambda c: c[2])  # channels-last converts the weights in place: those variants run last
    largest_batch = max(c[0] for c in configs)
    items = [
        {k: v.to(device) if torch.is_tensor(v) else v for k, v in item.items()}
        for item in refresh_batches(args.images + largest_batch, args.height, args.width)
    ]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Every path sees a warm-up of one batch and then exactly `args.images` timed images.
        timed = [item["name"][0] for item in items[largest_batch:]]
        results["sequential"] = run_sequential(module, items[largest_batch - 1 :], Path(tmp) / "sequential")
        for batch_size, workers, channels_last, bf16 in configs:
            extras = (", channels-last" if channels_last else "") + (", bf16" if bf16 else "")
            name = f"pipeline (batch {batch_size}, {workers} CRF workers{extras})"
            if channels_last and not module.channels_last:
                module.channels_last = True
                module.configure_model()
            subset = items[largest_batch - batch_size : largest_batch + args.images]
            folder = Path(tmp) / f"b{batch_size}w{workers}{'cl' if channels_last else ''}{'bf16' if bf16 else ''}"
            results[name] = run_pipeline(module, subset, folder, batch_size, workers, bf16)
            a, b = Path(tmp) / "sequential" / "seg", folder / "seg"
            agree = [float((_png(a / f"{n}.png") == _png(b / f"{n}.png")).mean()) for n in timed]
            results[name]["label_pixels_equal"] = float(np.mean(agree))
    base = results["sequential"]["seconds"] / results["sequential"]["images"]
    rows = []
    for name, r in results.items():
        per_image = r["seconds"] / r["images"]
        equal = f"{100 * r['label_pixels_equal']:.2f}%" if "label_pixels_equal" in r else "-"
        rows.append([name, per_image, 1.0 / per_image, base / per_image, equal])
    if args.backbone == "resnet38" and (args.height, args.width) == (375, 500):
        rows.append(["official AuxSegNet (reference)", OFFICIAL["seconds_per_image"], 1 / 3.70, "-", "-"])
    seq = results["sequential"]
    crf_device = args.device if args.crf.startswith("torch") else "cpu"
    print(f"Pseudo-label refresh (label update), {args.backbone} {args.affinity}, {args.height}x{args.width}, "
          f"{args.images} timed images per path, {args.crf} CRF on {crf_device}")  # fmt: skip
    header = ["path", "s / image", "images / s", "speed-up vs sequential", "label pixels equal to sequential"]
    print(markdown_table(header, rows))
    first, second = ("forward + propagation", "CRF + fusion + writes")
    if args.crf.startswith("torch"):  # the device CRF runs inside label_batch, the workers only fuse and write
        first, second = "forward + propagation + torch CRF", "fusion + writes"
    print(f"\nsequential split: {first} {seq['forward_s']:.3f} s, {second} {seq['crf_fusion_write_s']:.3f} s per image")
    write_json(args.json, {"args": vars(args), "results": results, "parent": machine()})
    return 0


def _png(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


if __name__ == "__main__":
    sys.exit(main())
