"""Run folders, the metrics.json schema, and atomic writes (temp file in the same folder + rename).

``results/runs/<run-id>/`` holds ``config.json``, ``log.jsonl``, ``checkpoint.pt`` (not committed)
and ``metrics.json``, the single source of truth for the leaderboard.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from fairbench.errors import FairbenchError

SCHEMA_VERSION = 1
OUTCOMES_FILE = "outcomes.csv.gz"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
TEMP_SUFFIX = ".tmp"


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half.

    A temporary file in the same folder is written, flushed, fsynced and renamed over ``path``.
    A failed write (disk full, quota, read-only) leaves the old file as it was and raises
    `FairbenchError`; a process killed mid-write leaves only a ``.NAME.*.tmp`` file behind,
    which `remove_stale_temps` clears.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise FairbenchError(f"cannot write {path}: {exc.strerror or exc}; "
                                 f"the previous file there (if any) is unchanged") from None
        raise
    _fsync_dir(path.parent)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files that writes cut short by a crash left in ``folder`` (and below it,
    e.g. ``eval_state/``)."""
    stale = [p for p in Path(folder).rglob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


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


OUTCOME_COLUMNS = ("clean", "pgd20", "autoattack", "union")


def outcomes_csv_gz(indices: torch.Tensor, labels: torch.Tensor,
                    outcomes: dict[str, torch.Tensor]) -> bytes:
    """``outcomes.csv.gz``: one row per evaluated test image, ``index,label,clean,pgd20,autoattack,
    union``; 1/0, empty where the threat was not run (outcome -1, or a threat not in the run).
    Gzip with mtime 0, so the same outcomes give the same bytes."""
    cols = [outcomes[c].cpu().tolist() if c in outcomes else None for c in OUTCOME_COLUMNS]
    lines = ["index,label," + ",".join(OUTCOME_COLUMNS)]
    for row, (i, y) in enumerate(zip(indices.cpu().tolist(), labels.cpu().tolist())):
        cells = ["" if col is None or col[row] < 0 else str(col[row]) for col in cols]
        lines.append(f"{i},{y}," + ",".join(cells))
    return gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)


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
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise FairbenchError(f"cannot append to {path}: {exc.strerror or exc}") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    records = []
    for line in Path(path).read_text(errors="replace").splitlines():  # a cut line may be any bytes
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
        # a probe of its own: runs started together in one folder must not remove each other's
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise FairbenchError(f"cannot write to output folder {folder}: {exc.strerror or exc}") from None


def make_run_folder(run_dir: Path) -> None:
    """Create ``run_dir`` in its (existing) parent; a file in its place, or a folder that cannot be
    made (a path too long, no permission), is one clear error."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise FairbenchError(f"{run_dir} is a file, not a run folder; pass another --run-id")
    try:
        run_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise FairbenchError(f"cannot make run folder {run_dir}: {exc.strerror or exc}") from None


def ensure_free_space(folder: Path, need_bytes: int) -> None:
    """Refuse to start when ``folder``'s file system cannot hold ``need_bytes`` more."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # no answer (some network file systems): the writes themselves still fail cleanly
    if free < need_bytes:
        raise FairbenchError(f"not enough space in {folder}: {free / 2**20:.1f} MiB free, the run "
                             f"needs about {need_bytes / 2**20:.1f} MiB (checkpoint written twice "
                             f"over during the atomic replace)")


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder, so two processes never write one run.

    The lock is the kernel's (flock on the folder itself: no lock file), released when the
    process ends however it ends, so a killed run never leaves a stale lock behind. Where the
    file system cannot lock (some network file systems), the run goes on unlocked.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise FairbenchError(f"another fairbench process is using {run_dir}; "
                                     f"wait for it or stop it first") from None
        yield
    finally:
        os.close(fd)  # releases the lock


MAX_INFLATION = 4  # torch.save stores its records uncompressed; a deflated archive (a zip bomb)
# may expand ~1000x when read, so a checkpoint's records may hold at most this many times its size


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu",
                    max_bytes: int | None = None) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: a pickle that would run code is refused.

    Only a regular file is opened (a FIFO would hang, a device never end); one larger than
    ``max_bytes``, or whose records would expand to more than `MAX_INFLATION` times its size (or
    ``max_bytes``), is refused before it is read.
    """
    path = Path(path)
    if not path.exists():
        raise FairbenchError(f"no checkpoint at {path}")
    if not path.is_file():
        raise FairbenchError(f"{path} is not a regular file, so not a checkpoint")
    _check_checkpoint_size(path, max_bytes)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FairbenchError(f"cannot load checkpoint {path} safely (weights_only): {first}") from None
    if not isinstance(state, dict):
        raise FairbenchError(f"{path} is not a checkpoint: it holds a {type(state).__name__}, not a dict")
    return state


def _check_checkpoint_size(path: Path, max_bytes: int | None) -> None:
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise FairbenchError(f"{path} is {size / 2**20:.1f} MiB, more than the {max_bytes / 2**20:.1f} MiB "
                             f"a checkpoint of this model can need")
    try:
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # not a zip archive (the legacy format), or a broken one: torch.load says what is wrong
    limit = MAX_INFLATION * size + 2**20
    if max_bytes is not None:
        limit = min(limit, max_bytes)
    if expanded > limit:
        raise FairbenchError(f"{path} expands to {expanded / 2**20:.1f} MiB from a {size / 2**20:.1f} MiB "
                             f"file (a compressed archive, which torch.save never writes); not loaded")


def load_metrics(path: Path) -> dict[str, Any]:
    """Read and check one metrics.json; raises FairbenchError when it is not a usable result."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FairbenchError(f"{path}: unreadable ({exc})") from None
    return parse_metrics(text, str(path))


