"""`fairbench tune`: search spaces, seeded draws, trials scored on validation only, selection."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from fairbench.config import RunConfig
from fairbench.errors import FairbenchError
from fairbench.methods import METHODS
from fairbench.methods.space import Choice, LogUniform, Uniform, check_space, method_space
from fairbench.schema import METRICS_FILE, OUTCOMES_FILE
from fairbench.schema.validation import SCORE_KEYS, VALIDATION_FILE, criterion, is_diverged, read_validation
from fairbench.tune import study as tune

from cli_helpers import cli_out, exit_code


def tiny(data: Path, out: Path, epochs: int = 1) -> list[str]:
    """Run options of a trial that takes a second or two (a validation split of 3 per class)."""
    return [
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        str(epochs),
        "--batch-size",
        "25",
        "--train-per-class",
        "5",
        "--val-per-class",
        "3",
        "--attack-steps",
        "1",
        "--device",
        "cpu",
        "--data-dir",
        str(data),
        "--no-download",
        "--out",
        str(out),
    ]


def draws(printed: str) -> list[str]:
    return [line for line in printed.splitlines() if "_trial" in line and "=" in line]


# ------------------------------------------------------------------------------- spaces


@pytest.mark.parametrize("name", [e.name for e in METHODS.entries()])
def test_every_method_has_a_valid_space_holding_its_defaults(name: str) -> None:
    cls = METHODS.get(name)
    space = method_space(cls)
    assert space is not None and {"lr", "weight_decay"} <= set(space)
    protocol = {"lr": 0.005 if name == "faal" else 0.05, "weight_decay": 0.0, "epochs": 2}
    check_space(name, space, cls.Params(), protocol)  # raises if a default lies outside


def test_fairat_space_covers_every_assumption_of_the_reconstruction() -> None:
    space = method_space(METHODS.get("fairat"))
    assert {"keep_original", "copies", "fraction", "threshold", "selection", "augment", "score", "base"} <= set(space)
    assert {"none", "affine"} <= set(space["augment"].values)
    assert set(space["score"].values) == {"clean", "adversarial"}


@pytest.mark.parametrize(
    "dist, fragment",
    [
        (LogUniform(0.0, 1.0), "0 < low < high"),
        (LogUniform(0.5, 0.1), "0 < low < high"),
        (Uniform(1.0, 1.0), "low < high"),
        (Uniform(0.0, float("nan")), "low < high"),
        (Choice(1), "at least 2"),
        (Choice(1, 1), "repeated"),
    ],
)
def test_an_invalid_space_is_one_clear_error(dist, fragment: str) -> None:
    with pytest.raises(FairbenchError, match=fragment):
        check_space("trades", {"beta": dist}, METHODS.get("trades").Params(), {})


def test_a_default_outside_its_space_or_an_unknown_key_is_refused() -> None:
    params = METHODS.get("trades").Params()
    with pytest.raises(FairbenchError, match="default beta=6.0 lies outside"):
        check_space("trades", {"beta": Uniform(7.0, 9.0)}, params, {})
    with pytest.raises(FairbenchError, match="neither a parameter"):
        check_space("trades", {"gamma": Uniform(0.0, 1.0)}, params, {})
    with pytest.raises(FairbenchError, match="default lr=0.5 lies outside"):
        check_space("trades", {"lr": LogUniform(0.01, 0.2)}, params, {"lr": 0.5})


# ------------------------------------------------------------------------------- draws


def test_the_same_command_prints_the_same_draws_and_a_dry_run_records_nothing(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "tuning"
    args = ["tune", "--methods", "pgd-at,fairat", "--trials", "4", *tiny(fmnist_dir, out), "--dry-run"]
    code, first, _ = cli_out(args, capsys)
    assert code == 0
    code, second, _ = cli_out(args, capsys)
    assert code == 0 and draws(first) == draws(second) and len(draws(first)) == 8
    assert "(defaults) lr=0.1 weight_decay=0.0005" in first  # trial 0 is the defaults (DomainBed's hparams seed 0)
    assert not out.exists()
    code, other, _ = cli_out(args[:-1] + ["--tune-seed", "1", "--dry-run"], capsys)
    assert code == 0 and draws(other)[1:4] != draws(first)[1:4] and draws(other)[0] == draws(first)[0]


def test_a_draw_depends_only_on_seed_method_and_trial_number() -> None:
    assert tune.trial_seed(0, "fairat", 3) == tune.trial_seed(0, "fairat", 3)
    assert len({tune.trial_seed(0, m, k) for m in ("pgd-at", "fairat") for k in range(5)}) == 10


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--methods", "pgd-at", "--trials", "0"], "--trials must be in [1"),
        (["--methods", "pgdat", "--trials", "2"], "pgdat"),
        (["--methods", "pgd-at,pgd-at", "--trials", "2"], "twice"),
        (["--methods", "pgd-at", "--trials", "2", "--param", "x=1"], "sets --param itself"),
        (["--methods", "pgd-at", "--trials", "2", "--seed", "3"], "sets --seed itself"),
        (["--methods", "faal", "--trials", "2"], "faal"),
    ],
)
def test_bad_input_is_one_error_line(
    args: list[str], fragment: str, fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = cli_out(["tune", *args, *tiny(fmnist_dir, tmp_path / "t"), "--dry-run"], capsys)
    assert code == 2 and err.startswith("error:") and fragment in err and len(err.strip().splitlines()) == 1


def test_a_method_without_a_space_gets_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(METHODS.get("trades"), "space", None)
    with pytest.raises(FairbenchError, match="declares no search space"):
        tune.resolve_space("trades", RunConfig(method="trades", arch="small-cnn", dataset="fashion-mnist"))


def test_tuning_needs_a_validation_split(fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = [a for a in tiny(fmnist_dir, tmp_path / "t") if a not in ("--val-per-class", "3")]
    code, _, err = cli_out(["tune", "--methods", "pgd-at", "--trials", "2", *args, "--dry-run"], capsys)
    assert code == 2 and "--val-per-class" in err


# ------------------------------------------------------------------------------- trials


def test_trials_score_on_validation_only_and_trials_csv_selects_the_argmax(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "tuning"
    code, printed, err = cli_out(
        ["tune", "--methods", "pgd-at,trades", "--trials", "2", "--workers", "2", *tiny(fmnist_dir, out)], capsys
    )
    assert code == 0, err
    for run in sorted((out / "runs").iterdir()):
        files = {p.name for p in run.iterdir()}
        assert VALIDATION_FILE in files and not files & {METRICS_FILE, OUTCOMES_FILE, "eval_state"}
        record = read_validation(run / VALIDATION_FILE)
        assert record["n_per_class"] == [3] * 10
        assert record["criterion"] == pytest.approx(criterion(record["per_class"]), abs=1e-6)
        logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        assert all(len(r["val_robust_per_class"]) == 10 for r in logged)  # every epoch's score, per class
        assert logged[-1]["val_robust_per_class"] == record["per_class"]  # the kept weights: the last
        assert json.loads((run / "config.json").read_text())["score_on"] == "validation"
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [(r["method"], r["trial"]) for r in rows] == [
        ("pgd-at", "0"),
        ("pgd-at", "1"),
        ("trades", "0"),
        ("trades", "1"),
    ]
    assert list(rows[0])[:3] == ["method", "trial", "run_dir"]
    assert list(rows[0])[-4:] == ["val_avg_acc", "val_worst_acc", "criterion", "selected"]
    assert rows[0]["hp.beta"] == "" and rows[2]["hp.beta"] == "6.0" and rows[0]["hp.lr"] == "0.1"
    for method in ("pgd-at", "trades"):
        mine = [r for r in rows if r["method"] == method]
        best = max(mine, key=lambda r: (float(r["criterion"]), -int(r["trial"])))
        assert [r["selected"] for r in mine] == ["1" if r is best else "0" for r in mine]
        assert all((out / r["run_dir"] / VALIDATION_FILE).is_file() for r in mine)
    # the same command again trains nothing and draws nothing new
    before = (out / tune.STUDY_FILE).read_bytes()
    code, printed, _ = cli_out(["tune", "--methods", "pgd-at,trades", "--trials", "2", *tiny(fmnist_dir, out)], capsys)
    assert code == 0 and "4 done before" in printed
    assert (out / tune.STUDY_FILE).read_bytes() == before  # nothing redrawn, nothing told twice


def test_a_trial_never_loads_the_test_set(fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fairbench.train.runner as runner

    asked: list[tuple[str, ...]] = []
    real = runner.load_splits
    monkeypatch.setattr(runner, "load_splits", lambda spec, names, *a: asked.append(names) or real(spec, names, *a))
    from fairbench.cli import parse_run_args

    cfg = parse_run_args([*tiny(fmnist_dir, tmp_path), "--method", "pgd-at", "--score-on", "validation"])[0]
    run_dir = runner.run(cfg, progress=False, echo=lambda _: None)
    assert asked == [("train",)] and (run_dir / VALIDATION_FILE).is_file()
    assert not (run_dir / METRICS_FILE).exists()


def test_a_trial_that_diverges_is_finished_with_no_score_and_never_selected(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN loss ends a trial with its error, and records it (validation.json, no score): the
    sweep counts it as done, its study counts it among its N, trials.csv leaves its scores empty,
    selection passes it over, and a study whose every trial diverged has nothing to confirm."""
    from fairbench.sweep.plan import PlannedRun, is_done, outcome

    def trial(run_id: str, *extra: str) -> tuple[int, str]:
        code, _, err = cli_out(
            ["run", *tiny(fmnist_dir, tmp_path), "--method", "pgd-at", "--score-on", "validation", *extra]
            + ["--run-id", run_id, "--no-progress"],
            capsys,
        )
        return code, err

    assert trial("pgd-at_trial00")[0] == 0
    code, err = trial("pgd-at_trial01", "--lr", "1e38")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: training diverged") and "recorded in validation.json as diverged, no score" in err
    run_dir = tmp_path / "runs" / "pgd-at_trial01"
    record = read_validation(run_dir / VALIDATION_FILE)
    assert is_diverged(record) and record["diverged"].startswith("training diverged")
    assert not {"per_class", "avg", "worst", "criterion"} & set(record) and record["training"]["lr"] == 1e38
    planned = PlannedRun("pgd-at_trial01", (), (), 1, str(tmp_path), "cpu")
    assert is_done(run_dir) and outcome(planned, 2) == "done"  # exit 2, but finished: not retried

    spec = tune.StudySpec("s", 2, 0, ("pgd-at",), (), str(tmp_path))
    trials = [tune.TrialSpec("pgd-at", 0, {"lr": 0.1}), tune.TrialSpec("pgd-at", 1, {"lr": 1e38})]
    rows = tune.trial_rows(spec, trials)
    assert [r["selected"] for r in rows] == [1, 0] and rows[1]["criterion"] is None  # complete, and passed over
    assert tune.trials_csv(rows).splitlines()[2] == "pgd-at,1,runs/pgd-at_trial01,1e+38,,,,0"

    monkeypatch.setattr(tune, "study_trials", lambda out, name: (trials[1:], {"pgd-at": 1}))
    with pytest.raises(FairbenchError, match="every one of the 1 trials of pgd-at diverged"):
        tune.selected_trial(tune.StudySpec("s", 1, 0, ("pgd-at",), (), str(tmp_path)), "pgd-at", "--confirm")


