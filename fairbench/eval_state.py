"""Resumable evaluation: per-example outcomes of each threat, saved after every chunk of examples.

``<state_dir>/<threat>.pt`` holds the bool outcome of every example evaluated so far, how many
are done, the seconds spent, and the indices of the evaluated subset in the full test set. The
file is written atomically and read with ``weights_only=True``; it is only reused when its key
matches: a hash of the model's weights, the evaluated images and labels, the subset's indices,
and every setting that can change an outcome (eps, attack settings, seed, batch and chunk size,
number of processes). Anything else (other weights, a stale or unreadable file) starts over.
pyautoattack 0.2.0's own ``state_path`` resume does not return per-example outcomes, so
fairbench keeps its own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fairbench.distributed import DistInfo
from fairbench.errors import FairbenchError
from fairbench.results import atomic_torch_save, load_checkpoint

STATE_FORMAT = 1


def _update(h: "hashlib._Hash", t: torch.Tensor) -> None:
    flat = t.detach().cpu().contiguous().reshape(-1)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(flat.view(torch.uint8).numpy())


def fingerprint(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                indices: torch.Tensor) -> str:
    """sha256 over the model's state (names, dtypes, shapes, bytes) and the evaluated data."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        _update(h, value)
    for t in (images, labels, indices):
        _update(h, t)
    return h.hexdigest()


@dataclass
class StageProgress:
    """One threat's progress: ``correct[:done]`` are final outcomes."""

    correct: torch.Tensor
    done: int
    seconds: float


class EvalState:
    """Loads and saves `StageProgress` per threat; a no-op when ``state_dir`` is None."""

    def __init__(self, state_dir: Path | None, key_parts: dict[str, Any],
                 indices: torch.Tensor, dist: DistInfo, device: torch.device,
                 progress: Callable[[str], None]) -> None:
        self.dir = Path(state_dir) if state_dir is not None else None
        self.base = json.dumps(key_parts, sort_keys=True, default=str)
        self.indices, self.dist, self.device = indices.cpu(), dist, device
        self.progress = progress

    def key(self, threat: str, settings: dict[str, Any]) -> str:
        blob = json.dumps({"threat": threat, "settings": settings}, sort_keys=True, default=str)
        return hashlib.sha256((self.base + blob).encode()).hexdigest()

    def path(self, threat: str) -> Path | None:
        return self.dir / f"{threat}.pt" if self.dir is not None else None

    def load(self, threat: str, settings: dict[str, Any], n: int) -> StageProgress:
        """Rank 0 reads the file; every rank gets the same progress. ``n``: the threat's examples."""
        fresh = StageProgress(torch.zeros(n, dtype=torch.bool, device=self.device), 0, 0.0)
        found = self._read(threat, settings, n) if self.dist.is_main else None
        got = found or fresh
        if self.dist.enabled:  # one decision for all ranks, so nobody skips work another does
            done = self.dist.broadcast(torch.tensor([got.done], dtype=torch.int64, device=self.device))
            secs = self.dist.broadcast(torch.tensor([got.seconds], dtype=torch.float64, device=self.device))
            flags = self.dist.broadcast(got.correct.to(self.device, torch.uint8))
            got = StageProgress(flags.bool(), int(done), float(secs))
        return got

    def _read(self, threat: str, settings: dict[str, Any], n: int) -> StageProgress | None:
        path = self.path(threat)
        if path is None or not path.exists():
            return None
        try:
            state = load_checkpoint(path)
        except FairbenchError as exc:
            self.progress(f"{threat}: ignoring unreadable saved state ({exc})")
            return None
        ok = (isinstance(state, dict) and state.get("format") == STATE_FORMAT
              and state.get("key") == self.key(threat, settings)
              and isinstance(state.get("correct"), torch.Tensor) and state["correct"].numel() == n)
        if not ok:
            self.progress(f"{threat}: saved state was made for other weights, data or settings; "
                          f"starting over")
            return None
        done = int(state["done"])
        self.progress(f"{threat}: resuming after {done}/{n} examples")
        return StageProgress(state["correct"].bool().to(self.device), done, float(state["seconds"]))

    def save(self, threat: str, settings: dict[str, Any], stage: StageProgress) -> None:
        """Rank 0 writes the file; a failed write stops every rank."""
        path = self.path(threat)
        if path is None:
            return
        self.dist.on_main(lambda: self._write(path, threat, settings, stage))

    def _write(self, path: Path, threat: str, settings: dict[str, Any], stage: StageProgress) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(path, {"format": STATE_FORMAT, "key": self.key(threat, settings),
                                 "threat": threat, "indices": self.indices,
                                 "correct": stage.correct.cpu(), "done": stage.done,
                                 "n": len(stage.correct), "seconds": stage.seconds})
