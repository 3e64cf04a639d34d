"""`fairbench sweep --launcher slurm` against a real Slurm: the one-node cluster of
`scripts/slurm-local.sh`, which `.ci/run` starts (and then sets FAIRBENCH_SLURM_TESTS=1).

Without that variable these tests are skipped, with the reason in pytest's summary; with it they
must run: a cluster that does not answer is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from sweep_helpers import attempts, cli, epoch_lines, finished, run_dirs, status, tiny_args

SLURM_TESTS = os.environ.get("FAIRBENCH_SLURM_TESTS") == "1"
pytestmark = pytest.mark.skipif(
    not SLURM_TESTS,
    reason="no test Slurm cluster: `scripts/slurm-local.sh start` and FAIRBENCH_SLURM_TESTS=1 run these (.ci/run does)",
)
SLURM = ["--launcher", "slurm", "--time", "10", "--cpus-per-run", "1"]


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    """The cluster answers and has an idle node; otherwise fail (never skip) these tests."""
    assert shutil.which("sbatch"), "FAIRBENCH_SLURM_TESTS=1 but there is no sbatch on PATH"
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip(), f"sinfo: {result.stderr.strip()}"


def wait_until(condition: Callable[[], bool], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def queued(job: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i %T"], capture_output=True, text=True).stdout
    return out.split()


def submitted_job(out: Path) -> str:
    import json

    return json.loads((out / "sweep" / "plan.json").read_text())["slurm"]["job_id"]


def test_a_2x2_sweep_lands_four_results_and_a_second_submission_trains_nothing(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    args = [
        "sweep",
        "--methods",
        "pgd-at,trades",
        "--seeds",
        "0-1",
        *tiny_args(fmnist_dir, out, attacks="clean,pgd20"),
        *SLURM,
    ]
    assert cli([*args, "--wait", "--limit", "3"]) == 0  # the 4th is held back, neither failed nor lost
    printed = capsys.readouterr().out
    assert "submitted 3 run(s) as Slurm job" in printed and "sweep: 3 done, 1 held" in printed
    ids = [d.name for d in run_dirs(out)]
    assert len(ids) == 3 and finished(out) == ids
    job = submitted_job(out)
    assert all(status(out, i)["job"].startswith(f"{job}_") for i in ids)  # one job array
    assert list((out / "sweep" / "slurm").glob(f"{job}_*_log.out"))  # submitit's logs in the sweep folder

    assert cli([*args, "--wait"]) == 0
    printed = capsys.readouterr().out
    assert "3 done before (skipped), 1 new" in printed and "submitted 1 run(s)" in printed
    ids = [d.name for d in run_dirs(out)]
    assert len(ids) == 4 and finished(out) == ids

    assert cli([*args, "--wait"]) == 0
    printed = capsys.readouterr().out
    assert "4 done before (skipped)" in printed and "nothing to submit" in printed
    assert all(attempts(out, i) == 1 for i in ids)
    assert cli(["sweep", "--status", str(out)]) == 0
    assert ": 4 done" in capsys.readouterr().out


def test_a_cancelled_task_finishes_when_the_sweep_is_submitted_again(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    args = ["sweep", "--methods", "pgd-at", *tiny_args(fmnist_dir, out, epochs=60), *SLURM]
    assert cli(args) == 0
    job = submitted_job(out)
    wait_until(lambda: any(epoch_lines(d) >= 1 for d in run_dirs(out)))
    capsys.readouterr()
    assert cli(args) == 2  # a second submission while the array runs would run its runs twice
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "still has 1 task(s)" in err and f"scancel {job}" in err, err
    subprocess.run(["scancel", job], check=True)
    wait_until(lambda: not queued(job))
    (run_dir,) = run_dirs(out)
    assert status(out, run_dir.name)["state"] == "stopped", status(out, run_dir.name)
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "metrics.json").exists()
    capsys.readouterr()
    assert cli(["sweep", "--status", str(out)]) == 0
    assert "stopped" in capsys.readouterr().out

    assert cli([*args, "--wait"]) == 0
    assert "resume from epoch" in capsys.readouterr().out
    assert finished(out) == [run_dir.name] and attempts(out, run_dir.name) == 2
    assert "resuming" in (out / "sweep" / "logs" / f"{run_dir.name}.log").read_text()


@pytest.mark.parametrize("sig", ["TERM", "USR2"])
def test_a_signalled_task_is_requeued_and_finishes_on_its_own(sig: str, fmnist_dir: Path, tmp_path: Path) -> None:
    """TERM: the run exits 75 while its job goes on, the task requeues itself. USR2 (the warning
    before the time limit): submitit asks the task to checkpoint, which stops the run, then requeues."""
    out = tmp_path / "out"
    assert cli(["sweep", "--methods", "pgd-at", *tiny_args(fmnist_dir, out, epochs=30), *SLURM]) == 0
    job = submitted_job(out)
    wait_until(lambda: any(epoch_lines(d) >= 1 for d in run_dirs(out)))
    subprocess.run(["scancel", f"--signal={sig}", job], check=True)
    (run_dir,) = run_dirs(out)
    wait_until(lambda: status(out, run_dir.name)["state"] == "requeued")
    wait_until(lambda: "PENDING" in queued(job))  # requeued: Slurm holds it for ~2 minutes
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    wait_until(lambda: not queued(job))
    assert finished(out) == [run_dir.name] and attempts(out, run_dir.name) == 2
    log = (out / "sweep" / "logs" / f"{run_dir.name}.log").read_text()
    assert "preempted: stopped by SIGTERM" in log and "resuming" in log
