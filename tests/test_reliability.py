"""The promises of RELIABILITY.md: runs survive kills, signals, NaN and full disks; files stay whole.

The kill and SIGTERM tests start real `python -m fairbench` processes on tiny Fashion-MNIST files
and kill them; everything else runs the CLI in this process.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from fairbench.errors import FairbenchError
from fairbench.methods import METHODS, register_method
from fairbench.methods.base import BatchContext, EpochContext, EpochPlan, Method
from fairbench.methods.losses import pgd_at_terms, weighted_mean
from fairbench.runs import folder as results
from fairbench.runs.folder import load_checkpoint
from fairbench.runs.signals import EXIT_PREEMPTED

from cli_helpers import cli
from conftest import make_fashion_mnist

EPOCHS = 4


def run_args(
    data: Path,
    out: Path,
    *extra: str,
    epochs: int = EPOCHS,
    method: str = "pgd-at",
    attacks: str = "clean",
    attack_steps: int = 2,
) -> list[str]:
    """A tiny run: 200 training images in batches of 32 (7 steps per epoch), small CNN, CPU."""
    return [
        "run",
        "--method",
        method,
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        str(epochs),
        "--batch-size",
        "32",
        "--attack-steps",
        str(attack_steps),
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--run-id",
        "r",
        "--attacks",
        attacks,
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    """Same final weights, optimizer state, per-class metrics and per-epoch losses."""
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert ca["epoch"] == cb["epoch"] and "mid_epoch" not in ca and "mid_epoch" not in cb
    assert ca["model"].keys() == cb["model"].keys()
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["metrics"] == mb["metrics"]
    timing = {"seconds", "images_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in read_log(a)] == [
        {k: v for k, v in r.items() if k not in timing} for r in read_log(b)
    ]


# ---------------------------------------------------------------- real processes


def process_args(data: Path, out: Path) -> list[str]:
    return run_args(data, out, attacks="clean,pgd20", attack_steps=5)


def spawn(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "fairbench", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_for_line(proc: subprocess.Popen, start: str) -> bool:
    """Read the child's stdout until a line starts with ``start``; False if it ended first."""
    for line in proc.stdout:
        if line.startswith(start):
            return True
    return False


