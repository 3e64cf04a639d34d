"""A secret of this machine's user, to tell the files fairbench wrote here from files put there by
someone else (a run folder copied from a stranger, a contributed results folder).

Some files fairbench writes are later trusted by fairbench itself: the saved state of an evaluation
(`fairbench.eval.state`: a resumed evaluation takes its outcomes as they are). Anyone who can
write the run folder can forge such a file, and a hash of its contents proves nothing, since the
forger can compute it too. So fairbench binds these files with an HMAC (SHA-256) under a key only
this user on this machine holds: 32 random bytes in ``$XDG_STATE_HOME/fairbench/key`` (default
``~/.local/state/fairbench/key``; ``$FAIRBENCH_STATE_DIR`` overrides the folder), made on first use,
mode 0600, never through a symlink. A file that does not carry the tag is not trusted: an evaluation
starts over. Machines that share a home folder share the key. The same folder (`state_dir`) keeps
the report's manifests (`fairbench.report.command.manifest_path`), out of reach of contributors.

Torch-free: the report imports it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from fairbench.errors import FairbenchError

KEY_BYTES = 32
_CACHE: dict[str, bytes] = {}


def state_dir() -> Path:
    """fairbench's folder for what only this user may write: ``$FAIRBENCH_STATE_DIR``, else
    ``$XDG_STATE_HOME/fairbench``, else ``~/.local/state/fairbench``."""
    folder = os.environ.get("FAIRBENCH_STATE_DIR")
    if not folder:
        base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        folder = os.path.join(base, "fairbench")
    return Path(folder)


def key_path() -> Path:
    return state_dir() / "key"


def machine_key() -> bytes:
    """This user's key (made on first use); FairbenchError when it cannot be read or made."""
    path = key_path()
    cached = _CACHE.get(str(path))
    if cached is not None:
        return cached
    try:
        key = _read(path)
    except FileNotFoundError:
        key = _make(path)
    _CACHE[str(path)] = key
    return key


def _read(path: Path) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FairbenchError(f"cannot read fairbench's key {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_size != KEY_BYTES
            or info.st_uid != os.getuid()
            or info.st_mode & 0o077
        ):
            raise FairbenchError(
                f"fairbench's key {path} is not a private file of {KEY_BYTES} bytes of this "
                f"user; remove it (a new one is made)"
            )
        return os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)


def _make(path: Path) -> bytes:
    key = secrets.token_bytes(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:  # another process made it meanwhile
        return _read(path)
    except OSError as exc:
        raise FairbenchError(f"cannot make fairbench's key {path}: {exc.strerror or exc}") from None
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def tag(*parts: bytes) -> str:
    """The HMAC-SHA256 of ``parts`` (each length-prefixed, so their boundaries count) under this
    machine's key, as hex."""
    mac = hmac.new(machine_key(), digestmod=hashlib.sha256)
    for part in parts:
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    return mac.hexdigest()


def has_tag(value: object, *parts: bytes) -> bool:
    """Whether ``value`` is the tag of ``parts`` made here (False when no key can be had)."""
    if not isinstance(value, str):
        return False
    try:
        return hmac.compare_digest(value, tag(*parts))
    except FairbenchError:
        return False
