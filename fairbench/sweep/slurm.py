"""The Slurm launcher: the runs to do go out as one job array through submitit; each task is one
`fairbench run` process (with --resume when its folder holds a started run).

Requeueing. Before the time limit Slurm sends SIGUSR2 (submitit's ``--signal=USR2@120``): the task
stops its run with SIGTERM (the run checkpoints and exits 75) and submitit requeues the task. A run
that exits 75 on its own while its job goes on running (a SIGTERM from ``scancel --signal=TERM``
or any other sender) is requeued with ``scontrol requeue``.
When the job itself is ending (``scancel``; a preemption that cancels it) the run is left stopped,
with its checkpoint, and the next ``fairbench sweep`` of the same grid resumes it; a preemption
that requeues (PreemptMode=REQUEUE) is Slurm's own requeue. The run process ignores SIGUSR2 (Slurm
signals every process of the job step). A requeued job waits about two minutes before it starts."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from fairbench.errors import FairbenchError
from fairbench.sweep.plan import (
    PlannedRun,
    evaluated_otherwise,
    is_done,
    is_started,
    last_error_line,
    open_log,
    outcome,
    read_plan,
    read_status,
    write_plan,
    write_status,
)

SIGNAL_DELAY_S = 120  # SIGUSR2 this long before the time limit: time to checkpoint and requeue
STOP_WAIT_S = 90  # how long a stopped run may take to write its checkpoint
MAX_TIMEOUTS = 1000  # submitit's cap on requeues after time limits; each one makes progress
POLL_S = 0.5


def check_slurm(
    partition: str | None, time_limit: str | None, gpus_per_run: int | None, cpus_per_run: int | None, mem: str | None
) -> int:
    """Check the Slurm options before anything starts; returns the time limit in minutes."""
    if shutil.which("sbatch") is None:
        raise FairbenchError(
            "--launcher slurm: there is no `sbatch` on this machine (no Slurm client); "
            "run the sweep here with --launcher local, or from a Slurm login node"
        )
    if time_limit is None:
        raise FairbenchError(
            "--launcher slurm needs --time, each run's time limit (e.g. 90 or 4:00:00 or "
            "1-00:00:00); a run that reaches it is checkpointed and requeued"
        )
    if gpus_per_run is not None and not 0 <= gpus_per_run <= 1:
        raise FairbenchError(
            f"--gpus-per-run must be 0 or 1, got {gpus_per_run}: a sweep runs each run as one "
            f"process; a run on several GPUs is a torchrun job (docs/scaling.md)"
        )
    if cpus_per_run is not None and cpus_per_run < 1:
        raise FairbenchError(f"--cpus-per-run must be >= 1, got {cpus_per_run}")
    if mem is not None and not re.fullmatch(r"\d+(\.\d+)?[KMGT]?B?", mem.strip(), re.IGNORECASE):
        raise FairbenchError(f"--mem expects a size like 16G or 4000M, got {mem!r:.40}")
    if partition is not None and not re.fullmatch(r"[\w.,-]+", partition):
        raise FairbenchError(f"--partition expects a partition name, got {partition!r:.40}")
    return parse_time(time_limit)


def parse_time(text: str) -> int:
    """A Slurm time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise FairbenchError(f"--time expects minutes or [D-]HH:MM:SS, got {text!r:.40}")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    assert a is not None  # the pattern's one group that is not optional
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        assert b is not None  # the pattern fills b before c
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # MM
        seconds = a * 60
    if seconds < 60:
        raise FairbenchError(f"--time must be at least one minute, got {text!r:.40}")
    return -(-seconds // 60)


# ------------------------------------------------------------------- inside the job: one task


class SweepTask:
    """One run as a Slurm task (a submitit callable): run it, record the outcome, requeue on 75."""

    def __init__(self, run: PlannedRun, sweep: str) -> None:
        self.run = run
        self.sweep = sweep
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"run": self.run, "sweep": self.sweep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _proc=None)

    def __call__(self) -> str:
        run, sweep, job = self.run, Path(self.sweep), job_id()
        if is_done(run.run_dir) and not evaluated_otherwise(run):  # else: evaluated again (--reevaluate)
            write_status(sweep, run.run_id, "done", launcher="slurm", job=job)
            return "done"
        resume = is_started(run.run_dir)
        command = run.command(resume)
        t0 = time.monotonic()
        with open_log(sweep, run, resume, f"slurm job {job} on {socket.gethostname()}") as log:
            write_status(sweep, run.run_id, "running", launcher="slurm", job=job)
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=task_env(),
                preexec_fn=_ignore_usr2,
            )
            while self._proc.poll() is None:  # not wait(): the USR2 handler may reap the process
                time.sleep(POLL_S)
        code = self._proc.returncode
        state = outcome(run, code) if code >= 0 else "failed"
        info = dict(launcher="slurm", job=job, exit_code=code, seconds=round(time.monotonic() - t0, 1))
        if state == "stopped":
            slurm = job_state(job)
            if slurm != "RUNNING":  # the job itself is ending (scancel): the run waits for the next sweep
                write_status(sweep, run.run_id, "stopped", job_state=slurm, **info)
                return "stopped"
            write_status(sweep, run.run_id, "requeued", **info)
            requeue(job)
            sys.exit(code)  # no result file: the requeued job runs this task again
        write_status(sweep, run.run_id, state, **info)
        if state == "failed":
            raise RuntimeError(f"fairbench run {run.run_id} failed (exit {code}): {last_error_line(sweep, run.run_id)}")
        return state

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit calls this on SIGUSR2 (time limit near, or preemption): stop the run so that it
        checkpoints, then hand submitit the same task to requeue."""
        import submitit

        proc = self._proc
        if proc is not None:
            _stop(proc.pid)
        write_status(
            Path(self.sweep),
            self.run.run_id,
            "requeued",
            launcher="slurm",
            job=job_id(),
            reason="SIGUSR2 (time limit or preemption)",
        )
        return submitit.helpers.DelayedSubmission(SweepTask(self.run, self.sweep))


def _stop(pid: int) -> None:
    """SIGTERM the run and wait for it (it checkpoints); SIGKILL it after STOP_WAIT_S.

    Runs inside a signal handler, so it reaps with os.waitpid, never Popen's lock."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def _ignore_usr2() -> None:  # in the run process, between fork and exec: SIG_IGN survives exec
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def task_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = cpus
    return env


