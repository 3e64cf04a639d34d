"""`fairbench sweep` with the local launcher: the grid, its run ids, bad input, idempotence, the
worker pool, failures, signals and the live table. (Slurm: tests/test_sweep_slurm.py.)"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path
from typing import Callable

import pytest
from fairbench.errors import FairbenchError
from fairbench.runs.folder import run_lock
from fairbench.runs.signals import EXIT_PREEMPTED
from fairbench.sweep import local as sweep_local
from fairbench.sweep.grid import parse_seeds
from fairbench.sweep.plan import PlannedRun, sweep_lock
from fairbench.sweep.slurm import parse_time
from fairbench.sweep.view import Display, Row

from sweep_helpers import attempts, cli, epoch_lines, finished, run_dirs, status, sweep_process, tiny_args


def planned_ids(out: str) -> list[str]:
    """The run ids a dry run printed (last column of the grid table)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#"))
    end = next(i for i, line in enumerate(lines) if "run(s) in the grid" in line)
    return [line.split()[-1] for line in lines[start + 1 : end]]


def one_error_line(err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------- the grid


def test_grid_has_the_ids_fairbench_run_gives(fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = tiny_args(fmnist_dir, tmp_path / "ran")
    assert cli(["run", *args, "--method", "fairat", "--seed", "1", "--param", "fraction=0.3"]) == 0
    (ran,) = run_dirs(tmp_path / "ran")
    capsys.readouterr()
    assert (
        cli(["sweep", "--methods", "fairat", "--seeds", "1", "--param-grid", "fraction=0.3", *args, "--dry-run"]) == 0
    )
    assert planned_ids(capsys.readouterr().out) == [ran.name]


def test_param_grid_multiplies_only_the_methods_that_have_it(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert (
        cli(
            [
                "sweep",
                "--methods",
                "pgd-at,fairat",
                "--seeds",
                "0-1",
                "--param-grid",
                "fraction=0.1,0.2",
                *tiny_args(fmnist_dir, out),
                "--dry-run",
                "--report",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    ids = planned_ids(printed)
    assert len(ids) == 6 and len(set(ids)) == 6  # per seed: pgd-at once, fairat twice
    assert sum(i.startswith("pgd-at_") for i in ids) == 2
    assert "6 new" in printed and "dry run: nothing started" in printed
    assert not out.exists()  # a dry run writes nothing, and --report does not run on it


def test_sweep_files_in_toml_and_yaml_give_the_grid_of_the_flags(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert (
        cli(
            [
                "sweep",
                "--methods",
                "trades,fairat",
                "--seeds",
                "0,2",
                "--param-grid",
                "fraction=0.1,0.2",
                "--param",
                "beta=3",
                "--grid",
                "lr=0.1,0.05",
                *tiny_args(fmnist_dir, out),
                "--dry-run",
            ]
        )
        == 0
    )
    want = planned_ids(capsys.readouterr().out)
    assert len(want) == 2 * (2 + 4)
    run = {
        "arch": "small-cnn",
        "dataset": "fashion-mnist",
        "epochs": 1,
        "batch-size": 25,
        "train-per-class": 5,
        "eval-per-class": 2,
        "attack-steps": 1,
        "attacks": ["clean"],
        "device": "cpu",
        "data-dir": str(fmnist_dir),
        "download": False,
        "out": str(out),
    }
    toml = tmp_path / "sweep.toml"
    toml.write_text(
        'methods = ["trades", "fairat"]\nseeds = [0, 2]\n[run]\n'
        + "".join(f"{k} = {v!r}\n".replace("'", '"').replace("False", "false") for k, v in run.items())
        + "[params]\nbeta = 3\n[param-grid]\nfraction = [0.1, 0.2]\n[grid]\nlr = [0.1, 0.05]\n"
    )
    yaml = tmp_path / "sweep.yaml"
    yaml.write_text(
        "methods: [trades, fairat]\nseeds: '0,2'\nrun:\n"
        + "".join(f"  {k}: {v!r}\n".replace("'", "").replace("False", "false") for k, v in run.items())
        + "params: {beta: 3}\nparam-grid: {fraction: [0.1, 0.2]}\ngrid: {lr: [0.1, 0.05]}\n"
    )
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
def test_bad_input_is_one_error_line_before_anything_starts(
    args: list[str], fragment: str, fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert cli(["sweep", *args, *tiny_args(fmnist_dir, out)]) == 2
    one_error_line(capsys.readouterr().err, fragment)
    assert not out.exists()


@pytest.mark.parametrize(
    "text,fragment",
    [
        ('method = ["pgd-at"]\n', "unknown key 'method' (did you mean 'methods'?)"),
        ('methods = ["pgd-at"]\n[run]\nepoch = 1\n', "unknown key 'run.epoch' (did you mean 'epochs'?)"),
        ('methods = ["pgd-at"]\n[run]\ncompile = 1\n', "run.compile is true or false"),
        ('methods = ["pgd-at"\n', "not valid TOML"),
    ],
)
def test_a_sweep_file_with_a_typo_is_one_error_line(
    text: str, fragment: str, fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    assert cli(["sweep", "--file", str(path), *tiny_args(fmnist_dir, tmp_path / "out")]) == 2
    one_error_line(capsys.readouterr().err, fragment, str(path))
    assert not (tmp_path / "out").exists()


def test_slurm_launcher_without_sbatch_names_the_local_launcher(
    fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert (
        cli(
            [
                "sweep",
                "--methods",
                "pgd-at",
                "--launcher",
                "slurm",
                "--time",
                "10",
                *tiny_args(fmnist_dir, tmp_path / "out"),
            ]
        )
        == 2
    )
    one_error_line(capsys.readouterr().err, "sbatch", "--launcher local")


def test_sweep_and_tune_take_the_launcher_options_of_one_declaration(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`sweep` and `tune` show the same launcher options (declared once in the CLI), and both turn
    a bad one into the same error line before anything starts."""
    import typer.main
    from fairbench import cli as cli_module

    def launcher_options(name: str) -> dict[str, tuple[str, object]]:
        command = typer.main.get_command(cli_module.app).commands[name]  # type: ignore[attr-defined]
        return {p.name: (p.help, p.default) for p in command.params if p.name in cli_module._LAUNCHER_OPTIONS}

    assert set(launcher_options("sweep")) == set(cli_module._LAUNCHER_OPTIONS)
    assert launcher_options("sweep") == launcher_options("tune")
    for command in (["sweep", "--methods", "pgd-at"], ["tune", "--methods", "pgd-at", "--trials", "2"]):
        out = tmp_path / command[0]
        assert cli([*command, "--workers", "0", *tiny_args(fmnist_dir, out)]) == 2
        one_error_line(capsys.readouterr().err, "--workers must be >= 1, got 0")
        assert not out.exists()


def test_seed_ranges_and_slurm_time_limits() -> None:
    assert parse_seeds("0-2") == [0, 1, 2] and parse_seeds("0-1,5") == [0, 1, 5]
    assert [parse_time(t) for t in ("90", "4:00:00", "1-00:00:00", "1-2", "30:30")] == [90, 240, 1440, 1560, 31]
    for bad in ("x", "0", "1:2:3:4"):
        with pytest.raises(FairbenchError):
            parse_time(bad)


# ---------------------------------------------------------------------------- running it


def test_local_sweep_runs_the_grid_and_a_second_sweep_trains_nothing(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
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


def test_limit_starts_the_first_runs_left_to_do_and_the_same_command_goes_on(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    args = ["sweep", "--methods", "pgd-at", "--seeds", "0-2", *tiny_args(fmnist_dir, out), "--workers", "2"]
    assert cli([*args, "--limit", "2", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    ids = planned_ids(printed)
    assert "2 new, 1 held back by --limit" in printed and not run_dirs(out)

    assert cli([*args, "--limit", "2"]) == 0  # held runs are neither a failure nor "did not finish"
    printed = capsys.readouterr()
    assert finished(out) == sorted(ids[:2])  # the first two of the grid's order
    assert "sweep: 2 done, 1 held" in printed.out
    assert "1 run(s) held back by --limit: run the same command again" in printed.out
    assert printed.err.count("started") == 2 and attempts(out, ids[2]) == 0

    assert cli([*args, "--limit", "2"]) == 0  # the done ones are skipped: the limit counts what is left
    printed = capsys.readouterr()
    assert finished(out) == sorted(ids) and "2 done before (skipped), 1 new" in printed.out
    assert "held" not in printed.out and all(attempts(out, i) == 1 for i in ids)

    assert cli([*args, "--limit", "0"]) == 2
    one_error_line(capsys.readouterr().err, "--limit must be >= 1, got 0")


def test_a_failed_run_does_not_stop_the_others_and_is_retried_only_on_request(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"  # no CIFAR-10 anywhere and --no-download: that run fails as it loads its data
    args = [
        "sweep",
        "--methods",
        "pgd-at",
        "--grid",
        "dataset=cifar10,fashion-mnist",
        *tiny_args(fmnist_dir, out),
        "--workers",
        "1",
    ]
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
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Stopped while one run trains and another waits for its slot: the sweep ends (it does not
    wait for the run it will never start), and the next sweep resumes the one and starts the other."""
    out = tmp_path / "out"
    args = ["--methods", "pgd-at,trades", "--workers", "1", *tiny_args(fmnist_dir, out, epochs=30)]
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
    (other,) = set(finished(out)) - {run_dir.name}
    assert sorted(finished(out)) == sorted([run_dir.name, other]) and attempts(out, run_dir.name) == 2
    assert attempts(out, other) == 1  # never started before the stop
    assert "resuming" in (out / "sweep" / "logs" / f"{run_dir.name}.log").read_text()


def _alive(pid: int) -> bool:
    """A process that still runs (a zombie nobody reaped counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


@pytest.mark.skipif(
    not (Path("/proc").is_dir() and hasattr(os, "pidfd_open")),
    reason="needs Linux's /proc and pidfd (sweep_local._stop_with)",
)
def test_a_killed_sweep_takes_its_runs_with_it_and_they_keep_a_checkpoint(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
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
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
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
def test_worker_threads_reach_torch_in_the_run_process(
    budget: str | None, workers: str, expected: int, fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    runs = [PlannedRun(f"r{i}", (), (("method", "pgd-at"), ("seed", str(i))), 3, str(tmp_path), "cpu") for i in (1, 2)]
    stream = io.StringIO()
    display = Display(lambda: [Row(runs[0], "running", 65.0), Row(runs[1], "pending")], stream, live=True)
    display.close()
    text = stream.getvalue()
    for cell in ("r1", "r2", "running", "pending", "1/3", "123", "1:05"):
        assert cell in text, text


def test_the_sweep_file_in_the_docs_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    docs = (Path(__file__).parent.parent / "docs" / "sweeps.md").read_text()  # moved there from README.md
    block = docs.split("```toml\n# sweep.toml")[1].split("```")[0]
    path = tmp_path / "sweep.toml"
    path.write_text("# sweep.toml" + block.replace('out = "results"', f'out = "{tmp_path / "out"}"'))
    assert cli(["sweep", "--file", str(path), "--dry-run"]) == 0, capsys.readouterr().err
    ids = planned_ids(capsys.readouterr().out)
    assert len(ids) == 3 * 2 * (1 + 1 + 2)  # seeds x archs x (pgd-at, trades, fairat x 2 fractions)
    assert not (tmp_path / "out").exists()


# ------------------------------------------- issue 28: evaluation settings, absurd grids, hostile sweep files


def test_a_finished_run_evaluated_otherwise_is_refused_or_evaluated_again(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 28, case 1: other --attacks or --eval-per-class than a finished run was evaluated with
    was skipped as "done before" with the old metrics. Now one error line names the run, the
    settings and --reevaluate; with it the run is evaluated again from its checkpoint, not retrained."""
    out = tmp_path / "out"
    assert cli(["sweep", "--methods", "pgd-at", *tiny_args(fmnist_dir, out, attacks="clean,pgd20")]) == 0
    (run_id,) = planned_ids(capsys.readouterr().out)
    metrics = out / "runs" / run_id / "metrics.json"
    before = metrics.read_bytes()
    changed = [*tiny_args(fmnist_dir, out, attacks="clean"), "--eval-per-class", "3"]
    assert cli(["sweep", "--methods", "pgd-at", *changed]) == 2
    printed = capsys.readouterr()
    one_error_line(
        printed.err, run_id, "--attacks clean,pgd20 (now clean)", "--eval-per-class 2 (now 3)", "--reevaluate"
    )
    assert metrics.read_bytes() == before and attempts(out, run_id) == 1
    assert cli(["sweep", "--methods", "pgd-at", *changed, "--reevaluate"]) == 0
    assert "1 to evaluate again" in capsys.readouterr().out
    record = json.loads(metrics.read_text())
    assert set(record["metrics"]) == {"clean"} and record["metrics"]["clean"]["n_per_class"] == [3] * 10
    assert attempts(out, run_id) == 2 and epoch_lines(out / "runs" / run_id) == 1  # evaluated, not retrained
    assert cli(["sweep", "--methods", "pgd-at", *changed]) == 0  # now it is what is asked for
    assert "1 done before (skipped)" in capsys.readouterr().out
    (out / "runs" / run_id / "checkpoint.pt").unlink()  # a committed result: nothing to evaluate again from
    assert cli(["sweep", "--methods", "pgd-at", *tiny_args(fmnist_dir, out), "--reevaluate"]) == 2
    one_error_line(capsys.readouterr().err, "no checkpoint.pt", run_id)


def test_absurd_grids_are_one_error_line_and_the_size_comes_first(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 28, case 7: --seeds 0-99999999999 ended in a MemoryError traceback; a large grid is
    counted and refused before a run is built, and --max-runs raises the cap."""
    out = tmp_path / "out"
    for seeds, fragment in (
        ("0-99999999999", "more than 4294967295"),
        ("0-1000000000", "more than 1000000 seeds"),
        ("5-4294967296", "more than 4294967295"),
    ):
        assert cli(["sweep", "--methods", "pgd-at", "--seeds", seeds, *tiny_args(fmnist_dir, out)]) == 2
        one_error_line(capsys.readouterr().err, fragment)
    assert (
        cli(["sweep", "--methods", "pgd-at,trades", "--seeds", "0-999", *tiny_args(fmnist_dir, out), "--dry-run"]) == 2
    )
    printed = capsys.readouterr()
    assert printed.out.splitlines()[0] == "the grid has 2000 run(s): 2 method(s) x 1000 seed(s)"
    one_error_line(printed.err, "more than --max-runs 1000", "--max-runs 2000")
    assert (
        cli(
            [
                "sweep",
                "--methods",
                "pgd-at,trades",
                "--seeds",
                "0-999",
                *tiny_args(fmnist_dir, out),
                "--dry-run",
                "--max-runs",
                "2000",
            ]
        )
        == 0
    )
    assert len(planned_ids(capsys.readouterr().out)) == 2000 and not out.exists()


def test_checking_a_grid_costs_far_less_than_a_millisecond_a_run(fmnist_dir: Path, tmp_path: Path) -> None:
    """Issue 28, case 7: a 20,000-run grid took 276 s to check (13.7 ms a run: `fairbench run`'s
    parser and `prepare` for every run). Each config shape is checked once; the runs it gives
    have the ids and command lines that parsing each run's own command line gives."""
    from fairbench.cli import parse_run_args, run_options
    from fairbench.sweep.grid import GridSpec, expand
    from fairbench.train.runner import prepare

    spec = GridSpec(
        methods=["pgd-at", "fairat"],
        seeds=list(range(5000)),
        param_grid={"fraction": ["0.1", "0.2"]},
        option_grid={"lr": ["0.1", "0.05"]},
        run_args=tiny_args(fmnist_dir, tmp_path / "out"),
    )
    options = run_options()
    expand(GridSpec(methods=["pgd-at"], run_args=spec.run_args), parse_run_args, options)  # imports
    t0 = time.perf_counter()
    runs = expand(spec, parse_run_args, options, max_runs=30_000)
    per_run = (time.perf_counter() - t0) / len(runs)
    assert len(runs) == 5000 * (2 + 4) and per_run < 0.25e-3, f"{per_run * 1e3:.3f} ms a run"
    for run in runs[:7] + runs[-7:]:
        cfg = prepare(parse_run_args(list(run.argv))[0])[0]
        assert cfg.run_id == run.run_id and dict(run.coords)["seed"] == str(cfg.seed)
        assert run.evaluation == {"attacks": ["clean"], "eval_per_class": 2, "aa_per_class": None}


def _planned_sweep(fmnist_dir: Path, out: Path) -> tuple[Path, list[PlannedRun]]:
    """A sweep folder with the plan of a 2-run grid (as a sweep writes it) and nothing run."""
    from fairbench.cli import parse_run_args, run_options
    from fairbench.sweep.grid import GridSpec, expand
    from fairbench.sweep.plan import write_plan

    runs = expand(
        GridSpec(methods=["pgd-at", "trades"], run_args=tiny_args(fmnist_dir, out)), parse_run_args, run_options()
    )
    write_plan(out / "sweep", runs, "local")
    return out / "sweep", runs


def _set_run_field(field: str, value) -> Callable[[dict], None]:
    return lambda plan: plan["runs"][0].__setitem__(field, value)


HOSTILE_PLANS = {
    "epochs-1e999": ("text", lambda t: t.replace('"epochs": 1', '"epochs": 1e999', 1), "epochs"),
    "argv-int": ("doc", _set_run_field("argv", 5), "argv"),
    "coords-deep": ("doc", _set_run_field("coords", [[["a", "b"]]]), "coords"),
    "nesting": ("text", lambda t: t.replace('"runs": [', '"runs": ' + "[" * 100_000 + "[", 1), "not JSON"),
    "runs-missing": ("doc", lambda plan: plan.pop("runs"), "runs"),
    "run-id-escape": ("doc", _set_run_field("run_id", "\x1b]0;pwned\x07"), "run_id"),
    "coords-escape": ("doc", _set_run_field("coords", [["method", "\x1b[2J"]]), "coords"),
    "created-escape": ("doc", lambda plan: plan.__setitem__("created", "\x1b[31mred"), "created"),
    "slurm-job": ("doc", lambda plan: plan.update(launcher="slurm", slurm={"job_id": "-h", "tasks": {}}), "slurm"),
    "huge-int": ("text", lambda t: t.replace('"epochs": 1', '"epochs": 1' + "0" * 5000, 1), "not JSON"),
    "run-twice": ("doc", lambda plan: plan["runs"].append(plan["runs"][0]), "twice"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_PLANS))
def test_status_of_a_hostile_plan_is_one_error_line(
    name: str, fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 28, case 6: plan.json values of other types, 1e999, deep nesting and terminal escapes
    gave tracebacks or reached the terminal raw."""
    sweep, _ = _planned_sweep(fmnist_dir, tmp_path / "out")
    how, change, fragment = HOSTILE_PLANS[name]
    path = sweep / "plan.json"
    if how == "text":
        path.write_text(change(path.read_text()))
    else:
        plan = json.loads(path.read_text())
        change(plan)
        path.write_text(json.dumps(plan))
    assert cli(["sweep", "--status", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys.readouterr().err, "plan.json", fragment)
    assert "\x1b" not in line


def test_hostile_status_files_and_logs_are_read_without_hanging_or_escapes(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 28, case 6: a status file with `seconds: "abc"`, one that is a FIFO or a link to
    /dev/zero, a log.jsonl line `{"epoch": "x"}`, a sweep log holding terminal escapes: `--status`
    answers at once, without a traceback, a warning naming each file it ignored, no escape code."""
    out = tmp_path / "out"
    sweep, (a, b) = _planned_sweep(fmnist_dir, out)
    (sweep / "status").mkdir()
    (sweep / "status" / f"{a.run_id}.json").write_text(
        json.dumps({"state": "failed", "seconds": "abc", "exit_code": "2", "pid": [1]})
    )
    os.mkfifo(sweep / "status" / f"{b.run_id}.json")
    (sweep / "logs").mkdir()
    (sweep / "logs" / f"{a.run_id}.log").write_text("error: \x1b]0;pwned\x07\x1b[2J bad\n")
    for run in (a, b):
        run.run_dir.mkdir(parents=True)
        (run.run_dir / "config.json").write_text("{}")
        (run.run_dir / "log.jsonl").write_text('{"epoch": "x"}\n{"epoch": 1e999, "images_per_s": "fast"}\n')
    t0 = time.monotonic()
    assert cli(["sweep", "--status", str(out)]) == 0
    printed = capsys.readouterr()
    assert time.monotonic() - t0 < 30 and "\x1b" not in printed.out + printed.err
    assert "error: ?]0;pwned??[2J bad" in printed.out  # the run's last error line, escaped
    assert f"{b.run_id}.json: ignored (not a regular file)" in printed.err
    (sweep / "status" / f"{b.run_id}.json").unlink()
    (sweep / "status" / f"{b.run_id}.json").symlink_to("/dev/zero")
    assert cli(["sweep", "--status", str(out)]) == 0
    assert "symlink" in capsys.readouterr().err


@pytest.mark.parametrize(
    "spoil, fragment",
    [
        (lambda sweep, run: (sweep / "status").write_text("a file"), "status is a symlink or not a folder"),
        (lambda sweep, run: (sweep / "lock").mkdir(), "lock is a symlink or not a regular file"),
        (lambda sweep, run: (sweep / "logs").symlink_to(sweep.parent.parent), "logs is a symlink or not a folder"),
        (
            lambda sweep, run: (
                (sweep / "logs").mkdir(),
                (sweep / "logs" / f"{run.run_id}.log").symlink_to(sweep.parent.parent / "outside.txt"),
            ),
            "symlinks or not regular files",
        ),
        (
            lambda sweep, run: ((sweep / "logs").mkdir(), os.mkfifo(sweep / "logs" / f"{run.run_id}.log")),
            "symlinks or not regular files",
        ),
        (lambda sweep, run: os.mkfifo(sweep / "lock"), "lock is a symlink or not a regular file"),
    ],
)
def test_a_sweep_refuses_sweep_files_that_are_not_its_own_before_anything_starts(
    spoil, fragment: str, fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 28, case 6: `sweep/status` a file or `sweep/lock` a folder gave tracebacks; a sweep log
    that is a symlink was appended through (a file outside the results folder was written)."""
    out = tmp_path / "out"
    sweep, (run, _) = _planned_sweep(fmnist_dir, out)
    (tmp_path / "outside.txt").write_text("keep")
    spoil(sweep, run)
    assert cli(["sweep", "--methods", "pgd-at,trades", *tiny_args(fmnist_dir, out)]) == 2
    one_error_line(capsys.readouterr().err, fragment)
    assert not (out / "runs").exists() and (tmp_path / "outside.txt").read_text() == "keep"
