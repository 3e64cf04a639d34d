"""`fairbench eval` and `fairbench run` on hostile inputs (issue 14, defects 7-10 and more).

A checkpoint, a run-id or a method parameter from someone else: every bad one is one `error:` line
(exit 2) before anything is written, and `eval` never takes over a folder that holds another run.
RELIABILITY.md, "`fairbench eval` and checkpoints from others", points here.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from fairbench import config
from fairbench.cli import main
from fairbench.config import RunConfig
from fairbench.data.datasets import get_dataset
from fairbench.errors import FairbenchError
from fairbench.methods import base as method
from fairbench.methods.base import Method, parse_params
from fairbench.models import create_model
from fairbench.runs.folder import load_checkpoint, run_lock

from cli_helpers import cli, cli_out

LONG_UTF8_ID = "日" * 100  # 100 characters, 300 bytes: longer than a file name may be


def tiny_run(data: Path, out: Path, *extra: str) -> list[str]:
    """`fairbench run` of small-cnn on Fashion-MNIST for one epoch on the CPU, plus ``extra``."""
    return [
        "run",
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        "1",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--device",
        "cpu",
        *extra,
    ]


def one_error(code: int, err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


def small_cnn_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_model("small-cnn", get_dataset("fashion-mnist")).state_dict()


def save(state: object, path: Path) -> Path:
    torch.save(state, path)
    return path


def eval_args(checkpoint: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--checkpoint",
        str(checkpoint),
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--attacks",
        "clean",
        "--n-per-class",
        "1",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--batch-size",
        "10",
        *extra,
    ]


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 7. eval never takes over a run


def metrics_of(method: str, sha: str, run_id: str = "base") -> dict:
    """A valid metrics.json document of a run of ``method`` whose checkpoint has hash ``sha``."""
    classes = list(get_dataset("fashion-mnist").classes)
    block = {
        "per_class": [0.5] * 10,
        "n_per_class": [2] * 10,
        "avg": 0.5,
        "worst": 0.5,
        "worst_class": classes[0],
        "best": 0.5,
        "best_class": classes[0],
        "std": 0.0,
    }
    return {
        "schema_version": 1,
        "run_id": run_id,
        "method": method,
        "params": {},
        "arch": "small-cnn",
        "dataset": "fashion-mnist",
        "seed": 0,
        "epochs": 3,
        "threat": {"norm": "Linf", "eps": 0.1},
        "classes": classes,
        "metrics": {"clean": block},
        "checkpoint": {"file": "x.pt", "sha256": sha},
    }


@pytest.mark.parametrize(
    "held, fragment",
    [
        (
            {"config.json": "{}", "checkpoint.pt": "", "metrics.json": json.dumps(metrics_of("pgd-at", "0" * 64))},
            "holds a run of `fairbench run` (its config.json)",
        ),
        ({"config.json": "{}", "log.jsonl": ""}, "holds a run of `fairbench run` (its config.json)"),
        ({"checkpoint.pt": ""}, "holds a training checkpoint (checkpoint.pt)"),
        ({"metrics.json": json.dumps(metrics_of("pgd-at", "0" * 64))}, "holds the result of another run"),
        ({"metrics.json": json.dumps(metrics_of("external", "0" * 64))}, "holds the result of another run"),
        ({"metrics.json": "{not json"}, "holds a metrics.json that is not"),
    ],
)
def test_eval_refuses_a_folder_that_holds_another_run(
    held: dict[str, str], fragment: str, fmnist_dir: Path, tmp_path: Path, capsys
) -> None:
    """Defect 7: `eval --run-id base` replaced a finished PGD-AT run's metrics.json."""
    run_dir = tmp_path / "out" / "runs" / "base"
    run_dir.mkdir(parents=True)
    for name, text in held.items():
        (run_dir / name).write_text(text)
    before = files_under(run_dir)
    ckpt = save(small_cnn_state(), tmp_path / "ck.pt")
    code, err = cli(eval_args(ckpt, fmnist_dir, tmp_path / "out", "--run-id", "base"), capsys)
    one_error(code, err, fragment)
    assert "--run-id" in err
    assert files_under(run_dir) == before


