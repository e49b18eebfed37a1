"""benchmarks/step_profile.py: the step's ranges and the per-part forward ranges, on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.step_profile import profile_steps, report  # noqa: E402


class Branch(nn.Module):
    """Used through a method, never through ``__call__`` (as AuxSegNet's ``TaskBranch.encode``/``decode``)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(256, 256)
        self.second = nn.Linear(256, 256)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


class TwoParts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
        self.branch = Branch()
        self.small = nn.Linear(256, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.small(self.branch.encode(self.big(x)))


def test_profile_splits_the_step_into_ranges_and_parts() -> None:
    torch.manual_seed(0)
    net = TwoParts()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    batches = [{"x": torch.randn(64, 256), "y": torch.randn(64, 4)} for _ in range(3)]
    result = profile_steps(
        net,
        batches,
        forward=lambda batch: net(batch["x"]),
        loss_of=lambda out, batch: nn.functional.mse_loss(out, batch["y"]),
        optimizer_step=optimizer.step,
        device=torch.device("cpu"),
        top=5,
    )
    ms = result["ms_per_step"]
    assert result["time"] == "host" and result["steps"] == 3
    parts = {k for k in ms if k.startswith("forward/")}
    assert parts == {"forward/big", "forward/branch", "forward/small"}  # the branch through its children, once
    assert {"forward", "loss", "backward", "optimizer", "step"} <= set(ms)
    assert ms["step"] == sum(ms[k] for k in ("forward", "loss", "backward", "optimizer"))
    assert sum(ms[k] for k in parts) <= ms["forward"]  # the parts run inside the forward range, none counted twice
    assert ms["forward/branch"] > 0
    names = [name for name, _, _ in result["top_ops"]]
    assert len(names) == 5 and any("addmm" in name or "linear" in name or "mm" in name for name in names)
    assert not net.big._forward_hooks and not net.big._forward_pre_hooks, "the hooks are removed afterwards"
    table = report(result)
    assert "| forward/big |" in table and "| step |" in table
