"""--init-from RUN_DIR: a run starts from a finished run's (evaluated) weights, records where they
came from, resumes exactly; an unusable source is one error line and nothing is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fairbench.runs.folder import load_checkpoint, sha256_file
from fairbench.train.trainer import Trainer

from cli_helpers import cli, run_ok
from conftest import make_fashion_mnist


def run_args(data: Path, out: Path, run_id: str, *extra: str, method: str = "pgd-at") -> list[str]:
    return [
        "run",
        "--method",
        method,
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        "2",
        "--batch-size",
        "50",
        "--attack-steps",
        "2",
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
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Finished pgd-at runs (one plain, one with --ema) and one stopped after its first epoch."""
    root = tmp_path_factory.mktemp("sources")
    data = make_fashion_mnist(root / "fm", n_train_per_class=10, n_test_per_class=2)
    for run_id, extra in (("plain", []), ("ema", ["--ema", "0.5"]), ("unfinished", ["--stop-after-epoch", "1"])):
        run_ok(run_args(data, root / "out", run_id, *extra))
    runs = root / "out" / "runs"
    return {"data": data, "plain": runs / "plain", "ema": runs / "ema", "unfinished": runs / "unfinished"}


@pytest.fixture
def start_weights(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """The weights each Trainer holds when its training starts."""
    seen: list[dict[str, torch.Tensor]] = []
    real_fit = Trainer.fit

    def fit(self, *args, **kwargs):
        seen.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", fit)
    return seen


@pytest.mark.parametrize("source, key", [("plain", "model"), ("ema", "averaged")])
def test_a_run_starts_from_the_weights_its_source_evaluated(
    sources, source: str, key: str, start_weights, tmp_path: Path, capsys
) -> None:
    code, err = cli(
        run_args(sources["data"], tmp_path / "out", "ft", "--init-from", str(sources[source]), method="faal"), capsys
    )
    assert code == 0, err
    state = load_checkpoint(sources[source] / "checkpoint.pt")
    expected = state["model"] if key == "model" else state["averaged"]["weights"]
    assert start_weights[0].keys() == expected.keys()
    assert all(torch.equal(start_weights[0][k], expected[k]) for k in expected)
    if key == "averaged":  # the average differs from the last weights: the right ones were taken
        assert not all(torch.equal(state["model"][k], expected[k]) for k in expected)
    run_dir = tmp_path / "out" / "runs" / "ft"
    config, metrics = (json.loads((run_dir / f).read_text()) for f in ("config.json", "metrics.json"))
    record = metrics["init_from"]
    assert record == config["init_source"]
    assert record["run_id"] == source and record["method"] == "pgd-at" and record["epochs"] == 2
    assert record["budget_epochs"] == 2 and record["weights"] == ("averaged" if key == "averaged" else "last")
    assert record["checkpoint_sha256"] == sha256_file(sources[source] / "checkpoint.pt")
    source_config = json.loads((sources[source] / "config.json").read_text())
    assert record["config"] == source_config | {"init_source": None}
    assert metrics["training"]["init_from"] == source and metrics["method"] == "faal"


def test_a_chain_of_runs_adds_up_its_budget(sources, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert cli(run_args(sources["data"], out, "a", "--init-from", str(sources["plain"])), capsys)[0] == 0
    assert cli(run_args(sources["data"], out, "b", "--init-from", str(out / "runs" / "a")), capsys)[0] == 0
    record = json.loads((out / "runs" / "b" / "metrics.json").read_text())["init_from"]
    assert record["run_id"] == "a" and record["budget_epochs"] == 4
    assert record["config"]["init_source"] == "plain"  # the chain is named, not nested


def test_committed_files_name_a_source_in_the_same_results_folder_relative_to_it(
    sources, tmp_path: Path, capsys
) -> None:
    """A fine-tuning run made with its source's --out records ``runs/<id>``, not a machine path, and a
    moved results folder still resumes from it; a source elsewhere keeps its absolute path."""
    out = tmp_path / "out"
    assert cli(run_args(sources["data"], out, "a", "--init-from", str(sources["plain"])), capsys)[0] == 0
    outside = json.loads((out / "runs" / "a" / "config.json").read_text())
    assert outside["init_from"] == str(sources["plain"].resolve())
    assert (
        cli(
            run_args(sources["data"], out, "b", "--init-from", str(out / "runs" / "a"), "--stop-after-epoch", "1"),
            capsys,
        )[0]
        == 0
    )
    config = json.loads((out / "runs" / "b" / "config.json").read_text())
    assert config["init_from"] == "runs/a" and config["init_source"]["run_dir"] == "runs/a"
    assert str(tmp_path) not in (out / "runs" / "b" / "config.json").read_text()
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    (moved / "runs" / "b" / "checkpoint.pt").unlink()  # stopped before its first checkpoint: needs the source
    code, err = cli(["resume", str(moved / "runs" / "b"), "--no-progress"], capsys)
    assert code == 0, err
    metrics = json.loads((moved / "runs" / "b" / "metrics.json").read_text())
    assert metrics["init_from"]["run_dir"] == "runs/a" and metrics["init_from"]["run_id"] == "a"
    assert str(tmp_path) not in (moved / "runs" / "b" / "metrics.json").read_text()


def test_resume_keeps_the_record_even_without_the_source(sources, tmp_path: Path, capsys) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    source = tmp_path / "source"
    shutil.copytree(sources["plain"], source)
    assert cli(run_args(sources["data"], whole, "r", "--init-from", str(source)), capsys)[0] == 0
    args = run_args(sources["data"], parts, "r", "--init-from", str(source))
    assert cli(args + ["--stop-after-epoch", "1"], capsys)[0] == 0
    shutil.rmtree(source)  # a resume has the weights and the record in its checkpoint
    code, err = cli(["resume", str(parts / "runs" / "r"), "--no-progress"], capsys)
    assert code == 0, err
    a, b = (load_checkpoint(d / "runs" / "r" / "checkpoint.pt") for d in (whole, parts))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ma, mb = (json.loads((d / "runs" / "r" / "metrics.json").read_text()) for d in (whole, parts))
    assert ma["metrics"] == mb["metrics"] and ma["init_from"] == mb["init_from"] is not None


def edited_copy(source: Path, tmp_path: Path, **changes) -> Path:
    copy = tmp_path / "edited" / source.name
    shutil.copytree(source, copy)
    config = json.loads((copy / "config.json").read_text()) | changes
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda s, t: t / "nowhere", "no such folder"),
        (lambda s, t: (t / "empty").mkdir() or t / "empty", "is not a run folder (no config.json)"),
        (
            lambda s, t: edited_copy(s["plain"], t, arch="preact18"),
            "was trained with another arch 'preact18' (this run: 'small-cnn')",
        ),
        (
            lambda s, t: edited_copy(s["plain"], t, dataset="cifar10"),
            "was trained with another dataset 'cifar10' (this run: 'fashion-mnist')",
        ),
        (lambda s, t: s["unfinished"], "is not a finished run: its checkpoint is after epoch 1 of 2"),
    ],
)
def test_an_unusable_source_is_one_error_line_and_nothing_is_written(
    sources, make, message: str, tmp_path: Path, capsys
) -> None:
    source = make(sources, tmp_path)
    code, err = cli(run_args(sources["data"], tmp_path / "out", "r", "--init-from", str(source)), capsys)
    assert code == 2 and err.startswith("error: --init-from ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "out").exists()


def test_a_source_without_its_checkpoint_says_committed_runs_have_none(sources, tmp_path: Path, capsys) -> None:
    committed = tmp_path / "runs" / "plain"  # as in results/runs/: config, log and metrics only
    committed.mkdir(parents=True)
    for name in ("config.json", "log.jsonl", "metrics.json"):
        shutil.copy(sources["plain"] / name, committed / name)
    code, err = cli(run_args(sources["data"], tmp_path / "out", "r", "--init-from", str(committed)), capsys)
    assert code == 2 and "no checkpoint.pt" in err and "committed results do not carry" in err


class CodeRunner:
    """A pickle payload: unpickling it calls open(marker, 'w'), i.e. runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_would_run_code_is_refused(sources, tmp_path: Path, capsys) -> None:
    evil, marker = tmp_path / "evil", tmp_path / "pwned"
    shutil.copytree(sources["plain"], evil)
    torch.save({"model": CodeRunner(marker)}, evil / "checkpoint.pt")
    code, err = cli(run_args(sources["data"], tmp_path / "out", "r", "--init-from", str(evil)), capsys)
    assert code == 2 and "weights_only" in err and err.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "out").exists()