def wait_until(condition, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.002)
    return False


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def log_lines(run_dir: Path) -> int:
    try:
        return len((run_dir / "log.jsonl").read_text().splitlines())
    except OSError:
        return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One uninterrupted run in a real process, and how long its epochs and evaluation took."""
    root = tmp_path_factory.mktemp("reference")
    data = make_fashion_mnist(root / "fm", n_train_per_class=20, n_test_per_class=20)
    code, err = finish(spawn(process_args(data, root / "out")))
    assert code == 0, err
    run_dir = root / "out" / "runs" / "r"
    eval_s = sum(json.loads((run_dir / "metrics.json").read_text())["timing"]["eval_s"].values())
    epoch_s = sum(r["seconds"] for r in read_log(run_dir)) / EPOCHS
    return {"data": data, "run_dir": run_dir, "epoch_s": epoch_s, "eval_s": eval_s}


def test_sigkill_anywhere_then_resume_equals_uninterrupted(reference: dict, tmp_path: Path) -> None:
    """Promise 1: SIGKILL mid-epoch, at a checkpoint write and mid-evaluation loses nothing."""
    rng = random.Random(2024)
    out, run_dir = tmp_path / "out", tmp_path / "out" / "runs" / "r"
    args = process_args(reference["data"], out)
    kills = 0

    def killed(proc: subprocess.Popen) -> None:
        nonlocal kills
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.communicate(timeout=60)
        if (run_dir / "checkpoint.pt").exists():  # whatever the moment, the checkpoint is whole
            assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] <= EPOCHS
        assert not (run_dir / "metrics.json").exists()

    # 1. mid-epoch (a random one of the first three), in a fresh run started without --resume
    proc = spawn(args)
    assert wait_for_line(proc, "training")
    epochs_done = rng.randrange(EPOCHS - 1)
    assert wait_until(lambda: log_lines(run_dir) >= epochs_done, proc)
    time.sleep(rng.uniform(0.2, 0.8) * reference["epoch_s"])
    killed(proc)
    # 2. as an epoch ends: its log line is appended just before its checkpoint is written
    proc = spawn(args + ["--resume"])
    before = log_lines(run_dir)
    assert before < EPOCHS and wait_until(lambda: log_lines(run_dir) > before, proc)
    time.sleep(rng.uniform(0.0, 0.02))
    killed(proc)
    # 3. mid-evaluation: the last epoch's checkpoint is newer than its log line
    proc = spawn(args + ["--resume"])
    log, ckpt = run_dir / "log.jsonl", run_dir / "checkpoint.pt"
    assert wait_until(
        lambda: log_lines(run_dir) == EPOCHS and ckpt.exists() and ckpt.stat().st_mtime_ns >= log.stat().st_mtime_ns,
        proc,
    )
    time.sleep(rng.uniform(0.1, 0.7) * reference["eval_s"])
    killed(proc)
    assert kills >= 2, "the processes ended before they could be killed; the test proved nothing"

    code, err = finish(spawn(["resume", str(run_dir), "--no-progress"]))
    assert code == 0, err
    assert_same_run(reference["run_dir"], run_dir)
    assert not list(run_dir.glob(".*.tmp"))


def test_sigterm_checkpoints_and_exits_75_then_resumes(reference: dict, tmp_path: Path) -> None:
    """Promise 3: SIGTERM mid-epoch finishes the step, checkpoints inside the epoch, exits 75."""
    run_dir = tmp_path / "out" / "runs" / "r"
    args = process_args(reference["data"], tmp_path / "out")
    proc = spawn(args)
    assert wait_until(lambda: log_lines(run_dir) >= 1, proc)  # epoch 2 is starting
    time.sleep(random.Random(5).uniform(0.1, 0.5) * reference["epoch_s"])
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == EXIT_PREEMPTED, err
    assert "preempted: stopped by SIGTERM" in err and "--resume" in err
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert "mid_epoch" in state and state["mid_epoch"]["step"] >= 1
    assert not (run_dir / "metrics.json").exists()

    code, err = finish(spawn(args + ["--resume"]))
    assert code == 0, err
    assert_same_run(reference["run_dir"], run_dir)


# ---------------------------------------------------------------- test-only methods


class SignalSelf(Method):
    """Test-only PGD-AT that sends its own process SIGTERM during one chosen training step.

    Its plan is random (repeats, an augmentation mask, per-example eps and weights) and it keeps
    state and logs, so a resume inside an epoch must restore all of them to match.
    """

    name = "test-signal-self"
    at_call: ClassVar[int] = 0  # set by the test; 0 never signals

    def __init__(self, params, config) -> None:
        super().__init__(params, config)
        self.calls = 0
        self.planned = torch.zeros(())

    def plan_epoch(self, ctx: EpochContext) -> EpochPlan:
        n = len(ctx.train)
        indices = torch.randint(0, n, (n,), device=ctx.device)
        self.planned += n
        ctx.log["planned_total"] = int(self.planned)
        return EpochPlan(
            indices,
            augment=torch.rand(n, device=ctx.device) < 0.5,
            eps=ctx.config.eps * torch.rand(n, device=ctx.device),
            weight=torch.rand(n, device=ctx.device) + 0.5,
        )

    def augment(self, ctx: BatchContext, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.view(-1, 1, 1, 1), ctx.x.flip(3), ctx.x)

    def loss(self, ctx: BatchContext) -> torch.Tensor:
        self.calls += 1
        if self.calls == type(self).at_call:
            os.kill(os.getpid(), signal.SIGTERM)
        return weighted_mean(pgd_at_terms(ctx), ctx.weight)

    def state_dict(self) -> dict:
        return {"planned": self.planned}

    def load_state_dict(self, state: dict) -> None:
        self.planned = state["planned"].clone()


class NaNAt(Method):
    """Test-only PGD-AT whose loss is multiplied by ``factor`` (NaN) at one (epoch, step), both 1-based."""

    name = "test-nan-at"
    calls: ClassVar[list[tuple[int, int]]] = []
    at: ClassVar[tuple[int, int]] = (2, 3)
    factor: ClassVar[float] = float("nan")

    def __init__(self, params, config) -> None:
        super().__init__(params, config)
        self.step, self.epoch = 0, -1

    def loss(self, ctx: BatchContext) -> torch.Tensor:
        self.step = self.step + 1 if ctx.epoch == self.epoch else 1
        self.epoch = ctx.epoch
        type(self).calls.append((ctx.epoch + 1, self.step))
        loss = weighted_mean(pgd_at_terms(ctx), ctx.weight)
        return loss * self.factor if (ctx.epoch + 1, self.step) == self.at else loss


@pytest.fixture
def test_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the test-only methods for one test; the registry is restored afterwards."""
    METHODS.names()  # load the built-in methods first
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    register_method(SignalSelf.name)(SignalSelf)
    register_method(NaNAt.name)(NaNAt)
    NaNAt.calls = []


