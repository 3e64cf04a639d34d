"""One vocabulary across the CLI: option names shared by run and eval, --eps 8/255, --version,
`fairbench list` (whole summaries, rounded numbers, presets, --json), "did you mean", and
`fairbench eval --model package.module:factory`."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import fairbench
import fairbench.data.datasets as data
import pytest
import torch
from fairbench.cli import parse_run_args
from fairbench.config import PRESETS
from fairbench.data.datasets import get_dataset
from fairbench.methods import METHODS
from fairbench.models import MODELS, create_model
from fairbench.runs.folder import sha256_file
from fairbench.schema import read_metrics

from cli_helpers import cli_out

TOY_MODULE = "fairbench_toy_factory"


def one_error(err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- --version, list


def test_version_is_the_package_version(capsys) -> None:
    code, out, _ = cli_out(["--version"], capsys)
    assert code == 0 and out == f"fairbench {fairbench.__version__}\n"
    root = Path(__file__).parents[1]
    assert f'version = "{fairbench.__version__}"' in (root / "pyproject.toml").read_text()
    assert f'version: "{fairbench.__version__}"' in (root / "CITATION.cff").read_text()
    assert 'license = "MIT"' in (root / "pyproject.toml").read_text()
    assert (root / "LICENSE").read_text().startswith("MIT License")


def test_list_json_parses_with_whole_summaries_and_preset_descriptions(capsys) -> None:
    code, out, _ = cli_out(["list", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"methods", "architectures", "datasets", "threats", "presets"}
    methods = {m["name"]: m for m in doc["methods"]}
    assert set(methods) == set(METHODS.names())
    assert {m["name"] for m in doc["architectures"]} == set(MODELS.names())
    for entry in doc["methods"] + doc["architectures"] + doc["datasets"] + doc["threats"]:
        assert entry["summary"].endswith((".", ")")), f"{entry['name']}: {entry['summary']!r} is cut"
    assert methods["dafa"]["params"]["warmup_fraction"] == pytest.approx(70 / 110)  # exact in JSON
    assert [p["name"] for p in doc["presets"]] == list(PRESETS)
    for preset in doc["presets"]:
        assert preset["description"], f"preset {preset['name']} has no description"
        assert preset["settings"] == json.loads(json.dumps(PRESETS[preset["name"]]))


def test_list_rounds_numbers_and_describes_presets(capsys) -> None:
    code, out, _ = cli_out(["list"], capsys)
    assert code == 0
    assert "warmup_fraction=0.6364" in out and "0.636363" not in out
    # a default (not a string such as a schedule) printed with more than 4 significant digits
    assert not re.search(r"=\[?-?\d+\.\d{5,}", out), re.search(r"=\[?-?\d+\.\d{5,}", out)
    presets = out[out.index("presets") :]
    for name in PRESETS:
        assert re.search(rf"^  {re.escape(name)} +\S", presets, re.M), f"preset {name} has no description line"


# ---------------------------------------------------------------- did you mean


@pytest.mark.parametrize(
    "args, hint",
    [
        (["run", "--method", "pgdat"], "did you mean 'pgd-at'?"),
        (["run", "--method", "trade"], "did you mean 'trades'?"),
        (["run", "--arch", "smallcnn", "--dataset", "fashion-mnist"], "did you mean 'small-cnn'?"),
        (["run", "--dataset", "fashion_mnist"], "did you mean 'fashion-mnist'?"),
        (["run", "--preset", "fmnist-standrad"], "did you mean 'fmnist-standard'?"),
        (
            ["run", "--attacks", "clean,pgd21", "--arch", "small-cnn", "--dataset", "fashion-mnist"],
            "did you mean 'pgd20'?",
        ),
        (
            ["eval", "--checkpoint", "x.pt", "--arch", "small-cnn", "--attacks", "clean,autoatack"],
            "did you mean 'autoattack'?",
        ),
        (["eval", "--checkpoint", "x.pt", "--arch", "preact-18"], "did you mean 'preact18'?"),
    ],
)
def test_unknown_names_suggest_the_closest(args: list[str], hint: str, tmp_path: Path, capsys) -> None:
    code, _, err = cli_out([*args, "--out", str(tmp_path)], capsys)
    assert code == 2
    one_error(err, hint, "valid")


# ---------------------------------------------------------------- --eps as a fraction


def test_eps_and_step_size_take_fractions_and_keep_the_exact_float() -> None:
    cfg, given = parse_run_args(["--eps", "8/255", "--step-size", "2/255", "--dataset", "cifar10"])
    assert cfg.eps == 8 / 255 and cfg.step_size == 2 / 255 and given["eps"]
    assert parse_run_args(["--eps", "0.1"])[0].eps == 0.1


@pytest.mark.parametrize("value", ["8/0", "8/", "eight", "1/inf/2", "nan"])
def test_a_bad_eps_is_one_error_line(value: str, tmp_path: Path, capsys) -> None:
    code, _, err = cli_out(["run", "--eps", value, "--out", str(tmp_path)], capsys)
    assert code == 2
    one_error(err, "--eps")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- eval: run's names, --model


def write_factory(site: Path) -> None:
    (site / f"{TOY_MODULE}.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn


        def build(num_classes, in_channels):
            torch.manual_seed(0)
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, num_classes))


        def no_args():
            torch.manual_seed(1)
            return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


        def not_a_model():
            return "weights"


        def broken():
            raise RuntimeError("out of coffee")
    """)
    )


