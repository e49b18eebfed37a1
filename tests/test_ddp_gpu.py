"""DDP on CUDA with NCCL (issue 13, item 4): ``strategy=ddp`` on every visible GPU through fit → label refresh → test.

The CPU version with two gloo processes is ``test_ddp.py``; this one runs the same ``wsss`` commands on the GPUs:

1. ``wsss fit`` (warm-up, initial labels, one stage, the refresh after it) with ``strategy: ddp`` on
   ``torch.cuda.device_count()`` GPUs. :class:`NcclProbe` (imported by the ``wsss`` processes from this file) records
   on every rank the process group's backend (``nccl``), the world size, the ranks and the module's device.
   Every label set of the fit holds each training id exactly once, with one ``written_per_rank`` entry per GPU.
2. ``wsss pseudolabel`` from the fit's ``last.ckpt`` on every GPU (DDP) and in one process on one GPU
   (``strategy: auto``): the two label sets are equal pixel for pixel, and equal to the refresh that the DDP fit
   itself wrote after its last stage (the same weights).
3. ``wsss test`` from the same checkpoint on every GPU and in one process: the segmentation mIoU and every saliency
   metric are equal.

On a one-GPU machine the DDP runs are one NCCL process (world size 1): the process group, the sharded samplers and
the rank-0 merges all run, and the comparison is DDP against no DDP. Skipped without CUDA; ``-m "not gpu"`` (what
``make test`` and CI run) deselects it.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from test_ddp import _wsss, check_nan_on_one_rank
from tiny_config import checkpoint_callback, write_tiny_config

from wsss_lightning.data.demo import TINY_SETTINGS, generate_demo
from wsss_lightning.data.splits import read_id_list

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 1, reason="needs a CUDA GPU"),
]

BATCH_SIZE = 4


class NcclProbe(L.Callback):
    """Runs inside the ``wsss fit`` processes: writes ``<out_dir>/rank<r>.json`` with the process group's backend,
    the world size, the ranks and the device of the module, at the start of the fit."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import torch.distributed as dist

        initialized = dist.is_available() and dist.is_initialized()
        record = {
            "backend": dist.get_backend() if initialized else None,
            "process_group_size": dist.get_world_size() if initialized else None,
            "world_size": trainer.world_size,
            "global_rank": trainer.global_rank,
            "local_rank": trainer.local_rank,
            "device": str(pl_module.device),
            "strategy": type(trainer.strategy).__name__,
        }
        out = Path(self.out_dir) / f"rank{trainer.global_rank}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record))


def gpu_trainer(run: Path, devices: int, strategy: str, accelerator: str = "gpu") -> dict:
    """The ``trainer`` section: DDP (or one process) on ``devices`` GPUs, the checkpoint, the probe."""
    return {
        "accelerator": accelerator,
        "devices": devices,
        "strategy": strategy,
        "default_root_dir": str(run),
        "logger": False,
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "callbacks": [
            checkpoint_callback(run),
            {"class_path": "test_ddp_gpu.NcclProbe", "init_args": {"out_dir": str(run / "probe")}},
        ],
    }


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def assert_same_labels(a: Path, b: Path, ids: list[str]) -> None:
    """Both label sets hold ``seg/`` and ``sal/`` PNGs for exactly ``ids``, equal pixel for pixel."""
    for kind in ("seg", "sal"):
        assert sorted(p.stem for p in (a / kind).glob("*.png")) == ids, f"{a / kind}: not every id"
        assert sorted(p.stem for p in (b / kind).glob("*.png")) == ids, f"{b / kind}: not every id"
        for name in ids:
            left, right = read_png(a / kind / f"{name}.png"), read_png(b / kind / f"{name}.png")
            assert left.shape == right.shape and np.array_equal(left, right), f"{kind}/{name}.png differs"


