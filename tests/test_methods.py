"""Every registered method: listed with its parameters, learns, and runs end to end via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fairbench.cli import main
from fairbench.methods import METHODS
from fairbench.methods.base import BatchContext, EpochContext

from cli_helpers import run_ok
from methods_helpers import bars, batch_ctx, build

NEW_METHODS = ("trades", "frl-rw", "frl-rm", "frl-rwrm", "fairat")
VAL = {"val_per_class": 5}  # FRL holds out a validation split


run_cli = run_ok


def test_list_shows_every_method_with_params_and_defaults(capsys: pytest.CaptureFixture) -> None:
    import json

    run_cli(["list", "--json"])
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)["methods"]}
    assert set(NEW_METHODS) <= set(METHODS.names()) == set(listed)
    for name in METHODS.names():
        assert listed[name]["params"].keys() == METHODS.entry(name).params.keys(), name
    assert listed["trades"]["params"]["beta"] == 6.0 and listed["fairat"]["params"]["fraction"] == 0.2
    run_cli(["list"])  # the text: each method's block (its summary, wrapped, then its parameters)
    lines = capsys.readouterr().out.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("  ") and not line.startswith("   ")]
    blocks = {lines[i].split()[0]: " ".join(lines[i:j]) for i, j in zip(starts, starts[1:] + [len(lines)])}
    for name in METHODS.names():
        assert all(f"{param}=" in blocks[name] for param in METHODS.entry(name).params), name
    assert "beta=6" in blocks["trades"] and "fraction=0.2" in blocks["fairat"]


@pytest.mark.parametrize("context", [BatchContext, EpochContext])
def test_contexts_are_built_with_keywords_only(context: type) -> None:
    """A field added to a context cannot shift the others: positional construction is refused."""
    with pytest.raises(TypeError, match="positional"):
        context(*range(len(context.__dataclass_fields__)))


@pytest.mark.parametrize("name", METHODS.names())
def test_loss_decreases_on_separable_data(name: str) -> None:
    torch.manual_seed(0)
    fine_tunes = {"init_from": "a-run"} if METHODS.get(name).requires_init else {}
    method = build(name, **VAL, **fine_tunes)
    data = bars(4)
    x, y = data.images.float() / 255, data.labels
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(25):
        loss = method.loss(batch_ctx(model, x, y, eps=0.1, steps=3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # BAT's uniform-prediction terms pull against its CE: its loss cannot fall below about log K / 2
    assert sum(losses[-5:]) < (0.8 if name == "bat" else 0.5) * sum(losses[:5]), losses


E2E = [
    ("trades", []),
    ("frl-rw", ["--val-per-class", "5"]),
    ("frl-rm", ["--val-per-class", "5"]),
    ("frl-rwrm", ["--val-per-class", "5"]),
    ("fairat", []),
    ("fairat", ["--param", "base=trades", "--param", "keep_original=true"]),
]


@pytest.mark.parametrize("name, extra", E2E)
def test_fairbench_run_end_to_end(name: str, extra: list[str], fmnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    run_cli(
        [
            "run",
            "--method",
            name,
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
            "3",
            "--data-dir",
            str(fmnist_dir),
            "--out",
            str(out),
            "--run-id",
            "r",
            "--no-progress",
            "--device",
            "cpu",
            *extra,
        ]
    )
    run_dir = out / "runs" / "r"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == name and set(metrics["params"]) == set(METHODS.entry(name).params)
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    if name == "fairat":
        n_train = 300
        assert "n_hard" not in log[0] and log[1]["n_hard"] == round(0.2 * n_train)
        assert sum(log[1]["hard_per_class"].values()) == log[1]["n_hard"]
        keep = "keep_original=true" in extra
        assert log[1]["examples"] == n_train + (log[1]["n_hard"] if keep else 0)
    if name.startswith("frl"):
        assert "frl_weight_nat" not in log[0]  # the first half of the run is the warm-up
        assert abs(sum(log[1]["frl_weight_nat"].values()) - 1) < 1e-3
        assert ("frl_eps_multiplier" in log[1]) == (name != "frl-rw")


def test_frl_without_validation_split_is_one_clear_line(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "run",
                "--method",
                "frl-rw",
                "--arch",
                "small-cnn",
                "--dataset",
                "fashion-mnist",
                "--epochs",
                "1",
                "--data-dir",
                str(fmnist_dir),
                "--out",
                str(tmp_path),
                "--device",
                "cpu",
            ]
        )
    assert exc.value.code == 2
    assert "--val-per-class" in capsys.readouterr().err