@pytest.fixture
def factory_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    write_factory(site)
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop(TOY_MODULE, None)


def eval_args(fmnist_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--dataset",
        "fashion-mnist",
        "--attacks",
        "clean,pgd20",
        "--eval-per-class",
        "2",
        "--eval-batch-size",
        "7",
        "--device",
        "cpu",
        "--no-download",
        "--data-dir",
        str(fmnist_dir),
        "--out",
        str(out),
        *extra,
    ]


def test_eval_model_factory_with_eps_fraction(factory_site: Path, fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    code, out, err = cli_out(
        eval_args(fmnist_dir, tmp_path / "r", "--model", f"{TOY_MODULE}:build", "--eps", "8/255"), capsys
    )
    assert code == 0, err
    [path] = (tmp_path / "r" / "runs").glob("*/metrics.json")
    record = read_metrics(path)
    assert record.arch == f"{TOY_MODULE}:build" and record.params["source"] == "factory"
    assert record.threat.eps == 8 / 255 and record.attack_settings["pgd20"]["eps"] == 8 / 255
    assert record.metrics["clean"].n_per_class == (2,) * 10 and record.evaluation["batch_size"] == 7
    assert path.parent.name.startswith(f"external_{TOY_MODULE}-build_fashion-mnist_")
    assert "error (%)" in out  # the console table's unit, stated once

    # the same factory with a checkpoint: those weights are evaluated, and named by their file
    torch.manual_seed(5)
    weights = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).state_dict()
    torch.save({"state_dict": weights}, tmp_path / "w.pt")
    code, _, err = cli_out(
        eval_args(
            fmnist_dir,
            tmp_path / "r",
            "--model",
            f"{TOY_MODULE}:no_args",
            "--checkpoint",
            str(tmp_path / "w.pt"),
            "--run-id",
            "ck",
        ),
        capsys,
    )
    assert code == 0, err
    record = read_metrics(tmp_path / "r" / "runs" / "ck" / "metrics.json")
    assert record.checkpoint == {"file": "w.pt", "sha256": sha256_file(tmp_path / "w.pt")}


@pytest.mark.parametrize(
    "target, message",
    [
        ("no-colon", "--model must be package.module:factory"),
        ("fairbench_no_such_module:build", "cannot import fairbench_no_such_module"),
        (f"{TOY_MODULE}:missing", f"{TOY_MODULE} has no missing"),
        (f"{TOY_MODULE}:not_a_model", "returned a str, not a torch.nn.Module"),
        (f"{TOY_MODULE}:broken", "the factory failed: RuntimeError: out of coffee"),
    ],
)
def test_eval_model_errors_are_one_line(
    target: str, message: str, factory_site: Path, fmnist_dir: Path, tmp_path: Path, capsys
) -> None:
    code, _, err = cli_out(eval_args(fmnist_dir, tmp_path / "r", "--model", target), capsys)
    assert code == 2
    one_error(err, message)
    assert not (tmp_path / "r").exists()


def test_eval_old_option_names_are_hidden_aliases(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    _, help_text, _ = cli_out(["eval", "--help"], capsys)
    assert "--eval-per-class" in help_text and "--subset" in help_text and "--no-download" in help_text
    assert "--aa-per-class" not in help_text  # --subset autoattack=K's old form, hidden
    assert "--n-per-class" not in help_text and "--batch-size " not in help_text.replace("--eval-batch-size", "")
    code, _, err = cli_out(
        [
            "eval",
            "--checkpoint",
            "x.pt",
            "--arch",
            "small-cnn",
            "--eval-per-class",
            "2",
            "--n-per-class",
            "3",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 2
    one_error(err, "--n-per-class is the old name of --eval-per-class")


def test_eval_refuses_a_bad_device_in_one_line(tmp_path: Path, capsys) -> None:
    code, _, err = cli_out(
        ["eval", "--checkpoint", "x.pt", "--arch", "small-cnn", "--device", "gpu", "--out", str(tmp_path)], capsys
    )
    assert code == 2
    one_error(err, "--device must be auto, cpu or cuda[:N], got 'gpu'")


@pytest.mark.parametrize("given", [["--subset", "autoattack=3"], ["--aa-per-class", "3"]])
def test_eval_checks_a_subset_against_eval_per_class(given: list[str], tmp_path: Path, capsys) -> None:
    """--aa-per-class K is --subset autoattack=K (its alias): the same check, the same message."""
    code, _, err = cli_out(
        [
            "eval",
            "--checkpoint",
            "x.pt",
            "--arch",
            "small-cnn",
            "--eval-per-class",
            "2",
            *given,
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 2
    one_error(err, "--subset autoattack=3 is more than the 2 evaluated images per class")


def test_eval_no_download_names_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    missing = tmp_path / "no-debian-here"
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", missing)
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", lambda *a, **k: pytest.fail("tried to download"))
    torch.save(create_model("small-cnn", get_dataset("fashion-mnist")).state_dict(), tmp_path / "m.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli_out(
        [
            "eval",
            "--checkpoint",
            str(tmp_path / "m.pt"),
            "--arch",
            "small-cnn",
            "--dataset",
            "fashion-mnist",
            "--no-download",
            "--data-dir",
            str(empty),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r"),
        ],
        capsys,
    )
    assert code == 2
    assert "download failed" not in one_error(err, "fashion-mnist not found", str(empty), "network access")
