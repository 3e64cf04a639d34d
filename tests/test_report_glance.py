"""`fairbench report` answers at a glance (issue 27 items 1-4): the compact table, the ranking and
its masking check, one colour per method, honest small samples, the page at 1,400 px.

The results are per-example outcomes built here by hand (so each test knows the answer), written
through the schema's own builders, like tests/test_report.py's.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from fairbench.config import RunConfig
from fairbench.data.datasets import FASHION_MNIST_CLASSES as CLASSES
from fairbench.report.command import build_report
from fairbench.report.figures import METHOD_ORDER, class_wise_figure, forest_figure, method_style, tradeoff_figure
from fairbench.report.model import group_tier
from fairbench.report.tables import compact_columns, to_latex, to_markdown
from fairbench.schema import SCHEMA_VERSION, make_outcomes, metrics_from_outcomes, outcomes_bytes
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer, ErrorbarContainer

from browser import probe
from cli_helpers import exit_code
from test_report import write_results

K = len(CLASSES)


def write_run(
    root: Path,
    name: str,
    method: str,
    seed: int,
    *,
    clean: np.ndarray,
    pgd20: np.ndarray,
    autoattack: np.ndarray | None = None,
    n_per_class: int = 20,
    epochs: int = 2,
    extra: dict | None = None,
) -> None:
    """One run from per-image correctness (clean, PGD-20 and, on a subset marked -1 elsewhere,
    AutoAttack); robust outcomes count only where clean is right, as the evaluator's do."""
    labels = np.arange(K).repeat(n_per_class)
    columns = {"clean": clean, "pgd20": pgd20 & clean}
    if autoattack is not None:
        columns["autoattack"] = np.where(autoattack >= 0, (autoattack > 0) & clean, -1)
    outcomes = make_outcomes(np.arange(len(labels)), labels, columns)
    cfg = RunConfig(
        method=method,
        arch="small-cnn",
        dataset="fashion-mnist",
        epochs=epochs,
        seed=seed,
        eps=0.1,
        step_size=0.025,
        train_per_class=50,
        eval_per_class=n_per_class,
    )
    doc = {
        "schema_version": SCHEMA_VERSION,
        "run_id": name,
        "method": method,
        "params": {},
        "arch": "small-cnn",
        "dataset": "fashion-mnist",
        "seed": seed,
        "epochs": epochs,
        "threat": {"norm": "Linf", "eps": 0.1},
        "training": cfg.training_dict() | {"eval_per_class": n_per_class},
        "classes": list(CLASSES),
        "metrics": {t: m.to_json() for t, m in metrics_from_outcomes(outcomes, CLASSES).items()},
        "timing": {"train_s": 1.0},
        "env": {"torch": "x"},
        "checkpoint": {},
    } | (extra or {})
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(doc))
    (folder / "outcomes.csv.gz").write_bytes(outcomes_bytes(outcomes))


def wrong_fraction(rate: float, n_per_class: int = 20, offset: int = 0) -> np.ndarray:
    """Correctness with exactly ``rate`` of each class's images wrong (the same images per run
    unless ``offset`` shifts them)."""
    j = (np.arange(K * n_per_class) + offset) % n_per_class
    return j >= round(rate * n_per_class)


@pytest.fixture
def ranked(tmp_path: Path) -> Path:
    """Five methods, one seed each, 20 images per class, AutoAttack on the first 10 of each class.

    fairat: no PGD-20 error, clearly the best; pgd-at and trades: 40% in every class, the same
    images (2 of each class's 10 in the subset), so they tie; trades' AutoAttack gets every subset
    image: possibly masked; cfa: 50%, its interval overlaps theirs; wat: 100%, alone and last."""
    root = tmp_path / "results"
    ok = np.ones(K * 20, bool)
    subset = np.arange(K * 20) % 20 < 10
    for name, pgd, aa in (
        ("fairat", 0.0, None),
        ("pgd-at", 0.4, None),
        ("trades", 0.4, "all wrong"),
        ("cfa", 0.5, None),
        ("wat", 1.0, None),
    ):
        robust = wrong_fraction(pgd, offset=12 if pgd == 0.4 else 0)
        attack = np.where(subset, 0 if aa else robust, -1)
        write_run(root, name, name, 0, clean=ok, pgd20=robust, autoattack=attack)
    return root