def job_id() -> str:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID", "?")


def job_state(job: str) -> str:
    """JobState of a job (``scontrol show job``), or "" when Slurm does not know it."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    m = re.search(r"\bJobState=(\S+)", out)
    return m.group(1) if m else ""


def requeue(job: str) -> None:
    try:
        subprocess.run(["scontrol", "requeue", job], timeout=60, check=True, capture_output=True)
    except (OSError, subprocess.SubprocessError) as exc:
        sys.stderr.write(f"fairbench sweep: could not requeue {job}: {exc}\n")


# ------------------------------------------------------------------------------ submitting


def active_tasks(job: str | None) -> dict[str, str]:
    """Tasks of a job array still in Slurm's queue: {"42_3": "RUNNING", ...}; {} once all ended."""
    if not job or shutil.which("squeue") is None:
        return {}
    try:
        result = subprocess.run(
            ["squeue", "-h", "-r", "-j", str(job), "-o", "%i|%T"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    tasks = {}
    for line in result.stdout.splitlines():
        task, _, state = line.strip().partition("|")
        if task:
            tasks[task] = state
    return tasks


def refuse_if_active(sweep: Path) -> None:
    """A job array submitted from this folder that still runs: starting the sweep again would run
    its runs twice over."""
    try:
        _, plan, _ = read_plan(sweep)
    except FairbenchError:
        return
    job = (plan.get("slurm") or {}).get("job_id")
    tasks = active_tasks(job)
    if tasks:
        raise FairbenchError(
            f"the sweep submitted from {sweep.parent} to Slurm (job {job}) still has "
            f"{len(tasks)} task(s) queued or running; wait for them "
            f"(fairbench sweep --status {sweep.parent}) or scancel {job}"
        )


def submit(
    runs: list[PlannedRun],
    todo: list[PlannedRun],
    sweep: Path,
    minutes: int,
    *,
    partition: str | None,
    gpus_per_run: int | None,
    cpus_per_run: int | None,
    mem: str | None,
) -> str:
    """Submit ``todo`` as one job array; records it in plan.json; returns the job id."""
    import submitit

    executor = submitit.SlurmExecutor(folder=sweep / "slurm", max_num_timeout=MAX_TIMEOUTS)
    gpus = gpus_per_run if gpus_per_run is not None else int(any(r.device != "cpu" for r in todo))
    params: dict[str, Any] = dict(
        job_name="fairbench-sweep", time=minutes, signal_delay_s=SIGNAL_DELAY_S, additional_parameters={"requeue": True}
    )
    for key, value in (("partition", partition), ("cpus_per_task", cpus_per_run), ("mem", mem)):
        if value is not None:
            params[key] = value
    if gpus:
        params["gpus_per_node"] = gpus
    executor.update_parameters(**params)
    jobs = []
    try:
        with executor.batch():
            for run in todo:
                jobs.append(executor.submit(SweepTask(run, str(sweep))))
    except Exception as exc:  # sbatch refused (unknown partition, too many GPUs, ...)
        first = " ".join(str(exc).split())[:300]
        raise FairbenchError(f"Slurm refused the job array: {first}") from None
    array = jobs[0].job_id.split("_")[0]
    tasks = {run.run_id: job.job_id for run, job in zip(todo, jobs)}
    write_plan(
        sweep,
        runs,
        "slurm",
        slurm={
            "job_id": array,
            "tasks": tasks,
            "time_min": minutes,
            "partition": partition,
            "gpus_per_run": gpus,
            "cpus_per_run": cpus_per_run,
            "mem": mem,
        },
    )
    for run_id, task in tasks.items():
        write_status(sweep, run_id, "submitted", launcher="slurm", job=task)
    return array


def slurm_state(
    run: PlannedRun, sweep: Path, queued: dict[str, str], tasks: dict[str, str]
) -> tuple[str, float | None, str]:
    """(state, seconds of its last attempt, note) of a run of a submitted sweep, from its files and
    Slurm's queue."""
    status = read_status(sweep, run.run_id)
    task = tasks.get(run.run_id) or status.get("job", "")
    in_queue = queued.get(task, "")
    note = f"job {task}" if task else ""
    seconds = status.get("seconds")
    if is_done(run.run_dir):
        return "done", seconds, note
    if in_queue == "RUNNING":
        return "running", None, note
    if in_queue:  # PENDING and friends
        return ("requeued" if status.get("state") == "requeued" else in_queue.lower()), None, note
    state = status.get("state", "")
    if state in ("running", "submitted", "requeued"):  # left the queue without a word: killed
        return "lost", None, note + " (ended without finishing; submit the sweep again)"
    if state == "failed":
        return "failed", seconds, f"{note} exit {status.get('exit_code')}"
    return (state or ("stopped" if is_started(run.run_dir) else "not started")), seconds, note


def wait_for(job: str, until_idle: Callable[[dict[str, str]], None]) -> None:
    """Call ``until_idle(queued)`` every few seconds until no task of ``job`` is queued or running."""
    while True:
        queued = active_tasks(job)
        until_idle(queued)
        if not queued:
            return
        time.sleep(2.0)
