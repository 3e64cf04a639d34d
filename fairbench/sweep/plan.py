"""What a sweep knows about its runs: each planned run, whether it is done, started, running
elsewhere or failed before, the sweep's files, and the lock that keeps two sweeps off one folder.

The results folder (``--out``) is the sweep's folder: runs land in ``<out>/runs/<run-id>/`` as
always, and the sweep keeps its own files in ``<out>/sweep/``: ``plan.json`` (the runs of the last
sweep started there), ``status/<run-id>.json`` (each run's last outcome), ``logs/<run-id>.log``
(each run's output, every attempt appended), ``lock`` (held while a sweep launches) and, for
Slurm, ``slurm/`` (submitit's job files and logs).

These files may be edited, planted or damaged, so every reader is bounded and type-checked like the
report's: only regular files are opened (never a symlink, FIFO or device; opening never blocks),
each up to a size bound; a field of the wrong type is dropped (a status file, a log line) or the
file refused with one line (plan.json); the sweep's folders must be real folders, not symlinks or
files, so nothing is read or written outside the results folder through them.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import stat
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from fairbench.errors import FairbenchError
from fairbench.specs.threats import subset_aliases, subset_flag, subset_keys, subset_keys_of, subsets_from_keys

SWEEP_DIR = "sweep"
PLAN_FILE = "plan.json"
SUBFOLDERS = ("status", "logs", "slurm")
MAX_PLAN_BYTES = 64 << 20  # a plan of 20,000 runs takes about 10 MB
MAX_STATUS_BYTES = 64 << 10
LOG_TAIL_BYTES = 64 << 10  # of a run's sweep log, read for its last error line
MAX_ARGV = 1000  # arguments of one planned run
MAX_TEXT = 4096  # characters of one argument, coordinate or path in plan.json
LAUNCHERS = ("local", "slurm")
STATES = ("running", "done", "failed", "stopped", "requeued", "submitted")
JOB_ID = re.compile(r"\d{1,20}(_\d{1,20})?")
# how a sweep names a run's evaluation settings (`eval_settings`): the `fairbench run` option of each
# (a threat's subset, under the threat's subset key, is named by `_flag`)
EVAL_FLAGS = {"attacks": "--attacks", "eval_per_class": "--eval-per-class"}


@dataclass(frozen=True)
class PlannedRun:
    """One run of the grid: its id, the `fairbench run` arguments that define it, where it stands."""

    run_id: str
    argv: tuple[str, ...]  # without --run-id / --resume / --no-progress (the launcher adds them)
    coords: tuple[tuple[str, str], ...]  # the grid coordinates, for tables
    epochs: int
    out: str
    device: str
    evaluation: dict[str, Any] | None = field(default=None, compare=False)  # `eval_settings`; None: unknown

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / "runs" / self.run_id

    def args(self, resume: bool) -> list[str]:
        """The `fairbench run` command line (without the program)."""
        return ["run", *self.argv, "--run-id", self.run_id, "--no-progress", *(["--resume"] if resume else [])]

    def command(self, resume: bool, python: str | None = None) -> list[str]:
        return [python or sys.executable, "-m", "fairbench", *self.args(resume)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "argv": list(self.argv),
            "coords": [list(c) for c in self.coords],
            "epochs": self.epochs,
            "out": self.out,
            "device": self.device,
            "evaluation": self.evaluation,
        }

    @classmethod
    def from_dict(cls, d: Any) -> "PlannedRun":
        """A run of a plan.json written by anyone: every field type-checked (FairbenchError naming it)."""
        from fairbench.config import MAX_RUN_ID_BYTES, is_run_id

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise FairbenchError(what)

        need(isinstance(d, dict), "a run is not an object")
        run_id = d.get("run_id")
        need(is_run_id(run_id), f"run_id is not a run folder name (at most {MAX_RUN_ID_BYTES} bytes)")
        argv, coords = d.get("argv"), d.get("coords")
        need(
            isinstance(argv, list) and len(argv) <= MAX_ARGV and all(_is_text(a) for a in argv),
            f"run {run_id}: argv is not a list of at most {MAX_ARGV} printable strings",
        )
        need(
            isinstance(coords, list)
            and len(coords) <= MAX_ARGV
            and all(isinstance(c, list) and len(c) == 2 and all(_is_text(x) for x in c) for c in coords),
            f"run {run_id}: coords is not a list of [name, value] strings",
        )
        epochs = d.get("epochs")
        need(_is_int(epochs) and 1 <= epochs <= 10**6, f"run {run_id}: epochs is not a whole number in [1, 10**6]")
        need(_is_text(d.get("out")) and _is_text(d.get("device")), f"run {run_id}: out or device is not a string")
        evaluation = d.get("evaluation")
        need(
            evaluation is None or _is_eval_settings(evaluation),
            f"run {run_id}: evaluation is not the run's evaluation settings",
        )
        return cls(run_id, tuple(argv), tuple((c[0], c[1]) for c in coords), epochs, d["out"], d["device"], evaluation)


def eval_settings(cfg: Any) -> dict[str, Any]:
    """What of a run config decides its evaluation and is not in its run id (the run id hashes the
    training config): the threats, the evaluated images per class, the subsets threats run on
    (`_subset_settings`). ``--eval-batch-size`` changes no outcome and is left out."""
    attacks = sorted(set(cfg.attacks))
    return {
        "attacks": attacks,
        "eval_per_class": cfg.eval_per_class,
        **_subset_settings({t: k for t, k in cfg.subsets.items() if t in attacks}),
    }


def _subset_settings(subsets: dict[str, int]) -> dict[str, Any]:
    """Each threat's subset under its subset key: a key a threat declares itself (``aa_per_class``)
    always, null for every image (as plans recorded it before ``--subset``); any other where set."""
    return {key: None for key in subset_aliases()} | subset_keys(subsets)


def _flag(key: str) -> str:
    """How a sweep's message names evaluation setting ``key`` (`EVAL_FLAGS`, a subset key's option)."""
    if key in EVAL_FLAGS:
        return EVAL_FLAGS[key] + " "
    threat = subset_keys_of().get(key, key)
    return subset_flag(key) + " " if key in subset_aliases() else f"--subset {threat}="


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_text(v: Any, limit: int = MAX_TEXT) -> bool:
    return isinstance(v, str) and len(v) <= limit and v.isprintable()


def _is_count(v: Any) -> bool:
    return v is None or (_is_int(v) and 1 <= v <= 10**8)


def _is_eval_settings(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and set(EVAL_FLAGS) <= set(v)
        and isinstance(v["attacks"], list)
        and len(v["attacks"]) <= 100
        and all(_is_text(a, 100) for a in v["attacks"])
        and _is_count(v["eval_per_class"])
        and all(k in subset_keys_of() and _is_count(v[k]) for k in set(v) - set(EVAL_FLAGS))
    )


def printable(text: Any) -> str:
    """``text`` for a terminal: control characters (escape codes, newlines) shown as ``?``."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def _warn(path: Path, why: str) -> None:
    sys.stderr.write(f"warning: {printable(path)}: {printable(why)[:300]}\n")