def check_ddp_pipeline(tmp_path: Path, devices: int, accelerator: str = "gpu", backend: str = "nccl") -> dict:
    """fit → refresh → pseudolabel → test with DDP on ``devices`` devices against one process; returns the scores.

    ``accelerator="cpu", backend="gloo"`` runs the same check on the CPU (a dry run of this test's mechanics).
    """
    demo = tmp_path / "demo"
    generate_demo(demo, seed=2, **TINY_SETTINGS)
    run = tmp_path / "run"
    config = write_tiny_config(
        demo, run, gpu_trainer(run, devices, "ddp", accelerator), num_stages=1, batch_size=BATCH_SIZE
    )
    _wsss("fit", "--config", str(config), cwd=tmp_path)

    # 1. Every rank ran in the NCCL process group of `devices` processes, on its own GPU.
    records = [json.loads((run / "probe" / f"rank{r}.json").read_text()) for r in range(devices)]
    for rank, record in enumerate(records):
        assert record["backend"] == backend, record
        assert record["strategy"] == "DDPStrategy", record
        assert record["world_size"] == record["process_group_size"] == devices, record
        assert record["global_rank"] == rank, record
        if accelerator == "gpu":
            assert record["device"] == f"cuda:{record['local_rank']}", record
    ids = sorted(e.id for e in read_id_list(demo / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt"))
    stages = sorted(p for p in (run / "labels").glob("stage*") if p.is_dir())
    assert [s.name for s in stages] == ["stage0", "stage1"]  # initial labels, the refresh after the stage
    for folder in stages:
        assert sorted(p.stem for p in (folder / "seg").glob("*.png")) == ids
        quality = json.loads((folder / "quality.json").read_text())
        assert len(quality["written_per_rank"]) == devices
        assert sum(quality["written_per_rank"]) == len(ids), "every id written exactly once across the ranks"

    # 2. Labels from the final weights: DDP on every device == one process == the fit's own last refresh.
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    one_process = ["--trainer.devices", "1", "--trainer.strategy", "auto"]
    labels = {"ddp": tmp_path / "labels_ddp", "one": tmp_path / "labels_one"}
    _wsss("pseudolabel", "--config", str(config), "--ckpt_path", checkpoint, "--out_dir", str(labels["ddp"]),
          cwd=tmp_path)  # fmt: skip
    _wsss("pseudolabel", "--config", str(config), "--ckpt_path", checkpoint, "--out_dir", str(labels["one"]),
          *one_process, cwd=tmp_path)  # fmt: skip
    assert len(json.loads((labels["ddp"] / "quality.json").read_text())["written_per_rank"]) == devices
    assert_same_labels(labels["ddp"], labels["one"], ids)
    assert_same_labels(run / "labels" / "stage1", labels["one"], ids)

    # 3. Metrics: DDP on every device == one process.
    scores = {}
    for name, extra in (("ddp", []), ("one", one_process)):
        out = tmp_path / f"test_{name}.json"
        _wsss("test", "--config", str(config), "--ckpt_path", checkpoint, "--trainer.limit_test_batches", "1.0",
              "--results_json", str(out), *extra, cwd=tmp_path)  # fmt: skip
        scores[name] = json.loads(out.read_text())
    ddp, one = scores["ddp"], scores["one"]
    assert ddp["segmentation"]["val"]["ss"]["mIoU"] == pytest.approx(one["segmentation"]["val"]["ss"]["mIoU"], abs=1e-6)
    for key, value in one["saliency"]["ECSSD"].items():
        if key != "protocol":
            assert ddp["saliency"]["ECSSD"][key] == pytest.approx(value, abs=1e-6), key
    return scores


def test_nccl_ddp_on_every_gpu_fit_refresh_test_equals_one_process(tmp_path: Path) -> None:
    check_ddp_pipeline(tmp_path, devices=torch.cuda.device_count())


@pytest.mark.parametrize("check", ["sync", "deferred"])
def test_a_nan_on_one_gpu_stops_every_rank_with_finite_weights(tmp_path: Path, check: str) -> None:
    """The NaN/Inf guards under NCCL on every visible GPU, the deferred one through its CUDA path (the fused kernel's
    found_inf on the device, the verdict copied to pinned memory and read a step later): every rank stops."""
    check_nan_on_one_rank(tmp_path, check, accelerator="gpu", devices=torch.cuda.device_count())