def test_eval_does_not_wait_on_a_fifo_named_metrics_json(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    import os

    run_dir = tmp_path / "out" / "runs" / "base"
    run_dir.mkdir(parents=True)
    os.mkfifo(run_dir / "metrics.json")
    ckpt = save(small_cnn_state(), tmp_path / "ck.pt")
    code, err = cli(eval_args(ckpt, fmnist_dir, tmp_path / "out", "--run-id", "base"), capsys)
    one_error(code, err, "holds a metrics.json that is not a readable result")
    assert (run_dir / "metrics.json").is_fifo()


def test_eval_takes_the_run_folder_lock(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    """Defect 7: eval wrote into a folder that a running training held."""
    run_dir = tmp_path / "out" / "runs" / "base"
    run_dir.mkdir(parents=True)
    ckpt = save(small_cnn_state(), tmp_path / "ck.pt")
    with run_lock(run_dir):
        code, err = cli(eval_args(ckpt, fmnist_dir, tmp_path / "out", "--run-id", "base"), capsys)
    one_error(code, err, "another fairbench process is using")
    assert files_under(run_dir) == {}


def test_eval_holds_the_lock_while_it_evaluates(fmnist_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import fairbench.eval.evaluator as ev

    seen: list[str] = []
    real = ev.evaluate

    def evaluate_while_a_run_tries(*args, **kwargs):
        try:
            with run_lock(tmp_path / "out" / "runs" / "base"):
                seen.append("lock was free")
        except FairbenchError as exc:
            seen.append(str(exc))
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "evaluate", evaluate_while_a_run_tries)
    ckpt = save(small_cnn_state(), tmp_path / "ck.pt")
    code, err = cli(eval_args(ckpt, fmnist_dir, tmp_path / "out", "--run-id", "base"), capsys)
    assert code == 0, err
    assert len(seen) == 1 and "another fairbench process is using" in seen[0]


def test_eval_of_the_same_model_may_replace_its_own_result_but_not_anothers(
    fmnist_dir: Path, tmp_path: Path, capsys
) -> None:
    a = save(small_cnn_state(), tmp_path / "a.pt")
    b = save({k: v + 1 if v.is_floating_point() else v for k, v in small_cnn_state().items()}, tmp_path / "b.pt")
    out = tmp_path / "out"
    assert cli(eval_args(a, fmnist_dir, out, "--run-id", "x"), capsys)[0] == 0
    path = out / "runs" / "x" / "metrics.json"
    first = path.read_bytes()
    assert cli(eval_args(a, fmnist_dir, out, "--run-id", "x", "--n-per-class", "2"), capsys)[0] == 0
    assert json.loads(path.read_bytes())["evaluation"] != json.loads(first)["evaluation"]
    kept = path.read_bytes()
    code, err = cli(eval_args(b, fmnist_dir, out, "--run-id", "x"), capsys)
    one_error(code, err, "holds the result of another run")
    assert path.read_bytes() == kept


# ---------------------------------------------------------------- 8. weights that are not finite


def _scaled(state: dict, factor: float) -> dict:
    return {k: v * factor if v.is_floating_point() and k != "0.std" else v for k, v in state.items()}


@pytest.mark.parametrize(
    "spoil, fragment",
    [
        (
            lambda s: {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in s.items()},
            "weights are not finite",
        ),
        (
            lambda s: {**s, "1.classifier.2.bias": torch.full_like(s["1.classifier.2.bias"], float("inf"))},
            "weights are not finite",
        ),
        (
            lambda s: {
                **s,
                "1.features.0.1.running_var": torch.full_like(s["1.features.0.1.running_var"], float("nan")),
            },
            "weights are not finite",
        ),
        (lambda s: _scaled(s, 1e30), "outputs are not finite"),
    ],
)
def test_eval_refuses_weights_that_are_not_finite(
    spoil, fragment: str, fmnist_dir: Path, tmp_path: Path, capsys
) -> None:
    """Defect 8: NaN weights evaluated to 10% accuracy with exit 0."""
    ckpt = save(spoil(small_cnn_state()), tmp_path / "bad.pt")
    code, err = cli(eval_args(ckpt, fmnist_dir, tmp_path / "out"), capsys)
    one_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 9. tracebacks become one line


def _first_conv(state: dict) -> str:
    return next(k for k, v in state.items() if v.dim() == 4)


@pytest.mark.parametrize(
    "spoil, fragment",
    [
        (lambda s: {k: 3 for k in s}, "is of type int, not a tensor"),
        (lambda s: {**s, _first_conv(s): {"w": s[_first_conv(s)]}}, "is of type dict, not a tensor"),
        (lambda s: {**s, _first_conv(s): s[_first_conv(s)].to_sparse()}, "is a sparse"),
        (lambda s: {**s, _first_conv(s): torch.empty_like(s[_first_conv(s)], device="meta")}, "no data"),
        (lambda s: {**s, _first_conv(s): s[_first_conv(s)].bool()}, "torch.bool"),
        (lambda s: {**s, _first_conv(s): s[_first_conv(s)].to(torch.complex64)}, "torch.complex64"),
        (lambda s: {**s, 7: torch.zeros(1)}, "key 7 is not a string"),
        (lambda s: {"state_dict": {**s, (1, 2): torch.zeros(1)}}, "key (1, 2) is not a string"),
        (lambda s: {**s, f"module.{_first_conv(s)}": s[_first_conv(s)]}, "twice"),
        (lambda s: {**s, "epoch": 3, "note": "hi"}, "2 unexpected keys (e.g. epoch, note)"),
    ],
)
def test_eval_refuses_a_state_dict_that_is_not_one(
    spoil, fragment: str, fmnist_dir: Path, tmp_path: Path, capsys
) -> None:
    """Defect 9: a state_dict of ints (and other non-tensors) raised a traceback."""
    ckpt = save(spoil(small_cnn_state()), tmp_path / "bad.pt")
    code, err = cli(eval_args(ckpt, fmnist_dir, tmp_path / "out"), capsys)
    one_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


def test_half_precision_and_wrapped_checkpoints_still_load(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in small_cnn_state().items()}
    ckpt = save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "h.pt")
    code, err = cli(eval_args(ckpt, fmnist_dir, tmp_path / "out"), capsys)
    assert code == 0, err


@pytest.mark.parametrize(
    "run_id", [LONG_UTF8_ID, "a" * 201, "abc\n", "abc\r", "\nabc", "a/b", "..", ".hidden", "a\x00b", "a b", ""]
)
def test_one_run_id_rule_for_run_and_eval(run_id: str, fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    """Defects 9 and 10: a 300-byte run-id crashed `run`; `eval` took 'abc\\n'. One rule, both commands."""
    with pytest.raises(FairbenchError, match="--run-id must be a folder name"):
        config.check_run_id(run_id)
    ckpt = save(small_cnn_state(), tmp_path / "ck.pt")
    code, err = cli(eval_args(ckpt, fmnist_dir, tmp_path / "out", "--run-id", run_id), capsys)
    one_error(code, err, "--run-id must be a folder name")
    code, err = cli(
        tiny_run(fmnist_dir, tmp_path / "out", "--run-id", run_id, "--no-progress"),
        capsys,
    )
    one_error(code, err, "--run-id must be a folder name")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "run_id", ["a" * 200, "日" * 66, "fairat_preact18_cifar10_seed0_1a2b3c4d", "r+1=2", "Ωmega-1", "-dash"]
)
def test_good_run_ids_pass(run_id: str) -> None:
    assert config.check_run_id(run_id) == run_id
    RunConfig(method="pgd-at", arch="small-cnn", dataset="fashion-mnist", run_id=run_id).validate()


def test_plan_size_is_bounded_when_params_are_parsed(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    """Defect 9: `--param copies=1000000000` was accepted and crashed at epoch 2 allocating 480 GB."""
    from fairbench.methods import METHODS

    fairat = METHODS.get("fairat")
    with pytest.raises(FairbenchError, match=f"at most {method.MAX_PLAN_FACTOR}x"):
        parse_params(fairat, {"copies": "1000000000"})
    with pytest.raises(FairbenchError, match=f"at most {method.MAX_PLAN_FACTOR}x"):  # every example hard
        parse_params(fairat, {"selection": "threshold", "copies": str(method.MAX_PLAN_FACTOR), "keep_original": "true"})
    assert parse_params(fairat, {"selection": "threshold", "copies": str(method.MAX_PLAN_FACTOR)}).copies == 16
    with pytest.raises(FairbenchError, match=f"at most {method.MAX_PLAN_FACTOR}x"):  # a small set
        parse_params(fairat, {"fraction": "0.1", "copies": str(method.MAX_PLAN_FACTOR + 1)})  # may be all hard
    code, err = cli(
        [
            "run",
            "--method",
            "fairat",
            "--param",
            "copies=1000000000",
            "--arch",
            "small-cnn",
            "--dataset",
            "fashion-mnist",
            "--epochs",
            "2",
            "--data-dir",
            str(fmnist_dir),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--no-progress",
        ],
        capsys,
    )
    one_error(code, err, "copies")
    assert not (tmp_path / "out").exists()


def test_a_method_that_declares_no_plan_size_gets_the_core_bound() -> None:
    """A future method whose parameter multiplies the epoch: `plan_factor` is where it says so, and
    the core refuses it at parse time; the default (1x) is what the base class plans."""
    from dataclasses import dataclass

    class Repeat(Method):
        name = "repeat-test"

        @dataclass
        class Params:
            times: int = 1

        @classmethod
        def plan_factor(cls, params) -> float:
            return float(params.times)

    assert Method.plan_factor(None) == 1.0
    assert parse_params(Repeat, {"times": str(method.MAX_PLAN_FACTOR)}).times == method.MAX_PLAN_FACTOR
    with pytest.raises(FairbenchError, match="repeat-test"):
        parse_params(Repeat, {"times": str(method.MAX_PLAN_FACTOR + 1)})


def test_trainer_refuses_a_plan_larger_than_the_bound(fmnist_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """The backstop for a method that planned more than it declared: one line, not an allocation."""
    from fairbench.methods import METHODS
    from fairbench.methods.base import EpochPlan

    pgd = METHODS.get("pgd-at")
    monkeypatch.setattr(
        pgd,
        "plan_epoch",
        lambda self, ctx: EpochPlan(torch.arange(len(ctx.train), device=ctx.device).repeat(method.MAX_PLAN_FACTOR + 1)),
    )
    code, err = cli(
        [
            "run",
            "--arch",
            "small-cnn",
            "--dataset",
            "fashion-mnist",
            "--epochs",
            "1",
            "--train-per-class",
            "2",
            "--batch-size",
            "10",
            "--attacks",
            "clean",
            "--attack-steps",
            "1",
            "--data-dir",
            str(fmnist_dir),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--no-progress",
        ],
        capsys,
    )
    one_error(code, err, "planned 340 examples")


# ---------------------------------------------------------------- more hostile inputs


def test_checkpoint_that_inflates_is_refused(tmp_path: Path) -> None:
    """A deflated archive expands ~1000x (a zip bomb); torch.save writes stored records only."""
    plain = save({"w": torch.zeros(2_000_000)}, tmp_path / "plain.pt")
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(bomb, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name), compress_type=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < plain.stat().st_size / 50
    with pytest.raises(FairbenchError, match="expands to"):
        load_checkpoint(bomb)
    assert load_checkpoint(plain)["w"].numel() == 2_000_000


def test_eval_refuses_a_checkpoint_far_larger_than_its_architecture(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    huge = tmp_path / "huge.pt"
    with open(huge, "wb") as f:
        f.truncate(200 * 2**20)  # sparse: 200 MiB on paper, nothing on disk
    code, err = cli(eval_args(huge, fmnist_dir, tmp_path / "out"), capsys)
    one_error(code, err, "200.0 MiB, more than the")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda d: d, "is not a regular file"),
        (lambda d: (d / "fifo.pt", __import__("os").mkfifo(d / "fifo.pt"))[0], "is not a regular file"),
        (lambda d: d / "missing.pt", "no checkpoint at"),
    ],
)
def test_eval_checkpoint_that_is_not_a_file(make, fragment: str, fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    code, err = cli(eval_args(make(tmp_path), fmnist_dir, tmp_path / "out"), capsys)
    one_error(code, err, fragment)


@pytest.mark.parametrize("command", ["run", "eval"])
def test_data_dir_that_is_a_file_is_refused(command: str, fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    """A --data-dir that is a file was ignored: another copy of the data set was used silently."""
    not_a_folder = tmp_path / "data.txt"
    not_a_folder.write_text("x")
    if command == "eval":
        args = eval_args(save(small_cnn_state(), tmp_path / "ck.pt"), not_a_folder, tmp_path / "out")
    else:
        args = [
            "run",
            "--arch",
            "small-cnn",
            "--dataset",
            "fashion-mnist",
            "--epochs",
            "1",
            "--data-dir",
            str(not_a_folder),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--no-progress",
        ]
    code, err = cli(args, capsys)
    one_error(code, err, "is not a folder")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--seed", "-1"], "--seed must be in [0, 4294967295]"),
        (["--seed", str(2**70)], "--seed must be in [0, 4294967295]"),
    ],
)
def test_bad_eval_seed_is_one_error(extra: list[str], fragment: str, fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    ckpt = save(small_cnn_state(), tmp_path / "ck.pt")
    code, err = cli(eval_args(ckpt, fmnist_dir, tmp_path / "out", *extra), capsys)
    one_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--lr", "1e300"], "--lr must be a finite number > 0"),
        (["--weight-decay", "1e300"], "--weight-decay must be a finite number >= 0"),
        (["--attack-steps", str(10**20)], "--attack-steps must be >= 1 and at most 1000"),
    ],
)
def test_run_values_that_crash_or_never_stop_are_refused(
    extra: list[str], fragment: str, fmnist_dir: Path, tmp_path: Path, capsys
) -> None:
    """--lr 1e300 overflowed float32 at the first step (a traceback); --attack-steps 10**20 made a
    step that never ends, so SIGTERM (which waits for the step) could not stop the run."""
    code, err = cli(
        tiny_run(fmnist_dir, tmp_path / "out", "--no-progress", *extra),
        capsys,
    )
    one_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["run", "eval"])
