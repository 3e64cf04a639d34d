"""End-to-end: `fairbench run` trains, checkpoints and evaluates on tiny Fashion-MNIST files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fairbench.cli import main

from cli_helpers import run_ok

run_cli = run_ok


def test_run_writes_every_file(fmnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    run_cli(
        [
            "run",
            "--method",
            "pgd-at",
            "--arch",
            "small-cnn",
            "--dataset",
            "fashion-mnist",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--data-dir",
            str(fmnist_dir),
            "--out",
            str(out),
            "--run-id",
            "r",
            "--no-progress",
            "--device",
            "cpu",
            "--attacks",
            "clean,pgd20",
        ]
    )
    run_dir = out / "runs" / "r"
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "log.jsonl", "checkpoint.pt", "metrics.json"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["classes"][6] == "shirt"
    assert set(metrics["metrics"]) == {"clean", "pgd20", "union"}
    assert sum(metrics["metrics"]["clean"]["n_per_class"]) == 100
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1]


def test_unknown_method_lists_valid(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--method", "nope", "--arch", "small-cnn", "--dataset", "fashion-mnist"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "pgd-at" in err
