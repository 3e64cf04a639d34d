"""What a sweep knows about its runs: each planned run, whether it is done, started, running
elsewhere or failed before, the sweep's files, and the lock that keeps two sweeps off one folder.

The results folder (``--out``) is the sweep's folder: runs land in ``<out>/runs/<run-id>/`` as
always, and the sweep keeps its own files in ``<out>/sweep/``: ``plan.json`` (the runs of the last
sweep started there), ``status/<run-id>.json`` (each run's last outcome), ``logs/<run-id>.log``
(each run's output, every attempt appended), ``lock`` (held while a sweep launches) and, for
Slurm, ``slurm/`` (submitit's job files and logs).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fairbench.errors import FairbenchError

SWEEP_DIR = "sweep"
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class PlannedRun:
    """One run of the grid: its id, the `fairbench run` arguments that define it, where it stands."""

    run_id: str
    argv: tuple[str, ...]  # without --run-id / --resume / --no-progress (the launcher adds them)
    coords: tuple[tuple[str, str], ...]  # the grid coordinates, for tables
    epochs: int
    out: str
    device: str

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / "runs" / self.run_id

    def args(self, resume: bool) -> list[str]:
        """The `fairbench run` command line (without the program)."""
        return ["run", *self.argv, "--run-id", self.run_id, "--no-progress", *(["--resume"] if resume else [])]

    def command(self, resume: bool, python: str | None = None) -> list[str]:
        return [python or sys.executable, "-m", "fairbench", *self.args(resume)]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "argv": list(self.argv), "coords": [list(c) for c in self.coords],
                "epochs": self.epochs, "out": self.out, "device": self.device}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PlannedRun":
        return cls(d["run_id"], tuple(d["argv"]), tuple(tuple(c) for c in d["coords"]), int(d["epochs"]),
                   d["out"], d["device"])


# --------------------------------------------------------------------- state of each run

def sweep_dir(out: str | Path) -> Path:
    return Path(out) / SWEEP_DIR


def is_done(run_dir: Path) -> bool:
    """A finished run: its metrics.json is there and passes the schema check (a tuning trial: its
    validation.json passes `fairbench.schema.validation`'s check)."""
    from fairbench.schema import METRICS_FILE, read_metrics
    from fairbench.schema.validation import VALIDATION_FILE, read_validation

    for name, read in ((METRICS_FILE, read_metrics), (VALIDATION_FILE, read_validation)):
        path = run_dir / name
        if path.is_file():
            try:
                read(path)
            except FairbenchError:
                continue
            return True
    return False


def is_started(run_dir: Path) -> bool:
    """A run to continue with --resume (it has a checkpoint, or at least its config)."""
    from fairbench.results import CHECKPOINT_FILE, CONFIG_FILE

    return (run_dir / CHECKPOINT_FILE).exists() or (run_dir / CONFIG_FILE).exists()


def is_busy(run_dir: Path) -> bool:
    """Another process holds the run's lock (`results.run_lock`): it is running right now."""
    from fairbench.results import run_lock

    if not run_dir.is_dir():
        return False
    try:
        with run_lock(run_dir):
            return False
    except FairbenchError:
        return True


def epochs_done(run_dir: Path) -> tuple[int, float | None]:
    """Epochs in the run's log.jsonl so far, and the last epoch's images/s."""
    from fairbench.results import LOG_FILE, read_jsonl

    records = [r for r in read_jsonl(run_dir / LOG_FILE) if isinstance(r, dict) and "epoch" in r]
    if not records:
        return 0, None
    last = records[-1]
    return int(last.get("epoch", len(records))), last.get("images_per_s")


def read_status(sweep: Path, run_id: str) -> dict[str, Any]:
    try:
        data = json.loads((sweep / "status" / f"{run_id}.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_status(sweep: Path, run_id: str, state: str, **info: Any) -> None:
    """Record a run's latest outcome (``running``, ``done``, ``failed``, ``stopped``, ...)."""
    from fairbench.results import atomic_write_json

    folder = sweep / "status"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(), **info}
    atomic_write_json(folder / f"{run_id}.json", record)


def log_path(sweep: Path, run_id: str) -> Path:
    return sweep / "logs" / f"{run_id}.log"


def open_log(sweep: Path, run: PlannedRun, resume: bool, where: str) -> Any:
    """The run's log file, opened for appending, with a header line for this attempt (where it
    runs and its `fairbench run` command line)."""
    path = log_path(sweep, run.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "ab")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    f.write(f"=== {stamp} {where}: fairbench {' '.join(run.args(resume))}\n".encode())
    f.flush()
    return f


def last_error_line(sweep: Path, run_id: str) -> str:
    """The last `error:`/`preempted:` line (or, failing that, the last line) of the run's log."""
    try:
        lines = [l.strip() for l in log_path(sweep, run_id).read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith(("error:", "preempted:", "Traceback", "RuntimeError", "interrupted")):
            return line[:200]
    return lines[-1][:200] if lines else ""


def classify(run: PlannedRun, sweep: Path, retry_failed: bool) -> str:
    """What a run needs now: ``done``, ``busy`` (another process runs it), ``failed`` (an earlier
    attempt failed; retried only with --retry-failed), ``resume`` or ``new``."""
    if is_done(run.run_dir):
        return "done"
    if is_busy(run.run_dir):
        return "busy"
    if read_status(sweep, run.run_id).get("state") == "failed" and not retry_failed:
        return "failed"
    return "resume" if is_started(run.run_dir) else "new"


def outcome(run: PlannedRun, exit_code: int) -> str:
    """A finished attempt's state from the exit code of `fairbench run`."""
    from fairbench.signals import EXIT_PREEMPTED

    if exit_code == 0:
        return "done" if is_done(run.run_dir) else "failed"
    return "stopped" if exit_code in (EXIT_PREEMPTED, 130) else "failed"


# ---------------------------------------------------------------------- the plan, the lock

def write_plan(sweep: Path, runs: list[PlannedRun], launcher: str, **extra: Any) -> None:
    from fairbench.results import atomic_write_json

    sweep.mkdir(parents=True, exist_ok=True)
    atomic_write_json(sweep / PLAN_FILE, {"version": 1, "launcher": launcher,
                                          "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                          "runs": [r.to_dict() for r in runs], **extra})


def read_plan(folder: Path) -> tuple[Path, dict[str, Any], list[PlannedRun]]:
    """The last sweep started in a results folder (or its sweep/ folder): (sweep dir, plan, runs)."""
    folder = Path(folder)
    sweep = folder if (folder / PLAN_FILE).is_file() else folder / SWEEP_DIR
    path = sweep / PLAN_FILE
    if not path.is_file():
        raise FairbenchError(f"no sweep was started in {folder} (no {SWEEP_DIR}/{PLAN_FILE}); give the "
                             f"results folder (--out) of a sweep")
    try:
        plan = json.loads(path.read_text())
        runs = [PlannedRun.from_dict(r) for r in plan["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FairbenchError(f"{path}: unreadable ({str(exc)[:200]})") from None
    return sweep, plan, runs


@contextmanager
def sweep_lock(sweep: Path) -> Iterator[None]:
    """Hold ``<sweep>/lock`` (a kernel lock, never stale): a second sweep on this folder refuses."""
    import fcntl

    sweep.mkdir(parents=True, exist_ok=True)
    fd = os.open(sweep / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise FairbenchError(f"another fairbench sweep is running on {sweep.parent} ({holder}); "
                                 f"wait for it to end, or stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