def test_a_trial_trains_the_same_weights_as_the_plain_run(fmnist_dir: Path, tmp_path: Path) -> None:
    base = [
        *tiny(fmnist_dir, tmp_path, epochs=2),
        "--method",
        "fairat",
        "--param",
        "score=adversarial",
        "--param",
        "fraction=0.5",
        "--attacks",
        "clean",
        "--eval-per-class",
        "2",
    ]
    assert exit_code(["run", *base, "--run-id", "plain", "--no-progress"]) == 0
    assert exit_code(["run", *base, "--run-id", "trial", "--score-on", "validation", "--no-progress"]) == 0
    a, b = (torch.load(tmp_path / "runs" / r / "checkpoint.pt", weights_only=True)["model"] for r in ("plain", "trial"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupted_study_resumes_without_redrawing_and_a_changed_study_is_refused(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "tuning"
    spec = tune.StudySpec("s", 3, 0, ("trades",), tuple(tiny(fmnist_dir, out)), str(out))
    from fairbench.cli import parse_run_args

    base = parse_run_args(list(spec.run_args))[0]
    space, defaults = tune.resolve_space("trades", base)
    # a study stopped after drawing one trial: the rest are drawn later, as one draw would have
    partial = tune.StudySpec("s", 1, 0, ("trades",), spec.run_args, str(out))
    tune.draw_trials(partial, "trades", space, defaults, persist=True)
    with pytest.raises(FairbenchError, match="another search space, --trials"):
        tune.draw_trials(spec, "trades", space, defaults, persist=True)  # N changed: refused
    fresh = tune.StudySpec("t", 3, 0, ("trades",), spec.run_args, str(out))
    whole = tune.draw_trials(fresh, "trades", space, defaults, persist=True)
    again = tune.draw_trials(fresh, "trades", space, defaults, persist=True)
    assert whole == again and len(whole) == 3 and whole[0].values["beta"] == 6.0
    assert tune.draw_trials(fresh, "trades", space, defaults, persist=False) == whole
    narrower = {**space, "beta": LogUniform(2.0, 12.0)}
    with pytest.raises(FairbenchError, match="study 't/trades'"):
        tune.draw_trials(fresh, "trades", narrower, defaults, persist=True)
    moved = tune.StudySpec("t", 3, 0, ("trades",), tuple(tiny(fmnist_dir, tmp_path / "elsewhere")), str(out))
    assert tune.draw_trials(moved, "trades", space, defaults, persist=True) == whole  # --out is not a setting


def test_selection_is_the_argmax_of_the_criterion_with_ties_to_the_lower_trial() -> None:
    rows = [{"method": "a", "trial": k, "criterion": c} for k, c in enumerate([0.5, 0.9, 0.9, 0.1])]
    rows += [{"method": "b", "trial": k, "criterion": c} for k, c in enumerate([0.3, 0.2])]
    picked = tune.select(rows, complete={"a"})
    assert [r["selected"] for r in picked] == [0, 1, 0, 0, 0, 0]  # b is not complete: nothing selected
    assert [r["selected"] for r in tune.select(rows, {"a", "b"})][4:] == [1, 0]


def test_a_corrupt_validation_record_is_refused(tmp_path: Path) -> None:
    good = {
        "kind": "fairbench-validation",
        "version": 1,
        "run_id": "r",
        "method": "m",
        "params": {},
        "training": {},
        "seed": 0,
        "epochs": 1,
        "selected_epoch": 1,
        "classes": ["a", "b"],
        "n_per_class": [3, 3],
        "per_class": [0.5, 0.25],
        "avg": 0.375,
        "worst": 0.25,
        "criterion": 0.625,
    }
    path = tmp_path / VALIDATION_FILE
    path.write_text(json.dumps(good))
    assert read_validation(path)["criterion"] == 0.625
    for change in ({"criterion": 0.9}, {"per_class": [1.5, 0.25]}, {"kind": "x"}, {"n_per_class": [3]}, {"seed": True}):
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(FairbenchError):
            read_validation(path)
    # a diverged trial: a reason and no score at all
    diverged = {k: v for k, v in good.items() if k not in SCORE_KEYS} | {"diverged": "nan", "selected_epoch": 0}
    path.write_text(json.dumps(diverged))
    assert is_diverged(read_validation(path))
    for change in ({"diverged": ""}, {"diverged": 7}, {"criterion": 0.9}, {"selected_epoch": 1}):
        path.write_text(json.dumps({**diverged, **change}))
        with pytest.raises(FairbenchError):
            read_validation(path)


def test_list_shows_every_methods_search_space(capsys: pytest.CaptureFixture) -> None:
    code, printed, _ = cli_out(["list"], capsys)
    assert code == 0 and printed.count("tune: lr ~ ") == len(METHODS.entries())
    assert "lr ~ log-uniform[0.0005, 0.05]" in printed  # faal's fine-tuning lr
    code, text, _ = cli_out(["list", "--json"], capsys)
    fairat = next(m for m in json.loads(text)["methods"] if m["name"] == "fairat")
    assert fairat["space"]["score"] == "one of {clean, adversarial}"


def test_a_study_stopped_while_drawing_resumes_its_draws_and_a_dry_run_records_nothing(
    fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna
    from fairbench.cli import parse_run_args

    def spec(out: Path) -> tune.StudySpec:
        return tune.StudySpec("s", 4, 0, ("trades",), tuple(tiny(fmnist_dir, out)), str(out))

    base = parse_run_args(list(spec(tmp_path).run_args))[0]
    space, defaults = tune.resolve_space("trades", base)
    reference = tune.draw_trials(spec(tmp_path / "ref"), "trades", space, defaults, persist=True)
    out = tmp_path / "stopped"
    real_ask, asked = optuna.Study.ask, []

    def ask_then_stop(self, *args, **kwargs):  # the process dies after drawing two trials
        if len(asked) == 2:
            raise KeyboardInterrupt
        asked.append(1)
        return real_ask(self, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "ask", ask_then_stop)
    with pytest.raises(KeyboardInterrupt):
        tune.draw_trials(spec(out), "trades", space, defaults, persist=True)
    monkeypatch.setattr(optuna.Study, "ask", real_ask)
    journal = (out / tune.STUDY_FILE).read_bytes()
    assert tune.draw_trials(spec(out), "trades", space, defaults, persist=False) == reference
    assert (out / tune.STUDY_FILE).read_bytes() == journal  # the dry run wrote nothing
    assert tune.draw_trials(spec(out), "trades", space, defaults, persist=True) == reference


@pytest.mark.parametrize(
    "value, fragment",
    [
        ('{"study": "s", "trials": 2, "trial": 2, "rule": "best-val"}', "less than 'trials'"),
        ('{"study": "s", "trials": 2}', "keys"),
        ('{"study": "s", "trials": 2, "trial": 0, "rule": "best-val", "extra": 1}', "keys"),
        ('{"study": "s", "trials": 2, "trial": 0, "rule": "best-val", "control_of": 3}', "'control_of' must be str"),
        ('{"study": "s\\n", "trials": 2, "trial": 0, "rule": "best-val"}', "printable"),
        ("[1]", "keys"),
        ("{", "JSON object"),
    ],
)
def test_a_bad_tuning_record_is_one_error_line(
    value: str, fragment: str, fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = cli_out(["run", *tiny(fmnist_dir, tmp_path), "--tuning", value], capsys)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