def test_a_file_where_the_run_folder_goes_is_one_error(command: str, fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "out" / "runs").mkdir(parents=True)
    (tmp_path / "out" / "runs" / "r").write_text("mine")
    if command == "eval":
        args = eval_args(save(small_cnn_state(), tmp_path / "ck.pt"), fmnist_dir, tmp_path / "out", "--run-id", "r")
    else:
        args = [
            "run",
            "--arch",
            "small-cnn",
            "--dataset",
            "fashion-mnist",
            "--epochs",
            "1",
            "--data-dir",
            str(fmnist_dir),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--run-id",
            "r",
            "--no-progress",
        ]
    code, err = cli(args, capsys)
    one_error(code, err, "is a file, not a run folder")
    assert (tmp_path / "out" / "runs" / "r").read_text() == "mine"


# ---------------------------------------------------------------- run: the folder is judged under its lock


def tiny_run_args(data: Path, out: Path, *extra: str, epochs: int = 1) -> list[str]:
    return [
        "run",
        "--method",
        "pgd-at",
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        str(epochs),
        "--batch-size",
        "50",
        "--attack-steps",
        "1",
        "--attacks",
        "clean",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--run-id",
        "r",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


@pytest.mark.parametrize(
    "resume, written",
    [(False, ("checkpoint.pt", "metrics.json")), (False, ("metrics.json",)), (True, ("checkpoint.pt",))],
)
def test_run_looks_at_its_folder_again_once_it_holds_the_lock(
    resume: bool, written: tuple[str, ...], fmnist_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """`run` looks at the folder before loading the data (a quick error) and again under the lock:
    another process may finish a run there meanwhile, whose metrics.json a fresh start would delete
    (and whose checkpoint a start "from the beginning" would overwrite)."""
    from fairbench.train import runner

    run_dir = tmp_path / "out" / "runs" / "r"
    if resume:  # a run started but stopped before its first checkpoint
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text("{}")
    real = runner.load_data

    def other_process_finishes_meanwhile(*args, **kwargs):
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in written:
            (run_dir / name).write_text(f"the other run's {name}")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "load_data", other_process_finishes_meanwhile)
    code, err = cli(tiny_run_args(fmnist_dir, tmp_path / "out", *(["--resume"] if resume else [])), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert {name: (run_dir / name).read_text() for name in written} == {
        name: f"the other run's {name}" for name in written
    }


# ---------------------------------------------------------------- run --resume: a checkpoint it did not write


@pytest.fixture(scope="module")
def stopped_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Runs of pgd-at and dafa (a method with state) stopped after epoch 1 of 2, with checkpoints."""
    import contextlib
    import io

    from conftest import make_fashion_mnist

    root = tmp_path_factory.mktemp("stopped")
    data = make_fashion_mnist(root / "fmnist")
    runs = {"data": data}
    for name in ("pgd-at", "dafa"):
        args = tiny_run_args(data, root / name, "--stop-after-epoch", "1", epochs=2)
        args[args.index("pgd-at")] = name
        with contextlib.redirect_stdout(io.StringIO()):
            main(args)
        runs[name] = root / name
    return runs


def _spoil_mid_epoch(**change):
    """A valid preempted epoch (every training example once, at step 1) with ``change`` applied."""

    def spoil(state: dict) -> None:
        mid = {
            "step": 1,
            "plan": {
                "indices": torch.arange(300),
                "augment": None,
                "eps": torch.full((300,), 0.1),
                "weight": torch.ones(300),
            },
            "log": {},
            "loss_sum": torch.tensor(1.0),
            "seconds": 0.5,
        }
        for key, value in change.items():
            target, _, leaf = key.rpartition(".")
            (mid[target] if target else mid)[leaf] = value
        state["mid_epoch"] = mid

    return spoil


def _set(path: str, value):
    def spoil(state: dict) -> None:
        *parents, leaf = path.split("/")
        target = state
        for key in parents:
            target = target[int(key) if isinstance(target, list) or key.isdigit() else key]
        target[int(leaf) if leaf.isdigit() else leaf] = value

    return spoil


HOSTILE_CHECKPOINTS = [
    ("pgd-at", _set("epoch", "x"), "its epoch"),
    ("pgd-at", _set("train_seconds", "x"), "its train_seconds"),
    ("pgd-at", _set("rng_ranks/0/torch", [1, 2, 3]), "its rng"),
    ("pgd-at", _set("rng_ranks/0/python", ["a"] * 625), "its rng"),
    ("pgd-at", _set("rng", {"python": 1}), "its rng"),
    ("pgd-at", _set("optimizer/state/0/momentum_buffer", torch.zeros(3)), "its optimizer"),
    ("pgd-at", _set("optimizer/param_groups", "x"), "its optimizer"),
    ("pgd-at", _set("optimizer/param_groups/0/lr", "fast"), "its optimizer"),
    ("pgd-at", _set("scheduler", {"optimizer": 1}), "its scheduler"),
    ("pgd-at", _set("scheduler/last_epoch", "x"), "its scheduler"),
    ("pgd-at", _set("method", {"x": 1}), "its method"),
    ("dafa", _set("method/probs/sums", torch.zeros(3, 3)), "its method"),
    ("dafa", _set("method/weights", [1, 2]), "its method"),
    ("pgd-at", _spoil_mid_epoch(**{"plan.indices": torch.arange(300) + 10**6}), "its mid_epoch"),
    ("pgd-at", _spoil_mid_epoch(**{"plan.indices": torch.arange(300.0)}), "its mid_epoch"),
    ("pgd-at", _spoil_mid_epoch(**{"plan.weight": torch.ones(7)}), "its mid_epoch"),
    ("pgd-at", _spoil_mid_epoch(**{"plan.eps": None}), "its mid_epoch"),
    ("pgd-at", _spoil_mid_epoch(loss_sum="x"), "its mid_epoch"),
    ("pgd-at", _spoil_mid_epoch(step="x"), "its mid_epoch"),
    ("pgd-at", _spoil_mid_epoch(log={"epoch": "x"}), "its mid_epoch"),
    ("pgd-at", _spoil_mid_epoch(log={"t": torch.ones(2)}), "its mid_epoch"),
    ("pgd-at", _spoil_mid_epoch(buffer_ranks=[{"nope": torch.ones(1)}]), "its mid_epoch"),
]


@pytest.mark.parametrize("method_name, spoil, fragment", HOSTILE_CHECKPOINTS)
def test_resume_refuses_a_checkpoint_it_cannot_continue(
    method_name: str, spoil, fragment: str, stopped_runs: dict, tmp_path: Path, capsys
) -> None:
    """A checkpoint in a run folder that this run did not write (types, shapes and ranges that do not
    fit): one `error:` line naming the part, and no file changes. Before, each was a traceback
    (some epochs later), a silently wrong run, or a log.jsonl record with a foreign epoch."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(stopped_runs[method_name], out)
    ckpt = out / "runs" / "r" / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    spoil(state)
    torch.save(state, ckpt)
    before = files_under(out)
    args = tiny_run_args(stopped_runs["data"], out, "--resume", epochs=2)
    args[args.index("pgd-at")] = method_name
    code, err = cli(args, capsys)
    one_error(code, err, fragment)
    assert "cannot resume from this checkpoint" in err
    assert files_under(out) == before


@pytest.mark.parametrize(
    "method_name, spoil", [("pgd-at", lambda s: None), ("dafa", lambda s: None), ("pgd-at", _spoil_mid_epoch())]
)
def test_resume_accepts_the_checkpoints_it_writes(
    method_name: str, spoil, stopped_runs: dict, tmp_path: Path, capsys
) -> None:
    """The other side of the check above: its own checkpoints (and a preempted epoch) resume."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(stopped_runs[method_name], out)
    ckpt = out / "runs" / "r" / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    spoil(state)
    torch.save(state, ckpt)
    args = tiny_run_args(stopped_runs["data"], out, "--resume", epochs=2)
    args[args.index("pgd-at")] = method_name
    code, err = cli(args, capsys)
    assert code == 0, err
    assert (out / "runs" / "r" / "metrics.json").exists()


@pytest.mark.parametrize("log", ["[1]\n", '{"epoch": "x"}\n', "[" * 100_000 + "\n", "fifo", "symlink"])
def test_resume_reads_any_log_without_a_traceback(log: str, stopped_runs: dict, tmp_path: Path, capsys) -> None:
    """A log.jsonl that fairbench did not write (lines that are not records, a foreign epoch, deep
    nesting, a FIFO, a symlink out of the folder): the resume drops what is not a record of an
    epoch it keeps, never hangs, and never writes through the link."""
    import os
    import shutil

    out = tmp_path / "out"
    shutil.copytree(stopped_runs["pgd-at"], out)
    path = out / "runs" / "r" / "log.jsonl"
    first = path.read_text().splitlines()[0]
    path.unlink()
    if log == "fifo":
        os.mkfifo(path)
    elif log == "symlink":
        (tmp_path / "elsewhere.jsonl").write_text(first + "\n")
        path.symlink_to(tmp_path / "elsewhere.jsonl")
    else:
        path.write_text(first + "\n" + log)
    code, err = cli(tiny_run_args(stopped_runs["data"], out, "--resume", epochs=2), capsys)
    assert code == 0, err
    epochs = [json.loads(line)["epoch"] for line in path.read_text().splitlines()]
    assert epochs == ([2] if log in ("fifo", "symlink") else [1, 2]) and not path.is_symlink()
    if log == "symlink":
        assert (tmp_path / "elsewhere.jsonl").read_text() == first + "\n"


# ---------------------------------------------------------------- issue 28, case 2: --init-from from anyone


@pytest.fixture(scope="module")
def finished_source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished pgd-at run (1 epoch) to start other runs from."""
    import contextlib
    import io

    from conftest import make_fashion_mnist

    root = tmp_path_factory.mktemp("source")
    data = make_fashion_mnist(root / "fmnist")
    with contextlib.redirect_stdout(io.StringIO()):
        main(tiny_run_args(data, root / "out"))
    return {"data": data, "run": root / "out" / "runs" / "r"}


def _edit_config(**changes):
    def edit(run: Path) -> None:
        config = json.loads((run / "config.json").read_text()) | changes
        (run / "config.json").write_text(json.dumps(config))

    return edit


def _edit_checkpoint(change):
    def edit(run: Path) -> None:
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        change(state)
        torch.save(state, run / "checkpoint.pt")

    return edit


def _pad_checkpoint(run: Path) -> None:
    with open(run / "checkpoint.pt", "r+b") as f:
        f.truncate(400 * 2**20)  # sparse: 400 MB on paper, nothing on disk


HOSTILE_SOURCES = {
    "nested-too-deep": (_edit_config(params={"a": {"b": {"c": 1}}}), "init_from.config.params.a"),
    "newline": (_edit_config(data_dir="/data\nx"), "init_from.config.data_dir"),
    "too-long": (_edit_config(data_dir="d" * 1001), "init_from.config.data_dir"),
    "too-many-keys": (_edit_config(**{f"k{i}": i for i in range(101)}), "more than 100 entries"),
    "init-source-list": (_edit_config(init_source=[1, 2]), "init_source that is a list"),
    "epochs-true": (_edit_config(epochs=True), "epochs True"),
    "epochs-huge": (_edit_config(epochs=10**30), "not a whole number"),
    "epoch-tensor": (_edit_checkpoint(lambda s: s.__setitem__("epoch", torch.tensor(1))), "epoch as a Tensor"),
    "nan-weights": (
        _edit_checkpoint(
            lambda s: s["model"].update(
                {k: torch.full_like(v, float("nan")) for k, v in s["model"].items() if v.is_floating_point()}
            )
        ),
        "weights are not finite",
    ),
    "huge-weights": (
        _edit_checkpoint(
            lambda s: s["model"].update(
                {k: v * 1e36 for k, v in s["model"].items() if v.is_floating_point() and k != "0.std"}
            )
        ),
        "outputs are not finite",
    ),
    "400-mb": (_pad_checkpoint, "400.0 MiB, more than the"),
    "config-fifo": (
        lambda run: ((run / "config.json").unlink(), __import__("os").mkfifo(run / "config.json")),
        "not a regular file",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_SOURCES))
def test_init_from_refuses_a_source_before_training(name: str, finished_source: dict, tmp_path: Path, capsys) -> None:
    """Issue 28, case 2: a source config the schema rejects was trained from and failed writing
    metrics.json; a non-dict init_source or a tensor epoch gave tracebacks; NaN or 1e36 weights and
    a 400 MB checkpoint were taken; `epochs: true` read as 1. Now one line, before anything is written."""
    import shutil

    spoil, fragment = HOSTILE_SOURCES[name]
    source = tmp_path / "source"
    shutil.copytree(finished_source["run"], source)
    spoil(source)
    code, err = cli(tiny_run_args(finished_source["data"], tmp_path / "out", "--init-from", str(source)), capsys)
    one_error(code, err, fragment)
    assert "--init-from" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "spoil, fragment",
    [
        (
            lambda s: {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in s.items()},
            "weights are not finite",
        ),
        (lambda s: _scaled(s, 1e36), "outputs are not finite"),
    ],
)
def test_init_from_a_file_refuses_weights_that_are_not_finite(
    spoil, fragment: str, finished_source: dict, tmp_path: Path, capsys
) -> None:
    ckpt = save(spoil(small_cnn_state()), tmp_path / "bad.pt")
    code, err = cli(tiny_run_args(finished_source["data"], tmp_path / "out", "--init-from", str(ckpt)), capsys)
    one_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


def test_init_from_a_valid_source_still_starts(finished_source: dict, tmp_path: Path, capsys) -> None:
    code, err = cli(
        tiny_run_args(finished_source["data"], tmp_path / "out", "--init-from", str(finished_source["run"])), capsys
    )
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "runs" / "r" / "metrics.json").read_text())
    assert record["init_from"]["run_id"] == "r" and record["init_from"]["budget_epochs"] == 1


