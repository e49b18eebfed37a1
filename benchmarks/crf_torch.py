"""Torch dense CRF vs pydensecrf: images/s and agreement at VOC size (500x375).

``python benchmarks/crf_torch.py [--device cpu|cuda] [--size 500x375] [--images 4] [--batch 0] [--json out.json]``

Two presets: ``auxseg_saliency`` (2 labels, 1 iteration: the label update's saliency CRF) and ``auxseg_inference``
(21 labels, 10 iterations). Inputs are scikit-image's bundled photographs resized to ``--size`` with soft
probabilities built from coarse luminance blocks (synthetic block images if scikit-image is missing). pydensecrf
always runs on the CPU (one thread); the torch CRF runs on ``--device``, timed end to end per image (numpy in, lattice
build, inference, numpy out; CUDA synchronised), after one warm-up image. ``--batch K`` also times
:func:`dense_crf_torch_batch` / :func:`saliency_crf_torch_batch` on chunks of K images (one lattice per chunk).
Agreement: share of pixels with the same label (argmax; for the saliency CRF the marginal thresholded at 0.5) and mean
|dQ| of the marginals. Nothing here passes or fails on time.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import markdown_table, write_json  # noqa: E402
from wsss_lightning.pseudo.crf import dense_crf, saliency_crf  # noqa: E402
from wsss_lightning.pseudo.crf_torch import (  # noqa: E402
    dense_crf_torch,
    dense_crf_torch_batch,
    saliency_crf_torch,
    saliency_crf_torch_batch,
)

PHOTOS = ("coffee", "astronaut", "chelsea", "rocket", "stereo_motorcycle")  # bundled with scikit-image
PRESETS = ("auxseg_saliency", "auxseg_inference")
Case = tuple[np.ndarray, np.ndarray, np.ndarray]  # image uint8 (H, W, 3), probs (C, H, W), saliency (H, W)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(0))
    return (exp / exp.sum(0)).astype(np.float32)


def _blur(x: np.ndarray, radius: int = 6, passes: int = 3) -> np.ndarray:
    """Repeated box blur (about Gaussian) of (C, H, W) maps, edges replicated."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    for _ in range(passes):
        t = F.avg_pool2d(F.pad(t, (radius,) * 4, mode="replicate"), 2 * radius + 1, stride=1)
    return t[0].numpy()


def _photo(index: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    try:
        from PIL import Image
        from skimage import data
    except ImportError:  # synthetic block image, as benchmarks/crf_pool.py
        blocks = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3))
        image = np.kron(blocks, np.ones((25, 25, 1)))[:height, :width]
        return np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    photo = getattr(data, PHOTOS[index % len(PHOTOS)])()
    if isinstance(photo, tuple):  # stereo_motorcycle: (left, right, disparity)
        photo = photo[0]
    photo = photo[..., :3]
    if index // len(PHOTOS) % 2:  # more images than photos: mirror
        photo = photo[:, ::-1]
    # np.array (a writable copy): pydensecrf refuses read-only buffers
    return np.array(Image.fromarray(np.ascontiguousarray(photo)).resize((width, height), Image.BILINEAR))


