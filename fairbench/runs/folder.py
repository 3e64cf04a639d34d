"""Run folders, checkpoints, locks and atomic writes (temp file in the same folder + rename).

``results/runs/<run-id>/`` holds ``config.json``, ``log.jsonl``, ``checkpoint.pt`` (not committed),
and the run's results, ``metrics.json`` and ``outcomes.csv.gz`` (their schema: `fairbench.schema`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import zipfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from fairbench.errors import FairbenchError
from fairbench.files import (  # noqa: F401
    TEMP_SUFFIX,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    ensure_writable,
    remove_stale_temps,
)

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"


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


MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KB; one of a run folder made by someone else may be anything


def read_run_config(run_dir: Path, where: str | None = None) -> dict[str, Any]:
    """The JSON object in a run folder's config.json: the one reader of that file (`fairbench
    resume`, `--init-from`, the tuned rows). A regular file (no symlink, FIFO or device), at most
    `MAX_CONFIG_BYTES`; anything else is one FairbenchError naming ``where`` (default: the folder)."""
    from fairbench.schema.files import read_regular

    where = where or str(run_dir)
    path = Path(run_dir) / CONFIG_FILE
    if not os.path.lexists(path):
        raise FairbenchError(f"{where} is not a run folder (no {CONFIG_FILE})")
    try:
        data = json.loads(read_regular(path, MAX_CONFIG_BYTES))
    except FairbenchError as exc:
        raise FairbenchError(f"{where}: {exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FairbenchError(f"{where}: {path}: unreadable ({str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise FairbenchError(f"{where}: {path}: not a JSON object")
    return data


MAX_LOG_BYTES = 64 << 20  # a log has a line per epoch: far less than this


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file, one a line; lines that are not one (a line cut by a
    crash, or anything else) are skipped. Only a regular file is read (a FIFO, a device or a
    symlink reads as empty: the trainer replaces it), of at most `MAX_LOG_BYTES`."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return []
    if path.stat().st_size > MAX_LOG_BYTES:
        raise FairbenchError(f"{path}: more than {MAX_LOG_BYTES} bytes; not a log fairbench wrote")
    records = []
    for line in path.read_text(errors="replace").splitlines():  # a cut line may be any bytes
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


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
        raise FairbenchError(
            f"not enough space in {folder}: {free / 2**20:.1f} MiB free, the run "
            f"needs about {need_bytes / 2**20:.1f} MiB (checkpoint written twice "
            f"over during the atomic replace)"
        )


def claim_run_folder(run_dir: Path, lock: ExitStack, check: Callable[[Path], None], *, need_bytes: int = 0) -> None:
    """How `fairbench run`, `fairbench eval` and a sweep's runs take a run folder (on rank 0): prove
    its parent writable (with room for ``need_bytes``), make it, hold its lock for as long as
    ``lock`` lives, and only then ``check`` what it holds: what a command saw before the lock is a
    hint, as another process may have written the folder since."""
    ensure_writable(run_dir.parent)
    if need_bytes:
        ensure_free_space(run_dir.parent, need_bytes)
    make_run_folder(run_dir)
    lock.enter_context(run_lock(run_dir))
    check(run_dir)


def clear_results(run_dir: Path, *names: str) -> None:
    """Remove ``run_dir``'s earlier result files ``names`` once the folder is claimed, so that a
    command killed before it writes its own leaves none that looks current."""
    for name in names:
        (run_dir / name).unlink(missing_ok=True)


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
                raise FairbenchError(
                    f"another fairbench process is using {run_dir}; wait for it or stop it first"
                ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


# A checkpoint may hold the weights this many times over (optimizer state, an averaged model, ...)
# and this much besides (a run's saved epoch plan, RNG states, names); a larger file is refused
# before it is read (`fairbench eval` and `--init-from`).
MAX_CHECKPOINT_FACTOR = 16
CHECKPOINT_SLACK = 64 * 2**20
MAX_INFLATION = 4  # torch.save stores its records uncompressed; a deflated archive (a zip bomb)
# may expand ~1000x when read, so a checkpoint's records may hold at most this many times its size


def load_checkpoint(
    path: Path, map_location: str | torch.device = "cpu", max_bytes: int | None = None
) -> dict[str, Any]:
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
        raise FairbenchError(
            f"{path} is {size / 2**20:.1f} MiB, more than the {max_bytes / 2**20:.1f} MiB "
            f"a checkpoint of this model can need"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # not a zip archive (the legacy format), or a broken one: torch.load says what is wrong
    limit = MAX_INFLATION * size + 2**20
    if max_bytes is not None:
        limit = min(limit, max_bytes)
    if expanded > limit:
        raise FairbenchError(
            f"{path} expands to {expanded / 2**20:.1f} MiB from a {size / 2**20:.1f} MiB "
            f"file (a compressed archive, which torch.save never writes); not loaded"
        )
