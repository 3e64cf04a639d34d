"""What a training checkpoint holds beyond the weights: every RNG stream, its format, its checks.

The `Trainer` writes and reads checkpoints; this module says what goes in them and whether one
can be resumed, so the loop itself stays about training.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairbench.config import RunConfig
from fairbench.errors import FairbenchError

# 2: optional "mid_epoch" (a checkpoint taken at a step boundary on a signal); 3: optional "averaged"
# (the weight average) and "init_source" (the run it started from)
CHECKPOINT_FORMAT = 3
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "method", "rng", "epoch")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG the run draws from, in types that ``torch.load(weights_only=True)`` accepts.

    Of CUDA, only ``device``'s generator (the current device by default): under torchrun each rank
    draws on its own GPU, and a checkpoint must resume on a machine with fewer GPUs.
    """
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device if device is not None and device.type == "cuda"
                                                 else "cuda")
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore `rng_state`; its tensors may come back on the GPU (``map_location``), RNGs want them on the CPU."""
    py = state["python"]
    random.setstate((py[-1], tuple(py[:-1]), None))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu(), device if device is not None and device.type == "cuda"
                                 else "cuda")


def check_resumable(state: dict[str, Any], path: Path, cfg: RunConfig) -> None:
    """Refuse a checkpoint of an unknown format, a foreign file, or one made with another config."""
    if state.get("format_version") not in (1, 2, CHECKPOINT_FORMAT):
        raise FairbenchError(f"{path}: unknown checkpoint format {state.get('format_version')!r}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise FairbenchError(f"{path}: not a fairbench checkpoint (no {', '.join(missing)})")
    if state.get("config_hash") != cfg.training_hash():
        theirs, ours = state.get("config"), cfg.training_dict()
        theirs = theirs if isinstance(theirs, dict) else {}
        diff = [f"{k} ({theirs.get(k)!r} in the checkpoint, {ours[k]!r} now)"
                for k in ours if theirs.get(k) != ours[k]]
        raise FairbenchError(f"--resume: {path} was made with a different config: {'; '.join(diff)}")


def checkpoint_position(epochs_done: int, mid_epoch: dict[str, Any] | None) -> str:
    """Where a checkpoint stands, for people: "after epoch 3" or "epoch 4, step 17"."""
    return f"epoch {epochs_done + 1}, step {mid_epoch['step']}" if mid_epoch else f"after epoch {epochs_done}"