def test_compact_table_has_the_answer_in_at_most_8_columns(ranked: Path) -> None:
    (group,) = build_report(ranked).groups
    cols = compact_columns(group)
    assert [c.header for c in cols] == [
        "method",
        "seeds",
        "PGD-20 avg",
        "PGD-20 worst",
        "PGD-20 Δworst",
        "PGD-20 Δavg",
        "clean avg",
    ]
    assert len(cols) + 1 <= 8  # with the rank
    md = to_markdown(build_report(ranked))
    assert "| # | method | seeds | PGD-20 avg | PGD-20 worst | PGD-20 Δworst | PGD-20 Δavg | clean avg |" in md
    # the compact table comes first, then one table per threat
    order = [m.start() for m in re.finditer(r"^(\| # \| method \| seeds \| PGD-20 avg|### )", md, re.M)]
    assert len(order) == 1 + 3 and md.index("PGD-20 Δworst") < md.index("### clean")
    assert "Ranked by worst-class PGD-20 error; checked with AutoAttack" in md


def test_ranks_with_ties_and_the_masking_flag(ranked: Path, tmp_path: Path) -> None:
    (group,) = build_report(ranked).groups
    assert (group.sort_threat, group.sort_stat, group.check_threat) == ("pgd20", "worst", "autoattack")
    ranks = {r.label: r.rank for r in group.rows}
    # fairat alone; pgd-at, trades (equal) and cfa (overlapping their intervals) share rank 2; wat 5
    assert ranks == {"fairat": 1, "pgd-at": 2, "trades": 2, "cfa": 2, "wat": 5}
    assert [r.label for r in group.rows][:1] == ["fairat"] and group.rows[-1].label == "wat"
    masked = {r.label for r in group.rows if r.possibly_masked}
    assert masked == {"trades"}
    trades = next(r for r in group.rows if r.label == "trades")
    assert trades.check.value == pytest.approx(0.8) and trades.check.lo > 0  # on the subset: 100% against 20%
    pgd = next(r for r in group.rows if r.label == "pgd-at")
    assert pgd.check.value == 0 and pgd.check.lo < 0 < pgd.check.hi  # the same outcomes: no width of 0 either
    # flagged in every format
    assert exit_code(["report", "--results", str(ranked)]) == 0
    assert "| trades (possibly masked) |" in (ranked / "leaderboard.md").read_text()
    assert "trades \\S (1)" in (ranked / "leaderboard.tex").read_text()
    assert 'class="flag"' in (ranked / "index.html").read_text()
    wide = {r["label"]: r for r in csv.DictReader((ranked / "leaderboard.csv").open())}
    assert wide["trades"]["possibly_masked"] == "True" and wide["pgd-at"]["possibly_masked"] == "False"
    long = list(csv.DictReader((ranked / "leaderboard_long.csv").open()))
    check = [r for r in long if r["statistic"] == "check_delta" and r["label"] == "trades"]
    assert len(check) == 1 and check[0]["threat"] == "autoattack" and check[0]["significant"] == "True"
    # --rank-by: another statistic, and a name that is none
    (by_aa,) = build_report(ranked, rank_by="autoattack").groups
    assert by_aa.sort_threat == "autoattack" and by_aa.check_threat is None
    assert {r.label: r.rank for r in by_aa.rows}["trades"] > 1
    (by_avg,) = build_report(ranked, rank_by="pgd20:avg").groups
    assert by_avg.sort_stat == "avg"
    assert "Ranked by average PGD-20 error" in to_markdown(build_report(ranked, rank_by="pgd20:avg"))


