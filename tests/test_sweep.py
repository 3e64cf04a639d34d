"""`fairbench sweep` with the local launcher: the grid, its run ids, bad input, idempotence, the
worker pool, failures, signals and the live table. (Slurm: tests/test_sweep_slurm.py.)"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import pytest

from fairbench import sweep_local
from fairbench.errors import FairbenchError
from fairbench.results import run_lock
from fairbench.signals import EXIT_PREEMPTED
from fairbench.sweep_grid import parse_seeds
from fairbench.sweep_plan import PlannedRun, sweep_lock
from fairbench.sweep_slurm import parse_time
from fairbench.sweep_view import Display, Row
from sweep_helpers import attempts, cli, epoch_lines, finished, run_dirs, status, sweep_process, tiny_args


def planned_ids(out: str) -> list[str]:
    """The run ids a dry run printed (last column of the grid table)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#"))
    end = next(i for i, line in enumerate(lines) if "run(s) in the grid" in line)
    return [line.split()[-1] for line in lines[start + 1:end]]


def one_error_line(err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------- the grid

def test_grid_has_the_ids_fairbench_run_gives(fmnist_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    args = tiny_args(fmnist_dir, tmp_path / "ran")
    assert cli(["run", *args, "--method", "fairat", "--seed", "1", "--param", "fraction=0.3"]) == 0
    (ran,) = run_dirs(tmp_path / "ran")
    capsys.readouterr()
    assert cli(["sweep", "--methods", "fairat", "--seeds", "1", "--param-grid", "fraction=0.3", *args,
                "--dry-run"]) == 0
    assert planned_ids(capsys.readouterr().out) == [ran.name]


def test_param_grid_multiplies_only_the_methods_that_have_it(fmnist_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert cli(["sweep", "--methods", "pgd-at,fairat", "--seeds", "0-1", "--param-grid", "fraction=0.1,0.2",
                *tiny_args(fmnist_dir, out), "--dry-run", "--report"]) == 0
    printed = capsys.readouterr().out
    ids = planned_ids(printed)
    assert len(ids) == 6 and len(set(ids)) == 6  # per seed: pgd-at once, fairat twice
    assert sum(i.startswith("pgd-at_") for i in ids) == 2
    assert "6 new" in printed and "dry run: nothing started" in printed
    assert not out.exists()  # a dry run writes nothing, and --report does not run on it


def test_sweep_files_in_toml_and_yaml_give_the_grid_of_the_flags(fmnist_dir: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert cli(["sweep", "--methods", "trades,fairat", "--seeds", "0,2", "--param-grid", "fraction=0.1,0.2",
                "--param", "beta=3", "--grid", "lr=0.1,0.05", *tiny_args(fmnist_dir, out), "--dry-run"]) == 0
    want = planned_ids(capsys.readouterr().out)
    assert len(want) == 2 * (2 + 4)
    run = {"arch": "small-cnn", "dataset": "fashion-mnist", "epochs": 1, "batch-size": 25,
           "train-per-class": 5, "eval-per-class": 2, "attack-steps": 1, "attacks": ["clean"],
           "device": "cpu", "data-dir": str(fmnist_dir), "download": False, "out": str(out)}
    toml = tmp_path / "sweep.toml"
    toml.write_text('methods = ["trades", "fairat"]\nseeds = [0, 2]\n[run]\n' + "".join(
        f"{k} = {v!r}\n".replace("'", '"').replace("False", "false") for k, v in run.items())
        + "[params]\nbeta = 3\n[param-grid]\nfraction = [0.1, 0.2]\n[grid]\nlr = [0.1, 0.05]\n")
    yaml = tmp_path / "sweep.yaml"
    yaml.write_text("methods: [trades, fairat]\nseeds: '0,2'\nrun:\n" + "".join(
        f"  {k}: {v!r}\n".replace("'", "").replace("False", "false") for k, v in run.items())
        + "params: {beta: 3}\nparam-grid: {fraction: [0.1, 0.2]}\ngrid: {lr: [0.1, 0.05]}\n")
    for path in (toml, yaml):
        assert cli(["sweep", "--file", str(path), "--dry-run"]) == 0, capsys.readouterr().err
        assert planned_ids(capsys.readouterr().out) == want


BAD = [
    (["--methods", ""], "the grid is empty"),
    (["--methods", "pgd-at", "--seeds", ","], "the grid is empty"),
    (["--methods", "pgd-at,tardes"], "tardes"),
    (["--methods", "pgd-at,trades", "--param-grid", "fraction=0.1"], "unknown parameter 'fraction'"),
    (["--methods", "fairat", "--param-grid", "fraction="], "gives no value"),
    (["--methods", "pgd-at", "--workers", "0"], "--workers must be >= 1"),
    (["--methods", "pgd-at", "--method", "trades"], "--methods"),
    (["--methods", "pgd-at", "--seeds", "0,0"], "twice"),
    (["--methods", "pgd-at", "--epoch", "2"], "--epoch"),
    (["--methods", "pgd-at", "--grid", "out=a,b"], "--grid out"),
    (["--methods", "pgd-at", "--grid", "lrr=0.1,0.2"], "did you mean 'lr'"),
    (["--methods", "pgd-at", "--eps", "2"], "--eps must be in (0, 1]"),
    (["--methods", "pgd-at", "--partition", "gpu"], "--launcher slurm"),
    (["--methods", "pgd-at", "--seeds", "2-1"], "--seeds"),
]


@pytest.mark.parametrize("args,fragment", BAD, ids=[" ".join(a[2:]) or "empty" for a, _ in BAD])
def test_bad_input_is_one_error_line_before_anything_starts(args: list[str], fragment: str, fmnist_dir: Path,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert cli(["sweep", *args, *tiny_args(fmnist_dir, out)]) == 2
    one_error_line(capsys.readouterr().err, fragment)
    assert not out.exists()


@pytest.mark.parametrize("text,fragment", [
    ('method = ["pgd-at"]\n', "unknown key 'method' (did you mean 'methods'?)"),
    ('methods = ["pgd-at"]\n[run]\nepoch = 1\n', "unknown key 'run.epoch' (did you mean 'epochs'?)"),
    ('methods = ["pgd-at"]\n[run]\ncompile = 1\n', "run.compile is true or false"),
    ('methods = ["pgd-at"\n', "not valid TOML"),
])
def test_a_sweep_file_with_a_typo_is_one_error_line(text: str, fragment: str, fmnist_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    assert cli(["sweep", "--file", str(path), *tiny_args(fmnist_dir, tmp_path / "out")]) == 2
    one_error_line(capsys.readouterr().err, fragment, str(path))
    assert not (tmp_path / "out").exists()


def test_slurm_launcher_without_sbatch_names_the_local_launcher(fmnist_dir: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cli(["sweep", "--methods", "pgd-at", "--launcher", "slurm", "--time", "10",
                *tiny_args(fmnist_dir, tmp_path / "out")]) == 2
    one_error_line(capsys.readouterr().err, "sbatch", "--launcher local")


def test_seed_ranges_and_slurm_time_limits() -> None:
    assert parse_seeds("0-2") == [0, 1, 2] and parse_seeds("0-1,5") == [0, 1, 5]
    assert [parse_time(t) for t in ("90", "4:00:00", "1-00:00:00", "1-2", "30:30")] == [90, 240, 1440, 1560, 31]
    for bad in ("x", "0", "1:2:3:4"):
        with pytest.raises(FairbenchError):
            parse_time(bad)


# ---------------------------------------------------------------------------- running it

def test_local_sweep_runs_the_grid_and_a_second_sweep_trains_nothing(fmnist_dir: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    args = ["sweep", "--methods", "pgd-at,trades", "--seeds", "0-1", *tiny_args(fmnist_dir, out), "--workers", "2"]
    assert cli(args) == 0
    printed = capsys.readouterr()
    ids = planned_ids(printed.out)
    assert finished(out) == sorted(ids) and len(ids) == 4
    assert "sweep: 4 done" in printed.out
    assert all(status(out, i)["state"] == "done" and attempts(out, i) == 1 for i in ids)
    assert printed.err.count("started") == 4  # one event line per start: stderr is not a terminal here
    stamps = {i: (out / "runs" / i / "metrics.json").stat().st_mtime_ns for i in ids}

    assert cli([*args, "--report"]) == 0
    printed = capsys.readouterr()
    assert "4 done before (skipped)" in printed.out and "nothing to run" in printed.out
    assert all(attempts(out, i) == 1 for i in ids)  # nothing was started again
    assert stamps == {i: (out / "runs" / i / "metrics.json").stat().st_mtime_ns for i in ids}
    assert (out / "leaderboard.md").is_file() and "trades" in (out / "leaderboard.md").read_text()

    assert cli(["sweep", "--status", str(out)]) == 0
    assert "(local): 4 done" in capsys.readouterr().out


def test_a_failed_run_does_not_stop_the_others_and_is_retried_only_on_request(
        fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"  # no CIFAR-10 anywhere and --no-download: that run fails as it loads its data
    args = ["sweep", "--methods", "pgd-at", "--grid", "dataset=cifar10,fashion-mnist",
            *tiny_args(fmnist_dir, out), "--workers", "1"]
    assert cli(args) == 2
    printed = capsys.readouterr()
    (bad,) = [i for i in planned_ids(printed.out) if "cifar10" in i]
    (good,) = [i for i in planned_ids(printed.out) if "fashion" in i]
    assert finished(out) == [good]  # the run after the failed one still ran
    error = printed.err.splitlines()[-1]
    assert error.startswith("error: 1 of 2 run(s) failed: " + bad)
    assert f"failed: {bad}: error: cifar10 not found" in printed.out  # the run's own error line
    assert status(out, bad)["state"] == "failed" and status(out, bad)["exit_code"] == 2

    assert cli(args) == 2  # failed before: skipped, and the sweep still says so
    printed = capsys.readouterr()
    assert attempts(out, bad) == 1 and "--retry-failed" in printed.err.splitlines()[-1]
    assert cli([*args, "--retry-failed"]) == 2
    assert attempts(out, bad) == 2 and attempts(out, good) == 1


def test_sigterm_stops_the_sweep_with_checkpoints_and_the_next_sweep_resumes(
        fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    args = ["--methods", "pgd-at", *tiny_args(fmnist_dir, out, epochs=30)]
    proc = sweep_process(args)
    deadline = time.monotonic() + 600  # generous: a loaded 2-core machine starts processes slowly
    while time.monotonic() < deadline and proc.poll() is None and not any(epoch_lines(d) for d in run_dirs(out)):
        time.sleep(0.05)
    assert proc.poll() is None and any(epoch_lines(d) for d in run_dirs(out)), "the run never got going"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "preempted: the sweep was stopped by SIGTERM" in err
    (run_dir,) = run_dirs(out)
    assert status(out, run_dir.name)["state"] == "stopped" and (run_dir / "checkpoint.pt").is_file()
    assert not (run_dir / "metrics.json").exists()

    assert cli(["sweep", *args]) == 0
    assert "resume from epoch" in capsys.readouterr().out
    assert finished(out) == [run_dir.name] and attempts(out, run_dir.name) == 2
    assert "resuming" in (out / "sweep" / "logs" / f"{run_dir.name}.log").read_text()


def _alive(pid: int) -> bool:
    """A process that still runs (a zombie nobody reaped counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


@pytest.mark.skipif(not (Path("/proc").is_dir() and hasattr(os, "pidfd_open")),
                    reason="needs Linux's /proc and pidfd (sweep_local._stop_with)")
def test_a_killed_sweep_takes_its_runs_with_it_and_they_keep_a_checkpoint(
        fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """SIGKILL to the sweep: no run is left training on its own. Each run watches its sweep (the
    forkserver it was forked from outlives the sweep) and gets SIGTERM (checkpoint, exit 75)."""
    out = tmp_path / "out"
    proc = sweep_process(["--methods", "pgd-at", *tiny_args(fmnist_dir, out, epochs=30)])
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and not any(epoch_lines(d) for d in run_dirs(out)):
        time.sleep(0.05)
    assert proc.poll() is None and any(epoch_lines(d) for d in run_dirs(out)), "the run never got going"
    (run_dir,) = run_dirs(out)
    pid = status(out, run_dir.name)["pid"]
    assert _alive(pid)
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid), "the run outlived its sweep"
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "metrics.json").exists()
    assert cli(["sweep", "--methods", "pgd-at", *tiny_args(fmnist_dir, out, epochs=30)]) == 0
    assert "resume from epoch" in capsys.readouterr().out and finished(out) == [run_dir.name]


def test_a_second_sweep_on_the_folder_refuses_and_a_busy_run_is_left_alone(
        fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    args = ["sweep", "--methods", "pgd-at,trades", *tiny_args(fmnist_dir, out)]
    with sweep_lock(out / "sweep"):
        assert cli(args) == 2
    one_error_line(capsys.readouterr().err, "another fairbench sweep is running", f"pid {os.getpid()}")
    assert not (out / "runs").exists()

    assert cli([*args, "--dry-run"]) == 0
    pgd, trades = planned_ids(capsys.readouterr().out)
    busy = out / "runs" / trades
    busy.mkdir(parents=True)
    with run_lock(busy):  # e.g. a `fairbench run` of the same run started by hand
        assert cli(args) == 2
    printed = capsys.readouterr()
    assert "running in another process" in printed.out and attempts(out, trades) == 0
    assert finished(out) == [pgd]
    assert printed.err.splitlines()[-1].startswith(f"error: 1 run(s) did not finish: {trades}")


# ------------------------------------------------------------------ workers and the display

def test_each_worker_gets_its_share_of_the_cores_and_one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(sweep_local, "cpu_count", lambda: 8)
    env = sweep_local.slot_env(1, 2, [])
    assert env["OMP_NUM_THREADS"] == "4" and "CUDA_VISIBLE_DEVICES" not in env
    assert sweep_local.slot_env(0, 16, [])["OMP_NUM_THREADS"] == "1"
    assert [sweep_local.slot_env(s, 3, ["0", "1"])["CUDA_VISIBLE_DEVICES"] for s in range(3)] == ["0", "1", "0"]
    assert sweep_local.default_workers(["0", "1"]) == 2 and sweep_local.default_workers([]) == 8
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a budget the user set is kept
    assert sweep_local.slot_env(0, 2, [])["OMP_NUM_THREADS"] == "3"
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # empty is no budget: each run gets its share
    assert sweep_local.slot_env(0, 2, [])["OMP_NUM_THREADS"] == str(max(1, sweep_local.cpu_count() // 2))


@pytest.mark.parametrize("budget, workers, expected", [(None, "cores", 1), ("3", "2", 3)])
def test_worker_threads_reach_torch_in_the_run_process(budget: str | None, workers: str, expected: int,
                                                       fmnist_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs start from a server that imported torch before any budget was known: each run's own
    torch still takes its slot's threads (cores / workers, or the user's OMP_NUM_THREADS), as
    its metrics.json records."""
    if budget is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", budget)
    n = str(sweep_local.cpu_count()) if workers == "cores" else workers
    out = tmp_path / "out"
    assert cli(["sweep", "--methods", "pgd-at", "--seeds", "0-1", *tiny_args(fmnist_dir, out), "--workers", n]) == 0
    threads = [json.loads((d / "metrics.json").read_text())["env"]["threads"] for d in run_dirs(out)]
    assert threads == [expected, expected]


def test_live_table_shows_each_run_with_its_progress(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "log.jsonl").write_text('{"epoch": 1, "images_per_s": 123.4}\n')
    runs = [PlannedRun(f"r{i}", (), (("method", "pgd-at"), ("seed", str(i))), 3, str(tmp_path), "cpu")
            for i in (1, 2)]
    stream = io.StringIO()
    display = Display(lambda: [Row(runs[0], "running", 65.0), Row(runs[1], "pending")], stream, live=True)
    display.close()
    text = stream.getvalue()
    for cell in ("r1", "r2", "running", "pending", "1/3", "123", "1:05"):
        assert cell in text, text


def test_the_sweep_file_in_the_readme_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("```toml\n# sweep.toml")[1].split("```")[0]
    path = tmp_path / "sweep.toml"
    path.write_text("# sweep.toml" + block.replace('out = "results"', f'out = "{tmp_path / "out"}"'))
    assert cli(["sweep", "--file", str(path), "--dry-run"]) == 0, capsys.readouterr().err
    ids = planned_ids(capsys.readouterr().out)
    assert len(ids) == 3 * 2 * (1 + 1 + 2)  # seeds x archs x (pgd-at, trades, fairat x 2 fractions)
    assert not (tmp_path / "out").exists()
