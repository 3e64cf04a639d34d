"""`fairbench sweep`: a grid of runs, on a local worker pool or as a Slurm job array.

The grid (`fairbench.sweep.grid`) is expanded and checked, and printed, before anything starts; each
run is then classified (`fairbench.sweep.plan`): done (a valid metrics.json: skipped), started
(resumed with --resume), done with other evaluation settings than the ones asked for now (evaluated
again from its checkpoint with --reevaluate, else refused), failed before (skipped unless
--retry-failed), running in another process (skipped), or new. The runs to do go to the local pool
(`fairbench.sweep.local`) or to Slurm (`fairbench.sweep.slurm`); a summary ends the sweep, and the
exit status is non-zero when a run failed. Running the same sweep again is always safe: it continues
where the last one stopped.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fairbench.errors import FairbenchError
from fairbench.runs.signals import Preempted
from fairbench.sweep.local import Job, Pool, cpu_count, default_workers, visible_gpus
from fairbench.sweep.plan import (
    PlannedRun,
    check_logs,
    classify,
    epochs_done,
    evaluated_otherwise,
    is_done,
    is_started,
    last_error_line,
    log_path,
    printable,
    read_plan,
    read_status,
    sweep_dir,
    sweep_lock,
    write_plan,
)
from fairbench.sweep.slurm import active_tasks, check_slurm, refuse_if_active, slurm_state, submit, wait_for
from fairbench.sweep.view import Display, Row, count_states, render_text

LAUNCHERS = ("local", "slurm")
TODO = ("new", "resume", "reevaluate")
SKIPPED = {
    "done": "done before",
    "failed": "failed before: --retry-failed runs it again",
    "busy": "running in another process",
    "held": "--limit: the same command again starts it",
}


@dataclass
class LaunchOptions:
    """How to run the grid: the launcher and its resources."""

    launcher: str = "local"
    workers: int | None = None
    limit: int | None = None
    dry_run: bool = False
    retry_failed: bool = False
    reevaluate: bool = False
    wait: bool = False
    partition: str | None = None
    time: str | None = None
    gpus_per_run: int | None = None
    cpus_per_run: int | None = None
    mem: str | None = None
    # what a local run's process calls with its `fairbench run` command line: `fairbench.cli.main`,
    # passed down by the CLI (the sweep never imports the CLI, which imports the sweep)
    entry: Callable[[list[str]], Any] | None = None

    def check(self) -> int | None:
        """Raise on a bad option, before anything starts; the Slurm time limit in minutes."""
        if self.launcher not in LAUNCHERS:
            raise FairbenchError(f"--launcher must be local or slurm, got {self.launcher!r:.40}")
        if self.workers is not None and self.workers < 1:
            raise FairbenchError(f"--workers must be >= 1, got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise FairbenchError(f"--limit must be >= 1, got {self.limit}")
        slurm_only = {
            "--partition": self.partition,
            "--time": self.time,
            "--gpus-per-run": self.gpus_per_run,
            "--cpus-per-run": self.cpus_per_run,
            "--mem": self.mem,
            "--wait": self.wait or None,
        }
        if self.launcher == "local":
            given = [flag for flag, value in slurm_only.items() if value is not None]
            if given:
                raise FairbenchError(f"{', '.join(given)}: Slurm option(s); add --launcher slurm, or drop them")
            return None
        if self.workers is not None:
            raise FairbenchError("--workers is for --launcher local; Slurm runs as many tasks as it has room for")
        return check_slurm(self.partition, self.time, self.gpus_per_run, self.cpus_per_run, self.mem)


def launch(runs: list[PlannedRun], opts: LaunchOptions, minutes: int | None, echo: Callable[[str], None]) -> None:
    """Print the grid, then run (or submit) what is left to do; raise when a run failed."""
    sweep = sweep_dir(runs[0].out)
    states = {r.run_id: classify(r, sweep, opts.retry_failed) for r in runs}
    if opts.limit is not None:  # the first --limit runs left to do start; the others wait (state "held")
        for run in [r for r in runs if states[r.run_id] in TODO][opts.limit :]:
            states[run.run_id] = "held"
    echo(render_text([Row(r, states[r.run_id], note=_note(r, states[r.run_id])) for r in runs]))
    todo = [r for r in runs if states[r.run_id] in TODO]
    echo(f"{len(runs)} run(s) in the grid: {_counts(states)}; results in {runs[0].out}/runs, sweep files in {sweep}")
    _check_reevaluation([r for r in runs if states[r.run_id] == "reevaluate"], opts.reevaluate)
    if opts.dry_run:
        echo("dry run: nothing started")
        return
    if opts.launcher == "slurm":
        _launch_slurm(runs, todo, states, sweep, opts, minutes or 0, echo)
    else:
        _launch_local(runs, todo, states, sweep, opts, echo)


def _check_reevaluation(stale: list[PlannedRun], allowed: bool) -> None:
    """Finished runs evaluated with other settings than the ones asked for: evaluated again from
    their checkpoints with --reevaluate; without it, or without a checkpoint, one error line naming
    them (skipping them would report their old numbers as the ones asked for)."""
    from fairbench.runs.folder import CHECKPOINT_FILE

    if not stale:
        return
    named = "; ".join(f"{r.run_id} ({evaluated_otherwise(r)})" for r in stale[:5])
    more = f" and {len(stale) - 5} more" if len(stale) > 5 else ""
    if not allowed:
        raise FairbenchError(
            f"{len(stale)} finished run(s) were evaluated with other settings than the ones "
            f"asked for: {named}{more}; pass --reevaluate to evaluate them again from their "
            f"checkpoints (their metrics.json is replaced), or ask for the settings they have"
        )
    lost = [r.run_id for r in stale if not (r.run_dir / CHECKPOINT_FILE).is_file()]
    if lost:
        raise FairbenchError(
            f"--reevaluate: {len(lost)} run(s) have no {CHECKPOINT_FILE} to evaluate again "
            f"from: {', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}; rerun them "
            f"under another --out, or ask for the settings they were evaluated with"
        )


def _note(run: PlannedRun, state: str) -> str:
    if state == "reevaluate":
        return f"evaluated with {evaluated_otherwise(run)}: evaluate again from its checkpoint"
    if state == "resume":
        return f"resume from epoch {epochs_done(run.run_dir)[0]}"
    return SKIPPED.get(state, "")


def _counts(states: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    words = {
        "new": "new",
        "resume": "to resume",
        "reevaluate": "to evaluate again",
        "done": "done before (skipped)",
        "failed": "failed before (skipped)",
        "busy": "running elsewhere (skipped)",
        "held": "held back by --limit",
    }
    return ", ".join(f"{n} {words[s]}" for s, n in counts.items())


# ------------------------------------------------------------------------------------ local


def _launch_local(
    runs: list[PlannedRun],
    todo: list[PlannedRun],
    states: dict[str, str],
    sweep: Path,
    opts: LaunchOptions,
    echo: Callable[[str], None],
) -> None:
    with sweep_lock(sweep):
        refuse_if_active(sweep)
        check_logs(sweep, todo)
        write_plan(sweep, runs, "local")
        jobs = {r.run_id: Job(r, states[r.run_id] in ("resume", "reevaluate")) for r in todo}
        signals = None
        if todo:
            gpus = visible_gpus(todo)
            workers = min(opts.workers or default_workers(gpus), len(todo))
            budget = f"{len(gpus)} GPU(s)" if gpus else f"{max(1, cpu_count() // workers)} thread(s) each"
            echo(f"running {len(todo)} run(s), {workers} at once ({budget}); logs in {sweep}/logs/")
            rows = lambda: [_job_row(jobs[r.run_id]) for r in todo]  # noqa: E731
            display = Display(rows)
            try:
                assert opts.entry is not None, "LaunchOptions.entry: the CLI's main runs each local run"
                signals = Pool(sweep, list(jobs.values()), workers, gpus, display, opts.entry).run()
            finally:
                display.close()
    final = [
        _job_row(jobs[r.run_id]) if r.run_id in jobs else Row(r, states[r.run_id], note=SKIPPED[states[r.run_id]])
        for r in runs
    ]
    if todo:
        _summarize(final, sweep, echo)
    else:
        echo("nothing to run")
    if signals is not None and signals.count > 1:
        raise KeyboardInterrupt
    if signals is not None and signals.count:
        raise Preempted(
            f"the sweep was stopped by {signals.name}; the stopped runs kept their checkpoints: "
            f"run the same sweep again to continue"
        )
    _raise_for_failures(final, sweep)


def _job_row(job: Job) -> Row:
    note = f"exit {job.exit_code}" if job.exit_code not in (None, 0) else ""
    return Row(job.run, job.state, job.elapsed(), note)


# ------------------------------------------------------------------------------------ Slurm


def _launch_slurm(
    runs: list[PlannedRun],
    todo: list[PlannedRun],
    states: dict[str, str],
    sweep: Path,
    opts: LaunchOptions,
    minutes: int,
    echo: Callable[[str], None],
) -> None:
    with sweep_lock(sweep):
        refuse_if_active(sweep)
        check_logs(sweep, todo)
        if todo:
            job = submit(
                runs,
                todo,
                sweep,
                minutes,
                partition=opts.partition,
                gpus_per_run=opts.gpus_per_run,
                cpus_per_run=opts.cpus_per_run,
                mem=opts.mem,
            )
        else:
            write_plan(sweep, runs, "slurm")
    skipped = [Row(r, states[r.run_id], note=SKIPPED[states[r.run_id]]) for r in runs if states[r.run_id] not in TODO]
    if not todo:
        echo("nothing to submit")
        _raise_for_failures(skipped, sweep)
        return
    echo(f"submitted {len(todo)} run(s) as Slurm job {job}; Slurm logs in {sweep}/slurm/, run logs in {sweep}/logs/")
    held = {r.run_id for r in runs if states[r.run_id] == "held"}
    if not opts.wait:
        if held:
            echo(f"{len(held)} run(s) held back by --limit: submit the same command again once this job has ended")
        echo(f"follow it with: fairbench sweep --status {runs[0].out}")
        _raise_for_failures(skipped, sweep)
        return
    final = _wait(runs, sweep, job, held)  # its summary names the held runs
    _summarize(final, sweep, echo)
    _raise_for_failures(final, sweep)


def _wait(runs: list[PlannedRun], sweep: Path, job: str, held: set[str]) -> list[Row]:
    """Follow a submitted array until none of its tasks is queued or running (``held``: the runs
    --limit left out of it)."""
    _, plan, _ = read_plan(sweep)
    tasks = (plan.get("slurm") or {}).get("tasks", {})
    queued: dict[str, str] = {}
    rows = lambda: [  # noqa: E731
        Row(r, "held", note=SKIPPED["held"]) if r.run_id in held else Row(r, *slurm_state(r, sweep, queued, tasks))
        for r in runs
    ]
    display = Display(rows)
    seen: dict[str, str] = {}

    def update(now: dict[str, str]) -> None:
        queued.clear()
        queued.update(now)
        for row in rows():
            if seen.get(row.run.run_id) != row.state:
                seen[row.run.run_id] = row.state
                display.event(row.run.run_id, row.state)
        display.refresh()

    try:
        wait_for(job, update)
    finally:
        display.close()
    return rows()


# ---------------------------------------------------------------------------- the end, status


def _summarize(rows: list[Row], sweep: Path, echo: Callable[[str], None]) -> None:
    echo(render_text(rows))
    echo(f"sweep: {count_states(rows)}")
    held = sum(row.state == "held" for row in rows)
    if held:
        echo(f"{held} run(s) held back by --limit: run the same command again to start them")
    for row in rows:
        if row.state == "failed":
            echo(
                f"  failed: {row.run.run_id}: {last_error_line(sweep, row.run.run_id)} "
                f"(log: {log_path(sweep, row.run.run_id)})"
            )


def _raise_for_failures(rows: list[Row], sweep: Path) -> None:
    failed = [r.run.run_id for r in rows if r.state == "failed"]
    unfinished = [r.run.run_id for r in rows if r.state not in ("done", "failed", "held")]
    if failed:
        hint = " (--retry-failed runs them again)" if any("retry" in r.note for r in rows) else ""
        raise FairbenchError(
            f"{len(failed)} of {len(rows)} run(s) failed: {', '.join(failed)}; their logs are in {sweep}/logs/{hint}"
        )
    if unfinished:
        raise FairbenchError(f"{len(unfinished)} run(s) did not finish: {', '.join(unfinished)}")


def show_status(folder: Path, echo: Callable[[str], None]) -> None:
    """Where the last sweep started in ``folder`` stands (`fairbench sweep --status`)."""
    sweep, plan, runs = read_plan(folder)
    slurm = plan.get("slurm") or {}
    if plan.get("launcher") == "slurm":
        queued = active_tasks(slurm.get("job_id"))
        rows = [Row(r, *slurm_state(r, sweep, queued, slurm.get("tasks", {}))) for r in runs]
        where = f"Slurm job {slurm['job_id']}" if slurm.get("job_id") else "Slurm (nothing submitted)"
    else:
        rows = [_local_row(r, sweep) for r in runs]
        where = "local"
    echo(render_text(rows))
    echo(f"sweep of {printable(plan.get('created', '?'))} ({where}): {count_states(rows)}; logs in {sweep}/logs/")


def _local_row(run: PlannedRun, sweep: Path) -> Row:
    status = read_status(sweep, run.run_id)
    seconds = status.get("seconds")
    if is_done(run.run_dir):
        return Row(run, "done", seconds)
    state = status.get("state")
    if state == "running":  # alive, or its sweep ended without recording an outcome (killed)
        if _alive(status.get("pid"), status.get("host")):
            return Row(run, "running")
        return Row(run, "interrupted", note="run the sweep again to continue")
    if state == "failed":
        return Row(run, "failed", seconds, last_error_line(sweep, run.run_id))
    return Row(run, state or ("stopped" if is_started(run.run_dir) else "not started"), seconds)


def _alive(pid: object, host: object) -> bool:
    """Whether the process ``pid`` on ``host`` still runs (a peek at the run's lock could make a run
    that starts at that very moment fail, so the status does not take it)."""
    if not isinstance(pid, int) or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
