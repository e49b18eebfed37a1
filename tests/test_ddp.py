"""Two real processes (CPU, gloo): the stage pipeline writes each label once and metrics equal one process's.

Runs the ``wsss`` command in a subprocess so Lightning's DDP launcher can start the second process. A probe
callback (:class:`RankProbe`, imported by the subprocesses from this file) records what every rank trained on:
the ids of each epoch (checked against the seeded ``DistributedSampler``: reproducible, disjoint shards) and a
digest of the pseudo-label folder it read (every rank reads the same, complete, new labels after a refresh).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from tiny_config import checkpoint_callback, write_tiny_config
from torch.utils.data import DistributedSampler

from wsss_lightning.data.demo import TINY_SETTINGS, generate_demo
from wsss_lightning.data.splits import read_id_list

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

BATCH_SIZE = 4


def folder_digest(folder: str | Path) -> str:
    """sha256 over the names and bytes of every PNG in ``folder`` (sorted)."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.png")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class RankProbe(L.Callback):
    """Runs inside the ``wsss fit`` processes: per epoch, the training ids this rank got and a digest of the
    pseudo-label folder its DataModule reads; written to ``<out_dir>/rank<r>.json`` at the end of the fit."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.records: list[dict] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seg_folder, _ = trainer.datamodule.pseudo_label_folders()
        folder = str(seg_folder) if seg_folder is not None else None
        dataset = trainer.train_dataloader.dataset
        self.records.append({
            "epoch": trainer.current_epoch,
            "labels": folder,
            "digest": folder_digest(folder) if folder else None,
            "dataset_ids": list(dataset.ids),
            "names": [],
        })  # fmt: skip

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.records[-1]["names"] += list(batch["name"])

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = Path(self.out_dir) / f"rank{trainer.global_rank}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"world_size": trainer.world_size, "records": self.records}))


class NaNLabelOnLastRank(L.Callback):
    """Runs inside the ``wsss fit`` processes: the last rank's image labels of global step ``step`` become NaN, so
    only that rank's loss is NaN (its gradients, and after the all-reduce every rank's, are then NaN too)."""

    def __init__(self, step: int = 2) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_rank == trainer.world_size - 1 and trainer.global_step == self.step:
            batch["cls_label"].fill_(float("nan"))


def _wsss(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    # The subprocesses import RankProbe from this file.
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "wsss_lightning.cli", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 or not check, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _config(demo: Path, run: Path) -> Path:
    trainer = {
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp",
        "default_root_dir": str(run),
        "logger": False,
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "callbacks": [
            checkpoint_callback(run),
            {"class_path": "test_ddp.RankProbe", "init_args": {"out_dir": str(run / "probe")}},
        ],
    }
    return write_tiny_config(demo, run, trainer, num_stages=2, batch_size=BATCH_SIZE)


def test_ddp_pipeline_writes_each_label_once_and_metrics_match_one_process(tmp_path):
    demo = tmp_path / "demo"
    generate_demo(demo, seed=2, **TINY_SETTINGS)
    run = tmp_path / "run"
    config = _config(demo, run)
    _wsss("fit", "--config", str(config), cwd=tmp_path)

    ids = sorted(e.id for e in read_id_list(demo / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt"))
    for stage in (0, 1, 2):
        folder = run / "labels" / f"stage{stage}"
        assert sorted(p.stem for p in (folder / "seg").glob("*.png")) == ids
        quality = json.loads((folder / "quality.json").read_text())
        assert len(quality["written_per_rank"]) == 2
        assert sum(quality["written_per_rank"]) == len(ids), "every id written exactly once across the ranks"
        assert min(quality["written_per_rank"]) >= len(ids) // 2 - 1  # both ranks did their share
        manifest = json.loads((folder / "manifest.json").read_text())
        assert sorted(manifest["files"]) == ids
        assert not list(folder.glob("manifest.rank*.jsonl"))
    _check_probe(run / "probe", run / "labels")
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    scores = {}
    for devices in ("2", "1"):
        out = tmp_path / f"test_{devices}.json"
        _wsss("test", "--config", str(config), "--ckpt_path", checkpoint, "--trainer.devices", devices,
              "--trainer.limit_test_batches", "1.0", "--results_json", str(out), cwd=tmp_path)  # fmt: skip
        scores[devices] = json.loads(out.read_text())
    two, one = scores["2"], scores["1"]
    assert two["segmentation"]["val"]["ss"]["mIoU"] == pytest.approx(one["segmentation"]["val"]["ss"]["mIoU"], abs=1e-6)
    for key, value in one["saliency"]["ECSSD"].items():
        if key != "protocol":
            assert two["saliency"]["ECSSD"][key] == pytest.approx(value, abs=1e-6)


def check_nan_on_one_rank(tmp_path: Path, check: str, accelerator: str = "cpu", devices: int = 2) -> None:
    """Fit with a NaN loss on the last rank at step 2: every rank stops (none hangs in a collective) naming the step,
    through the ``check`` guard (``sync`` / ``deferred``), and the state saved then is finite."""
    import torch

    demo = tmp_path / "demo"
    generate_demo(demo, seed=2, **{**TINY_SETTINGS, "num_train_aug": 24})
    run = tmp_path / "run"
    trainer = {
        "accelerator": accelerator, "devices": devices, "strategy": "ddp", "default_root_dir": str(run),
        "logger": False, "enable_progress_bar": False, "num_sanity_val_steps": 0, "limit_val_batches": 0,
        "callbacks": [checkpoint_callback(run), {"class_path": "test_ddp.NaNLabelOnLastRank"}],
    }  # fmt: skip
    model = {"optimizer_kernel": "fused", "nonfinite_check": check}
    config = write_tiny_config(demo, run, trainer, num_stages=1, batch_size=2, model=model)
    result = _wsss("fit", "--config", str(config), cwd=tmp_path, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "NaN/Inf at global step 2" in output, output[-3000:]
    assert ("update was skipped on the device" in output) == (check == "deferred")
    state = torch.load(run / "checkpoints" / "nonfinite-step2.ckpt", map_location="cpu", weights_only=True)
    assert all(bool(torch.isfinite(v).all()) for v in state["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("check", ["sync", "deferred"])
def test_a_nan_on_one_rank_stops_both_ranks_with_finite_weights(tmp_path: Path, check: str) -> None:
    """Both NaN/Inf guards decide together over the two gloo ranks (the NCCL version: test_ddp_gpu.py)."""
    check_nan_on_one_rank(tmp_path, check)


def _check_probe(probe: Path, labels: Path) -> None:
    """What each rank trained on, from :class:`RankProbe`."""
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    epochs = [rec["epoch"] for rec in ranks[0]["records"]]
    assert epochs == [0, 1, 2] == [rec["epoch"] for rec in ranks[1]["records"]]  # warm-up, stage 0, stage 1
    for epoch, (a, b) in enumerate(zip(ranks[0]["records"], ranks[1]["records"])):
        # Same new labels on every rank: the folder of this epoch's stage, complete (its final bytes) when read.
        expected_folder = None if epoch == 0 else labels / f"stage{epoch - 1}" / "seg"
        for record in (a, b):
            if expected_folder is None:
                assert record["labels"] is None
            else:
                assert Path(record["labels"]) == expected_folder.resolve()
                assert record["digest"] == folder_digest(expected_folder)
        # Reproducible sharding: each rank's ids are exactly the seeded DistributedSampler's for (seed 0, epoch),
        # full batches only (drop_last), and the two shards are disjoint.
        ids = a["dataset_ids"]
        assert ids == b["dataset_ids"]
        for rank, record in enumerate((a, b)):
            sampler = DistributedSampler(range(len(ids)), num_replicas=2, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            order = [ids[i] for i in sampler]
            assert record["names"] == order[: len(order) // BATCH_SIZE * BATCH_SIZE]
        assert not set(a["names"]) & set(b["names"]) or len(ids) % 2  # padding may repeat one id when odd
    assert ranks[0]["records"][1]["digest"] != ranks[0]["records"][2]["digest"]  # the refresh changed the labels


def test_ddp_probe_rejects_a_wrong_shard(tmp_path: Path) -> None:
    """The probe check fails when a rank's ids are not the sampler's (so the DDP test can fail for that reason)."""
    labels = tmp_path / "labels"
    ids = [f"id{i}" for i in range(8)]
    records = []
    for rank in (0, 1):
        per_epoch = []
        for epoch in range(3):
            folder = None if epoch == 0 else labels / f"stage{epoch - 1}" / "seg"
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "a.png").write_bytes(bytes([epoch]))
            sampler = DistributedSampler(range(8), num_replicas=2, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            names = [ids[i] for i in sampler]
            per_epoch.append({
                "epoch": epoch,
                "labels": str(folder.resolve()) if folder else None,
                "digest": folder_digest(folder) if folder else None,
                "dataset_ids": ids,
                "names": names,
            })  # fmt: skip
        records.append(per_epoch)
    probe = tmp_path / "probe"
    probe.mkdir()
    for rank, per_epoch in enumerate(records):
        (probe / f"rank{rank}.json").write_text(json.dumps({"world_size": 2, "records": per_epoch}))
    _check_probe(probe, labels)  # the consistent records pass
    swapped = records[1][2]["names"][::-1]  # a rank that shuffled with another seed
    records[1][2]["names"] = swapped
    (probe / "rank1.json").write_text(json.dumps({"world_size": 2, "records": records[1]}))
    with pytest.raises(AssertionError):
        _check_probe(probe, labels)