def test_rank_by_a_bad_name_is_one_clear_error(ranked: Path, capsys: pytest.CaptureFixture) -> None:
    for bad in ("pgdd20", "pgd20:median"):
        assert exit_code(["report", "--results", str(ranked), "--rank-by", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: --rank-by '{bad}' is not THREAT[:STAT]"), err
        assert "pgd20" in err[0] and "worst, avg" in err[0]


def test_a_method_has_one_colour_in_every_group_and_figure(tmp_path: Path) -> None:
    root = write_results(tmp_path / "results")
    a, b = build_report(root).groups
    seen = {}
    for group in (a, b):
        rows = [r for r in group.rows if "pgd20" in r.threats]
        bars = [c for c in class_wise_figure(group, "pgd20").axes[0].containers if isinstance(c, BarContainer)]
        marks = [c for c in tradeoff_figure(group).axes[0].containers if isinstance(c, ErrorbarContainer)]
        for row, bar, mark in zip(rows, bars, marks):
            colours = {to_hex(bar.patches[0].get_facecolor()), to_hex(mark.lines[0].get_color())}
            seen.setdefault(row.method, set()).update(colours)
    assert seen["pgd-at"] == {method_style("pgd-at").color.lower()}  # in both groups, in both figures
    assert all(len(c) == 1 for c in seen.values()), seen
    # the registered methods are told apart: by colour, else by marker and hatch
    styles = [method_style(m) for m in METHOD_ORDER]
    assert len(set(styles)) == len(styles)
    assert method_style("my_method") == method_style("my_method") and method_style("my_method") not in styles


def test_forest_plot_shows_each_difference_with_its_interval(ranked: Path) -> None:
    (group,) = build_report(ranked).groups
    fig = forest_figure(group)
    worst_ax = fig.axes[0]
    labels = [t.get_text() for t in worst_ax.get_yticklabels()]
    assert labels == [r.label for r in group.rows if r.label != "pgd-at"]  # the baseline is the 0 line
    fairat = next(r for r in group.rows if r.label == "fairat").threats["pgd20"].ci.worst_delta
    spans = [line.get_xdata() for line in worst_ax.lines if len(line.get_xdata()) == 2]
    assert [100 * fairat.lo, 100 * fairat.hi] in [list(s) for s in spans]


def test_no_zero_width_interval_a_warning_at_chance_and_tied_worst_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 27's run: 5 images per class, a model that is right on ankle boots only (it may
    predict nothing else), every image lost to PGD-20."""
    root = tmp_path / "results"
    labels = np.arange(K).repeat(5)
    clean = labels == K - 1
    for seed in (0, 1):
        write_run(root, f"r{seed}", "pgd-at", seed, clean=clean, pgd20=np.zeros(K * 5, bool), n_per_class=5)
    assert exit_code(["report", "--results", str(root)]) == 0
    err = capsys.readouterr().err
    assert "not above chance" in err and "right only on class 'ankle boot'" in err
    md = (root / "leaderboard.md").read_text()
    for lo, hi in re.findall(r"\[(-?[\d.]+), (-?[\d.]+)\]", md):
        assert float(lo) < float(hi), md  # no [90.0, 90.0], no [100.0, 100.0]
    assert "90.0 [" in md
    # every class at 100% PGD-20 error: a tie of all classes, not t-shirt/top named the worst
    (group,) = build_report(root).groups
    s = group.rows[0].threats["pgd20"]
    assert s.worst_classes == CLASSES and s.worst_class == f"all {K} classes"
    assert "| all 10 classes |" in md
    # clean: ten classes at 100% error but ankle boot at 0: nine tie
    assert group.rows[0].threats["clean"].worst_class.startswith("t-shirt/top = trouser = pullover = 6 more")


def test_canonical_group_first_and_the_others_collapsed(tmp_path: Path) -> None:
    """The standard protocol's group (fmnist-standard's 8 epochs, last weights) comes first, before a
    group that sorts earlier by key; the page collapses the other group."""
    root = tmp_path / "results"
    ok = np.ones(K * 20, bool)
    for epochs, preset in ((4, None), (8, "fmnist-standard")):
        extra = {"arch": "testbed-cnn", "preset": preset} if preset else {"arch": "testbed-cnn"}
        write_run(root, f"e{epochs}", "pgd-at", 0, clean=ok, pgd20=wrong_fraction(0.3), epochs=epochs, extra=extra)
    board = build_report(root)
    assert [g.key.epochs for g in board.groups] == [8, 4] and [g.tier for g in board.groups] == [1, 3]
    assert group_tier(board.groups[0].key, board.groups[0].rows[0].runs) == 1
    md = to_markdown(board)
    assert md.index("8 epochs") < md.index("4 epochs")
    assert "4 epochs · 50 train/class · 20 test/class (superseded)" in md
    assert exit_code(["report", "--results", str(root)]) == 0
    html = (root / "index.html").read_text()
    assert html.count('<details class="group">') == 1 and html.index("8 epochs") < html.index('<details class="group">')


def test_the_tuned_board_comes_before_the_standard_group(tmp_path: Path) -> None:
    """Rows of `fairbench tune --confirm` (their runs record the study) form the tuned board: first,
    and the standard protocol's group after it, superseded."""
    root = tmp_path / "results"
    ok = np.ones(K * 20, bool)
    standard = {"arch": "testbed-cnn", "preset": "fmnist-standard"}
    write_run(root, "standard", "pgd-at", 0, clean=ok, pgd20=wrong_fraction(0.3), epochs=8, extra=standard)
    write_run(root, "tuned", "pgd-at", 0, clean=ok, pgd20=wrong_fraction(0.2), epochs=8, extra=standard)
    doc = json.loads((root / "runs" / "tuned" / "metrics.json").read_text())
    doc["training"] |= {"tuning_study": "s1", "tuning_trials": 12}
    (root / "runs" / "tuned" / "metrics.json").write_text(json.dumps(doc))
    board = build_report(root)
    assert [g.tier for g in board.groups] == [0, 1] and board.groups[0].key.tuned == ("s1", 12)
    md = to_markdown(board)
    assert "tuned (12 trials, validation selection" in md.split("\n## ")[1].splitlines()[0]
    assert md.split("\n## ")[2].splitlines()[0].endswith("(superseded)")


