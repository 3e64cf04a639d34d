"""The local launcher: N runs at once on this machine, each one `fairbench run` process.

Each run is a process of its own (a crash or a leak stays in it), forked from a server that has
imported fairbench and torch once (`multiprocessing`'s forkserver, preloaded), so a run starts
without paying Python's start and torch's import again (bench/README.md: the launcher's cost per
run). The server only imports: it never runs a torch operation, so no thread pool or CUDA context
is forked. Where there is no forkserver (Windows) each run is spawned afresh.

On a CPU each run gets its share of the cores (cores / workers threads, or the user's
``OMP_NUM_THREADS``: `torch.set_num_threads` in the run's process, since torch sized its pool in
the server); with GPUs each run sees one (``CUDA_VISIBLE_DEVICES``), round-robin when there are
more workers than GPUs. A run that fails does not stop the others. SIGTERM or a first Ctrl-C
stops the sweep cleanly: every running run gets SIGTERM, checkpoints and exits 75, and the sweep
exits 75 (run it again to continue); a second Ctrl-C kills them at once (their last checkpoint is
kept). A run also gets SIGTERM if the sweep process dies (Linux: `_stop_with`).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, cast

from fairbench.errors import FairbenchError
from fairbench.runs.signals import handling
from fairbench.sweep.plan import PlannedRun, log_path, open_log, open_log_fd, outcome, printable, write_status

Entry = Callable[[list[str]], Any]  # a run's command line -> what `fairbench run` does (the CLI's main)
POLL_S = 0.2


@dataclass
class Job:
    """One run as the launcher sees it."""

    run: PlannedRun
    resume: bool
    state: str = "pending"  # pending, running, done, failed, stopped
    proc: "RunProcess | None" = None
    log: IO[bytes] | None = None
    slot: int | None = None
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None

    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.monotonic()) - self.started


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus(runs: list[PlannedRun]) -> list[str]:
    """The GPUs the runs will use (their CUDA_VISIBLE_DEVICES names); empty for CPU runs."""
    if all(r.device == "cpu" for r in runs):
        return []
    import torch

    n = torch.cuda.device_count()
    if n == 0:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in listed.split(",") if x.strip()] if listed else [str(i) for i in range(n)]
    return ids[:n]


def default_workers(gpus: list[str]) -> int:
    return len(gpus) or cpu_count()


def slot_env(slot: int, workers: int, gpus: list[str]) -> dict[str, str]:
    """The environment of the run in worker slot ``slot``: its thread budget and its GPU."""
    env = dict(os.environ)
    threads = str(max(1, cpu_count() // workers))
    # a budget set by the user is kept; an empty value is none (OpenMP ignores it, and each run
    # would take every core: two workers on 2 cores ran 7x slower than one after another)
    if not os.environ.get("OMP_NUM_THREADS", "").strip():
        env["OMP_NUM_THREADS"] = threads
        env["MKL_NUM_THREADS"] = threads
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _stop_with(sweep_pid: int) -> None:
    """SIGTERM to this run (checkpoint, exit 75) when the sweep process dies, however it dies.

    The run's parent is the forkserver, not the sweep, and the forkserver outlives the sweep while
    a run it started lives (each run holds the server's keep-alive pipe), so PR_SET_PDEATHSIG
    cannot tell. A daemon thread waits on a pidfd of the sweep instead (Linux 5.3+; elsewhere a
    run outlives a killed sweep, and a later sweep leaves it alone while it holds its run's lock)."""
    if not hasattr(os, "pidfd_open"):
        return
    try:
        pidfd = os.pidfd_open(sweep_pid)
    except ProcessLookupError:  # gone already
        os.kill(os.getpid(), signal.SIGTERM)
        return
    except OSError:  # no pidfd in this kernel
        return

    def wait() -> None:
        select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="stop-with-sweep", daemon=True).start()


PRELOAD = ["fairbench.train.runner"]  # what `fairbench run` imports, torch with it; and the entry's module
_CONTEXT: Any = None


def _context(entry: Entry) -> Any:
    """The multiprocessing context runs start from: a forkserver where there is one, preloaded
    with the runner and ``entry``'s module (the CLI)."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _CONTEXT = multiprocessing.get_context("forkserver")
            _CONTEXT.set_forkserver_preload([entry.__module__, *PRELOAD])
        else:
            _CONTEXT = multiprocessing.get_context("spawn")
    return _CONTEXT


def run_child(entry: Entry, argv: list[str], log: str, env: dict[str, str], sweep_pid: int) -> None:
    """A run's process: its own session, its slot's environment and thread budget, output to
    its log, then `fairbench run` as the command line would (its exit code is the process's):
    ``entry(argv)``, the CLI's main, which the sweep was given (it pickles by name, and its module
    is preloaded in the forkserver)."""
    if hasattr(os, "setsid"):  # POSIX: the sweep forwards Ctrl-C itself (a first one stops runs cleanly)
        os.setsid()
    fd = open_log_fd(Path(log))  # never through a symlink put there since the sweep opened it
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # typeshed types sys.stdout as TextIO, which has no reconfigure
            cast(io.TextIOWrapper, stream).reconfigure(line_buffering=True)
    os.environ.clear()
    os.environ.update(env)
    import torch

    threads = env.get("OMP_NUM_THREADS", "").strip()
    if threads.isdigit() and int(threads) > 0:  # the pool was sized at import, in the server
        torch.set_num_threads(int(threads))
    _stop_with(sweep_pid)  # after the imports: fairbench run's SIGTERM handler is set up in main
    entry(argv)


class RunProcess:
    """A started run as the pool needs it: Popen's poll, returncode, send_signal and pid."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.pid: int = process.pid

    def poll(self) -> int | None:
        return self.process.exitcode  # negative: killed by that signal, as Popen's

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        if self.process.exitcode is None:
            os.kill(self.pid, sig)


def start_run(entry: Entry, argv: list[str], log: Path, env: dict[str, str]) -> RunProcess:
    process = _context(entry).Process(target=run_child, args=(entry, argv, str(log), env, os.getpid()), daemon=False)
    process.start()
    return RunProcess(process)


class _Signals:
    """SIGINT/SIGTERM to the sweep: counted here, acted on by the pool's loop."""

    def __init__(self) -> None:
        self.count = 0
        self.name = ""

    def __enter__(self) -> "_Signals":
        self._handling = handling((signal.SIGINT, signal.SIGTERM), self._handle)
        self._handling.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._handling.__exit__(None, None, None)

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        self.name = signal.Signals(signum).name
        if self.count == 1:
            sys.stderr.write(
                f"\n{self.name}: stopping the running runs (each saves a checkpoint); "
                f"Ctrl-C again to kill them at once\n"
            )


class Pool:
    """Runs jobs on ``workers`` slots; ``display`` is told whenever anything changes."""

    def __init__(self, sweep: Path, jobs: list[Job], workers: int, gpus: list[str], display: Any, entry: Entry) -> None:
        self.sweep, self.jobs, self.workers, self.gpus, self.display = sweep, jobs, workers, gpus, display
        self.entry = entry
        self.stopping = False

    def run(self) -> _Signals:
        pending = deque(self.jobs)
        free = deque(range(self.workers))
        running: list[Job] = []
        with _Signals() as signals:
            forwarded = killed = False
            # once stopped, the runs not yet started stay pending (the next sweep starts them): the
            # pool ends when the running ones have
            while running or (pending and not signals.count):
                if signals.count and not forwarded:
                    self.stopping = True
                    self._signal_all(running, signal.SIGTERM)
                    forwarded = True
                if signals.count > 1 and not killed:
                    self._signal_all(running, signal.SIGKILL)
                    killed = True
                while free and pending and not signals.count:
                    job = pending.popleft()
                    self._start(job, free.popleft())
                    if job.state == "running":
                        running.append(job)
                    else:
                        assert job.slot is not None  # _start gave it the slot
                        free.append(job.slot)
                for job in [j for j in running if j.proc is not None and j.proc.poll() is not None]:
                    self._finish(job)
                    running.remove(job)
                    assert job.slot is not None  # a running job has its slot
                    free.append(job.slot)
                self.display.refresh()
                time.sleep(POLL_S)
        return signals

    def _start(self, job: Job, slot: int) -> None:
        job.slot = slot
        job.started = time.monotonic()
        try:
            job.log = open_log(self.sweep, job.run, job.resume, f"local slot {slot}")
        except FairbenchError as exc:  # its log became a symlink or a FIFO since the sweep looked
            sys.stderr.write(f"error: {job.run.run_id} not started: {printable(exc)}\n")
            self._end(job, "failed", None)
            return
        try:
            job.proc = start_run(
                self.entry,
                job.run.args(job.resume),
                log_path(self.sweep, job.run.run_id),
                slot_env(slot, self.workers, self.gpus),
            )
        except OSError as exc:
            job.log.write(f"error: cannot start the run's process: {exc}\n".encode())
            self._end(job, "failed", None)
            return
        job.state = "running"
        write_status(self.sweep, job.run.run_id, "running", launcher="local", pid=job.proc.pid)
        self.display.event(job.run.run_id, "started")

    def _finish(self, job: Job) -> None:
        assert job.proc is not None  # called for a started job whose process has ended (poll())
        code = job.proc.returncode
        assert code is not None
        if code < 0:  # killed by a signal: ours (the sweep was stopped), or someone else's
            self._end(job, "stopped" if self.stopping else "failed", code)
        else:
            self._end(job, outcome(job.run, code), code)

    def _end(self, job: Job, state: str, code: int | None) -> None:
        job.state, job.exit_code, job.ended = state, code, time.monotonic()
        if job.log is not None:
            job.log.close()
        write_status(
            self.sweep, job.run.run_id, state, launcher="local", exit_code=code, seconds=round(job.elapsed() or 0.0, 1)
        )
        self.display.event(job.run.run_id, state)

    @staticmethod
    def _signal_all(running: list[Job], sig: int) -> None:
        for job in running:
            try:
                if job.proc is not None:
                    job.proc.send_signal(sig)
            except (OSError, AttributeError):
                pass
