"""The tuned board in the report: tune --confirm's runs as their own group, the refusal of a
study whose trial folders hold test outcomes, and the sensitivity figure's reader."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from fairbench.errors import FairbenchError
from fairbench.report.model import build_leaderboard
from fairbench.report.sensitivity import load_studies, parse_trials, render_sensitivity
from fairbench.schema import METRICS_FILE

from cli_helpers import cli_out

HEADER = "method,trial,run_dir,hp.lr,val_avg_acc,val_worst_acc,criterion,selected\n"


def tiny(data: Path, out: Path) -> list[str]:
    return [
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


@pytest.fixture
def tuned(fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    """A results folder with a finished 2-trial study of pgd-at and trades and their tuned rows."""
    results = tmp_path / "results"
    args = ["tune", "--methods", "pgd-at,trades", "--trials", "2", *tiny(fmnist_dir, results / "tuning")]
    code, _, err = cli_out(args, capsys)
    assert code == 0, err
    code, out, err = cli_out(
        [*args, "--confirm", "--seeds", "0-1", "--eval-per-class", "2", "--attacks", "clean,pgd20"], capsys
    )
    assert code == 0, err
    assert "pgd-at: trial" in out and "trades: trial" in out
    return results


def test_tuned_rows_form_their_own_group_and_seed0_is_the_selected_trial(tuned: Path) -> None:
    board = build_leaderboard(tuned)
    (group,) = board.groups
    assert "tuned (2 trials, validation selection; study default)" in group.key.label()
    assert sorted(r.method for r in group.rows) == ["pgd-at", "trades"]
    assert all(len(r.seeds) == 2 for r in group.rows)
    for method in ("pgd-at", "trades"):
        seed0 = tuned / "runs" / f"{method}_tuned-default_seed0"
        assert "resuming" in (tuned / "sweep" / "logs" / f"{seed0.name}.log").read_text()  # not retrained
    assert not list((tuned / "tuning" / "runs").glob(f"*/{METRICS_FILE}"))  # trials stay test-free


def test_a_study_that_fine_tunes_starts_each_seed_from_the_tuned_row_of_that_seed(
    tuned: Path, fmnist_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """FAAL's study (--init-from-tuned pgd-at): its trials and its tuned seed 0 fine-tune pgd-at's
    selected trial (which is the tuned row's seed 0 itself), its tuned seed s pgd-at's tuned run of
    seed s; the tuned FAAL row joins the tuned group; what cannot work is one error line."""
    study = tuned / "tuning"
    rows = list(csv.DictReader((study / "trials.csv").open()))
    selected = next(r["run_dir"] for r in rows if r["method"] == "pgd-at" and r["selected"] == "1")
    faal = ["--lr", "0.005", *tiny(fmnist_dir, study)]  # its fine-tuning's protocol lr
    args = ["tune", "--methods", "faal", "--trials", "2", "--init-from-tuned", "pgd-at", *faal]
    code, _, err = cli_out(args, capsys)
    assert code == 0, err
    for k in (0, 1):
        trial = study / "runs" / f"faal_trial0{k}"
        assert json.loads((trial / "config.json").read_text())["init_from"] == selected
        assert not (trial / METRICS_FILE).exists()
    confirm = [*args, "--confirm", "--eval-per-class", "2", "--attacks", "clean,pgd20"]
    code, _, err = cli_out([*confirm, "--seeds", "0-1"], capsys)
    assert code == 0, err
    runs = tuned / "runs"
    config = {s: json.loads((runs / f"faal_tuned-default_seed{s}" / "config.json").read_text()) for s in (0, 1)}
    assert config[0]["init_from"] == f"tuning/{selected}"  # relative to the results folder
    assert config[1]["init_from"] == "runs/pgd-at_tuned-default_seed1"
    assert "resuming" in (tuned / "sweep" / "logs" / "faal_tuned-default_seed0.log").read_text()  # the trial
    record = json.loads((runs / "faal_tuned-default_seed1" / METRICS_FILE).read_text())
    assert record["init_from"]["run_id"] == "pgd-at_tuned-default_seed1"
    (group,) = build_leaderboard(tuned).groups
    assert sorted(r.method for r in group.rows) == ["faal", "pgd-at", "trades"]
    assert all(len(r.seeds) == 2 for r in group.rows)
    # the tuned control: FAAL's selected fine-tuning (same source, lr, epochs) with pgd-at's loss
    code, _, err = cli_out([*confirm, "--seeds", "0-1", "--control"], capsys)
    assert code == 0, err
    for s in (0, 1):
        control = json.loads((runs / f"pgd-at_control-faal_tuned-default_seed{s}" / "config.json").read_text())
        assert control["method"] == "pgd-at" and control["params"] == {}
        assert control["init_from"] == config[s]["init_from"]
        assert (control["lr"], control["epochs"]) == (config[s]["lr"], config[s]["epochs"])
        assert control["tuning"] == config[s]["tuning"] | {"control_of": "faal"}
    (group,) = build_leaderboard(tuned).groups
    labels = sorted(r.label for r in group.rows)
    assert len(group.rows) == 4 and all(len(r.seeds) == 2 for r in group.rows), labels
    assert "pgd-at" in labels and any(x.startswith("pgd-at (") and "from pgd-at" in x for x in labels), labels
    for extra, fragment in [
        (["--seeds", "0-2"], "seed 2 fine-tunes"),  # pgd-at has no tuned run of seed 2
        (["--init-from", str(study / selected)], "both name"),
    ]:
        code, _, err = cli_out([*confirm, *extra, "--dry-run"], capsys)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    for bad_args, fragment in [
        ([*args, "--control"], "belongs to --confirm"),
        (["tune", "--methods", "pgd-at", "--trials", "2", *tiny(fmnist_dir, study), "--confirm", "--control"], "give"),
    ]:
        code, _, err = cli_out([*bad_args, "--dry-run"], capsys)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    for method, fragment in [("wat", "the study of wat has 0 of 2"), ("nosuch", "nosuch"), ("faal", "own first")]:
        bad = ["tune", "--methods", "faal", "--trials", "2", "--init-from-tuned", method, *faal]
        code, _, err = cli_out([*bad, "--dry-run"], capsys)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


def test_a_trial_folder_with_test_outcomes_refuses_the_tuned_group(tuned: Path) -> None:
    trial = next((tuned / "tuning" / "runs").iterdir())
    shutil.copy(tuned / "runs" / "pgd-at_tuned-default_seed0" / METRICS_FILE, trial / METRICS_FILE)
    board = build_leaderboard(tuned)
    assert not board.groups
    reasons = dict(board.skipped)
    assert any("holds test outcomes" in why for why in reasons.values())
    assert any("validation.json) must hold no test outcomes" in why for why in reasons.values())


def test_the_sensitivity_reader_and_figure(tmp_path: Path) -> None:
    good = HEADER + (
        "pgd-at,0,runs/a,0.05,0.5,0.25,0.75,0\npgd-at,1,runs/b,0.1,0.6,0.3,0.9,1\nfairat,0,runs/c,0.05,0.4,0.1,0.5,0\n"
        "pgd-at,2,runs/d,0.2,,,,0\n"  # diverged: no score
    )
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / "trials.csv").write_text(good)
    (study,), skipped = load_studies(tmp_path)
    assert not skipped and study.methods == ["pgd-at", "fairat"]
    assert [p.selected for p in study.points if p.method == "pgd-at"] == [False, True, False]
    assert [p.trial for p in study.points if p.diverged] == [2]
    png, svg = render_sensitivity(study)
    assert png.startswith(b"\x89PNG") and render_sensitivity(study) == (png, svg)  # byte-identical
    assert b"diverged (no score)" in svg  # the legend names the cross


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("pgd-at,0,runs/a,0.05,0.5,0.25,0.9,0\n", "criterion is not"),
        ("pgd-at,0,runs/a,0.05,1.5,0.25,1.75,0\n", "fractions"),
        ("pgd-at,x,runs/a,0.05,0.5,0.25,0.75,0\n", "type"),
        ("pgd-at,0,runs/a,0.05,0.5,0.25,0.75,2\n", "type"),
        ("pgd-at,0,runs/a,0.05,0.5,0.25,0.75,1\npgd-at,1,runs/b,0.05,0.5,0.25,0.75,1\n", "more than one"),
        ("pgd-at,0,runs/a,0.05,0.5,0.25,0.75,0\npgd-at,0,runs/a,0.05,0.5,0.25,0.75,0\n", "twice"),
        ("pgd-at,0,runs/a,0.05,,,,1\n", "without a score cannot be selected"),
        ("pgd-at,0,runs/a,0.05,0.5,,,0\n", "type"),
    ],
)
def test_a_forged_trials_file_is_refused(body: str, fragment: str) -> None:
    with pytest.raises(FairbenchError, match=fragment):
        parse_trials((HEADER + body).encode(), "trials.csv")


def test_a_trials_file_that_is_a_symlink_or_fifo_is_skipped(tmp_path: Path) -> None:
    import os

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "trials.csv").symlink_to("/dev/zero")
    (tmp_path / "b").mkdir()
    os.mkfifo(tmp_path / "b" / "trials.csv")
    studies, skipped = load_studies(tmp_path)
    assert not studies and len(skipped) == 2


def test_the_sensitivity_figure_is_shown_in_index_html_in_chromium(
    tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`fairbench report` on a results folder with a study: the page shows the sensitivity figure
    decoded, and its table names the selected trial of each method."""
    import re

    from browser import probe

    code, _, err = cli_out(["report", "--results", str(tuned)], capsys)
    assert code == 0, err
    assert (tuned / "figures" / "sensitivity_tuning.png").is_file()
    dom = probe(
        tuned / "index.html",
        tmp_path,
        'doc.querySelectorAll("#sensitivity figure img").forEach(function (img) {'
        ' out.push(["IMG", img.complete, img.naturalWidth, Math.round(img.getBoundingClientRect().width),'
        '           img.alt].join("|")); });'
        ' doc.querySelectorAll("#sensitivity td").forEach(function (td) {'
        '  out.push("TD|" + td.textContent); });',
        width=1400,
    )
    images = [line.split("|") for line in re.findall(r"IMG\|[^\n<]*", dom)]
    cells = re.findall(r"TD\|([^\n<]*)", dom)
    assert len(images) == 1
    _, complete, width, on_page, alt = images[0]
    assert complete == "true" and int(width) > 300 and int(on_page) > 300 and alt.startswith("sensitivity:")
    assert sum(c.startswith("trial ") for c in cells) == 2  # pgd-at's and trades' selected trials


def test_committed_trials_hold_no_test_outcomes_and_agree_with_trials_csv() -> None:
    """results/tuning: every committed trial's validation.json reads with today's check, its folder
    holds nothing of the test set, and trials.csv gives exactly its numbers."""
    import csv

    from fairbench.schema.validation import is_diverged, read_validation

    tuning = Path(__file__).resolve().parents[1] / "results" / "tuning"
    trials = sorted((tuning / "runs").iterdir()) if (tuning / "runs").is_dir() else []
    rows = {r["run_dir"]: r for r in csv.DictReader((tuning / "trials.csv").open())} if trials else {}
    assert len(rows) == len(trials)
    for folder in trials:
        assert {p.name for p in folder.iterdir()} == {"config.json", "log.jsonl", "validation.json"}
        record = read_validation(folder / "validation.json")
        row = rows[f"runs/{folder.name}"]
        assert record["run_id"] == folder.name and record["method"] == row["method"]
        if is_diverged(record):  # finished with no score: empty cells, never selected
            assert (row["val_avg_acc"], row["val_worst_acc"], row["criterion"], row["selected"]) == ("", "", "", "0")
        else:
            assert float(row["criterion"]) == record["criterion"] and float(row["val_worst_acc"]) == record["worst"]
        assert json.loads((folder / "config.json").read_text())["score_on"] == "validation"


def _trial_logs(folder: Path, curves: dict[str, list[float]]) -> None:
    """A trials.csv and each trial's log.jsonl, whose validation accuracy is ``curve[e]`` for both
    classes after epoch e + 1 (criterion: twice that); an empty curve is a trial that diverged
    (an empty log, an empty criterion)."""
    rows = ["method,trial,run_dir,criterion"]
    for k, (name, curve) in enumerate(curves.items()):
        method, _, _ = name.partition("_")
        (folder / "runs" / name).mkdir(parents=True)
        lines = [json.dumps({"epoch": e + 1, "val_robust_per_class": [a, a]}) for e, a in enumerate(curve)]
        (folder / "runs" / name / "log.jsonl").write_text("".join(line + "\n" for line in lines))
        rows.append(f"{method},{k},runs/{name},{2 * curve[-1] if curve else ''}")
    (folder / "trials.csv").write_text("\n".join(rows) + "\n")


def test_the_rank_correlation_script(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """results/tuning/rank_correlation.py: Spearman's rho of epoch 4 and 6 against the last epoch,
    whether the pick is the same, and n/a for a method with trials shorter than the early epoch."""
    import runpy

    script = runpy.run_path(str(Path(__file__).parents[1] / "results" / "tuning" / "rank_correlation.py"))
    _trial_logs(
        tmp_path,
        {
            # at epoch 4 trial a leads, at 6 and 8 trial c does; the order at 6 is the last one's
            "m_a": [0.1, 0.2, 0.3, 0.9, 0.5, 0.3, 0.3, 0.3],
            "m_b": [0.1, 0.2, 0.3, 0.5, 0.5, 0.4, 0.4, 0.4],
            "m_c": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.6],
            "m_d": [],  # diverged: left out of the ranking, and counted
            "faal_a": [0.3, 0.4],
            "faal_b": [0.3, 0.5, 0.6, 0.7],
            "faal_c": [0.2],
        },
    )
    assert script["main"](tmp_path) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["m"] == ["m", "3", "-1.00", "no", "+1.00", "yes", "(1", "diverged,", "left", "out)"]
    assert lines["faal"][:3] == ["faal", "3", "n/a"]
