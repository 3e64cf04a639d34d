"""Threats are registered objects: the evaluator, the results schema and the report take every
threat name from the registry, so a new threat is one registration."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from fairbench.cli import parse_run_args
from fairbench.config import RunConfig
from fairbench.data.datasets import Split
from fairbench.errors import FairbenchError
from fairbench.eval.evaluator import attack_settings, evaluate_outcomes, stages, subset_indices
from fairbench.eval.threats import (
    THREATS,
    Threat,
    clean_correct,
    get_threat,
    in_batches,
    register_threat,
    threat_label,
    threat_names,
)
from fairbench.report.command import build_leaderboard, write_report
from fairbench.schema import build_record, make_outcomes, outcomes_bytes, write_run
from fairbench.specs.threats import (
    parse_subsets,
    subset_key,
    subset_keys,
    subsets_from_keys,
    threat_spec,
    used_subsets,
)
from fairbench.sweep.plan import PlannedRun, eval_settings
from torch import nn

from cli_helpers import cli_out
from sweep_helpers import tiny_args


def test_builtin_threats_in_column_order() -> None:
    assert threat_names() == ["clean", "pgd20", "autoattack"]
    assert [threat_label(t) for t in threat_names() + ["union"]] == ["clean", "PGD-20", "AutoAttack", "union"]
    for name in threat_names():
        assert get_threat(name).name == name  # the class says the name it is registered under
    assert not get_threat("clean").attack and get_threat("pgd20").attack
    assert attack_settings(0.1, ["pgd20"], seed=3)["pgd20"]["steps"] == 20


@pytest.fixture
def l2_threat() -> Iterator[type]:
    """A toy L2 threat, registered for one test and removed after it."""

    @register_threat("l2noise")
    class L2Noise(Threat):
        """Gaussian noise of L2 norm eps (a stand-in for an L2 PGD)."""

        name, label, order = "l2noise", "L2 noise", 15

        def settings(self, eps: float, seed: int) -> dict[str, Any]:
            return {"norm": "L2", "eps": eps, "seed": seed}

        def decider(self, model: nn.Module, *, eps: float, batch_size: int, progress) -> Any:
            def correct(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                noise = torch.randn_like(x)
                noise = noise * eps / noise.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                return clean_correct(model, (x + noise).clamp(0, 1), y)

            return lambda x, y, seed: in_batches(correct, batch_size)(x, y)

    yield L2Noise
    del THREATS._entries["l2noise"]


def test_a_new_threat_is_one_registration(l2_threat: type, tmp_path: Path) -> None:
    """Registered, the toy threat is evaluated, written to outcomes and metrics.json, validated on
    reading, and shown in the leaderboard under its label; nothing else was edited."""
    assert threat_names() == ["clean", "pgd20", "l2noise", "autoattack"]
    assert stages(["l2noise"]) == ["clean", "l2noise"]
    torch.manual_seed(0)
    labels = torch.arange(10).repeat_interleave(3)
    split = Split(torch.randint(0, 255, (30, 1, 28, 28), dtype=torch.uint8), labels)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    out, _ = evaluate_outcomes(model, split, eps=0.5, attacks=["l2noise"], progress=lambda m: None)
    assert set(out) == {"clean", "l2noise", "union"}
    rows = make_outcomes(torch.arange(30), labels, {t: o.cpu() for t, o in out.items()})
    header = gzip.decompress(outcomes_bytes(rows)).decode().splitlines()[0]
    assert header == "index,label,clean,pgd20,l2noise,autoattack,union"
    record = build_record(
        run_id="r",
        method="pgd-at",
        params={},
        arch="toy",
        dataset="fashion-mnist",
        seed=0,
        epochs=1,
        eps=0.5,
        training={},
        outcomes=rows,
        attack_settings=attack_settings(0.5, ["l2noise"]),
    )
    run_dir = tmp_path / "results" / "runs" / "r"
    run_dir.mkdir(parents=True)
    write_run(run_dir, record, rows)
    board = build_leaderboard(tmp_path / "results")
    assert not board.skipped and board.groups[0].threats == ("clean", "l2noise", "union")
    _, markdown, _ = write_report(tmp_path / "results", board)
    assert "L2 noise avg" in markdown


# ------------------------------------------------------------------ threats as data (issue 26 item 4)


def one_error(err: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


def test_threat_metadata_loads_without_torch() -> None:
    """A threat's name, label, order, settings and subset key are torch-free: the schema and the
    report read them without importing torch (or pyautoattack)."""
    code = (
        "import sys; from fairbench.specs.threats import threat_names, threat_spec, subset_key; "
        "print([(t, threat_spec(t).label, subset_key(t)) for t in threat_names()]); "
        "threat_spec('autoattack').settings(0.1, 0); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pyautoattack')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, loaded = out.splitlines()
    assert names == (
        "[('clean', 'clean', 'clean_per_class'), ('pgd20', 'PGD-20', 'pgd20_per_class'), "
        "('autoattack', 'AutoAttack', 'aa_per_class')]"
    )
    assert loaded == "[]"


def test_every_threat_runs_with_the_metadata_it_registered() -> None:
    """The torch half (`get_threat`) has the registered metadata and settings of each threat."""
    for name in threat_names():
        spec, runnable = threat_spec(name), get_threat(name)
        assert isinstance(runnable, Threat) and isinstance(runnable, type(spec))
        assert (runnable.label, runnable.order, runnable.attack) == (spec.label, spec.order, spec.attack)
        assert runnable.settings(0.1, 3) == spec.settings(0.1, 3)
    assert threat_spec("autoattack").settings(0.1, 0)["library"].startswith("pyautoattack ")


@pytest.mark.parametrize(
    "args",
    [
        ["--subset", "autoattack=5"],
        ["--aa-per-class", "5"],
        ["--preset", "fmnist-standard", "--aa-per-class", "5"],
        ["--preset", "fmnist-standard", "--subset", "autoattack=5"],
    ],
)
def test_subset_option_and_its_alias_give_the_same_config(args: list[str]) -> None:
    """--aa-per-class K is --subset autoattack=K in `run` (and so in sweeps and tune, which parse
    with run's parser); given on the command line, either replaces the preset's subset."""
    cfg, _ = parse_run_args(args)
    assert cfg.subsets == {"autoattack": 5}
    assert parse_run_args(["--preset", "fmnist-standard"])[0].subsets == {"autoattack": 50}
    assert parse_run_args([])[0].subsets == {}
    assert parse_run_args(["--subset", "pgd20=3", "--aa-per-class", "4"])[0].subsets == {"pgd20": 3, "autoattack": 4}


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--subset", "autoattack"], "--subset must be THREAT=K"),
        (["--subset", "autoattack=x"], "--subset must be THREAT=K"),
        (["--subset", "autoatack=5"], "unknown threat 'autoatack' (did you mean 'autoattack'?)"),
        (["--subset", "autoattack=5", "--subset", "autoattack=6"], "--subset autoattack is given twice"),
        (["--subset", "autoattack=5", "--aa-per-class", "6"], "--aa-per-class is --subset autoattack=K: give one"),
        (["--subset", "autoattack=0"], "--subset autoattack=0: K must be >= 1"),
        (["--aa-per-class", "0"], "--subset autoattack=0: K must be >= 1"),
        (["--subset", "clean=5"], "--subset clean=5: clean runs on every evaluated image"),
        (["--eval-per-class", "4", "--subset", "autoattack=5"], "--subset autoattack=5 is more than the 4 evaluated"),
    ],
)
def test_a_bad_subset_is_one_error_line(args: list[str], fragment: str, tmp_path: Path, capsys) -> None:
    code, _, err = cli_out(
        [
            "run",
            "--method",
            "pgd-at",
            "--arch",
            "small-cnn",
            "--dataset",
            "fashion-mnist",
            "--device",
            "cpu",
            "--no-download",
            "--data-dir",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "out"),
            *args,
        ],
        capsys,
    )
    assert code == 2
    one_error(err, fragment)


def test_a_subset_of_a_threat_not_run_is_unused() -> None:
    cfg = RunConfig(
        method="pgd-at",
        arch="small-cnn",
        dataset="fashion-mnist",
        eval_per_class=5,
        subsets={"autoattack": 50},
        attacks=("clean", "pgd20"),
    )
    cfg.validate()
    assert used_subsets(cfg.subsets, cfg.attacks) == {}
    assert eval_settings(cfg) == {"attacks": ["clean", "pgd20"], "eval_per_class": 5, "aa_per_class": None}


def test_sweeps_pass_the_subset_and_its_alias_on(fmnist_dir: Path, tmp_path: Path) -> None:
    """A sweep plans each run with run's parser: the alias and --subset give the same evaluation
    settings, recorded under the threat's subset key as plans recorded them before --subset."""
    from fairbench.cli import run_options
    from fairbench.sweep.grid import GridSpec, expand

    base = tiny_args(fmnist_dir, tmp_path / "out", attacks="clean,autoattack")
    for extra in (["--aa-per-class", "2"], ["--subset", "autoattack=2"]):
        runs = expand(GridSpec(methods=["pgd-at"], run_args=[*base, *extra]), parse_run_args, run_options())
        assert runs[0].evaluation == {"attacks": ["autoattack", "clean"], "eval_per_class": 2, "aa_per_class": 2}
        assert PlannedRun.from_dict(runs[0].to_dict()).evaluation == runs[0].evaluation


@pytest.mark.parametrize("extra", [["--aa-per-class", "2"], ["--subset", "autoattack=2"]])
def test_tune_takes_the_subset_and_its_alias(extra: list[str], fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    code, _, err = cli_out(
        [
            "tune",
            "--methods",
            "pgd-at",
            "--trials",
            "1",
            "--dry-run",
            *tiny_args(fmnist_dir, tmp_path / "tuning"),
            "--val-per-class",
            "3",
            *extra,
        ],
        capsys,
    )
    assert code == 0, err
    code, _, err = cli_out(
        [
            "tune",
            "--methods",
            "pgd-at",
            "--trials",
            "1",
            "--dry-run",
            *tiny_args(fmnist_dir, tmp_path / "tuning"),
            "--val-per-class",
            "3",
            "--subset",
            "autoattack=2",
            "--aa-per-class",
            "2",
        ],
        capsys,
    )
    assert code == 2
    one_error(err, "--aa-per-class is --subset autoattack=K: give one of them")


def test_older_config_and_metrics_files_read_into_subsets(tmp_path: Path) -> None:
    """A config.json or metrics.json written before --subset keeps AutoAttack's subset as
    ``aa_per_class``: read into ``subsets``; a new run records it under that key still, so older
    fairbench versions read new files as before."""
    old = RunConfig(method="pgd-at", arch="small-cnn", dataset="fashion-mnist").portable_dict()
    del old["subsets"]
    assert RunConfig.from_dict(old | {"aa_per_class": 50}).subsets == {"autoattack": 50}
    assert RunConfig.from_dict(old | {"aa_per_class": None}).subsets == {}
    with pytest.raises(FairbenchError, match="unknown fields: bb_per_class"):
        RunConfig.from_dict(old | {"bb_per_class": 5})
    assert subset_keys({"autoattack": 50}) == {"aa_per_class": 50}
    assert subsets_from_keys({"aa_per_class": 50, "eval_per_class": 100}) == {"autoattack": 50}
    assert subsets_from_keys({"aa_per_class": None}) == {}


def test_a_new_threat_takes_a_subset_under_its_own_key(l2_threat: type, tmp_path: Path) -> None:
    """The toy threat runs on a subset with --subset l2noise=K like any other: recorded as
    ``l2noise_per_class``, shown in the group's label, with no name special-cased anywhere."""
    assert parse_subsets(["l2noise=2"]) == {"l2noise": 2} and subset_key("l2noise") == "l2noise_per_class"
    torch.manual_seed(0)
    labels = torch.arange(10).repeat_interleave(3)
    split = Split(torch.randint(0, 255, (30, 1, 28, 28), dtype=torch.uint8), labels)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    subsets = subset_indices(labels, {"l2noise": 2}, 10)
    out, _ = evaluate_outcomes(model, split, eps=0.5, attacks=["l2noise"], progress=lambda m: None, subsets=subsets)
    assert int((out["l2noise"] >= 0).sum()) == 20 and int((out["clean"] >= 0).sum()) == 30
    rows = make_outcomes(torch.arange(30), labels, {t: o.cpu() for t, o in out.items()})
    record = build_record(
        run_id="r",
        method="pgd-at",
        params={},
        arch="toy",
        dataset="fashion-mnist",
        seed=0,
        epochs=1,
        eps=0.5,
        training=subset_keys({"l2noise": 2}),
        outcomes=rows,
        attack_settings=attack_settings(0.5, ["l2noise"], 0, {"l2noise": 2}),
    )
    run_dir = tmp_path / "results" / "runs" / "r"
    run_dir.mkdir(parents=True)
    write_run(run_dir, record, rows)
    key = build_leaderboard(tmp_path / "results").groups[0].key
    assert key.subsets == (("l2noise", 2),) and "(L2 noise: 2/class)" in key.label()
    assert key.slug().endswith("_l2noise2")