def _read_bounded(path: Path, cap: int) -> bytes:
    from fairbench.schema import read_regular  # a regular file only, never blocking, at most cap bytes

    return read_regular(path, cap)


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
    from fairbench.runs.folder import CHECKPOINT_FILE, CONFIG_FILE

    return (run_dir / CHECKPOINT_FILE).exists() or (run_dir / CONFIG_FILE).exists()


def is_busy(run_dir: Path) -> bool:
    """Another process holds the run's lock (`results.run_lock`): it is running right now."""
    from fairbench.runs.folder import run_lock

    if not run_dir.is_dir():
        return False
    try:
        with run_lock(run_dir):
            return False
    except FairbenchError:
        return True


def epochs_done(run_dir: Path) -> tuple[int, float | None]:
    """Epochs in the run's log.jsonl so far, and the last epoch's images/s (lines whose fields have
    other types are left out; an unreadable log counts no epoch)."""
    from fairbench.runs.folder import LOG_FILE, read_jsonl

    try:
        lines = read_jsonl(run_dir / LOG_FILE)
    except FairbenchError:
        return 0, None
    records = [r for r in lines if _is_int(r.get("epoch")) and 0 <= r["epoch"] <= 10**6]
    if not records:
        return 0, None
    speed = records[-1].get("images_per_s")
    ok = isinstance(speed, (int, float)) and not isinstance(speed, bool) and math.isfinite(speed) and speed >= 0
    return records[-1]["epoch"], speed if ok else None