def parse_metrics(text: str, source: str = METRICS_FILE) -> dict[str, Any]:
    """Parse and check a metrics.json document (see `check_metrics`)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError covers JSONDecodeError, huge ints
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FairbenchError(f"{source}: unreadable, not valid JSON ({first[:200]})") from None
    return check_metrics(data, source)


def check_metrics(data: Any, source: str = METRICS_FILE) -> dict[str, Any]:
    """Check every field the leaderboard reads; raises FairbenchError naming the first bad one.

    Structure only: whether a run is finished (threats evaluated, status) is the report's call.
    """
    def need(ok: bool, where: str, what: str) -> None:
        if not ok:
            raise FairbenchError(f"{source}: {where} {what}")

    if not isinstance(data, dict):
        raise FairbenchError(f"{source}: not a JSON object")
    version = data.get("schema_version")
    need(_is_int(version) and version == SCHEMA_VERSION, "unknown schema_version",
         f"{_short(version)} (this fairbench reads {SCHEMA_VERSION})")
    for key in ("run_id", "method", "arch", "dataset"):
        need(isinstance(data.get(key), str) and bool(data[key]), f"'{key}'", "is missing or not a non-empty string")
    for key in ("seed", "epochs"):
        need(_is_int(data.get(key)) and data[key] >= 0, f"'{key}'", "is missing or not a non-negative integer")
    for key in ("params", "threat", "metrics"):
        need(isinstance(data.get(key), dict), f"'{key}'", "is missing or not an object")
    for key in ("training", "timing", "env", "checkpoint"):
        need(isinstance(data.get(key, {}), dict), f"'{key}'", "is not an object")
    eps = data["threat"].get("eps")
    need(_is_number(eps) and 0 < eps <= 1, "threat.eps", f"is {_short(eps)}, not in (0, 1]")
    classes = data.get("classes")
    need(isinstance(classes, list) and bool(classes) and all(isinstance(c, str) for c in classes)
         and len(set(classes)) == len(classes), "'classes'", "is not a list of distinct class names")
    for threat, block in data["metrics"].items():
        _check_threat(block, classes, f"metrics.{threat}", need)
    return data


def _check_threat(block: Any, classes: list[str], where: str, need: Any) -> None:
    """One threat's per-class summary: fractions in [0, 1], one per class, and its summary fields."""
    need(isinstance(block, dict), where, "is not an object")
    k = len(classes)
    counts = block.get("n_per_class")
    need(isinstance(counts, list) and len(counts) == k and all(_is_int(c) and c >= 0 for c in counts),
         f"{where}.n_per_class", f"is not a list of {k} non-negative integers")
    for key in ("per_class", "per_class_error"):
        if key == "per_class_error" and key not in block:
            continue  # optional
        values = block.get(key)
        need(isinstance(values, list) and len(values) == k, f"{where}.{key}",
             f"is not a list of {k} numbers (one per class)")
        for i, (v, n) in enumerate(zip(values, counts)):  # a class without test examples has NaN
            need(_is_fraction(v) or (n == 0 and _is_number(v) and math.isnan(v)),
                 f"{where}.{key}[{i}]", f"is {_short(v)}, not a fraction in [0, 1]")
    for key in ("avg", "worst", "best", "std"):
        need(_is_fraction(block.get(key)), f"{where}.{key}", f"is {_short(block.get(key))}, not in [0, 1]")
    for key in ("worst_class", "best_class"):
        need(block.get(key) in classes, f"{where}.{key}", f"is {_short(block.get(key))}, not one of the classes")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_fraction(v: Any) -> bool:
    return _is_number(v) and 0 <= v <= 1  # NaN fails both comparisons


def _short(v: Any) -> str:
    text = repr(v) if not isinstance(v, (list, dict)) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def find_metrics(results_dir: Path) -> list[Path]:
    return sorted(Path(results_dir).glob(f"**/{METRICS_FILE}"))