def make_cases(count: int, width: int, height: int, labels: int = 21, seed: int = 0) -> list[Case]:
    """Seeded images with soft class probabilities (3 classes present, blurred blocks + noise) and saliency."""
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(count):
        image = _photo(index, width, height, rng)
        block = 32
        grey = image.astype(np.float32).mean(2)
        rows, cols = -(-height // block), -(-width // block)
        padded = np.pad(grey, ((0, rows * block - height), (0, cols * block - width)), mode="edge")
        means = padded.reshape(rows, block, cols, block).mean((1, 3))
        present = rng.choice(np.arange(1, labels), 2, replace=False)
        coarse = np.array([0, *present])[np.digitize(means, np.quantile(means, [1 / 3, 2 / 3]))]
        label = np.kron(coarse, np.ones((block, block), np.int64))[:height, :width]
        onehot = (np.arange(labels)[:, None, None] == label[None]).astype(np.float32)
        probs = _softmax(5.0 * _blur(onehot) + rng.normal(0, 0.8, onehot.shape))
        foreground = _blur((label != 0).astype(np.float32)[None])[0]
        saliency = np.clip(foreground + rng.normal(0, 0.15, foreground.shape), 0, 1).astype(np.float32)
        cases.append((image, probs, saliency))
    return cases


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_each(fn: Callable[[Case], np.ndarray], cases: list[Case], device: str = "cpu") -> tuple[float, list]:
    """Seconds for ``fn`` over all cases (one warm-up call first) and the outputs."""
    fn(cases[0])
    _sync(device)
    start = time.perf_counter()
    outputs = [fn(case) for case in cases]
    _sync(device)
    return time.perf_counter() - start, outputs


def agreement(preset: str, expected: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
    """Per-image share of equal labels and mean |dQ|, summarised (min / mean / max)."""
    if preset == "auxseg_saliency":
        equal = [float(((e > 0.5) == (g > 0.5)).mean()) for e, g in zip(expected, got, strict=True)]
    else:
        equal = [float((e.argmax(0) == g.argmax(0)).mean()) for e, g in zip(expected, got, strict=True)]
    diff = [float(np.abs(e - g).mean()) for e, g in zip(expected, got, strict=True)]
    return {
        "equal_labels_min": min(equal),
        "equal_labels_mean": float(np.mean(equal)),
        "mean_abs_dq_mean": float(np.mean(diff)),
        "mean_abs_dq_max": max(diff),
        "max_abs_dq": max(float(np.abs(e - g).max()) for e, g in zip(expected, got, strict=True)),
    }


def crf_pydensecrf(preset: str, case: Case) -> np.ndarray:
    """pydensecrf (CPU): P(salient) (H, W) for the saliency preset, else marginals (C, H, W)."""
    if preset == "auxseg_saliency":
        return saliency_crf(case[0], case[2], preset)
    return dense_crf(case[0], case[1], preset)


def crf_torch(preset: str, case: Case, device: str) -> np.ndarray:
    """The torch CRF on ``device``, numpy in and out (a drop-in's cost: transfers included)."""
    if preset == "auxseg_saliency":
        return saliency_crf_torch(case[0], case[2], preset, device=device)
    return dense_crf_torch(case[0], case[1], preset, device=device)


def run_preset(preset: str, cases: list[Case], device: str, batch: int) -> dict[str, Any]:
    reference = functools.partial(crf_pydensecrf, preset)
    ours = functools.partial(crf_torch, preset, device=device)
    ref_seconds, expected = time_each(reference, cases)
    torch_seconds, got = time_each(ours, cases, device)
    result: dict[str, Any] = {
        "pydensecrf_images_per_s": len(cases) / ref_seconds,
        "torch_images_per_s": len(cases) / torch_seconds,
        "speedup": ref_seconds / torch_seconds,
        "agreement": agreement(preset, expected, got),
    }
    if batch > 0:
        chunks = [cases[i : i + batch] for i in range(0, len(cases), batch)]

        def batched(chunk: list[Case]) -> list[np.ndarray]:
            images = [c[0] for c in chunk]
            if preset == "auxseg_saliency":  # what a refresh batch runs with TorchCRF (refine_saliency_batch)
                return saliency_crf_torch_batch(images, [c[2] for c in chunk], preset, device=device)
            return dense_crf_torch_batch(images, [c[1] for c in chunk], preset, device=device)

        batched(chunks[0])
        _sync(device)
        start = time.perf_counter()
        outputs = [q for chunk in chunks for q in batched(chunk)]
        _sync(device)
        result["torch_batch_images_per_s"] = len(cases) / (time.perf_counter() - start)
        result["batch_agreement"] = agreement(preset, expected, outputs)
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT (default: VOC's 500x375)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch", type=int, default=0, help="also time dense_crf_torch_batch on chunks of K images")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    try:
        args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must be WIDTHxHEIGHT, got {args.size!r}")
    if args.images < 1:
        parser.error("--images must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = make_cases(args.images, args.width, args.height)
    results = {preset: run_preset(preset, cases, args.device, args.batch) for preset in PRESETS}
    rows = []
    for preset, r in results.items():
        agree = r["agreement"]
        rows.append(
            [
                preset,
                r["pydensecrf_images_per_s"],
                r["torch_images_per_s"],
                r.get("torch_batch_images_per_s", "-"),
                r["speedup"],
                f"{100 * agree['equal_labels_min']:.3f}",
                f"{agree['mean_abs_dq_max']:.1e}",
            ]
        )
    print(f"dense CRF, {args.images} images of {args.width}x{args.height}, torch on {args.device}")
    header = ["preset", "pydensecrf img/s (CPU)", f"torch img/s ({args.device})", "torch batch img/s"]
    print(markdown_table([*header, "speed-up", "equal labels % (min)", "mean abs dQ (max)"], rows))
    write_json(args.json, {"args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