def _is_seconds(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v < 1e9


# what a status file may hold, each field's check: a field that fails is dropped
STATUS_FIELDS: dict[str, Callable[[Any], bool]] = {
    "state": lambda v: v in STATES,
    "time": lambda v: _is_text(v, 40),
    "host": lambda v: _is_text(v, 255),
    "launcher": lambda v: v in LAUNCHERS,
    "pid": lambda v: _is_int(v) and 0 < v < 2**31,
    "exit_code": lambda v: v is None or (_is_int(v) and -255 <= v <= 255),
    "seconds": _is_seconds,
    "job": lambda v: isinstance(v, str) and JOB_ID.fullmatch(v) is not None,
    "job_state": lambda v: _is_text(v, 40),
    "reason": lambda v: _is_text(v, 200),
}


def read_status(sweep: Path, run_id: str) -> dict[str, Any]:
    """A run's last recorded outcome (`write_status`): only the fields that have their type; {}
    when there is none, or the file is not one (a warning names it)."""
    path = sweep / "status" / f"{run_id}.json"
    if not os.path.lexists(path):
        return {}
    try:
        data = json.loads(_read_bounded(path, MAX_STATUS_BYTES))
    except FairbenchError as exc:
        _warn(path, f"ignored ({str(exc).removeprefix(f'{path}: ')})")
        return {}
    except (ValueError, RecursionError):
        _warn(path, "ignored (not JSON)")
        return {}
    if not isinstance(data, dict):
        _warn(path, "ignored (not a JSON object)")
        return {}
    return {k: v for k, v in data.items() if k in STATUS_FIELDS and STATUS_FIELDS[k](v)}


def write_status(sweep: Path, run_id: str, state: str, **info: Any) -> None:
    """Record a run's latest outcome (``running``, ``done``, ``failed``, ``stopped``, ...)."""
    from fairbench.runs.folder import atomic_write_json

    folder = sweep / "status"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FairbenchError(f"cannot make {folder}: {exc.strerror or exc}") from None
    if folder.is_symlink() or not folder.is_dir():
        raise FairbenchError(f"{folder} is a symlink or not a folder; remove or rename it")
    record = {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(), **info}
    atomic_write_json(folder / f"{run_id}.json", record)


def log_path(sweep: Path, run_id: str) -> Path:
    return sweep / "logs" / f"{run_id}.log"


def open_log_fd(path: Path) -> int:
    """A descriptor of ``path`` opened for appending (created if missing): a regular file only,
    never through a symlink, never blocking on a FIFO."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        why = "a symlink" if os.path.islink(path) else exc.strerror or str(exc)
        raise FairbenchError(f"cannot open the run's log {path}: {why}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FairbenchError(f"the run's log {path} is not a regular file; remove it")
    os.set_blocking(fd, True)
    return fd


def open_log(sweep: Path, run: PlannedRun, resume: bool, where: str) -> Any:
    """The run's log file, opened for appending, with a header line for this attempt (where it
    runs and its `fairbench run` command line)."""
    path = log_path(sweep, run.run_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FairbenchError(f"cannot make {path.parent}: {exc.strerror or exc}") from None
    f = os.fdopen(open_log_fd(path), "ab")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    f.write(f"=== {stamp} {where}: fairbench {' '.join(run.args(resume))}\n".encode())
    f.flush()
    return f


def last_error_line(sweep: Path, run_id: str) -> str:
    """The last `error:`/`preempted:` line (or, failing that, the last line) of the end of the run's
    log, with control characters shown as ``?`` (a log is read only if it is a regular file)."""
    path = log_path(sweep, run_id)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return ""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return ""
        data = os.pread(fd, LOG_TAIL_BYTES, max(0, info.st_size - LOG_TAIL_BYTES))
    except OSError:
        return ""
    finally:
        os.close(fd)
    lines = [text.strip() for text in data.decode(errors="replace").splitlines() if text.strip()]
    for line in reversed(lines):
        if line.startswith(("error:", "preempted:", "Traceback", "RuntimeError", "interrupted")):
            return printable(line[:200])
    return printable(lines[-1][:200]) if lines else ""


def evaluated_otherwise(run: PlannedRun) -> str:
    """How the finished run's evaluation (its metrics.json) differs from the one now asked for
    (`PlannedRun.evaluation`), e.g. ``--attacks clean,pgd20 (now clean)``; "" when it does not, or
    when either is unknown."""
    from fairbench.schema import METRICS_FILE, UNION, read_metrics

    if run.evaluation is None:
        return ""
    try:
        record = read_metrics(run.run_dir / METRICS_FILE)
    except FairbenchError:
        return ""
    attacks = sorted(t for t in record.metrics if t != UNION)
    subsets = {t: k for t, k in subsets_from_keys(record.training).items() if t in attacks}
    done = {"attacks": attacks, "eval_per_class": record.training.get("eval_per_class"), **_subset_settings(subsets)}
    now = run.evaluation
    keys = [*EVAL_FLAGS, *sorted((set(done) | set(now)) - set(EVAL_FLAGS))]

    def shown(v: Any) -> str:
        return ",".join(v) if isinstance(v, list) else "all" if v is None else str(v)

    return "; ".join(
        f"{_flag(k)}{shown(done.get(k))} (now {shown(now.get(k))})" for k in keys if done.get(k) != now.get(k)
    )


def classify(run: PlannedRun, sweep: Path, retry_failed: bool) -> str:
    """What a run needs now: ``done``, ``reevaluate`` (done, but evaluated with other settings than
    the ones asked for now), ``busy`` (another process runs it), ``failed`` (an earlier
    attempt failed; retried only with --retry-failed), ``resume`` or ``new``."""
    if is_done(run.run_dir):
        return "reevaluate" if evaluated_otherwise(run) else "done"
    if is_busy(run.run_dir):
        return "busy"
    if read_status(sweep, run.run_id).get("state") == "failed" and not retry_failed:
        return "failed"
    return "resume" if is_started(run.run_dir) else "new"


def outcome(run: PlannedRun, exit_code: int) -> str:
    """A finished attempt's state from the exit code of `fairbench run` and its folder: ``done``
    whenever the folder holds a valid record, as `classify` reads it (a tuning trial that diverged
    exits with its error and records itself as finished, with no score)."""
    from fairbench.runs.signals import EXIT_PREEMPTED

    if is_done(run.run_dir):
        return "done"
    return "stopped" if exit_code in (EXIT_PREEMPTED, 130) else "failed"


# ---------------------------------------------------------------------- the plan, the lock


def check_folders(sweep: Path) -> None:
    """The sweep's folder and its subfolders are real folders and its files regular files, or are
    not there yet: through a symlink (or into a file where a folder goes) a sweep would read or write
    outside the results folder."""
    for path in (sweep, *(sweep / name for name in SUBFOLDERS)):
        if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
            raise FairbenchError(
                f"{path} is a symlink or not a folder; a sweep keeps its files in real "
                f"folders inside {sweep.parent}: remove or rename it"
            )
    for path in (sweep / "lock", sweep / PLAN_FILE):
        if path.is_symlink() or (os.path.lexists(path) and not path.is_file()):
            raise FairbenchError(f"{path} is a symlink or not a regular file; remove or rename it")


def check_logs(sweep: Path, runs: list[PlannedRun]) -> None:
    """The runs' logs are regular files or not there yet (a log that is a symlink would be appended
    through, outside the results folder; a FIFO would block the run)."""
    bad = [
        path
        for path in (log_path(sweep, r.run_id) for r in runs)
        if path.is_symlink() or (os.path.lexists(path) and not path.is_file())
    ]
    if bad:
        raise FairbenchError(
            f"{len(bad)} run log(s) are symlinks or not regular files, e.g. {bad[0]}; "
            f"a sweep appends to its own logs only: remove them"
        )


def write_plan(sweep: Path, runs: list[PlannedRun], launcher: str, **extra: Any) -> None:
    from fairbench.runs.folder import atomic_write_json

    sweep.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        sweep / PLAN_FILE,
        {
            "version": 1,
            "launcher": launcher,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "runs": [r.to_dict() for r in runs],
            **extra,
        },
    )


def read_plan(folder: Path) -> tuple[Path, dict[str, Any], list[PlannedRun]]:
    """The last sweep started in a results folder (or its sweep/ folder): (sweep dir, plan, runs).

    Read like any file from elsewhere (a regular file of at most `MAX_PLAN_BYTES`, every field
    type-checked, one error line naming the field); the runs are looked for in this results folder,
    whatever folder the plan names."""
    folder = Path(folder)
    sweep = folder if (folder / PLAN_FILE).is_file() and folder.name == SWEEP_DIR else folder / SWEEP_DIR
    path = sweep / PLAN_FILE
    if not os.path.lexists(path):
        raise FairbenchError(
            f"no sweep was started in {folder} (no {SWEEP_DIR}/{PLAN_FILE}); give the results folder (--out) of a sweep"
        )
    check_folders(sweep)
    try:
        plan = json.loads(_read_bounded(path, MAX_PLAN_BYTES))
    except (ValueError, RecursionError) as exc:
        raise FairbenchError(f"{path}: unreadable, not JSON ({str(exc)[:100]})") from None
    try:
        runs = _check_plan(plan)
    except FairbenchError as exc:
        raise FairbenchError(f"{path}: {exc}") from None
    out = str(sweep.parent)
    return sweep, plan, [PlannedRun(r.run_id, r.argv, r.coords, r.epochs, out, r.device, r.evaluation) for r in runs]


def _check_plan(plan: Any) -> list[PlannedRun]:
    if not isinstance(plan, dict):
        raise FairbenchError("not a JSON object")
    if plan.get("launcher") not in LAUNCHERS:
        raise FairbenchError(f"launcher is not one of {', '.join(LAUNCHERS)}")
    if not _is_text(plan.get("created", ""), 40):
        raise FairbenchError("created is not a date")
    slurm = plan.get("slurm")
    if slurm is not None:
        tasks = slurm.get("tasks", {}) if isinstance(slurm, dict) else None
        job = slurm.get("job_id") if isinstance(slurm, dict) else None
        if (
            not isinstance(tasks, dict)
            or (job is not None and not JOB_ID.fullmatch(str(job)))
            or not isinstance(job, (str, type(None)))
            or not all(isinstance(t, str) and JOB_ID.fullmatch(t) for t in tasks.values())
        ):
            raise FairbenchError("slurm is not a job id and its tasks' ids")
    runs = plan.get("runs")
    if not isinstance(runs, list) or not runs:
        raise FairbenchError("runs is not a list of runs")
    planned = [PlannedRun.from_dict(r) for r in runs]
    if len({r.run_id for r in planned}) != len(planned):
        raise FairbenchError("a run appears twice")
    return planned


@contextmanager
def sweep_lock(sweep: Path) -> Iterator[None]:
    """Hold ``<sweep>/lock`` (a kernel lock, never stale): a second sweep on this folder refuses.
    The sweep's folders are checked first (`check_folders`)."""
    import fcntl

    check_folders(sweep)
    try:
        sweep.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FairbenchError(f"cannot make {sweep}: {exc.strerror or exc}") from None
    check_folders(sweep)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(sweep / "lock", flags, 0o644)
    except OSError as exc:
        raise FairbenchError(f"cannot open {sweep / 'lock'}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FairbenchError(f"{sweep / 'lock'} is not a regular file; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = printable(os.pread(fd, 200, 0).decode(errors="replace").strip()) or "another process"
            raise FairbenchError(
                f"another fairbench sweep is running on {sweep.parent} ({holder}); wait for it to end, or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
