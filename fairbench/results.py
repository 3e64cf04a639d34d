"""Run folders, the metrics.json schema, and atomic writes (temp file in the same folder + rename).

``results/runs/<run-id>/`` holds ``config.json``, ``log.jsonl``, ``checkpoint.pt`` (not committed)
and ``metrics.json``, the single source of truth for the leaderboard.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from fairbench.errors import FairbenchError

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(path: Path, obj: Any) -> str:
    """Save with torch.save atomically; returns the file's sha256."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one line; a line cut by a crash is ignored by `read_jsonl`."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there, before any work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise FairbenchError(f"cannot write to output folder {folder}: {exc.strerror or exc}") from None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: a pickle that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise FairbenchError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FairbenchError(f"cannot load checkpoint {path} safely (weights_only): {first}") from None


def load_metrics(path: Path) -> dict[str, Any]:
    """Read and check one metrics.json; raises FairbenchError when it is not a usable result."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FairbenchError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise FairbenchError(f"{path}: not a JSON object")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise FairbenchError(f"{path}: unknown schema_version {data.get('schema_version')!r}")
    for key, kind in (("run_id", str), ("method", str), ("arch", str), ("dataset", str),
                      ("classes", list), ("metrics", dict)):
        if not isinstance(data.get(key), kind):
            raise FairbenchError(f"{path}: field '{key}' missing or not a {kind.__name__}")
    return data


def find_metrics(results_dir: Path) -> list[Path]:
    return sorted(Path(results_dir).glob(f"**/{METRICS_FILE}"))
