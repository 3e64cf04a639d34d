"""--select: one model-selection rule for every method (fairbench/train/selection.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from fairbench.config import PRESETS, RunConfig
from fairbench.errors import FairbenchError
from fairbench.runs.folder import load_checkpoint, read_jsonl
from fairbench.train.runner import run
from fairbench.train.selection import BestValSelector

QUIET = dict(progress=False, echo=lambda _m: None)


def _cfg(fmnist_dir: Path, out: Path, **overrides) -> RunConfig:
    values = dict(
        method="pgd-at",
        arch="small-cnn",
        dataset="fashion-mnist",
        epochs=3,
        batch_size=25,
        train_per_class=10,
        val_per_class=4,
        eval_per_class=3,
        attack_steps=2,
        attacks=("clean", "pgd20"),
        device="cpu",
        data_dir=str(fmnist_dir),
        out=str(out),
        run_id="r",
        download=False,
        select="best-val",
    )
    return RunConfig(**(values | overrides))


def test_best_val_keeps_the_best_epoch_and_evaluates_it(fmnist_dir: Path, tmp_path: Path) -> None:
    run_dir = run(_cfg(fmnist_dir, tmp_path), **QUIET)
    log = read_jsonl(run_dir / "log.jsonl")
    scores = [r["val_robust_avg"] + r["val_robust_worst"] for r in log]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i)) + 1  # the first best epoch
    assert [r["selected_epoch"] for r in log][-1] == best
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["select"] == "best-val" and metrics["selected_epoch"] == best
    ck = load_checkpoint(run_dir / "checkpoint.pt")
    assert ck["selection"]["best_epoch"] == best
    # the evaluated weights are the kept ones: re-evaluating them by hand gives the metrics
    from fairbench.data.datasets import get_dataset, load_split, per_class_indices
    from fairbench.eval.evaluator import clean_correct
    from fairbench.models import create_model

    spec = get_dataset("fashion-mnist")
    model = create_model("small-cnn", spec)
    model.load_state_dict(ck["selection"]["best_model"])
    model.eval()
    test = load_split(spec, "test", str(fmnist_dir), download=False)
    test = test.subset(per_class_indices(test.labels, 3, 10))
    from fairbench.data.datasets import to_float

    acc = float(clean_correct(model, to_float(test.images), test.labels).double().mean())
    assert metrics["metrics"]["clean"]["avg"] == pytest.approx(acc, abs=1e-6)


def test_best_val_resumes_exactly(fmnist_dir: Path, tmp_path: Path) -> None:
    whole = run(_cfg(fmnist_dir, tmp_path / "w"), **QUIET)
    part = run(_cfg(fmnist_dir, tmp_path / "p"), stop_after_epoch=2, **QUIET)
    part = run(_cfg(fmnist_dir, tmp_path / "p"), resume=True, **QUIET)
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((part / "metrics.json").read_text())
    assert a["metrics"] == b["metrics"] and a["selected_epoch"] == b["selected_epoch"]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rs]  # noqa: E731
    assert strip(read_jsonl(whole / "log.jsonl")) == strip(read_jsonl(part / "log.jsonl"))


def test_select_bad_input() -> None:
    base = dict(method="pgd-at", arch="small-cnn", dataset="fashion-mnist")
    with pytest.raises(FairbenchError, match="--select must be one of last, best-val"):
        RunConfig(**base, select="best").validate()
    with pytest.raises(FairbenchError, match="--select best-val needs a validation split"):
        RunConfig(**base, select="best-val").validate()
    with pytest.raises(FairbenchError, match="--subset autoattack=60 is more than the 50"):
        RunConfig(**base, eval_per_class=50, subsets={"autoattack": 60}).validate()
    # without AutoAttack the subset is never used: a preset's subset does not stand in the way
    RunConfig(**base, eval_per_class=5, subsets={"autoattack": 50}, attacks=("clean", "pgd20")).validate()


def test_select_last_keeps_old_run_ids() -> None:
    """Fields added later enter the run id only when set, so committed runs keep theirs."""
    base = dict(method="pgd-at", arch="small-cnn", dataset="fashion-mnist")
    assert "select" not in RunConfig(**base).training_dict()
    assert RunConfig(**base).training_hash() != RunConfig(**base, select="best-val").training_hash()


def test_selector_scores_per_class_worst_plus_average() -> None:
    """The rule: keep the epoch with the highest average + worst-class robust accuracy."""
    sel = BestValSelector.__new__(BestValSelector)
    sel.best_score, sel.best_epoch, sel.best_model = -float("inf"), 0, None
    scores = iter(
        [
            torch.tensor([0.9, 0.1], dtype=torch.float64),  # avg .5, worst .1 -> .6
            torch.tensor([0.5, 0.4], dtype=torch.float64),  # avg .45, worst .4 -> .85
            torch.tensor([0.8, 0.2], dtype=torch.float64),
        ]
    )  # avg .5, worst .2 -> .7
    sel.robust_per_class = lambda model, epoch: next(scores)
    model = torch.nn.Linear(2, 2)
    kept = []
    for epoch in range(3):
        with torch.no_grad():
            model.weight.fill_(epoch)
        sel.after_epoch(model, epoch)
        kept.append(sel.best_epoch)
    assert kept == [1, 2, 2]
    assert torch.all(sel.best_model["weight"] == 1)


def test_run_records_the_preset_outcomes_and_no_machine_path(fmnist_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(PRESETS, "tiny", dict(dataset="fashion-mnist", arch="small-cnn"))
    cfg = _cfg(fmnist_dir, tmp_path / "results", select="last", epochs=1, preset="tiny")
    run_dir = run(cfg, **QUIET)
    config = json.loads((run_dir / "config.json").read_text())
    assert "out" not in config and config["preset"] == "tiny"
    assert str(tmp_path / "results") not in (run_dir / "config.json").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["preset"] == "tiny" and metrics["select"] == "last"
    rows = gzip.decompress((run_dir / "outcomes.csv.gz").read_bytes()).decode().splitlines()
    assert rows[0] == "index,label,clean,pgd20,autoattack,union" and len(rows) == 31
