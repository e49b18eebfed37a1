"""Inference modes: images/s of single-scale, multi-scale (+ flip) and + dense CRF, as ``wsss test`` runs them.

``python benchmarks/inference_modes.py [--quick] [--images 1] [--height 375 --width 500] [--json out.json]``

:meth:`WSSSModule.predict_labels` on seeded synthetic images (AuxSegNet, random weights): ``ss`` (scale 1),
``ms`` (scales 0.5–1.5, fused by max), ``ms_flip`` (+ horizontal flips), and the ``_crf`` modes (the
``auxseg_inference`` CRF, 10 iterations, on the mode's probabilities). A ``_crf`` mode's time is its base mode's
time plus the CRF measured on the cached probabilities — exactly the work ``predict_labels`` does — so the
expensive multi-scale forward is not run twice. One warm-up image at ``ss`` first. ``--crf`` picks the CRF backend
(``pseudo/dense_crf.py``): ``pydensecrf`` (default, CPU) or ``torch`` (on ``--device``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import build_network, machine, markdown_table, write_json  # noqa: E402

OFFICIAL = {"ss": 3.16, "ss_crf": 4.76}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny backbone, 188x250")
    parser.add_argument("--backbone", default="resnet38", choices=["resnet38", "tiny"])
    parser.add_argument("--affinity", default="pairwise", choices=["pairwise", "dual"])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--modes", default="ss,ss_crf,ms,ms_flip,ms_flip_crf")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--crf", default="pydensecrf", choices=["pydensecrf", "torch"], help="dense CRF backend (PydenseCRF / TorchCRF)"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.height, args.width = "tiny", 188, 250
    return args


def _sync(device: torch.device) -> None:
    """Wait for the GPU's queued work, so the clock reads finished work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from wsss_lightning.modules import AuxSegNetModule
    from wsss_lightning.modules.inference import InferenceMode, crf_refine
    from wsss_lightning.pseudo.dense_crf import PydenseCRF, TorchCRF

    torch.manual_seed(0)
    device = torch.device(args.device)
    crf = TorchCRF() if args.crf == "torch" else PydenseCRF()
    module = AuxSegNetModule(build_network(args.backbone, affinity=args.affinity), crf=crf).eval().to(device)
    gen = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, args.height, args.width, generator=gen).to(device) for _ in range(args.images)]
    sizes = torch.tensor([[args.height, args.width]])
    modes = [InferenceMode.parse(m) for m in args.modes.split(",")]
    with torch.no_grad():
        module.predict_labels(images[0], sizes, InferenceMode.parse("ss"))  # warm-up
        _sync(device)
        base_seconds: dict[str, float] = {}
        caches: dict[str, list[dict]] = {}
        for base in dict.fromkeys(m.base for m in modes):
            _sync(device)
            caches[base] = [{} for _ in images]
            start = time.perf_counter()
            for image, cache in zip(images, caches[base]):
                module.predict_labels(image, sizes, InferenceMode.parse(base), cache)
            _sync(device)
            base_seconds[base] = (time.perf_counter() - start) / len(images)
        crf_seconds: dict[str, float] = {}
        for base in dict.fromkeys(m.base for m in modes if m.crf):
            _sync(device)
            start = time.perf_counter()
            for image, cache in zip(images, caches[base]):
                crf_refine(image, cache[base], sizes, module.crf)
            _sync(device)
            crf_seconds[base] = (time.perf_counter() - start) / len(images)
    rows, results = [], {}
    for mode in modes:
        seconds = base_seconds[mode.base] + (crf_seconds[mode.base] if mode.crf else 0.0)
        results[mode.name] = seconds
        official = OFFICIAL.get(mode.name) if args.backbone == "resnet38" else None
        rows.append([mode.name, mode.label, seconds, 1.0 / seconds, official if official is not None else "-"])
    print(f"Inference modes, {args.backbone} {args.affinity}, {args.height}x{args.width}, {args.images} image(s), "
          f"scales {list(module.eval_scales)}, CRF {module.crf}")  # fmt: skip
    print(markdown_table(["mode", "label", "s / image", "images / s", "official s / image"], rows))
    write_json(args.json, {"args": vars(args), "seconds_per_image": results, "parent": machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
