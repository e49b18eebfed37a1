"""The random-number generator states of a process, to save in a checkpoint and restore on resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_states", "restore_rng_states"]


def capture_rng_states() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and python ``random`` states, as checkpoint-safe values."""
    states: dict[str, Any] = {
        "torch": torch.random.get_rng_state(),
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_states` (missing entries are left alone)."""
    if "torch" in states:
        torch.random.set_rng_state(states["torch"].cpu())
    if "numpy" in states:
        np.random.set_state(("MT19937", np.asarray(states["numpy"], dtype=np.uint32), states["numpy_pos"], 0, 0.0))
    if "python" in states:
        random.setstate((3, tuple(states["python"]), None))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])
