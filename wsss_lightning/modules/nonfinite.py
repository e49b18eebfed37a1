"""Stop training at the first NaN/Inf loss or gradient, keeping the last finite weights.

A non-finite loss must not reach the optimiser: one SGD step with NaN gradients turns every weight into NaN,
and the next periodic ``last.ckpt`` would then overwrite the last good checkpoint with garbage. The module's
``on_before_backward`` hook keeps the (detached) loss and ``on_before_optimizer_step`` checks the losses since the
last step and the gradients together with :func:`check_step_finite`, *before* the weights change. One check per
optimiser step: one host-device synchronisation and one cross-rank reduction (checking the loss before its backward
as well would stall a GPU between forward and backward, and cost a second collective per step under DDP), so:

* the decision is synchronised across ranks (all ranks stop together, none hangs in a collective);
* the still-finite weights are saved to ``<checkpoint dir>/nonfinite-step<N>.ckpt`` for inspection (not a
  ``last*`` name: ``--ckpt_path last`` keeps resuming from the previous periodic checkpoint);
* :class:`NonFiniteLossError` names the global step, the epoch, the batch's image ids and the checkpoint.

That synchronisation makes the host wait, once per step, for the device to finish the backward before it queues the
update and the next forward. ``nonfinite_check: deferred`` (:class:`DeferredFiniteCheck`, needs a fused optimiser)
removes the wait: the same finiteness flag, reduced over the ranks on the device, is handed to the fused optimiser as
its ``found_inf`` (the kernel then skips the whole update, as under a GradScaler), copied to the host asynchronously
and read one step later. The weights stay finite and the run stops one step later with the same message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient became NaN/Inf during training; the message names the step and the batch ids."""


def batch_ids(batch: Any, limit: int = 64) -> list[str]:
    """The image ids (``name`` entries) of a batch, also inside nested dicts/lists (SSNet's joint batches)."""
    found: list[str] = []
    stack = [batch]
    while stack and len(found) < limit:
        item = stack.pop(0)
        if isinstance(item, Mapping):
            names = item.get("name")
            if isinstance(names, (list, tuple)):
                found.extend(str(n) for n in names)
            elif isinstance(names, str):
                found.append(names)
            stack.extend(v for k, v in item.items() if k != "name" and isinstance(v, (Mapping, list, tuple)))
        elif isinstance(item, (list, tuple)):
            stack.extend(v for v in item if isinstance(v, (Mapping, list, tuple)))
    return found[:limit]


def _step_bad_flags(losses: list[Tensor], grads: list[Tensor] | None) -> Tensor | None:
    """``(2,)`` float32 on the tensors' device: ``[any loss non-finite, any gradient non-finite]`` (1.0 / 0.0; an
    absent kind counts as finite), with no host-device sync; None when there is nothing to check."""
    flags = []
    if losses:
        flags.append(~torch.isfinite(torch.stack([loss.detach().float().reshape(()) for loss in losses])).all())
    if grads:  # one fused norm over all gradients, no per-tensor Python loop
        flags.append(~torch.isfinite(torch.nn.utils.get_total_norm([g.detach() for g in grads], norm_type=2.0)))
    if not flags:
        return None
    bad = torch.stack(flags).float()
    if len(flags) == 2:
        return bad
    absent = bad.new_zeros(1)
    return torch.cat([bad, absent]) if losses else torch.cat([absent, bad])


