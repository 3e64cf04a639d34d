"""A method's ``Params.unused()`` names only parameters its configuration really leaves unused: the
report's row labels omit them (`fairbench.methods.label_params`), so a wrong name would hide a
setting that changed the run. Checked by training: changing every parameter named unused leaves the
trained weights equal to the last bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fairbench import load_model
from fairbench.methods import METHODS, label_params

from cli_helpers import run_ok

# (method, the configuration, the values its unused parameters are changed to, a used parameter's
# change that does move the weights (so the comparison can fail), extra run options)
CASES = [
    ("fairat", {}, {"beta": 2.0, "threshold": 0.1}, {"fraction": 0.45}, []),
    (
        "fairat",
        {"base": "trades", "selection": "threshold", "threshold": 0.5},
        {"fraction": 0.45},
        {"beta": 2.0},
        [],
    ),
    (
        "cfa",
        {"base": "pgd-at", "ccm": False, "ccr": False, "fawa": False},
        {"beta": 2.0, "lambda1": 0.6, "lambda2": 0.7, "begin_fraction": 0.4, "alpha": 0.6, "delta": 0.3},
        {"ccm": True},
        [],
    ),
    ("cfa", {"fawa": False, "ccr": False}, {"lambda2": 0.7, "alpha": 0.6, "delta": 0.3}, {"beta": 2.0}, []),
    ("dafa", {"base": "pgd-at", "warmup_fraction": 0.5}, {"beta": 2.0}, {"lam": 2.0}, []),
    ("faal", {"base": "pgd-at"}, {"beta": 2.0}, {"r": 0.1}, ["--epochs", "1"]),
]


def train(method: str, params: dict, extra: list[str], fmnist_dir: Path, out: Path, run_id: str) -> Path:
    options = [opt for k, v in params.items() for opt in ("--param", f"{k}={str(v).lower()}")]
    run_ok(
        ["run", "--method", method, "--arch", "small-cnn", "--dataset", "fashion-mnist", "--epochs", "2"]
        + ["--batch-size", "50", "--attack-steps", "2", "--eval-per-class", "1", "--attacks", "clean"]
        + ["--data-dir", str(fmnist_dir), "--out", str(out), "--run-id", run_id, "--no-progress", "--device", "cpu"]
        + options
        + extra
    )
    return out / "runs" / run_id


@pytest.mark.parametrize("method, config, changed, used, extra", CASES)
def test_parameters_named_unused_do_not_change_training(
    method: str, config: dict, changed: dict, used: dict, extra: list[str], fmnist_dir: Path, tmp_path: Path
) -> None:
    params = METHODS.entry(method).obj.Params(**(METHODS.entry(method).params | config))
    assert params.unused() == set(changed), "the case must change every unused parameter, and only those"
    if METHODS.get(method).requires_init:  # fine-tunes a finished run
        source = train("pgd-at", {}, [], fmnist_dir, tmp_path / "source", "src")
        extra = extra + ["--init-from", str(source)]
    a = train(method, config, extra, fmnist_dir, tmp_path / "results", "a")
    b = train(method, config | changed, extra, fmnist_dir, tmp_path / "results", "b")
    wa, wb = load_model(a).state_dict(), load_model(b).state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(method, config | used, extra, fmnist_dir, tmp_path / "results", "c")  # the comparison can fail
    wc = load_model(c).state_dict()
    assert not all(torch.equal(wa[k], wc[k]) for k in wa), used


def test_labels_name_what_differs_and_is_used() -> None:
    tuned = METHODS.entry("fairat").params | {
        "augment": "randaugment",
        "beta": 1.4171,
        "copies": 2,
        "fraction": 0.239955,
        "keep_original": True,
        "threshold": 0.415419,
    }
    assert label_params("fairat", tuned) == ["augment", "copies", "fraction", "keep_original"]
    assert label_params("fairat", tuned | {"base": "trades"}) == [
        "augment",
        "base",
        "beta",
        "copies",
        "fraction",
        "keep_original",
    ]
    assert label_params("trades", {"beta": 6.0}) == [] and label_params("trades", {"beta": 3.0}) == ["beta"]
    assert label_params("no-such-method", {"beta": 3.0}) is None  # the report shows what varies
    # a parameter this version does not know is shown, as is every difference then
    assert label_params("dafa", {"base": "pgd-at", "beta": 3.0, "gone": 1}) == ["base", "beta", "gone"]
