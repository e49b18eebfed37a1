"""Shared helpers of the scaling / speed benchmarks: networks, synthetic data, timers, peak memory, reports.

Every benchmark prints a markdown table and writes a JSON file (``--json``); ``--quick`` swaps ResNet-38 for a
tiny timm backbone and small images so the whole suite runs in a few minutes (``make bench``). Weights are random
(``pretrained=False`` / no checkpoint): the timings do not depend on them.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def build_network(
    backbone: str,
    num_classes: int = 21,
    affinity: str = "pairwise",
    chunk_size: int = 4096,
    dilated_conv: str = "native",
    cache_elements: int | None = None,
) -> nn.Module:
    """AuxSegNet (``affinity="pairwise"``) or AuxSegNet+ (``"dual"``) with random weights.

    ``backbone``: ``resnet38`` (the papers' ResNet-38, 104 M backbone parameters) or ``tiny`` (timm
    ``test_resnet``, for quick runs); head width 128 (the papers') for ResNet-38, 16 for ``tiny``.
    ``dilated_conv``: ResNet-38's ``dilated_conv`` switch (``native`` | ``space_to_batch``); ``tiny`` ignores it.
    ``chunk_size`` / ``cache_elements``: the affinity's chunked path (:class:`CrossTaskAffinity`; None = its
    default).
    """
    from wsss_lightning.models import AuxSegNet, AuxSegNetPlus, ResNet38, TimmBackbone

    if backbone == "resnet38":
        net_backbone: nn.Module = ResNet38(
            output_stride=8,
            freeze_bn=True,
            freeze_conv1a=True,
            dilated_conv=dilated_conv,  # type: ignore[arg-type]
        )
        head = 128
    elif backbone == "tiny":
        net_backbone = TimmBackbone("test_resnet", output_stride=8)
        head = 16
    else:
        raise ValueError(f"unknown backbone {backbone!r}")
    from wsss_lightning.models.affinity import DEFAULT_CACHE_ELEMENTS

    cls = AuxSegNetPlus if affinity == "dual" else AuxSegNet
    return cls(
        num_classes,
        net_backbone,
        affinity=affinity,
        head_channels=head,
        chunk_size=chunk_size,
        cache_elements=DEFAULT_CACHE_ELEMENTS if cache_elements is None else cache_elements,
    )


def training_batches(count: int, batch_size: int, crop: int, num_classes: int = 21, seed: int = 0) -> list[dict]:
    """``count`` seeded synthetic training batches (image, cls_label, sal in [0, 1], seg with some 255)."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        cls_label = (torch.rand(batch_size, num_classes - 1, generator=gen) < 0.15).float()
        cls_label[:, 0] = 1.0  # at least one class per image
        seg = torch.randint(0, num_classes, (batch_size, crop, crop), generator=gen)
        seg[:, : crop // 10] = 255
        batches.append(
            {
                "image": torch.randn(batch_size, 3, crop, crop, generator=gen),
                "cls_label": cls_label,
                "sal": torch.rand(batch_size, crop, crop, generator=gen),
                "seg": seg,
            }
        )
    return batches


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[list[float], Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; returns the seconds of each timed call."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def mean(values: Sequence[float]) -> float:
    return sum(values) / max(len(values), 1)


def run_child(module: str, args: Sequence[str], timeout: float = 1800) -> dict:
    """Run ``python -m <module> <args>`` in a fresh process (own peak RSS) and parse the JSON of its last line."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {
        "cpu": cpu,
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"machine": machine(), "command": " ".join(sys.argv), **payload}, indent=2))


def gib(num_bytes: float) -> float:
    return num_bytes / 2**30
