"""Where a training step's time goes: ``torch.profiler`` over a few steps, split by the network's parts.

Used by ``benchmarks/train_step.py --profile`` (plain loop, after the timing). Each step runs under named ranges:
``forward/<part>`` for every top-level child of the network (``backbone``, ``seg_branch``, ``sal_branch``,
``affinity``, ...; entered and left by forward hooks), ``loss``, ``backward`` and ``optimizer``. On a GPU the times
are device (kernel) times, on a CPU host times. Reported per step, with the ops that take the most self time: what to
attack to raise the share of the bf16 peak (issue 13), and whether a lever's target (the dilated convolutions, the
affinity's matmuls) is worth it at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: the GPU session's summary reads `report` without it
    import torch
    from torch import nn

RANGES = ("forward", "loss", "backward", "optimizer")


def _part_hooks(net: nn.Module) -> list[Any]:
    """Forward pre/post hooks that open and close a ``forward/<name>`` range around each child and grandchild (a
    child whose forward is never called, e.g. a branch used through ``encode``/``decode`` methods, is timed through
    its own children)."""
    from torch.autograd.profiler import record_function

    handles = []
    for name, child in net.named_modules():
        if not name or name.count(".") > 1:
            continue
        stack: list[Any] = []

        def enter(module: nn.Module, inputs: Any, name: str = name, stack: list = stack) -> None:
            stack.append(record_function(f"forward/{name}").__enter__())

        def leave(module: nn.Module, inputs: Any, output: Any, stack: list = stack) -> None:
            stack.pop().__exit__(None, None, None)

        handles += [child.register_forward_pre_hook(enter), child.register_forward_hook(leave)]
    return handles


def profile_steps(
    net: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    forward: Callable[[dict[str, torch.Tensor]], Any],
    loss_of: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor],
    optimizer_step: Callable[[], None],
    device: torch.device,
    top: int = 15,
) -> dict[str, Any]:
    """Profile one training step per batch of ``batches`` (already on ``device``).

    Args:
        net: the network whose top-level children get a ``forward/<name>`` range.
        batches: the steps' batches.
        forward: batch -> network output (autocast and memory format are the caller's).
        loss_of: (output, batch) -> scalar loss.
        optimizer_step: zero_grad-free optimiser + scheduler step (gradients are cleared here before each step).
        device: where the step runs; CUDA adds device activity and device times.
        top: how many ops to list by self time.

    Returns:
        ``{"time": "device" | "host", "steps": n, "ms_per_step": {range: ms}, "top_ops": [[op, self ms per step,
        calls per step], ...]}``; ``ms_per_step["step"]`` is the sum of the four top-level ranges.
    """
    import torch
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    params = [p for p in net.parameters() if p.requires_grad]
    handles = _part_hooks(net)
    steps = 0
    try:
        with profile(activities=activities) as prof:
            for batch in batches:
                for p in params:
                    p.grad = None
                with record_function("forward"):
                    out = forward(batch)
                with record_function("loss"):
                    loss = loss_of(out, batch)
                with record_function("backward"):
                    loss.backward()
                with record_function("optimizer"):
                    optimizer_step()
                if cuda:
                    torch.cuda.synchronize()
                steps += 1
    finally:
        for handle in handles:
            handle.remove()
    if steps == 0:
        raise ValueError("profile_steps needs at least one batch")

    def total(event: Any) -> float:  # microseconds, kernels included for CPU-side ranges
        return event.device_time_total if cuda else event.cpu_time_total

    def self_time(event: Any) -> float:
        return event.self_device_time_total if cuda else event.self_cpu_time_total

    events = prof.key_averages()
    ms = {e.key: total(e) / 1000 / steps for e in events if e.key in RANGES}
    forward_ranges = {
        e.key.removeprefix("forward/"): total(e) / 1000 / steps for e in events if e.key.startswith("forward/")
    }
    ms.update(_parts(forward_ranges))
    ms["step"] = sum(ms.get(name, 0.0) for name in RANGES)
    ranked = sorted(
        (e for e in events if e.key not in RANGES and not e.key.startswith("forward/") and self_time(e) > 0),
        key=self_time,
        reverse=True,
    )
    top_ops = [[e.key, self_time(e) / 1000 / steps, e.count / steps] for e in ranked[:top]]
    return {"time": "device" if cuda else "host", "steps": steps, "ms_per_step": ms, "top_ops": top_ops}


def _parts(ranges: dict[str, float]) -> dict[str, float]:
    """``forward/<child>`` times: a child's own range when its forward ran, else the sum of its children's."""
    parts = {name: t for name, t in ranges.items() if "." not in name}
    summed: dict[str, float] = {}
    for name, t in ranges.items():
        top = name.split(".")[0]
        if "." in name and top not in parts:
            summed[top] = summed.get(top, 0.0) + t
    return {f"forward/{name}": t for name, t in {**parts, **summed}.items()}


def report(profile_result: dict[str, Any]) -> str:
    """A markdown summary: the ranges (ms per step, share of the step) and the top ops by self time."""
    ms, step = profile_result["ms_per_step"], profile_result["ms_per_step"]["step"] or 1.0
    lines = [f"Profile ({profile_result['time']} time, {profile_result['steps']} steps), ms per step:", ""]
    lines += ["| range | ms / step | share of the step |", "|---|---|---|"]
    order = ["forward", *sorted(k for k in ms if k.startswith("forward/")), "loss", "backward", "optimizer", "step"]
    lines += [f"| {k} | {ms[k]:.2f} | {100 * ms[k] / step:.1f} % |" for k in order if k in ms]
    lines += ["", "| op (top by self time) | self ms / step | calls / step |", "|---|---|---|"]
    lines += [f"| `{name}` | {t:.2f} | {calls:.0f} |" for name, t, calls in profile_result["top_ops"]]
    return "\n".join(lines)