@pytest.fixture
def small_data(tmp_path: Path) -> Path:
    return make_fashion_mnist(tmp_path / "fm", n_train_per_class=20, n_test_per_class=5)


def test_signal_mid_epoch_resumes_to_the_same_weights(
    test_methods: None, small_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Promise 3: a checkpoint taken at a step boundary resumes inside the epoch, exactly."""
    ref = run_args(small_data, tmp_path / "ref", epochs=2, method="test-signal-self")
    assert cli(ref, capsys)[0] == 0
    monkeypatch.setattr(SignalSelf, "at_call", 10)  # 7 steps per epoch: epoch 2, step 3
    args = run_args(small_data, tmp_path / "out", epochs=2, method="test-signal-self")
    code, err = cli(args, capsys)
    assert code == EXIT_PREEMPTED
    assert "in epoch 2 after step 3 of 7" in err and len(err.strip().splitlines()) == 2  # notice + line
    run_dir = tmp_path / "out" / "runs" / "r"
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["epoch"] == 1 and state["mid_epoch"]["step"] == 3
    assert state["mid_epoch"]["log"] == {"planned_total": 400} and state["method"]["planned"] == 400
    monkeypatch.setattr(SignalSelf, "at_call", 0)
    assert cli(args + ["--resume"], capsys)[0] == 0
    assert_same_run(tmp_path / "ref" / "runs" / "r", run_dir)


def test_nan_loss_stops_naming_epoch_and_step(
    test_methods: None, small_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Promise 4: NaN stops the run at the next sync point; the epoch-1 checkpoint is kept."""
    monkeypatch.setattr("fairbench.train.trainer.LOG_EVERY", 2)
    code, err = cli(run_args(small_data, tmp_path / "out", epochs=3, method="test-nan-at"), capsys)
    assert code == 2
    assert err.startswith("error: training diverged: the loss is nan at epoch 2, step 3 of 7")
    assert "(after epoch 1) is kept" in err and len(err.strip().splitlines()) == 1
    assert "--resume" not in err  # its advice is to change the config, which a resume refuses
    assert NaNAt.calls[-1] == (2, 4)  # caught at the sync after step 4, not at the end of the epoch
    run_dir = tmp_path / "out" / "runs" / "r"
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert not (run_dir / "metrics.json").exists()
    assert [r["epoch"] for r in read_log(run_dir)] == [1]


def test_last_step_that_blows_up_the_weights_stops_the_run(
    test_methods: None, small_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Promise 4: an epoch's last update is seen by no loss; the weights are checked after it."""
    monkeypatch.setattr(NaNAt, "at", (2, 7))  # the last of 7 steps: its loss is finite, its update is not
    monkeypatch.setattr(NaNAt, "factor", 1e30)
    code, err = cli(run_args(small_data, tmp_path / "out", epochs=3, method="test-nan-at"), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: training diverged after epoch 2: the model's outputs are not finite")
    assert "(after epoch 1) is kept" in err
    run_dir = tmp_path / "out" / "runs" / "r"
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1
    assert not (run_dir / "metrics.json").exists()
    assert [r["epoch"] for r in read_log(run_dir)] == [1]

    # one step per epoch (the whole training set in one batch): no loss ever sees an update
    out = tmp_path / "one-step"
    args = run_args(small_data, out, "--lr", "1e38", epochs=1)
    args[args.index("--batch-size") + 1] = "200"
    code, err = cli(args, capsys)
    assert code == 2 and "training diverged after epoch 1" in err and "no checkpoint" in err
    assert sorted(p.name for p in (out / "runs" / "r").iterdir()) == ["config.json", "log.jsonl"]


# ---------------------------------------------------------------- atomic files and resume checks


def test_resume_with_another_config_names_the_fields(small_data: Path, tmp_path: Path, capsys) -> None:
    """Promise 2: a checkpoint carries the config hash; another config is refused by field."""
    out = tmp_path / "out"
    assert cli(run_args(small_data, out, epochs=1), capsys)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, err = cli(run_args(small_data, out, "--resume", "--lr", "0.05", "--seed", "3", epochs=1), capsys)
    assert code == 2
    assert "lr (0.1 in the checkpoint, 0.05 now)" in err and "seed (0 in the checkpoint, 3 now)" in err
    assert "epochs" not in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    code, err = cli(run_args(small_data, out, epochs=1), capsys)
    assert code == 2 and "already holds a run; pass --resume" in err


def test_finished_training_resumes_straight_to_evaluation(small_data: Path, tmp_path: Path, capsys) -> None:
    """Promise 1: --resume after the last epoch's checkpoint only evaluates, with the same result."""
    out = tmp_path / "out"
    run_dir = out / "runs" / "r"
    assert cli(run_args(small_data, out, epochs=1, attacks="clean,pgd20"), capsys)[0] == 0
    first = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").unlink()  # as if killed during the evaluation
    (run_dir / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # killed mid-write once
    assert cli(run_args(small_data, out, "--resume", epochs=1, attacks="clean,pgd20"), capsys)[0] == 0
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["metrics"] == first["metrics"]
    assert [r["epoch"] for r in read_log(run_dir)] == [1]
    assert not list(run_dir.glob(".*.tmp"))


def test_finished_run_without_its_checkpoint_is_never_redone(
    small_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """A committed result folder has no checkpoint.pt (not committed): rerunning the same command,
    with or without --resume, must refuse rather than retrain and delete its metrics.json; and
    `fairbench resume .` from inside the folder names the run."""
    out = tmp_path / "out"
    run_dir = out / "runs" / "r"
    assert cli(run_args(small_data, out, epochs=1), capsys)[0] == 0
    (run_dir / "checkpoint.pt").unlink()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    for extra in ([], ["--resume"]):
        code, err = cli(run_args(small_data, out, *extra, epochs=1), capsys)
        assert code == 2 and "holds a finished run" in err and "--run-id" in err, err
    monkeypatch.chdir(run_dir)
    code, err = cli(["resume", ".", "--no-progress"], capsys)
    assert code == 2 and f"{run_dir} holds a finished run" in err, err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it(
    small_data: Path, tmp_path: Path, capsys
) -> None:
    run_dir = tmp_path / "out" / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")  # written once the inputs were checked; then killed
    (run_dir / "log.jsonl").write_text('{"epoch": 1, "loss": 2.3}\n{"epo')  # cannot be trusted
    assert cli(run_args(small_data, tmp_path / "out", "--resume", epochs=1), capsys)[0] == 0
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1
    assert [r["epoch"] for r in read_log(run_dir)] == [1]
    assert json.loads((run_dir / "config.json").read_text())["run_id"] == "r"


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    """Promise 2/7: a write that fails leaves the previous file whole and no temporary behind."""
    path = tmp_path / "metrics.json"
    results.atomic_write_json(path, {"v": 1})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(FairbenchError, match="No space left on device"):
        results.atomic_write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_disk_full_mid_run_keeps_the_previous_checkpoint(small_data: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Promise 7: ENOSPC on the second checkpoint: clear error, the first checkpoint intact."""
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(".checkpoint.pt."):
            calls.append(fd)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, err = cli(run_args(small_data, tmp_path / "out", epochs=3), capsys)
    assert code == 2 and len(calls) == 2
    assert err.startswith("error: checkpoint (after epoch 2) not saved: cannot write")
    assert "No space left on device" in err and "(after epoch 1) is kept" in err
    run_dir = tmp_path / "out" / "runs" / "r"
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1
    assert not (run_dir / "metrics.json").exists() and not list(run_dir.glob(".*.tmp"))


def test_second_ctrl_c_exits_130(small_data: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """A second Ctrl-C (KeyboardInterrupt out of the run) is status 130 with a line saying so, never 0."""
    import fairbench.train.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fairbench.train.runner, "run", interrupted)
    code, err = cli(run_args(small_data, tmp_path / "out", epochs=1), capsys)
    assert code == 130 and err.strip() == "interrupted"


def test_full_or_unwritable_output_fails_before_anything_is_written(
    small_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Promise 7: checked up front; no run folder is created."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = cli(run_args(small_data, blocker / "out", epochs=1), capsys)
    assert code == 2 and err.startswith("error: cannot write to output folder")
    monkeypatch.setattr(results.shutil, "disk_usage", lambda p: type("U", (), {"free": 4096})())
    code, err = cli(run_args(small_data, tmp_path / "out", epochs=1), capsys)
    assert code == 2 and err.startswith("error: not enough space in")
    assert not (tmp_path / "out" / "runs" / "r").exists()


def test_two_processes_never_share_a_run_folder(small_data: Path, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "out" / "runs" / "r"
    run_dir.mkdir(parents=True)
    with results.run_lock(run_dir):
        code, err = cli(run_args(small_data, tmp_path / "out", epochs=1), capsys)
    assert code == 2 and "another fairbench process is using" in err
    assert not (run_dir / "config.json").exists()


def test_runs_started_together_can_share_an_output_folder(tmp_path: Path) -> None:
    """Two runs (e.g. two seeds of scripts/benchmark.sh) start at once in one --out folder: the
    up-front write check of one must not trip over the other's."""
    import threading

    folder = tmp_path / "runs"
    failures: list[str] = []
    start = threading.Barrier(4)

    def check() -> None:
        start.wait()
        for _ in range(300):
            try:
                results.ensure_writable(folder)
            except FairbenchError as exc:
                failures.append(str(exc))
                return

    threads = [threading.Thread(target=check) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert list(folder.iterdir()) == []  # no probe files left behind


# ---------------------------------------------------------------- untrusted files


class CodeRunner:
    """A pickle payload: unpickling it calls open(marker, 'w'), i.e. runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_that_would_run_code_is_refused(small_data: Path, tmp_path: Path, capsys) -> None:
    """Promise 5: weights_only loading refuses a malicious pickle, which never runs."""
    out = tmp_path / "out"
    assert cli(run_args(small_data, out, epochs=1), capsys)[0] == 0
    run_dir, marker = out / "runs" / "r", tmp_path / "pwned"
    torch.save({"format_version": 2, "model": CodeRunner(marker)}, run_dir / "checkpoint.pt")
    with pytest.raises(FairbenchError, match="weights_only"):
        load_checkpoint(run_dir / "checkpoint.pt")
    code, err = cli(run_args(small_data, out, "--resume", epochs=1), capsys)
    assert code == 2 and "cannot load checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
    torch.load(run_dir / "checkpoint.pt", weights_only=False)  # the payload is real: unsafe load runs it
    assert marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    results.atomic_torch_save(path, {"model": {"w": torch.ones(1000)}})
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(FairbenchError, match="cannot load checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content",
    [
        [1, 2],
        {
            "model": {},
            "optimizer": {},
            "scheduler": {},
            "method": {},
            "rng": {},
            "epoch": 1,
            "format_version": 2,
            "config_hash": "x",
            "config": [1],
        },
    ],
)
def test_checkpoint_of_the_wrong_kind_is_one_error_line(content, small_data: Path, tmp_path: Path, capsys) -> None:
    """A list, or a checkpoint whose config is not a dict: `error:` lines, not tracebacks."""
    run_dir = tmp_path / "out" / "runs" / "r"
    run_dir.mkdir(parents=True)
    torch.save(content, run_dir / "checkpoint.pt")
    code, err = cli(run_args(small_data, tmp_path / "out", "--resume", epochs=1), capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


def test_cut_log_line_and_temps_in_eval_state_are_cleared_on_resume(small_data: Path, tmp_path: Path, capsys) -> None:
    """A crash can leave any bytes at the end of log.jsonl and temporary files in eval_state/."""
    out = tmp_path / "out"
    run_dir = out / "runs" / "r"
    assert cli(run_args(small_data, out, "--stop-after-epoch", "1", epochs=2), capsys)[0] == 0
    with open(run_dir / "log.jsonl", "ab") as f:
        f.write(b'{"epoch": 2, "lo\xff\xfe')
    (run_dir / "eval_state").mkdir(exist_ok=True)
    (run_dir / "eval_state" / ".clean.pt.abc123.tmp").write_bytes(b"half")
    code, err = cli(run_args(small_data, out, "--resume", epochs=2), capsys)
    assert code == 0, err
    assert [r["epoch"] for r in read_log(run_dir)] == [1, 2]
    assert not list(run_dir.rglob("*.tmp"))


# Promise 5 (malformed result files are named by field): tests/test_schema.py.


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _link(path: Path, target: Path) -> Path:
    target.write_text("{}")
    path.symlink_to(target)
    return path


# ---------------------------------------------------------------- bad input everywhere

BAD_RUN_OPTIONS = [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--epochs", "-3"], "--epochs must be >= 1"),
    (["--epochs", "two"], "Invalid value for '--epochs'"),
    (["--epochs", "1.5"], "Invalid value for '--epochs'"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--batch-size", "-32"], "--batch-size must be >= 1"),
    (["--batch-size", "1000"], "--batch-size 1000 is larger than the 200 training examples"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295]"),
    (["--seed", str(2**40)], "--seed must be in [0, 4294967295]"),
    (["--eps", "0"], "--eps must be in (0, 1]"),
    (["--eps", "-0.1"], "--eps must be in (0, 1]"),
    (["--eps", "1.5"], "--eps must be in (0, 1]"),
    (["--eps", "nan"], "'nan' is not a finite number"),
    (["--eps", "inf"], "'inf' is not a finite number"),
    (["--eps", "big"], "Invalid value for '--eps'"),
    (["--step-size", "0"], "--step-size must be in (0, 1]"),
    (["--step-size", "2"], "--step-size must be in (0, 1]"),
    (["--attack-steps", "0"], "--attack-steps must be >= 1"),
    (["--attack-steps", "-1"], "--attack-steps must be >= 1"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--lr", "-0.1"], "--lr must be a finite number > 0"),
    (["--lr", "inf"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--momentum", "1"], "--momentum must be in [0, 1)"),
    (["--momentum", "-0.5"], "--momentum must be in [0, 1)"),
    (["--weight-decay", "-1e-4"], "--weight-decay must be a finite number >= 0"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0"),
    (["--eval-batch-size", "0"], "--eval-batch-size must be >= 1"),
    (["--schedule", "linear"], "--schedule must be piecewise, piecewise:M1,M2,..., cosine or constant"),
    (["--param", "beta=1"], "unknown parameter 'beta' for method 'pgd-at'"),
    (["--param", "beta"], "--param expects name=value"),
    (["--param", "=1"], "--param expects name=value"),
    (["--param", "a=1", "--param", "a=2"], "--param a is given twice"),
    (["--train-per-class", "0"], "--train-per-class must be >= 1"),
    (["--train-per-class", "-5"], "--train-per-class must be >= 1"),
    (["--train-per-class", "500"], "fewer than the 500 asked for"),
    (["--val-per-class", "-1"], "--val-per-class must be >= 1"),
    (["--val-per-class", "20"], "--val-per-class 20 leaves no training examples"),
    (["--eval-per-class", "0"], "--eval-per-class must be >= 1"),
    (["--eval-per-class", "500"], "fewer than the 500 asked for"),
    (["--attacks", "fgsm"], "unknown attack(s) fgsm"),
    (["--attacks", "clean,pgd21"], "unknown attack(s) pgd21"),
    (["--attacks", ","], "--attacks is empty"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda[:N]"),
    (["--device", "cuda:x"], "--device must be auto, cpu or cuda[:N]"),
    (["--device", "cuda:99"], "--device cuda:99:"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--arch", "nope"], "unknown architecture 'nope'"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--run-id", "../escape"], "--run-id must be a folder name"),
    (["--run-id", ".hidden"], "--run-id must be a folder name"),
    (["--epoch", "3"], "No such option: --epoch"),
]


@pytest.mark.parametrize("extra, message", BAD_RUN_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_run_option_is_one_error_line_and_writes_nothing(
    extra: list[str], message: str, small_data: Path, tmp_path: Path, capsys
) -> None:
    """Promise 6: every invalid value: one `error:` line, exit 2, no output folder created."""
    base = run_args(small_data, tmp_path / "out", epochs=1)
    options = {a for a in extra if a.startswith("--")}
    for opt in options & {"--method", "--arch", "--dataset", "--device", "--run-id"}:
        i = base.index(opt)
        del base[i : i + 2]
    code, err = cli(base + extra, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d, "is not a run folder (no config.json)"),
        (lambda d: _write(d / "config.json", "{not json").parent, "config.json: unreadable"),
        (lambda d: _write(d / "config.json", "[1, 2]").parent, "config.json: not a JSON object"),
        (lambda d: _write(d / "config.json", '{"method": "pgd-at"}').parent, "config: "),
        (
            lambda d: (
                _write(
                    d / "config.json",
                    '{"method": "pgd-at", "arch": "small-cnn", "dataset": "fashion-mnist", "epochs": "3"}',
                ).parent
            ),
            "config field 'epochs' must be int",
        ),
        (lambda d: _write(d / "config.json", '{"bogus": 1}').parent, "config has unknown fields: bogus"),
        (lambda d: _write(d / "config.json", " " * (2 << 20) + "{}").parent, "more than the 1048576"),
        (lambda d: _link(d / "config.json", d.parent / "elsewhere.json").parent, "config.json: unreadable (a symlink)"),
    ],
)
def test_resume_command_refuses_bad_run_folders(tmp_path: Path, capsys, make, message: str) -> None:
    run_dir = tmp_path / "results" / "runs" / "r"
    run_dir.mkdir(parents=True)
    code, err = cli(["resume", str(make(run_dir))], capsys)
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_atomic_files_get_ordinary_permissions(tmp_path: Path) -> None:
    """Result files are readable by others (umask applies), not mkstemp's private 0600."""
    import os
    import stat

    from fairbench.runs.folder import atomic_write_text

    target = tmp_path / "metrics.json"
    atomic_write_text(target, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
