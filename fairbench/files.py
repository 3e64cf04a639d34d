"""Writing result files safely, torch-free: atomic writes (a reader sees the old file or the new
one, never half), the temporaries a crash leaves, a folder proved writable before work starts, and
the one canonical JSON form in which stored values are compared and hashed (`canonical_json`).
Used by the run folders (`fairbench.runs.folder`, which re-exports these), the result schema and the
report."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from fairbench.errors import FairbenchError

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
            raise FairbenchError(
                f"cannot write {path}: {exc.strerror or exc}; the previous file there (if any) is unchanged"
            ) from None
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


def canonical_json(value: Any) -> str:
    """``value`` as one canonical JSON string (keys sorted, anything JSON lacks as its ``str``): two
    values a result file would store alike compare equal (a tuple and its JSON list), and the string
    is what run ids, resume keys and report rows hash or compare. Changing it changes every run id."""
    return json.dumps(value, sort_keys=True, default=str)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


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