def _save_finite_state(trainer: L.Trainer, step: int) -> Path | None:
    """Save the (still finite) current state next to the other checkpoints; None without a checkpoint dir."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
        folder = Path(callback.dirpath)
    else:
        folder = Path(trainer.default_root_dir) / "checkpoints"
    path = folder / f"nonfinite-step{step}.ckpt"
    trainer.save_checkpoint(str(path), weights_only=False)  # collective: every rank reaches it (decision synced)
    return path


def check_step_finite(
    module: L.LightningModule, losses: list[Tensor], grads: list[Tensor] | None, ids: list[str]
) -> None:
    """Raise :class:`NonFiniteLossError` (after saving the finite state) if a loss or gradient of this step is NaN/Inf.

    One host-device sync for the losses and the gradients together.

    Args:
        module: the training module.
        losses: the scalar losses backpropagated since the last optimiser step (detached).
        grads: the gradients about to be applied; None skips them (a GradScaler skips non-finite steps itself).
        ids: the image ids of the batch being trained on.
    """
    bad = _step_bad_flags(losses, grads)
    if bad is None:
        return
    loss_bad, grad_bad = bad.tolist()  # the one sync
    # "loss" when this rank's loss is bad; "gradient" when only its gradients are; named after the local rank's view
    what = "loss" if loss_bad else "gradient"
    _stop_if_bad(module, bool(loss_bad or grad_bad), what, ids)


def _stop_if_bad(module: L.LightningModule, bad: bool, what: str, ids: list[str]) -> None:
    """Synchronise ``bad`` over the ranks; when any rank is bad, save the finite state and raise."""
    trainer = module._trainer
    if trainer is None:
        if bad:
            raise NonFiniteLossError(f"the {what} is not finite (batch ids: {', '.join(ids) or 'unknown'})")
        return
    bad = bool(trainer.strategy.reduce_boolean_decision(bad, all=False))  # any rank -> every rank stops
    if bad:
        _raise_nonfinite(trainer, what, ids, trainer.global_step, trainer.current_epoch, "The weights before this step")


def _raise_nonfinite(trainer: L.Trainer, what: str, ids: list[str], step: int, epoch: int, weights: str) -> None:
    """Save the (finite) state as ``nonfinite-step<step>.ckpt`` and raise; every rank must get here together."""
    path = _save_finite_state(trainer, step)
    message = (
        f"the training {what} is NaN/Inf at global step {step} (epoch {epoch}); batch ids on rank "
        f"{trainer.global_rank}: {', '.join(ids) or 'unknown'}. {weights} (all finite) were "
        f"saved to {path}; the previous last.ckpt is untouched. Check these images and their labels/saliency "
        "(`wsss data check`), lower the learning rate, or use 32-bit precision"
    )
    log.error(message)
    raise NonFiniteLossError(message)


@dataclass
class _PendingVerdict:
    """One optimiser step's verdict on its way to the host: ``[loss bad, gradient bad, any rank bad]``."""

    flags: Tensor  # (3,) float32 on the CPU (pinned when copied from CUDA)
    event: Any  # torch.cuda.Event recorded after the copy, or None when the copy was synchronous
    step: int
    epoch: int
    ids: list[str]


class DeferredFiniteCheck:
    """The NaN/Inf guard without a host-device synchronisation per step (``nonfinite_check: deferred``).

    :meth:`submit` computes the step's finiteness on the device, reduces it over the ranks there (an all-reduce the
    host does not wait for), sets it as the fused optimiser's ``found_inf`` — the fused SGD/Adam kernels then skip
    the whole update, weights and optimiser state, without a host decision — and starts an asynchronous copy to the
    host. :meth:`resolve` reads the previous verdict (its copy finished long ago) at the next optimiser step, at the
    epoch's and the fit's end and before any checkpoint is written, and raises :class:`NonFiniteLossError` like the
    synchronous check: every rank holds the same reduced flag, so all stop together. The parameters then equal the
    synchronous guard's; when no checkpoint came between, the next step's forward has already run, so BatchNorm
    statistics have seen one more batch. A step skipped as the first of an optimiser leaves its momentum buffers
    uninitialised; the run stops there anyway, before a checkpoint is taken.
    """

    def __init__(self) -> None:
        self._pending: _PendingVerdict | None = None

    def submit(
        self,
        module: L.LightningModule,
        optimizer: torch.optim.Optimizer,
        losses: list[Tensor],
        grads: list[Tensor] | None,
        ids: list[str],
    ) -> None:
        """Start the check of one step before its update (``grads`` None under a GradScaler: losses only, the
        scaler then owns ``found_inf``)."""
        bad = _step_bad_flags(losses, grads)
        if bad is None:
            return
        any_bad = bad.max().reshape(1)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(any_bad, op=dist.ReduceOp.MAX)  # queued on the device; the host does not wait
        if grads:
            optimizer.found_inf = any_bad.reshape(())  # type: ignore[attr-defined]  # read by fused SGD / Adam
        verdict = torch.cat([bad, any_bad])
        cuda = verdict.device.type == "cuda"
        host = verdict.to("cpu", non_blocking=cuda)
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        trainer = module._trainer
        step, epoch = (trainer.global_step, trainer.current_epoch) if trainer is not None else (0, 0)
        self._pending = _PendingVerdict(host, event, step, epoch, list(ids))

    def resolve(self, module: L.LightningModule) -> None:
        """Raise :class:`NonFiniteLossError` if the last submitted step was not finite (on any rank)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.event is not None:
            pending.event.synchronize()  # recorded a step ago: already passed
        loss_bad, _grad_bad, any_bad = pending.flags.tolist()
        if not any_bad:
            return
        what = "loss" if loss_bad else "gradient"
        trainer = module._trainer
        if trainer is None:
            raise NonFiniteLossError(f"the {what} is not finite (batch ids: {', '.join(pending.ids) or 'unknown'})")
        weights = "Its update was skipped on the device (the fused optimiser's found_inf), so the weights before it"
        _raise_nonfinite(trainer, what, pending.ids, pending.step, pending.epoch, weights)
