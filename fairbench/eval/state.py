"""Resumable evaluation: per-example outcomes of each threat, saved after every chunk of examples.

``<state_dir>/<threat>.pt`` holds the bool outcome of every example evaluated so far, how many
are done, the seconds spent, and the indices of the evaluated subset in the full test set. The
file is written atomically and read with ``weights_only=True``; it is only reused when its key
matches: a hash of the model's weights, the evaluated images and labels, the subset's indices,
and every setting that can change an outcome (eps, attack settings, seed, batch and chunk size,
number of processes). Anything else (other weights, a stale or unreadable file) starts over.

The key can be recomputed by whoever has the weights and the data, so it does not tell who wrote a
file: a file edited and planted in a run folder would be taken as it is (a made-up result). So each
file also carries a tag (`fairbench.runs.machine_key`: an HMAC under a secret of this machine's user) of
its key and its outcomes; a file without a valid tag was not written by fairbench here and starts
over too. `foreign_state` finds such files, for `fairbench eval`, which refuses a folder holding
another's evaluation state.
pyautoattack 0.2.0's own ``state_path`` resume does not return per-example outcomes, so
fairbench keeps its own.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fairbench.distributed import DistInfo
from fairbench.errors import FairbenchError
from fairbench.files import canonical_json
from fairbench.runs.folder import TEMP_SUFFIX, atomic_torch_save, load_checkpoint
from fairbench.runs.machine_key import has_tag, tag

STATE_FORMAT = 1
MAX_STATE_BYTES = 256 << 20  # a state file holds 9 bytes per example (its outcome and its index)


def _tag_parts(state: dict[str, Any]) -> tuple[bytes, ...]:
    """What a state file's tag covers: every field it holds."""
    head = json.dumps(
        {k: state.get(k) for k in ("format", "key", "threat", "done", "n", "seconds")}, sort_keys=True, default=str
    )
    tensors = [state.get(k) for k in ("correct", "indices")]
    return (
        head.encode(),
        *(
            t.detach().cpu().contiguous().numpy().tobytes()
            if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.device.type != "meta"
            else b""
            for t in tensors
        ),
    )


def written_here(state: Any) -> bool:
    """Whether ``state`` (a loaded state file) carries this machine's tag of its contents."""
    if not isinstance(state, dict):
        return False
    try:
        return has_tag(state.get("tag"), *_tag_parts(state))
    except (TypeError, RuntimeError, ValueError):
        return False


def foreign_state(state_dir: Path) -> str | None:
    """What in ``state_dir`` fairbench did not write on this machine (None: nothing): anything but
    state files that carry this machine's tag (temporary files of a write cut short aside)."""
    state_dir = Path(state_dir)
    if not os.path.lexists(state_dir):
        return None
    if state_dir.is_symlink() or not state_dir.is_dir():
        return f"its {state_dir.name} is a symlink or not a folder"
    for entry in sorted(state_dir.iterdir()):
        if (
            entry.name.startswith(".")
            and entry.name.endswith(TEMP_SUFFIX)
            and entry.is_file()
            and not entry.is_symlink()
        ):  # a write cut short: removed when the evaluation starts
            continue
        if entry.is_symlink() or not entry.is_file() or entry.suffix != ".pt":
            return f"{state_dir.name}/{entry.name} is not a state file fairbench writes"
        try:
            state = load_checkpoint(entry, max_bytes=MAX_STATE_BYTES)
        except FairbenchError:
            return f"{state_dir.name}/{entry.name} is not a readable state file"
        if not written_here(state):
            return f"{state_dir.name}/{entry.name} was not written by fairbench on this machine"
    return None


def _update(h: "hashlib._Hash", t: torch.Tensor) -> None:
    flat = t.detach().cpu().contiguous().reshape(-1)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    # numpy's stubs make ndarray a buffer (__buffer__) on Python 3.12+ only
    h.update(flat.view(torch.uint8).numpy())  # type: ignore[arg-type]


def fingerprint(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> str:
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

    def __init__(
        self,
        state_dir: str | Path | None,
        key_parts: dict[str, Any],
        indices: torch.Tensor,
        dist: DistInfo,
        device: torch.device,
        progress: Callable[[str], None],
    ) -> None:
        self.dir = Path(state_dir) if state_dir is not None else None
        self.base = canonical_json(key_parts)
        self.indices, self.dist, self.device = indices.cpu(), dist, device
        self.progress = progress
        self._said_no_key = False

    def key(self, threat: str, settings: dict[str, Any]) -> str:
        blob = canonical_json({"threat": threat, "settings": settings})
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
        ok = (
            isinstance(state, dict)
            and state.get("format") == STATE_FORMAT
            and state.get("key") == self.key(threat, settings)
            and isinstance(state.get("correct"), torch.Tensor)
            and state["correct"].numel() == n
            and type(state.get("done")) is int
            and 0 <= state["done"] <= n
            and isinstance(state.get("seconds"), float)
        )
        if not ok:
            self.progress(f"{threat}: saved state was made for other weights, data or settings; starting over")
            return None
        if not written_here(state):
            self.progress(f"{threat}: saved state was not written by fairbench on this machine; starting over")
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
        state = {
            "format": STATE_FORMAT,
            "key": self.key(threat, settings),
            "threat": threat,
            "indices": self.indices,
            "correct": stage.correct.cpu(),
            "done": int(stage.done),
            "n": len(stage.correct),
            "seconds": float(stage.seconds),
        }
        try:
            state["tag"] = tag(*_tag_parts(state))
        except FairbenchError as exc:  # no key here (an unwritable home): nothing to resume from, so none kept
            if not self._said_no_key:
                self.progress(f"{threat}: evaluation state is not saved ({exc})")
                self._said_no_key = True
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(path, state)