def test_an_incomplete_tuned_group_is_not_the_board(tmp_path: Path) -> None:
    """A tuned group that lacks some method's row, or some seed of one, that the paper-hyperparameter
    group beside it has, stays after that group, which remains the board (not superseded), and says
    what it lacks; with every method and seed it becomes the board."""
    root = tmp_path / "results"
    ok = np.ones(K * 20, bool)
    standard = {"arch": "testbed-cnn", "preset": "fmnist-standard"}

    def tuned(run_id: str, method: str, seed: int) -> None:
        write_run(root, run_id, method, seed, clean=ok, pgd20=wrong_fraction(0.2), epochs=8, extra=standard)
        doc = json.loads((root / "runs" / run_id / "metrics.json").read_text())
        doc["training"] |= {"tuning_study": "s1", "tuning_trials": 8}
        (root / "runs" / run_id / "metrics.json").write_text(json.dumps(doc))

    for method in ("pgd-at", "trades"):
        for seed in (0, 1):
            write_run(
                root, f"{method}{seed}", method, seed, clean=ok, pgd20=wrong_fraction(0.3), epochs=8, extra=standard
            )
    write_run(root, "short", "pgd-at", 0, clean=ok, pgd20=wrong_fraction(0.3), epochs=4, extra={"arch": "testbed-cnn"})
    tuned("t-pgd-at0", "pgd-at", 0)
    tuned("t-pgd-at1", "pgd-at", 1)
    tuned("t-trades0", "trades", 0)
    board = build_report(root)
    assert [g.tier for g in board.groups] == [1, 2, 3]
    incomplete = board.groups[1]
    assert incomplete.key.tuned == ("s1", 8) and incomplete.shortfall == (("trades (1 of 2 seeds)",), 2)
    md = to_markdown(board)
    heads = [part.splitlines()[0] for part in md.split("\n## ")[1:]]
    assert not heads[0].endswith(")") and "(superseded)" not in heads[0]  # the standard group is the board
    assert heads[1].endswith("(incomplete: 1 of 2 methods lack their tuned row or seeds)")
    assert heads[2].endswith("(superseded)")
    assert "still missing: trades (1 of 2 seeds)" in md
    assert exit_code(["report", "--results", str(root)]) == 0
    html = (root / "index.html").read_text()
    assert html.count('<details class="group">') == 1  # only the 4-epoch group is collapsed
    assert "Not the leaderboard yet" in html
    assert "study s1) (incomplete). Mean over seeds" in (root / "leaderboard.tex").read_text()
    tuned("t-trades1", "trades", 1)
    board = build_report(root)
    assert [g.tier for g in board.groups] == [0, 1, 3] and board.groups[0].shortfall is None
    assert to_markdown(board).split("\n## ")[2].splitlines()[0].endswith("(superseded)")


def test_latex_tables_need_no_resizebox(ranked: Path) -> None:
    tex = to_latex(build_report(ranked))
    assert r"\resizebox" not in tex and tex.count(r"\begin{table}") == 3  # clean, PGD-20, AutoAttack
    assert tex.index("% ") < tex.index("PGD-20") < tex.index("clean error")  # the ranking threat's first
    for spec in re.findall(r"\\begin\{tabular\}\{(.*)\}", tex):
        assert spec.count("r") + spec.count("p{") <= 7  # rank, method and at most four numbers


