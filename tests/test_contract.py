"""The contract of every registered method, generated from the registry (a plugin's method gets it
too, with no test list to edit): it trains end to end, resumes bit-exactly after a stop inside an
epoch and after one between epochs, and bad parameters are one error line that writes nothing.
The 2-process DDP contract is in tests/test_distributed.py.

Every method runs with a validation split (FRL, WAT and CFA's FAWA need one) and, where the method
fine-tunes (``requires_init``), from a finished pgd-at run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from fairbench.methods import METHODS
from fairbench.runs.folder import load_checkpoint
from fairbench.runs.signals import EXIT_PREEMPTED
from fairbench.train.trainer import Trainer

from cli_helpers import cli, run_ok
from conftest import make_fashion_mnist

EPOCHS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """15 training images per class after 5 per class are held out for validation."""
    return make_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train_per_class=20, n_test_per_class=2)


def run_args(data: Path, out: Path, method: str, *extra: str, run_id: str = "r") -> list[str]:
    """A tiny run: 150 training images in batches of 30 (5 steps per epoch), PGD-2."""
    return [
        "run",
        "--method",
        method,
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "30",
        "--attack-steps",
        "2",
        "--val-per-class",
        "5",
        "--eval-per-class",
        "2",
        "--attacks",
        "clean",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--run-id",
        run_id,
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def source(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished pgd-at run for the methods that fine-tune one."""
    out = tmp_path_factory.mktemp("source")
    run_ok(run_args(data, out, "pgd-at"))
    return out / "runs" / "r"


def method_args(name: str, source: Path) -> list[str]:
    return ["--init-from", str(source)] if METHODS.get(name).requires_init else []


def assert_same_state(a: Any, b: Any, where: str) -> None:
    """Nested checkpoint contents equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def without_timing(run_dir: Path) -> list[dict]:
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in log]


@pytest.mark.parametrize("name", METHODS.names())
def test_trains_and_resumes_bit_exactly(
    name: str, data: Path, source: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_trains_and_resumes(name, data, source, tmp_path, capsys, monkeypatch)


def contributing_example() -> str:
    """The worked example of CONTRIBUTING.md (the code block after its heading)."""
    text = (Path(__file__).parent.parent / "CONTRIBUTING.md").read_text()
    after = text[text.index("### A worked example") :]
    return after[after.index("```python\n") + len("```python\n") : after.index("\n```\n")]


def test_the_contributing_example_keeps_the_contract(
    data: Path, source: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    METHODS.names()
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    module = types.ModuleType("contributing_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
    exec(compile(contributing_example(), "CONTRIBUTING.md", "exec"), module.__dict__)
    assert METHODS.get("robust-error-reweight").name == "robust-error-reweight"
    check_trains_and_resumes("robust-error-reweight", data, source, tmp_path, capsys, monkeypatch)
    log = without_timing(tmp_path / "whole" / "runs" / "r")
    assert "loss" in log[-1]


def check_trains_and_resumes(
    name: str, data: Path, source: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = method_args(name, source)
    code, err = cli(run_args(data, tmp_path / "whole", name, *extra), capsys)
    assert code == 0, err
    whole = tmp_path / "whole" / "runs" / "r"
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["method"] == name and set(metrics["params"]) == set(METHODS.entry(name).params)
    assert [r["epoch"] for r in without_timing(whole)] == list(range(1, EPOCHS + 1))

    # a stop inside epoch 2 (after its step 2, as on SIGTERM), a resume that stops after epoch 2
    # (as a time-limited job), and a resume to the end: the same run, bit for bit
    calls = iter(range(1, 10**6))
    monkeypatch.setattr(Trainer, "_stop_requested", lambda self, step: next(calls) == 6)
    args = run_args(data, tmp_path / "parts", name, *extra)
    code, err = cli(args, capsys)
    assert code == EXIT_PREEMPTED and "in epoch 2 after step 2 of 5" in err, err
    monkeypatch.setattr(Trainer, "_stop_requested", lambda self, step: False)
    assert cli(args + ["--resume", "--stop-after-epoch", "2"], capsys)[0] == 0
    code, err = cli(args + ["--resume"], capsys)
    assert code == 0, err
    parts = tmp_path / "parts" / "runs" / "r"
    a, b = (load_checkpoint(d / "checkpoint.pt") for d in (whole, parts))
    for key in ("model", "optimizer", "method", "averaged", "epoch"):
        assert_same_state(a.get(key), b.get(key), key)
    assert without_timing(whole) == without_timing(parts)
    assert json.loads((parts / "metrics.json").read_text())["metrics"] == metrics["metrics"]


def wrong_value(f: dataclasses.Field) -> str | None:
    """A value of the wrong type for the field, as a CLI string (None where any string is one)."""
    default = f.default
    if isinstance(default, bool):
        return "maybe"
    if isinstance(default, (int, float)):
        return "not-a-number"
    return None


@pytest.mark.parametrize("name", METHODS.names())
def test_bad_parameters_are_one_error_line_and_write_nothing(
    name: str, data: Path, source: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    extra = method_args(name, source)
    code, err = cli(run_args(data, out, name, *extra, "--param", "no_such_parameter=1"), capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"unknown parameter 'no_such_parameter' for method '{name}'" in err
    for f in dataclasses.fields(METHODS.get(name).Params):
        value = wrong_value(f)
        if value is None:
            continue
        code, err = cli(run_args(data, out, name, *extra, "--param", f"{f.name}={value}"), capsys)
        assert code == 2 and err.startswith(f"error: parameter '{f.name}' of method '{name}'"), err
    assert not out.exists()
