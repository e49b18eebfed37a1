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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
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


def _finite_flag(tensors: list[Tensor]) -> Tensor:
    """0-dim bool tensor on the tensors' device: every element finite (one fused norm, no host-device sync)."""
    return torch.isfinite(torch.nn.utils.get_total_norm([t.detach() for t in tensors], norm_type=2.0))


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
    flags = []
    if losses:
        flags.append(torch.isfinite(torch.stack([loss.detach().float().reshape(()) for loss in losses])).all())
    if grads:
        flags.append(_finite_flag(grads))
    if not flags:
        return
    ok = [bool(flag) for flag in torch.stack(flags).tolist()]  # the one sync
    loss_ok = ok[0] if losses else True
    # "loss" when this rank's loss is bad; "gradient" when only its gradients are; named after the local rank's view
    what = "loss" if not loss_ok else "gradient"
    _stop_if_bad(module, not all(ok), what, ids)


def _stop_if_bad(module: L.LightningModule, bad: bool, what: str, ids: list[str]) -> None:
    """Synchronise ``bad`` over the ranks; when any rank is bad, save the finite state and raise."""
    trainer = module._trainer
    if trainer is None:
        if bad:
            raise NonFiniteLossError(f"the {what} is not finite (batch ids: {', '.join(ids) or 'unknown'})")
        return
    bad = bool(trainer.strategy.reduce_boolean_decision(bad, all=False))  # any rank -> every rank stops
    if not bad:
        return
    step = trainer.global_step
    path = _save_finite_state(trainer, step)
    message = (
        f"the training {what} is NaN/Inf at global step {step} (epoch {trainer.current_epoch}); batch ids on rank "
        f"{trainer.global_rank}: {', '.join(ids) or 'unknown'}. The weights before this step (all finite) were "
        f"saved to {path}; the previous last.ckpt is untouched. Check these images and their labels/saliency "
        "(`wsss data check`), lower the learning rate, or use 32-bit precision"
    )
    log.error(message)
    raise NonFiniteLossError(message)
