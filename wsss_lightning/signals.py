"""Stop a run cleanly on SIGTERM, SIGINT or SLURM's requeue signal: at the next safe point, with a checkpoint.

Lightning turns SIGTERM into a flag (``trainer.received_sigterm``) that its loops check between batches. This module
extends that to every signal a cluster or a user sends, and to every loop of ours:

* **SIGTERM** (a scheduler's preemption, ``kill``): Lightning's flag;
* **SIGINT** (Ctrl+C): the same flag, so the run stops at a batch boundary instead of wherever Python happens to be
  (a half-applied optimiser step); a second Ctrl+C interrupts at once;
* **SIGUSR1** under SLURM with ``auto_requeue`` (``configs/trainer/slurm.yaml``): Lightning would save
  ``hpc_ckpt_<n>.ckpt`` inside the signal handler, mid-step; here the handler only sets a flag, and the save and
  ``scontrol requeue`` happen at the next safe point, then the run stops. The requeued job resumes from that
  checkpoint (Lightning restores the newest ``hpc_ckpt`` under SLURM), a refresh that was cut off included.

Safe points: the end of a training batch (Lightning), the end of an evaluation batch (Lightning), every batch of a
label set (``label_runner.py``: the finished labels are on disk and in the manifest shard), every batch of ``wsss
predict`` (:class:`~wsss_lightning.callbacks.prediction_writer.MaskWriter`). In ``fit``, the stop writes
``last.ckpt`` first (:class:`~wsss_lightning.callbacks.checkpoint.ResumableCheckpoint`), so ``--ckpt_path last``
continues exactly there.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["GracefulStop", "raise_if_stop_requested", "stop_requested"]

log = logging.getLogger(__name__)

# Set by the requeue handler; read at the safe points (a process holds one trainer at a time).
_requeue_requested = False


def _flags(trainer: L.Trainer, synchronize: bool) -> tuple[bool, bool]:
    """(stop, requeue): a stop signal / a requeue signal arrived — on any rank, with ``synchronize`` under DDP."""
    local = (bool(trainer.received_sigterm or _requeue_requested), _requeue_requested)
    if not synchronize or trainer.world_size == 1:
        return local
    import torch

    flags = torch.tensor([float(f) for f in local], device=trainer.strategy.root_device)
    stop, requeue = trainer.strategy.reduce(flags, reduce_op="max").tolist()
    return stop > 0, requeue > 0


def stop_requested(trainer: L.Trainer, synchronize: bool = True) -> bool:
    """True when a stop or requeue signal arrived (on any rank, with ``synchronize``: every rank agrees)."""
    return _flags(trainer, synchronize)[0]


def raise_if_stop_requested(trainer: L.Trainer, synchronize: bool = True) -> None:
    """At a safe point: save and requeue if SLURM asked for it, then stop (``SIGTERMException``) on a signal.

    Collective under DDP (with ``synchronize``): call it on every rank at the same point.
    """
    global _requeue_requested
    stop, requeue = _flags(trainer, synchronize)
    if not stop:
        return
    if requeue:
        _requeue_requested = False
        if trainer.state.fn == "fit":
            path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
            trainer.save_checkpoint(path)
            log.warning("saved %s for the requeued job", path)
        if trainer.is_global_zero:
            _requeue_job()
    trainer._signal_connector.received_sigterm = True  # the trainer's loops and hooks see one reason to stop
    raise SIGTERMException()


def _requeue_job() -> None:
    import os
    import subprocess

    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ.get("SLURM_JOB_ID")
    if not job:
        log.warning("requeue signal outside a SLURM job: nothing to requeue")
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], check=False).returncode
    except FileNotFoundError:
        result = -1
    if result == 0:
        log.warning("requeued SLURM job %s", job)
    else:
        log.warning("could not requeue SLURM job %s (scontrol exit %s)", job, result)


class GracefulStop(Callback):
    """Installs the SIGINT and (SLURM) requeue handlers of the module docstring for the duration of a run.

    The CLI adds it to every ``wsss`` command; a script using the Trainer directly can add it too.
    """

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        global _requeue_requested
        _requeue_requested = False
        self._trainer = trainer
        if not hasattr(signal, "SIGUSR1"):  # Windows: Lightning's SIGTERM flag only
            return
        self._install(signal.SIGINT, self._on_sigint)
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            # installed before Lightning registers its own, which then keeps ours (it only adds one when none is set)
            self._install(environment.requeue_signal or signal.SIGUSR1, self._on_requeue)

    def _install(self, signum: int, handler: Any) -> None:
        self._previous[signum] = signal.getsignal(signum)
        signal.signal(signum, handler)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._trainer is None or self._trainer.received_sigterm:
            raise KeyboardInterrupt  # the second Ctrl+C: now
        print("\nwsss: stopping at the next step (Ctrl+C again to interrupt at once)", file=sys.stderr, flush=True)
        self._trainer._signal_connector.received_sigterm = True

    def _on_requeue(self, signum: int, frame: FrameType | None) -> None:
        global _requeue_requested
        _requeue_requested = True
        print("\nwsss: requeue signal: saving and requeueing at the next step", file=sys.stderr, flush=True)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if _requeue_requested:
            raise_if_stop_requested(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        self._trainer = None