# ---------------------------------------------------------------- issue 28, case 3: planted evaluation state


def _evaluated_state(fmnist_dir: Path, tmp_path: Path, monkeypatch, capsys) -> tuple[Path, dict]:
    """eval on another machine (another key): its checkpoint and its saved state of the clean threat."""
    monkeypatch.setenv("FAIRBENCH_STATE_DIR", str(tmp_path / "their-machine"))
    ckpt = save(small_cnn_state(), tmp_path / "model.pt")
    code, err = cli(eval_args(ckpt, fmnist_dir, tmp_path / "theirs", "--run-id", "x"), capsys)
    assert code == 0, err
    state = torch.load(tmp_path / "theirs" / "runs" / "x" / "eval_state" / "clean.pt", weights_only=True)
    monkeypatch.setenv("FAIRBENCH_STATE_DIR", str(tmp_path / "this-machine"))
    return ckpt, state


@pytest.mark.parametrize("forge", ["their-own-file", "edited-keeping-its-key", "no-tag", "not-a-state-file"])
def test_eval_refuses_a_folder_holding_only_planted_evaluation_state(
    forge: str, fmnist_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Issue 28, case 3: a saved state edited (keeping its key, which whoever made the checkpoint can
    recompute) and placed as runs/<id>/eval_state/ in an otherwise empty folder was resumed from
    ("resuming after 50/50") and its made-up accuracy reported. A folder holding state that
    fairbench did not write on this machine is another's: refused, and nothing is written."""
    ckpt, state = _evaluated_state(fmnist_dir, tmp_path, monkeypatch, capsys)
    if forge == "edited-keeping-its-key":
        state["correct"] = torch.ones_like(state["correct"])
    elif forge == "no-tag":
        del state["tag"]
    planted = tmp_path / "out" / "runs" / "x" / "eval_state"
    planted.mkdir(parents=True)
    if forge == "not-a-state-file":
        (planted / "notes.txt").write_text("hi")
    else:
        torch.save(state, planted / "clean.pt")
    before = files_under(tmp_path / "out")
    code, err = cli(eval_args(ckpt, fmnist_dir, tmp_path / "out", "--run-id", "x"), capsys)
    one_error(code, err, "holds evaluation state that is not this machine's evaluation's")
    assert files_under(tmp_path / "out") == before


def test_saved_state_is_resumed_only_when_this_machine_wrote_it(tmp_path: Path, monkeypatch) -> None:
    """The reader `fairbench run` and `eval` share: a state file with the right key but another
    machine's tag (or an edited one) starts over; the one written here resumes."""
    from fairbench.distributed import DistInfo
    from fairbench.eval.state import EvalState, StageProgress

    said: list[str] = []
    correct = torch.tensor([True, False, True, True])
    state = EvalState(tmp_path / "s", {"model": "m"}, torch.arange(4), DistInfo(), torch.device("cpu"), said.append)
    monkeypatch.setenv("FAIRBENCH_STATE_DIR", str(tmp_path / "their-machine"))
    state.save("clean", {}, StageProgress(correct, 4, 1.0))
    monkeypatch.setenv("FAIRBENCH_STATE_DIR", str(tmp_path / "this-machine"))
    assert state.load("clean", {}, 4).done == 0 and "not written by fairbench on this machine" in said[-1]
    state.save("clean", {}, StageProgress(correct, 3, 1.0))
    got = state.load("clean", {}, 4)
    assert got.done == 3 and torch.equal(got.correct, correct) and "resuming after 3/4" in said[-1]
    saved = torch.load(tmp_path / "s" / "clean.pt", weights_only=True)
    saved["done"] = 4
    torch.save(saved, tmp_path / "s" / "clean.pt")
    assert state.load("clean", {}, 4).done == 0 and "not written by fairbench on this machine" in said[-1]


def test_eval_still_resumes_its_own_state(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    ckpt = save(small_cnn_state(), tmp_path / "model.pt")
    assert cli(eval_args(ckpt, fmnist_dir, tmp_path / "out", "--run-id", "x"), capsys)[0] == 0
    (tmp_path / "out" / "runs" / "x" / "metrics.json").unlink()  # as if killed before writing it
    code, out, err = cli_out(eval_args(ckpt, fmnist_dir, tmp_path / "out", "--run-id", "x"), capsys)
    assert code == 0 and "clean: resuming after 10/10" in out + err, out + err


def test_without_a_key_evaluation_state_is_not_kept(tmp_path: Path, monkeypatch) -> None:
    """Where no key can be made (an unwritable state folder) nothing is saved, so a rerun of a killed
    evaluation starts over instead of refusing its own folder."""
    from fairbench.distributed import DistInfo
    from fairbench.eval.state import EvalState, StageProgress

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("FAIRBENCH_STATE_DIR", str(tmp_path / "file" / "state"))
    said: list[str] = []
    state = EvalState(tmp_path / "s", {"model": "m"}, torch.arange(2), DistInfo(), torch.device("cpu"), said.append)
    state.save("clean", {}, StageProgress(torch.tensor([True, False]), 2, 1.0))
    assert not (tmp_path / "s").exists() and "evaluation state is not saved" in said[-1]
