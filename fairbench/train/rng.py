"""Every random number generator a run draws from: seed them, save their states, restore them.

A checkpoint (`fairbench.train.checkpoint`) stores `rng_state` so that a resumed run draws exactly what
an uninterrupted one would; `fairbench.train.resume_check` compares a checkpoint's states with it.
"""

from __future__ import annotations

import random
from typing import Any, cast

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG the run draws from, in types that ``torch.load(weights_only=True)`` accepts.

    Of CUDA, only ``device``'s generator (the current device by default): under torchrun each rank
    draws on its own GPU, and a checkpoint must resume on a machine with fewer GPUs.
    """
    # the global generator is MT19937, whose legacy state is a tuple (numpy types the dict form too)
    np_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device if device is not None and device.type == "cuda" else "cuda")
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore `rng_state`; its tensors may come back on the GPU (``map_location``), RNGs want them on the CPU."""
    py = state["python"]
    random.setstate((py[-1], tuple(py[:-1]), None))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(
            state["cuda"].cpu(), device if device is not None and device.type == "cuda" else "cuda"
        )
