"""The Python API (`fairbench.api`): lazy, the one evaluator, the schema's record, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fairbench
import pytest
import torch
from fairbench.data.datasets import get_dataset, load_split, per_class_indices, to_float
from fairbench.errors import FairbenchError
from fairbench.schema import RunRecord, read_metrics
from torch import nn

from cli_helpers import cli_out, exit_code

SPEC = get_dataset("fashion-mnist")


def tiny_model(seed: int = 0) -> nn.Module:
    """A small linear model for [0, 1] images (fast under PGD)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_import_fairbench_does_not_import_torch() -> None:
    code = (
        "import sys, fairbench; assert 'torch' not in sys.modules, 'torch imported'; "
        "assert set(fairbench.__all__) >= {'evaluate', 'load_model', 'create_model', 'list_methods'}; "
        "fairbench.list_methods; assert 'torch' in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_evaluate_returns_the_per_class_record_and_writes_nothing(
    fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a default results folder would land here
    before = files_under(tmp_path)
    model = tiny_model().train()
    record = fairbench.evaluate(
        model,
        "fashion-mnist",
        eps=8 / 255,
        attacks="clean,pgd20",
        n_per_class=3,
        device="cpu",
        data_dir=str(fmnist_dir),
        download=False,
    )
    assert files_under(tmp_path) == before and not any(work.iterdir())
    assert isinstance(record, RunRecord) and model.training  # its mode is given back
    assert set(record.metrics) == {"clean", "pgd20", "union"} and record.threat.eps == 8 / 255
    assert record.method == "external" and record.arch == "Sequential" and record.epochs is None
    clean = record.metrics["clean"]
    assert clean.n_per_class == (3,) * 10

    # the clean per-class accuracy is the model's own on those images, worked out here directly
    test = load_split(SPEC, "test", fmnist_dir, download=False)
    test = test.subset(per_class_indices(test.labels, 3, 10))
    with torch.no_grad():
        right = (model.eval()(to_float(test.images)).argmax(1) == test.labels).double()
    expected = [float(right[test.labels == c].mean()) for c in range(10)]
    assert list(clean.per_class) == pytest.approx(expected, abs=1e-6)
    assert all(p <= c + 1e-9 for p, c in zip(record.metrics["pgd20"].per_class, clean.per_class))


def test_evaluate_with_out_writes_what_fairbench_eval_writes(
    fmnist_dir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's record is the metrics.json the CLI writes for the same model (one result type)."""
    record = fairbench.evaluate(
        tiny_model(),
        "fashion-mnist",
        attacks=["clean", "pgd20"],
        n_per_class=2,
        device="cpu",
        data_dir=str(fmnist_dir),
        out=tmp_path / "api",
        run_id="r",
    )
    on_disk = read_metrics(tmp_path / "api" / "runs" / "r" / "metrics.json")
    assert on_disk.metrics == record.metrics and on_disk.threat.eps == 0.1  # the data set's eps

    site = tmp_path / "site"
    site.mkdir()
    (site / "api_toy_model.py").write_text(
        "import torch\nfrom torch import nn\n\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))\n"
    )
    monkeypatch.syspath_prepend(str(site))
    code, _, err = cli_out(
        [
            "eval",
            "--model",
            "api_toy_model:build",
            "--dataset",
            "fashion-mnist",
            "--attacks",
            "clean,pgd20",
            "--eval-per-class",
            "2",
            "--device",
            "cpu",
            "--data-dir",
            str(fmnist_dir),
            "--out",
            str(tmp_path / "cli"),
            "--run-id",
            "r",
        ],
        capsys,
    )
    assert code == 0, err
    by_cli = read_metrics(tmp_path / "cli" / "runs" / "r" / "metrics.json")
    assert by_cli.metrics == record.metrics
    assert by_cli.params["weights_sha256"] == record.params["weights_sha256"]


def test_load_model_gives_the_weights_the_run_evaluated(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "results"
    code, _, err = cli_out(
        [
            "run",
            "--arch",
            "small-cnn",
            "--dataset",
            "fashion-mnist",
            "--epochs",
            "1",
            "--batch-size",
            "25",
            "--train-per-class",
            "5",
            "--eval-per-class",
            "2",
            "--attack-steps",
            "1",
            "--attacks",
            "clean",
            "--device",
            "cpu",
            "--no-progress",
            "--data-dir",
            str(fmnist_dir),
            "--out",
            str(out),
            "--run-id",
            "tiny",
        ],
        capsys,
    )
    assert code == 0, err
    run_dir = out / "runs" / "tiny"
    model = fairbench.load_model(run_dir)
    assert not model.training
    again = fairbench.evaluate(
        model, "fashion-mnist", attacks="clean", n_per_class=2, device="cpu", data_dir=str(fmnist_dir)
    )
    assert again.metrics["clean"] == read_metrics(run_dir / "metrics.json").metrics["clean"]

    (run_dir / "checkpoint.pt").unlink()  # as committed results are
    with pytest.raises(FairbenchError, match="no checkpoint.pt; committed results carry none"):
        fairbench.load_model(run_dir)


def test_create_model_and_list_methods() -> None:
    model = fairbench.create_model("small-cnn", "fashion-mnist")
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    methods = fairbench.list_methods()
    assert {"pgd-at", "trades", "fairat"} <= set(methods) and methods == sorted(methods)
    with pytest.raises(FairbenchError, match="did you mean 'small-cnn'"):
        fairbench.create_model("smallcnn", "fashion-mnist")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_per_class": 0}, "--eval-per-class must be >= 1"),
        ({"n_per_class": "3"}, "n_per_class must be a whole number"),
        ({"eps": "8/255"}, "eps must be a number"),
        ({"eps": 2.0}, "--eps must be in (0, 1]"),
        ({"attacks": "clean,pgd21"}, "did you mean 'pgd20'"),
        ({"device": "gpu"}, "--device must be auto, cpu or cuda[:N]"),
    ],
)
def test_bad_arguments_are_one_clear_error(kwargs: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(FairbenchError) as exc:
        fairbench.evaluate(tiny_model(), "fashion-mnist", data_dir=str(tmp_path), **{"device": "cpu", **kwargs})
    assert message in str(exc.value)
    assert not any(tmp_path.iterdir())


def test_the_api_name_survives_importing_the_evaluator_module() -> None:
    """`fairbench.evaluate` is the API's function even after the module fairbench/eval/evaluator.py loads."""
    import importlib

    module = importlib.import_module("fairbench.eval.evaluator")
    assert callable(fairbench.evaluate) and fairbench.evaluate is not module
    assert fairbench.evaluate.__module__ == "fairbench.api"
    assert json.dumps(fairbench.list_methods())  # plain names


def test_leaderboard_is_the_table_fairbench_report_writes(tmp_path: Path) -> None:
    """`fairbench.leaderboard` reads a results folder into the table that `fairbench report`
    writes to leaderboard.csv (the same labels, numbers, ranks and differences), writing nothing."""
    from test_report import write_results

    root = write_results(tmp_path / "results")
    before = files_under(root)
    board = fairbench.leaderboard(root)
    assert files_under(root) == before
    assert {"label", "rank", "pgd20_worst_err", "pgd20_worst_err_delta", "tuning_reading"} <= set(board.columns)
    assert (board[board["method"] == "trades"]["label"] == "trades").any()  # paper defaults: no params named
    assert exit_code(["report", "--results", str(root)]) == 0
    written = (root / "leaderboard.csv").read_text()
    assert board.to_csv(index=False, float_format="%.6f", na_rep="", lineterminator="\n") == written
    by_pgd = fairbench.leaderboard(root, rank_by="pgd20:avg")
    assert (by_pgd["sort_stat"] == "avg").all() and not by_pgd["rank"].equals(board["rank"])
    with pytest.raises(FairbenchError, match="does not exist"):
        fairbench.leaderboard(tmp_path / "nowhere")