def test_the_page_at_1400_px_shows_the_compact_table_without_scrolling(tmp_path: Path) -> None:
    """Headless Chromium at 1,400 px: every compact table fits its box (no horizontal scrollbar),
    with all its columns, also with a long fine-tuning label and a masking flag."""
    root = write_results(tmp_path / "results")
    ok = np.ones(K * 20, bool)
    subset = np.arange(K * 20) % 20 < 10
    for seed in (0, 1):
        extra = {"init_from": {"run_id": f"src{seed}", "method": "pgd-at", "epochs": 2, "budget_epochs": 2}}
        write_run(
            root,
            f"faal{seed}",
            "faal",
            seed,
            clean=ok,
            pgd20=wrong_fraction(0.3, offset=seed),
            autoattack=np.where(subset, 0, -1),
            extra=extra,
        )
    assert exit_code(["report", "--results", str(root)]) == 0
    page = (root / "index.html").read_text()
    assert "faal (from pgd-at, 2+2 epochs)" in page and 'class="flag"' in page
    dom = probe(
        root / "index.html",
        tmp_path,
        'doc.querySelectorAll("table.compact").forEach(function (t) {'
        "  var box = t.parentElement, heads = [];"
        '  t.querySelectorAll("thead th").forEach(function (th) { heads.push(th.textContent); });'
        '  out.push(["TABLE", box.scrollWidth, box.clientWidth, Math.round(t.getBoundingClientRect().right),'
        "            doc.documentElement.clientWidth, doc.documentElement.scrollWidth,"
        '            heads.join(";")].join("|")); });',
        width=1400,
        window="1440,1000",
    )
    shown = [found.split("|")[1:] for found in re.findall(r"TABLE\|[^\n<]*", dom)]
    assert len(shown) == 2, dom[-2000:]
    for scroll_w, client_w, right, page_w, page_scroll_w, heads in shown:
        assert 1350 <= int(page_w) <= 1400 and int(page_scroll_w) <= int(page_w)  # no sideways page scroll
        assert int(scroll_w) <= int(client_w) and int(right) <= int(page_w), (scroll_w, client_w, right)
        assert heads.split(";")[:3] == ["#", "method", "seeds"] and heads.endswith("clean avg")


def test_the_tuning_table_compares_each_tuned_row_with_its_paper_row(tmp_path: Path) -> None:
    """A tuned group gets a table of each row minus its method's paper-hyperparameter row (paired
    over images and the seeds both have) and a reading of how its difference from the baseline
    changed; the paper group gets none. 20 images per class, every class at the same error rate,
    the same images wrong wherever the rates are equal."""
    root = tmp_path / "results"
    ok = np.ones(K * 20, bool)
    standard = {"arch": "testbed-cnn", "preset": "fmnist-standard"}
    # method: (paper error, tuned error, tuned seeds); pgd-at is the baseline of both groups
    rates = {
        "pgd-at": (0.3, 0.3, 2),
        "fairat": (0.6, 0.1, 2),  # worse than PGD-AT with paper settings, better tuned
        "cfa": (0.6, 0.3, 2),  # worse, then the same
        "wat": (0.3, 0.5, 2),  # the same, then worse
        "bat": (0.6, 0.5, 2),  # worse both times
        "dafa": (0.3, 0.3, 2),  # the same both times
        "trades": (0.3, 0.1, 1),  # one tuned seed
    }
    for method, (paper, tuned, n_tuned) in rates.items():
        for seed in (0, 1):
            write_run(
                root, f"{method}{seed}", method, seed, clean=ok, pgd20=wrong_fraction(paper), epochs=8, extra=standard
            )
            if seed < n_tuned:
                run_id = f"t-{method}{seed}"
                write_run(root, run_id, method, seed, clean=ok, pgd20=wrong_fraction(tuned), epochs=8, extra=standard)
                doc = json.loads((root / "runs" / run_id / "metrics.json").read_text())
                doc["training"] |= {"tuning_study": "s1", "tuning_trials": 8}
                (root / "runs" / run_id / "metrics.json").write_text(json.dumps(doc))
    board = build_report(root)
    paper_group, tuned_group = board.groups
    assert paper_group.tuning is None and tuned_group.key.tuned == ("s1", 8) and tuned_group.tuning is not None
    effects = tuned_group.tuning
    fairat = effects["fairat"]
    assert fairat.n_seeds == 2 and fairat.worst is not None and fairat.avg is not None
    assert fairat.worst.value == pytest.approx(-0.5) and fairat.worst.significant
    assert fairat.avg.value == pytest.approx(-0.5) and fairat.paper_delta is not None
    assert fairat.paper_delta.value == pytest.approx(0.3) and fairat.paper_delta.significant
    same = effects["pgd-at"].worst  # identical outcomes: 0, with the width of one image in 200
    assert same is not None and same.value == 0 and same.lo < 0 < same.hi and not same.significant
    assert effects["pgd-at"].paper_is_baseline and effects["trades"].n_seeds == 1
    md = to_markdown(board)
    assert md.count("### Tuning's effect (PGD-20)") == 1
    table = md.split("### Tuning's effect (PGD-20)")[1]
    cells = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    reading = {c[1]: c[2] for c in cells}  # the reading comes right after the method
    assert reading == {
        "method": "reading",
        "pgd-at": "baseline",
        "fairat": "changed sign",
        "cfa": "difference gone",
        "wat": "new difference",
        "bat": "same sign",
        "dafa": "no difference either way",
        "trades": "not measured (one seed)",
    }
    assert exit_code(["report", "--results", str(root)]) == 0
    rows = {r["method"]: r for r in csv.DictReader((root / "leaderboard.csv").open()) if r["tuning_paper_label"]}
    assert set(rows) == set(rates) and rows["fairat"]["tuning_reading"] == "changed sign"
    assert rows["trades"]["tuning_seeds_compared"] == "1" and float(
        rows["fairat"]["tuning_worst_err_delta"]
    ) == pytest.approx(-0.5)
    html = (root / "index.html").read_text()
    assert html.count('-tuning"') == 1 and "Tuning&#x27;s effect (PGD-20)" in html
    tex = to_latex(board).split("tuning's effect\n")[1].split(r"\end{table*}")[0]
    assert tex.startswith(r"\begin{table*}") and tex.count(r"\addlinespace") == len(rates)
    assert r"{\scriptsize changed sign}" in tex and r"fairat (2) & 60.0 & 10.0 & $-$50.0$^\dagger$" in tex


