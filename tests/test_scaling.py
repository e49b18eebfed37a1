"""Scale and speed switches: trainer config composition, channels_last / compile / bf16, chunked affinity inside the
network and the label jobs, CRF pool order and equality, DDP without unused-parameter search."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_lightning.config_files import load_config
from wsss_lightning.models import AuxSegNet, AuxSegNetPlus, TimmBackbone
from wsss_lightning.modules import AuxSegNetModule
from wsss_lightning.pseudo.crf import CRFPool, dense_crf, saliency_crf
from wsss_lightning.pseudo.dense_crf import PydenseCRF
from wsss_lightning.pseudo.jobs import FusionJob, run_label_job
from wsss_lightning.pseudo.label_set import LabelSet
from wsss_lightning.pseudo.writer import PseudoLabelWriter

ROOT = Path(__file__).resolve().parent.parent
NUM_CLASSES = 4


def _network(cls=AuxSegNetPlus, chunk_size: int = 4096) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls(NUM_CLASSES, TimmBackbone("test_resnet", output_stride=8), head_channels=16, chunk_size=chunk_size)


def _module(**kwargs) -> AuxSegNetModule:
    return AuxSegNetModule(_network(), num_classes=NUM_CLASSES, **kwargs)


def _batch(size: int = 48, batch: int = 2) -> dict:
    generator = torch.Generator().manual_seed(1)
    seg = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=generator)
    seg[:, :4] = 255
    return {
        "image": torch.randn(batch, 3, size, size, generator=generator),
        "cls_label": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])[:batch],
        "seg": seg,
        "sal": torch.rand(batch, size, size, generator=generator),
        "raw": torch.randint(0, 256, (batch, size, size, 3), generator=generator, dtype=torch.uint8),
        "name": [f"img{i}" for i in range(batch)],
        "ori_size": torch.tensor([[size, size]] * batch),
    }


# ------------------------------------------------------------------------------------------------ trainer configs


def test_trainer_configs_compose_with_a_method_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--config <method> --config trainer/ddp.yaml --config trainer/slurm.yaml` keeps the method's settings and adds
    DDP (no unused-parameter search), bf16 autocast and SLURM auto-requeue on SIGUSR1."""
    # Inside a one-task SLURM job (what srun sets for the task).
    slurm = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_NODEID": "0", "SLURM_JOB_NAME": "wsss", "SLURM_JOB_ID": "1",
             "SLURM_NODELIST": "localhost"}  # fmt: skip
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.plugins.environments import SLURMEnvironment
    from lightning.pytorch.strategies import DDPStrategy

    from wsss_lightning.callbacks import PseudoLabelRefresh
    from wsss_lightning.cli import _cli_class

    args = [
        "--config", str(ROOT / "configs/demo_auxseg.yaml"),
        "--config", str(ROOT / "configs/trainer/ddp.yaml"),
        "--config", str(ROOT / "configs/trainer/slurm.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "1",  # CI has no GPU; DDP with one CPU process
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger", "false",
    ]  # fmt: skip
    cli = _cli_class()(args, run=False)
    trainer = cli.trainer
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is False
    assert trainer.precision == "bf16-mixed"
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    assert environment.auto_requeue is True and environment.requeue_signal == signal.SIGUSR1
    # The method config's pieces survive the composition.
    assert (
        trainer.check_val_every_n_epoch
        == load_config(ROOT / "configs/demo_auxseg.yaml")["trainer"]["check_val_every_n_epoch"]
    )
    assert any(isinstance(c, ModelCheckpoint) for c in trainer.callbacks)
    assert any(isinstance(c, PseudoLabelRefresh) for c in trainer.callbacks)
    assert isinstance(cli.model, AuxSegNetModule)


# ------------------------------------------------------------------------------------------------ speed switches


def test_channels_last_changes_memory_format_not_results() -> None:
    reference, fast = _module(), _module(channels_last=True)
    fast.configure_model()
    conv = next(m for m in fast.network.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    for module in (reference, fast):
        module.network.eval()  # no dropout
    batch = _batch()
    assert fast.prepare_images(batch["image"]).is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(fast.training_step(batch, 0), reference.training_step(batch, 0), atol=1e-5)
    with torch.no_grad():
        a, b = reference.segmentation_logits(batch["image"]), fast.segmentation_logits(batch["image"])
    assert torch.allclose(a, b, atol=1e-4)


def test_compile_switch_compiles_in_place_and_keeps_checkpoint_keys() -> None:
    reference, compiled = _module(), _module(compile=True, compile_backend="eager")  # "eager": no C++ build in CI
    keys = list(compiled.state_dict())
    compiled.configure_model()
    first = compiled.network._compiled_call_impl
    assert first is not None
    compiled.configure_model()  # Lightning calls the hook on every fit/test: compile once
    assert compiled.network._compiled_call_impl is first
    assert list(compiled.state_dict()) == keys  # no `_orig_mod.` prefix: checkpoints stay interchangeable
    image = _batch(size=32)["image"]
    with torch.no_grad():
        a = reference.eval().segmentation_logits(image)
        b = compiled.eval().segmentation_logits(image)
    assert torch.allclose(a, b, atol=1e-5)
    assert _module().configure_model() is None and _module().network._compiled_call_impl is None  # off by default


def test_compile_mode_reaches_torch_compile_and_bad_modes_fail_early(monkeypatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append(kw))
    _module(compile=True, compile_mode="reduce-overhead").configure_model()
    assert calls == [{"backend": "inductor", "mode": "reduce-overhead"}]  # CUDA graphs on a GPU
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        _module(compile=True, compile_mode="reduce_overhead")  # a typo fails at construction, not in the first step


def test_bf16_autocast_training_step_stays_close_to_fp32() -> None:
    """bf16-mixed (as `--trainer.precision bf16-mixed` runs it): the affinity softmax over N runs in float32 and the
    loss stays near the fp32 one."""
    module = _module()
    module.network.eval()
    batch = _batch()
    with torch.no_grad():
        fp32 = module.training_step(batch, 0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module.network(batch["image"])
            bf16 = module.training_step(batch, 0)
    assert out.seg_logits.dtype == torch.bfloat16
    assert out.affinity.matrix().dtype == torch.float32
    assert torch.allclose(out.affinity.matrix().sum(-1), torch.ones(2, out.affinity.num_positions), atol=1e-2)
    assert torch.isfinite(bf16) and abs(float(bf16) - float(fp32)) < 0.05 * abs(float(fp32))


# ------------------------------------------------------------------------------------------------ chunked affinity


@pytest.mark.parametrize("cls", [AuxSegNet, AuxSegNetPlus])
def test_chunked_network_and_label_jobs_equal_unchunked(cls, tmp_path: Path) -> None:
    """Batched (B=2), chunked propagation (N = 36 positions in blocks of 5) equals the full N×N path."""
    full = AuxSegNetModule(_network(cls, chunk_size=10**6), num_classes=NUM_CLASSES).eval()
    chunked = AuxSegNetModule(_network(cls, chunk_size=5), num_classes=NUM_CLASSES).eval()
    batch = _batch()
    with torch.no_grad():
        a, b = full.network(batch["image"]), chunked.network(batch["image"])
        assert not a.affinity.is_chunked and b.affinity.is_chunked
        for name in ("seg_refined", "sal_refined", "seg_logits", "sal_logits"):
            assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-5), name
        result_a = full.label_batch(batch, "refined", LabelSet(tmp_path / "a"))
        result_b = chunked.label_batch(batch, "refined", LabelSet(tmp_path / "b"))
    for x, y in zip(result_a.jobs, result_b.jobs):
        np.testing.assert_allclose(x.peak, y.peak, atol=1e-5)
        np.testing.assert_allclose(x.saliency, y.saliency, atol=1e-5)
    assert torch.equal(result_a.extra_labels["raw_cam"], result_b.extra_labels["raw_cam"])
    for key in ("row_peak", "row_spread", "background_mass"):
        torch.testing.assert_close(result_a.affinity[key], result_b.affinity[key], equal_nan=True)


# ------------------------------------------------------------------------------------------------ CRF pool


def _crf_items(count: int, size: int = 24) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    items = []
    for _ in range(count):
        image = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
        logits = rng.normal(0, 2, (3, size, size + 4)).astype(np.float32)
        items.append((image, rng.random((size, size + 4), dtype=np.float32), np.exp(logits) / np.exp(logits).sum(0)))
    return items


def test_crf_pool_returns_every_job_once_with_the_inline_result() -> None:
    items = _crf_items(5)
    jobs = [(image, probs, "psa") for image, _, probs in items]
    inline = [dense_crf(*job) for job in jobs]
    with CRFPool(2) as pool:
        results = list(pool.map_unordered(dense_crf, jobs, max_pending=2))
        sal = pool.submit(saliency_crf, items[0][0], items[0][1]).result()
    assert sorted(index for index, _ in results) == list(range(5))
    for index, marginals in results:
        np.testing.assert_array_equal(marginals, inline[index])
    np.testing.assert_array_equal(sal, saliency_crf(items[0][0], items[0][1]))


def test_pooled_writer_writes_the_same_files_as_inline(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)

    def job(index: int, out_dir: Path) -> FusionJob:
        image, saliency, _ = _crf_items(1)[0]
        return FusionJob(
            name=f"img{index}", out_dir=str(out_dir), peak=rng.random(saliency.shape).astype(np.float32),
            peak_class=rng.integers(0, 3, saliency.shape).astype(np.uint8), saliency=saliency, image=image,
            crf=None if index % 2 else PydenseCRF(), write_saliency=True,
        )  # fmt: skip

    jobs = [job(i, tmp_path / "inline") for i in range(4)]
    pooled_jobs = [FusionJob(**{**vars(j), "out_dir": str(tmp_path / "pooled")}) for j in jobs]
    with PseudoLabelWriter(LabelSet(tmp_path / "inline"), {"k": 1}, workers=0) as writer:
        for j in jobs:
            writer.submit(run_label_job, j)
    with PseudoLabelWriter(LabelSet(tmp_path / "pooled"), {"k": 1}, workers=2, max_pending=2) as writer:
        for j in pooled_jobs:
            writer.submit(run_label_job, j)
    assert writer.written == 4
    inline_files = sorted(p.relative_to(tmp_path / "inline") for p in (tmp_path / "inline").rglob("*.png"))
    pooled_files = sorted(p.relative_to(tmp_path / "pooled") for p in (tmp_path / "pooled").rglob("*.png"))
    assert inline_files == pooled_files and len(inline_files) == 8
    for rel in inline_files:
        assert (tmp_path / "inline" / rel).read_bytes() == (tmp_path / "pooled" / rel).read_bytes()


# ------------------------------------------------------------------------------------------------ DDP reducer


@pytest.mark.parametrize("stage", [-1, 0])
def test_every_trainable_parameter_gets_a_gradient_so_ddp_needs_no_unused_search(stage: int) -> None:
    """configs/trainer/ddp.yaml sets find_unused_parameters: false. That is only correct if every trainable
    parameter takes part in every step's loss, in the classification warm-up (stage -1) and in the stages."""
    module = _module()
    module.enter_stage(stage, 0, 1, reset_optimizer=False)
    module.training_step(_batch(), 0).backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


# ------------------------------------------------------------------------------------------------ reproducibility


def _fit_once(seed: int) -> dict[str, torch.Tensor]:
    import lightning as L

    L.seed_everything(seed, verbose=False)
    module = AuxSegNetModule(  # the network is built after seeding: its initialisation is part of the run
        AuxSegNetPlus(NUM_CLASSES, TimmBackbone("test_resnet", output_stride=8), head_channels=8),
        num_classes=NUM_CLASSES,
    )
    samples = [{k: v[i] for k, v in _batch(size=32, batch=2).items() if torch.is_tensor(v)} for i in range(2)] * 2
    loader = torch.utils.data.DataLoader(samples, batch_size=2, shuffle=True)  # the shuffle draws from the seed
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_same_seed_gives_the_same_weights_and_another_seed_does_not() -> None:
    first, second, other = _fit_once(3), _fit_once(3), _fit_once(4)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_label_batch_under_the_trainers_precision_context(tmp_path: Path) -> None:
    """The label-set runner calls ``label_batch`` inside the trainer's precision context: under `bf16-mixed` the
    network runs in bf16 autocast like the training steps (Lightning only wraps the step methods) and everything
    after it in float32 (the affinity maths has autocast off)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    module = _module().eval()
    batch = _batch()
    dtypes: list[torch.dtype] = []
    module.network.classifier.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    with torch.no_grad():
        fp32 = module.label_batch(batch, "refined", LabelSet(tmp_path))
        with MixedPrecision("bf16-mixed", "cpu").forward_context():
            bf16 = module.label_batch(batch, "refined", LabelSet(tmp_path))
    assert dtypes[0] == torch.float32 and dtypes[-1] == torch.bfloat16
    for a, b in zip(fp32.jobs, bf16.jobs):
        assert b.peak.dtype == np.float32 and b.saliency.dtype == np.float32
        np.testing.assert_allclose(a.peak, b.peak, atol=0.1)
        np.testing.assert_allclose(a.saliency, b.saliency, atol=0.1)


def test_chunk_rows_shrink_for_large_n_so_memory_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A block never holds more than MAX_BLOCK_ELEMENTS / N rows (+ 2 halo rows), whatever chunk_size says."""
    import wsss_lightning.models.affinity as affinity

    full = _network(AuxSegNet, chunk_size=10**6).eval()
    chunked = _network(AuxSegNet, chunk_size=30).eval()  # N = 36 > 30: chunked
    monkeypatch.setattr(affinity, "MAX_BLOCK_ELEMENTS", 100)  # -> 100 // 36 = 2 rows per block
    rows_built: list[int] = []
    original = affinity._EmbeddedRows.rows

    def rows(self, start: int, stop: int) -> torch.Tensor:
        rows_built.append(stop - start)
        return original(self, start, stop)

    monkeypatch.setattr(affinity._EmbeddedRows, "rows", rows)
    image = _batch()["image"]
    with torch.no_grad():
        a = full(image)
        rows_built.clear()  # the full path builds all 36 rows at once, by design
        b = chunked(image)
    assert a.seg_refined.shape[-2:] == (6, 6) and b.affinity.is_chunked
    assert max(rows_built) <= 2 + 2
    assert torch.allclose(a.seg_refined, b.seg_refined, atol=1e-5)
    assert torch.allclose(a.sal_refined, b.sal_refined, atol=1e-5)


@pytest.mark.parametrize("batch_images", [True, None])
def test_label_jobs_with_the_device_crf_equal_the_pool_crf(batch_images: bool | None, tmp_path: Path) -> None:
    """A refresh batch with ``TorchCRF`` (the saliency CRF of the padded batch in the main process: one lattice, as
    on CUDA, or one image at a time, as on a CPU by default) writes the labels and saliency maps the pydensecrf pool
    jobs write."""
    from PIL import Image

    from wsss_lightning.pseudo.dense_crf import TorchCRF
    from wsss_lightning.pseudo.jobs import run_fusion_job

    batch = _batch(size=48, batch=2)
    batch["ori_size"] = torch.tensor([[48, 48], [37, 43]])  # the second image is padded
    outputs = {}
    for name, crf in (("pool", PydenseCRF()), ("device", TorchCRF(batch_images=batch_images))):
        module = _module(crf=crf).eval()
        with torch.no_grad():
            result = module.label_batch(batch, "refined", LabelSet(tmp_path / name))
        assert all((job.crf is None) == (name == "device") for job in result.jobs)
        for job in result.jobs:
            run_fusion_job(job)
        outputs[name] = result.jobs
    for pool_job, device_job in zip(outputs["pool"], outputs["device"], strict=True):
        expected_saliency = saliency_crf(pool_job.image, np.clip(pool_job.saliency, 0, 1))
        assert device_job.saliency.shape == expected_saliency.shape
        np.testing.assert_allclose(device_job.saliency, expected_saliency, atol=1e-4)
        for kind in ("seg", "sal"):
            pool_map = np.array(Image.open(tmp_path / "pool" / kind / f"{pool_job.name}.png"))
            device_map = np.array(Image.open(tmp_path / "device" / kind / f"{device_job.name}.png"))
            assert pool_map.shape == device_map.shape == expected_saliency.shape
            assert (pool_map == device_map).mean() >= 0.99, kind