def test_the_baseline_is_the_methods_row_trained_from_scratch(tmp_path: Path) -> None:
    """A tuned group labels PGD-AT's row with its tuned lr and holds FAAL's control (PGD-AT
    fine-tuned from PGD-AT) beside it: the baseline is the row trained from scratch, not none."""
    root = tmp_path / "results"
    ok = np.ones(K * 20, bool)
    for seed in (0, 1):
        write_run(root, f"pgd-at{seed}", "pgd-at", seed, clean=ok, pgd20=wrong_fraction(0.4))
        doc = json.loads((root / "runs" / f"pgd-at{seed}" / "metrics.json").read_text())
        doc["training"]["lr"] = 0.03  # a setting that varies in the group: the label names it
        (root / "runs" / f"pgd-at{seed}" / "metrics.json").write_text(json.dumps(doc))
        control = {"init_from": {"run_id": f"pgd-at{seed}", "method": "pgd-at", "epochs": 2, "budget_epochs": 2}}
        write_run(root, f"control{seed}", "pgd-at", seed, clean=ok, pgd20=wrong_fraction(0.4), extra=control)
        write_run(root, f"fairat{seed}", "fairat", seed, clean=ok, pgd20=wrong_fraction(0.1))
    (group,) = build_report(root).groups
    assert group.baseline is not None and group.baseline.startswith("pgd-at (lr=0.03")
    fairat = next(r for r in group.rows if r.method == "fairat").threats["pgd20"].ci
    assert fairat is not None and fairat.worst_delta is not None and fairat.worst_delta.value == pytest.approx(-0.3)


def test_a_long_row_label_is_wrapped_on_the_figures_and_keeps_every_word() -> None:
    """A tuned row's label names every hyperparameter; unwrapped, it squeezed the forest figure's
    axes to nothing (matplotlib's constrained layout gave up)."""
    from types import SimpleNamespace

    from fairbench.report.figures import tick_label

    long = "frl-rw (beta=5.94902, lim=0.511948, rate=0.0772981, tau_bndy=0.0128305, weight_decay=0.0005)"
    row = SimpleNamespace(label=long, runs=[1, 2, 3])
    wrapped = tick_label(row, 3)  # type: ignore[arg-type]
    assert len(wrapped.splitlines()) > 1 and all(len(line) <= 44 for line in wrapped.splitlines())
    assert wrapped.split() == long.split()
    assert tick_label(SimpleNamespace(label="pgd-at", runs=[1, 2, 3]), 3) == "pgd-at"  # type: ignore[arg-type]
