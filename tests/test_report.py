"""`fairbench report`: grouping, seed aggregation, sorting, skipped files, charts, purity, HTML.

The results are synthetic per-example outcomes (AutoAttack on a class-balanced subset, as the
standard protocol runs it), summarized and written by the schema's own builders, with the config's
own `training_dict`, so metrics.json and outcomes.csv.gz have exactly the shape real runs write.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Iterator

import fairbench.report.model as report_module
import matplotlib.image
import numpy as np
import pytest
from fairbench.config import RunConfig
from fairbench.data.datasets import FASHION_MNIST_CLASSES as CLASSES
from fairbench.report.command import build_report
from fairbench.report.figures import (
    _overlap,
    _place_labels,
    class_wise_figure,
    pareto_front,
    point_label,
    render_chart,
    tradeoff_figure,
    usual_seeds,
)
from fairbench.report.html import to_html
from fairbench.report.model import build_leaderboard
from fairbench.report.stats import Delta
from fairbench.report.tables import tex_escape, to_csv, to_latex, to_markdown
from fairbench.schema import (
    OUTCOMES_FILE,
    SCHEMA_VERSION,
    UNION,
    Outcomes,
    make_outcomes,
    metrics_from_outcomes,
    outcomes_bytes,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from browser import chromium, probe
from cli_helpers import exit_code

N_PER_CLASS = 20
ALL_THREATS = ("clean", "pgd20", "autoattack", "union")
# (method, params, seed, epochs, threats, accuracy level): group A has epochs=2, group B epochs=4.
RUNS = [
    ("pgd-at", {}, 0, 2, ALL_THREATS, 0.55),
    ("pgd-at", {}, 1, 2, ALL_THREATS, 0.60),
    ("trades", {"beta": 6.0}, 0, 2, ALL_THREATS, 0.65),
    ("trades", {"beta": 6.0}, 1, 2, ALL_THREATS, 0.62),
    ("trades", {"beta": 3.0}, 0, 2, ALL_THREATS, 0.45),
    ("fairat", {"fraction": 0.2}, 0, 2, ALL_THREATS, 0.75),
    ("fairat", {"fraction": 0.2}, 1, 2, ALL_THREATS, 0.70),
    ("pgd-at", {}, 0, 4, ("clean", "pgd20", "union"), 0.50),
    ("my_method", {}, 0, 4, ("clean", "pgd20", "union"), 0.80),
]
NO_OUTCOMES = {8}  # older results: my_method's run has no outcomes.csv.gz
BAD = {
    "runs/broken/metrics.json": "unreadable",
    "runs/future/metrics.json": "unknown schema_version",
    "runs/unfinished/metrics.json": "unfinished",
    "runs/running/metrics.json": "unfinished",
    "runs/zcopy/metrics.json": "same experiment and seed",
}


AA_PER_CLASS = 10  # AutoAttack (and so union) runs on the first 10 test images of each class


def simulate(method: str, params: dict, seed: int, epochs: int, threats: tuple, level: float) -> Outcomes:
    """Per-example outcomes drawn around accuracy ``level``, robust < clean per example (each attack
    keeps a clean-correct image right with some probability); AutoAttack runs on the first
    `AA_PER_CLASS` test images of each class; union is derived."""
    key = json.dumps([method, params, seed, epochs], sort_keys=True).encode()
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
    labels = np.arange(10).repeat(N_PER_CLASS)
    subset = np.arange(len(labels)) % N_PER_CLASS < AA_PER_CLASS
    correct = {}
    for i, threat in enumerate(t for t in threats if t != UNION):
        p = np.clip(level + 0.3 - 0.12 * i + rng.uniform(-0.25, 0.25, size=10), 0.0, 1.0)
        draw = rng.random(len(labels)) < p[labels]
        correct[threat] = draw if threat == "clean" else draw & correct["clean"]
    columns = {t: np.where(subset, c, -1) if t == "autoattack" else c for t, c in correct.items()}
    return make_outcomes(np.arange(len(labels)), labels, columns)


def record(method: str, params: dict, seed: int, epochs: int, threats: tuple, level: float) -> dict:
    """A metrics.json document: the schema's metrics of `simulate`'s outcomes."""
    cfg = RunConfig(
        method=method,
        arch="small-cnn",
        dataset="fashion-mnist",
        epochs=epochs,
        seed=seed,
        eps=0.1,
        step_size=0.025,
        params=params,
        train_per_class=50,
        eval_per_class=N_PER_CLASS,
    )
    outcomes = simulate(method, params, seed, epochs, threats, level)
    metrics = {t: m.to_json() for t, m in metrics_from_outcomes(outcomes, CLASSES).items()}
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": f"{method}-{seed}-{epochs}-{len(params)}",
        "method": method,
        "params": params,
        "arch": "small-cnn",
        "dataset": "fashion-mnist",
        "seed": seed,
        "epochs": epochs,
        "threat": {"norm": "Linf", "eps": 0.1},
        "training": cfg.training_dict() | {"eval_per_class": N_PER_CLASS},
        "classes": list(CLASSES),
        "metrics": metrics,
        "timing": {"train_s": 1.0},
        "env": {"torch": "x"},
        "checkpoint": {},
    }


@pytest.fixture(autouse=True, scope="module")
def method_labels() -> Iterator[None]:
    """The rows' labels as `fairbench report` makes them: it passes `fairbench.methods.label_params`
    (the methods' defaults, e.g. trades' beta=6); the report itself imports no method."""
    from fairbench.methods import label_params

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report_module, "_label_params", label_params)
        yield


def write_results(root: Path) -> Path:
    """The RUNS as metrics.json files, plus one file for each way a file can be unusable (BAD)."""
    for i, spec in enumerate(RUNS):
        folder = root / "runs" / f"run{i}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(record(*spec), indent=2))
        if i not in NO_OUTCOMES:
            (folder / OUTCOMES_FILE).write_bytes(outcomes_bytes(simulate(*spec)))
    bad = {
        "broken": '{"schema_version": 1, "run_id": "x", "metr',
        "future": json.dumps(record(*RUNS[0]) | {"schema_version": 99}),
        "unfinished": json.dumps(record(*RUNS[0]) | {"metrics": {}}),
        "running": json.dumps(record(*RUNS[0]) | {"status": "running"}),
        "zcopy": json.dumps(record(*RUNS[0])),
    }
    for name, text in bad.items():
        (root / "runs" / name).mkdir()
        (root / "runs" / name / "metrics.json").write_text(text)
    return root


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return write_results(tmp_path / "results")


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """One `fairbench report` over the RUNS, shared by the tests that only read its outputs."""
    root = write_results(tmp_path_factory.mktemp("reported") / "results")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert run_cli(["report", "--results", str(root)]) == 0
    return root, out.getvalue(), err.getvalue()


def stored(root: Path) -> list[dict]:
    return [json.loads((root / "runs" / f"run{i}" / "metrics.json").read_text()) for i in range(len(RUNS))]


run_cli = exit_code


def test_groups_rows_and_seed_aggregates(results: Path) -> None:
    board = build_leaderboard(results)
    a, b = board.groups
    assert (a.key.epochs, b.key.epochs) == (2, 4)
    assert {r.label for r in a.rows} == {"pgd-at", "trades", "trades (beta=3)", "fairat"}
    assert {r.label for r in b.rows} == {"pgd-at", "my_method"}
    pgd = next(r for r in a.rows if r.label == "pgd-at")
    assert pgd.seeds == [0, 1]
    docs = [d for d in stored(results) if d["method"] == "pgd-at" and d["epochs"] == 2]
    aa = [d["metrics"]["autoattack"] for d in docs]
    worst = [1 - min(m["per_class"]) for m in aa]
    s = pgd.threats["autoattack"]
    assert s.worst.mean == pytest.approx(np.mean(worst)) and s.worst.std == pytest.approx(np.std(worst, ddof=1))
    assert s.avg.mean == pytest.approx(np.mean([1 - np.mean(m["per_class"]) for m in aa]))
    assert s.spread.mean == pytest.approx(np.mean([np.std(m["per_class"]) for m in aa]), abs=1e-6)
    per_class = np.mean([[1 - v for v in m["per_class"]] for m in aa], axis=0)
    assert [x.mean for x in s.per_class] == pytest.approx(list(per_class))
    assert s.worst_class in {m["worst_class"] for m in aa}
    single = next(r for r in a.rows if r.label == "trades (beta=3)").threats["pgd20"]
    assert single.worst.n == 1 and single.worst.std is None


def test_sorted_by_worst_class_robust_error(results: Path) -> None:
    a, b = build_leaderboard(results).groups
    assert a.threats == ALL_THREATS and b.threats == ("clean", "pgd20", "union")
    # PGD-20 ran on every test image, AutoAttack (so the union) on a subset; group b has no AutoAttack,
    # so its union is PGD-20 itself and PGD-20 is named
    assert (a.sort_threat, b.sort_threat) == ("pgd20", "pgd20")
    for group in (a, b):
        worst = [(r.threats[group.sort_threat].worst.mean, r.threats[group.sort_threat].avg.mean) for r in group.rows]
        assert worst == sorted(worst) and len(set(worst)) == len(worst)
        # without intervals (no outcomes read), only equal worst-class errors tie
        assert [r.rank for r in group.rows] == [1 + [w for w, _ in worst].index(w) for w, _ in worst]


def test_bad_files_are_listed_and_skipped(reported: tuple[Path, str, str]) -> None:
    results, _, err = reported
    board = build_leaderboard(results)
    assert board.n_files == len(RUNS) + len(BAD)
    assert {p for p, _ in board.skipped} == set(BAD)
    for path, why in board.skipped:
        assert BAD[path] in why, (path, why)
    assert f"warning: skipped {len(BAD)} metrics.json file(s)" in err
    assert all(path in err for path in BAD)


def test_cli_prints_markdown_and_writes_every_output(reported: tuple[Path, str, str]) -> None:
    results, out, _ = reported
    assert out == (results / "leaderboard.md").read_text()
    table_rows = [line for line in out.splitlines() if re.match(r"\| \d+ \|", line)]
    # group A: 4 rows in the compact table and in one table per threat (its union differs from each
    # threat); group B: 2 rows, compact, clean and PGD-20 (its union is PGD-20's outcomes: not repeated)
    assert len(table_rows) == 4 * (1 + 4) + 2 * (1 + 2)
    assert out.count("### union") == 1 and "union: the same outcomes as PGD-20 in every run" in out
    assert "| # | method | seeds | avg | worst | worst class | spread | Δavg | Δworst |" in out
    figures = sorted(p.name for p in (results / "figures").iterdir())
    # per group: a chart per threat, the trade-off figure, the forest plot and the heatmap
    assert len(figures) == 2 * (4 + 3 + 3 + 3)
    assert all(f.startswith("fashion-mnist_small-cnn_linf-0.1_e") for f in figures)
    assert (results / "index.html").stat().st_size > 10_000


def test_csv_holds_the_aggregates(reported: tuple[Path, str, str]) -> None:
    results = reported[0]
    rows = list(csv.DictReader((results / "leaderboard.csv").open()))
    assert len(rows) == 6
    board = build_leaderboard(results)
    pgd = next(r for r in board.groups[0].rows if r.label == "pgd-at")
    line = next(r for r in rows if r["label"] == "pgd-at" and r["epochs"] == "2")
    assert float(line["autoattack_worst_err"]) == pytest.approx(pgd.threats["autoattack"].worst.mean, abs=1e-6)
    assert line["seeds"] == "0 1" and line["n_seeds"] == "2" and line["sorted_by"] == "pgd20"
    assert line["sort_stat"] == "worst" and line["check_threat"] == "autoattack"
    assert next(r for r in rows if r["label"] == "my_method")["autoattack_avg_err"] == ""


def test_latex_is_booktabs_and_escaped(reported: tuple[Path, str, str]) -> None:
    results = reported[0]
    tex = (results / "leaderboard.tex").read_text()
    # one table per group and threat (group B's union is PGD-20's: left out), none scaled to fit
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\end{table}"):
        assert tex.count(rule) == 4 + 2, rule
    assert r"\resizebox" not in tex and r"my\_method (1) &" in tex
    assert tex_escape("a_b & 5% #1 {x}") == r"a\_b \& 5\% \#1 \{x\}"


def test_chart_has_one_bar_per_class_and_method(results: Path) -> None:
    group = build_leaderboard(results).groups[0]
    fig = class_wise_figure(group, "pgd20")
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == len(group.rows)
    for container, row in zip(bars, group.rows):
        heights = [bar.get_height() for bar in container.patches]
        assert heights == pytest.approx([100 * s.mean for s in row.threats["pgd20"].per_class])
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CLASSES)
    assert "PGD-20" in ax.get_ylabel()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    # the number of seeds only where a row does not have the usual 2
    assert legend == [r.label + ("" if len(r.runs) == 2 else " (1 seed)") for r in group.rows]
    assert "trades (beta=3) (1 seed)" in legend
    png, svg = render_chart(group, "pgd20")
    assert png.startswith(b"\x89PNG") and b"shirt" in svg and b"<svg" in svg


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_report_is_pure_and_byte_identical(results: Path, tmp_path: Path) -> None:
    inputs = _tree(results)
    assert run_cli(["report", "--results", str(results)]) == 0
    first = _tree(results)
    assert {k: v for k, v in first.items() if k in inputs} == inputs  # metrics.json untouched
    assert set(first) - set(inputs) >= {"leaderboard.md", "leaderboard.csv", "leaderboard.tex", "index.html"}
    assert run_cli(["report", "--results", str(results)]) == 0
    assert _tree(results) == first
    # same inputs elsewhere (another path, another file order on disk) give the same bytes
    other = tmp_path / "elsewhere" / "res"
    for rel in sorted(inputs, reverse=True):
        (other / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results / rel, other / rel)
    assert run_cli(["report", "--results", str(other)]) == 0
    assert _tree(other) == first


def test_no_usable_results_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(["report", "--results", str(tmp_path / "missing")]) == 2
    assert "error: results folder" in capsys.readouterr().err
    (tmp_path / "r" / "runs" / "x").mkdir(parents=True)
    (tmp_path / "r" / "runs" / "x" / "metrics.json").write_text("[]")
    assert run_cli(["report", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "error: no usable metrics.json" in err and "runs/x/metrics.json: not a JSON object" in err


def _png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_html_renders_and_sorts_in_chromium(reported: tuple[Path, str, str], tmp_path: Path) -> None:
    results = reported[0]
    page = results / "index.html"
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the page must not need the network"
    board = build_leaderboard(results)
    dom = chromium(tmp_path / "p1", "--dump-dom", page.as_uri() + "#sort=-clean_avg").stdout
    tables = re.findall(r"<table class=\"leaderboard (\w+)\".*?</table>", dom, re.S)
    assert tables == ["compact", "clean", "pgd20", "autoattack", "union", "compact", "clean", "pgd20"]
    tables = re.findall(r"<table class=\"leaderboard \w+\".*?</table>", dom, re.S)
    groups = [board.groups[0]] * 5 + [board.groups[1]] * 3
    for table, group in zip(tables, groups):
        assert 'data-sortable="ready"' in table  # the script ran
        assert len(re.findall(r'<tr class="row[ "]', table)) == len(group.rows)
        # the runs' configs once per group, under the compact table
        assert table.count('<tr class="config">') == (len(group.rows) if "leaderboard compact" in table else 0)
        keys = re.findall(r'<th data-key="([^"]+)"', table)
        cells = [
            re.findall(r'<td data-sort="([^"]*)"', row) for row in re.findall(r'<tr class="row[^"]*">(.*?)</tr>', table)
        ]
        if "clean_avg" in keys:  # the compact table and clean's are sorted by the page's #sort=-clean_avg
            shown = [float(c[keys.index("clean_avg")]) for c in cells]
            assert shown == sorted((r.threats["clean"].avg.mean for r in group.rows), reverse=True)
    # per group: forest plot, trade-off figure, heatmap and the bar chart of each threat with a table
    assert dom.count("data:image/png;base64,") == (3 + 4) + (3 + 2)
    shot = tmp_path / "shot.png"
    chromium(tmp_path / "p2", "--hide-scrollbars", "--window-size=1280,900", f"--screenshot={shot}", page.as_uri())
    assert _png_size(shot) == (1280, 900)
    pixels = matplotlib.image.imread(shot)
    assert shot.stat().st_size > 20_000 and pixels[..., :3].std() > 0.05  # not a blank page


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    """Every key / index path inside a JSON document."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    out = []
    for key, value in items:
        out += [prefix + (key,)] + _paths(value, prefix + (key,))
    return out


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=4,
)
VALID = record(*RUNS[0])
VALID_PATHS = _paths(VALID)
OTHER = record(*RUNS[8])


@settings(max_examples=150, deadline=None)
@given(which=st.integers(0, len(VALID_PATHS) - 1), value=JSON, delete=st.booleans())
def test_any_corrupted_field_is_used_or_skipped_never_a_crash(which: int, value: object, delete: bool) -> None:
    doc = json.loads(json.dumps(VALID))
    *parents, last = VALID_PATHS[which]
    target = doc
    for key in parents:
        target = target[key]
    if delete:
        del target[last]
    else:
        target[last] = value
    with tempfile.TemporaryDirectory() as tmp:  # next to a valid run of another group and seed
        for name, content in (("a", doc), ("b", OTHER)):
            (Path(tmp) / name).mkdir()
            (Path(tmp) / name / "metrics.json").write_text(json.dumps(content))
        board = build_leaderboard(Path(tmp))
    assert sum(len(r.runs) for g in board.groups for r in g.rows) + len(board.skipped) == 2
    if board.groups:  # whatever was accepted must also render
        to_markdown(board), to_csv(board), to_latex(board), to_html(board, ["s"], {})


def test_charts_of_groups_that_are_gone_are_removed(results: Path) -> None:
    """A rerun after a group's runs were deleted leaves no chart of that group behind, and removes
    nothing else: not a user's own chart, not a chart of ours that was edited since."""
    assert run_cli(["report", "--results", str(results)]) == 0
    figures = results / "figures"
    first = sorted(p.name for p in figures.iterdir())
    mine = figures / "my_paper_plot.png"  # a user's own file, in the report's folder
    mine.write_bytes(b"mine")
    shutil.rmtree(results / "runs" / "run7"), shutil.rmtree(results / "runs" / "run8")  # group B
    edited = next(figures.glob("*_e4_*_clean.svg"))
    edited.write_text(edited.read_text() + "<!-- my edit -->")
    assert run_cli(["report", "--results", str(results)]) == 0
    left = sorted(p.name for p in figures.iterdir())
    assert left == sorted([n for n in first if "_e4_" not in n] + [mine.name, edited.name])


def test_report_package_imports_point_down() -> None:
    """stats (pure numpy) at the bottom, then model, intervals, renderers and the command on top; no
    module imports one above it, and stats imports nothing of the package."""
    import ast

    layers = {
        "stats": 0,
        "model": 1,
        "intervals": 2,
        "figures": 3,
        "tables": 3,
        "sensitivity": 4,
        "html": 5,
        "command": 6,
    }
    package = Path(report_module.__file__).parent
    assert {f.stem for f in package.glob("*.py")} - {"__init__"} == set(layers)  # a new module gets its layer
    init = ast.parse((package / "__init__.py").read_text())
    assert not [n for n in ast.walk(init) if isinstance(n, (ast.Import, ast.ImportFrom))]
    for name, level in layers.items():
        tree = ast.parse((package / f"{name}.py").read_text())
        imported = {
            n.module.rsplit(".", 1)[-1]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("fairbench.report.")
        }
        assert all(layers[m] < level for m in imported), (name, imported)


# ---------------------------------------------------------------- intervals, comparisons, ranks (issue 11)


def test_csv_holds_intervals_and_differences_from_the_baseline(reported: tuple[Path, str, str]) -> None:
    rows = list(csv.DictReader((reported[0] / "leaderboard.csv").open()))
    new = [
        "avg_err_lo",
        "avg_err_hi",
        "worst_err_lo",
        "worst_err_hi",
        "avg_err_delta",
        "avg_err_delta_lo",
        "avg_err_delta_hi",
        "worst_err_delta",
        "worst_err_delta_lo",
        "worst_err_delta_hi",
    ]
    assert {f"{t}_{c}" for t in ALL_THREATS for c in new} | {"baseline", "rank"} <= set(rows[0])
    group_a = [r for r in rows if r["epochs"] == "2"]
    base = next(r for r in group_a if r["label"] == "pgd-at")
    assert {r["baseline"] for r in rows} == {"pgd-at"}
    for t in ALL_THREATS:
        assert base[f"{t}_avg_err_delta"] == base[f"{t}_worst_err_delta_hi"] == "0.000000"
        for r in group_a:
            for stat in ("avg", "worst"):
                lo, mean, hi = (float(r[f"{t}_{stat}_err{s}"]) for s in ("_lo", "", "_hi"))
                assert lo <= mean <= hi and (stat == "worst" or hi - lo > 0.01), (r["label"], t, stat)
                delta = float(r[f"{t}_{stat}_err_delta"])
                assert delta == pytest.approx(mean - float(base[f"{t}_{stat}_err"]), abs=2e-6)
                assert float(r[f"{t}_{stat}_err_delta_lo"]) <= delta <= float(r[f"{t}_{stat}_err_delta_hi"])
    fairat = next(r for r in group_a if r["label"] == "fairat")  # accuracy level 0.75 / 0.70 vs 0.55 / 0.60
    assert float(fairat["clean_avg_err_delta_hi"]) < 0
    no_outcomes = next(r for r in rows if r["label"] == "my_method")
    assert no_outcomes["pgd20_avg_err"] != "" and no_outcomes["pgd20_avg_err_lo"] == ""
    assert no_outcomes["pgd20_avg_err_delta"] == "" and no_outcomes["rank"] in {"1", "2"}


def test_tables_show_intervals_marks_and_tied_ranks(reported: tuple[Path, str, str]) -> None:
    results, out, _ = reported
    assert "| PGD-20 Δworst | PGD-20 Δavg |" in out and "| Δavg | Δworst |" in out and "| baseline | baseline |" in out
    board = build_report(results)
    a = board.groups[0]
    fairat = next(r for r in a.rows if r.label == "fairat")
    ci = fairat.threats["clean"].ci
    assert ci.avg_delta.significant
    clean_table = out.split("### clean")[1]
    line = next(line for line in clean_table.splitlines() if line.startswith(f"| {fairat.rank} | fairat |"))
    assert f"{100 * ci.avg.lo:.1f}, {100 * ci.avg.hi:.1f}]" in line and " †" in line
    # ranks: the best row and every row whose interval overlaps its interval share rank 1
    worst = [r.threats[a.sort_threat].ci.worst for r in a.rows]
    best = min(range(len(worst)), key=lambda i: a.rows[i].threats[a.sort_threat].worst.mean)
    for row, w in zip(a.rows, worst):
        assert (row.rank == 1) == (w.lo <= worst[best].hi and worst[best].lo <= w.hi), row.label
    assert [r.rank for r in a.rows] == sorted(r.rank for r in a.rows)
    tex = (results / "leaderboard.tex").read_text()
    assert r"$\Delta$Avg & $\Delta$Worst" in tex and r"{\scriptsize [" in tex and "$^\\dagger$" in tex
    html = (results / "index.html").read_text()
    assert 'data-key="autoattack_worst_delta"' in html and "95% intervals" in html


def test_a_run_without_outcomes_is_reported_without_intervals_and_named(reported: tuple[Path, str, str]) -> None:
    results, out, err = reported
    assert "warning: runs/run8/metrics.json: no outcomes.csv.gz" in err
    lines = [line.strip("| ").split(" | ") for line in out.splitlines() if "| my_method |" in line]
    assert len(lines) == 3  # the compact table, clean and PGD-20 (the union is PGD-20's)
    for cells in lines:
        assert not any("[" in c for c in cells) and cells.count("-") == 2  # its Δavg and Δworst
    assert "runs/run8/metrics.json" in (results / "index.html").read_text()


def test_baseline_option_and_a_baseline_in_no_group(results: Path, capsys: pytest.CaptureFixture) -> None:
    board = build_report(results, "trades")
    a, b = board.groups
    assert (a.baseline, b.baseline) == ("trades", None)
    trades = next(r for r in a.rows if r.label == "trades")
    assert trades.threats["pgd20"].ci.avg_delta == Delta(0.0, 0.0, 0.0)
    assert all(r.threats["pgd20"].ci is None or r.threats["pgd20"].ci.worst_delta is None for r in b.rows)
    assert (b.key.label(), "no trades row, so no comparisons with a baseline (--baseline picks one)") in board.warnings
    assert run_cli(["report", "--results", str(results), "--baseline", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --baseline nope is not a method of any group")
    assert all(m in err[0] for m in ("pgd-at", "trades (beta=3)", "fairat", "my_method"))
    assert not (results / "leaderboard.md").exists()


def test_outcomes_that_disagree_with_metrics_skip_the_run(results: Path) -> None:
    shutil.rmtree(results / "runs" / "zcopy")  # a copy of run0's metrics.json, used once run0 is skipped
    path = results / "runs" / "run0" / OUTCOMES_FILE
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    first = lines[1].split(",")
    first[2] = "1" if first[2] == "0" else "0"  # one clean outcome flipped (robust ones stay legal)
    first[3:] = ["0" if v else v for v in first[3:]]
    lines[1] = ",".join(first)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
    board = build_report(results)
    skipped = dict(board.skipped)
    assert "runs/run0/metrics.json" in skipped and "not what the rows give" in skipped["runs/run0/metrics.json"]
    pgd = next(r for r in board.groups[0].rows if r.label == "pgd-at")
    assert pgd.seeds == [1] and pgd.threats["clean"].ci is not None


def test_class_wise_error_bars_are_the_intervals(results: Path) -> None:
    a, b = build_report(results).groups
    for group in (a, b):
        ax = class_wise_figure(group, "pgd20").axes[0]
        for bars, row in zip([c for c in ax.containers if isinstance(c, BarContainer)], group.rows):
            ci = row.threats["pgd20"].ci
            if ci is None:  # my_method: no outcomes, no error bars
                assert bars.errorbar is None and row.label == "my_method"
                continue
            ends = [sorted(seg[:, 1]) for seg in bars.errorbar.lines[2][0].get_segments()]
            assert ends == [pytest.approx([100 * c.lo, 100 * c.hi]) for c in ci.per_class]


def test_tradeoff_figure_has_a_point_and_cross_per_method_and_the_pareto_front(results: Path) -> None:
    group = build_report(results).groups[0]
    fig = tradeoff_figure(group)
    ax = fig.axes[0]
    t = group.sort_threat
    points = [(100 * r.threats[t].avg.mean, 100 * r.threats[t].worst.mean) for r in group.rows]
    marks = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.lines[0].get_xydata()[0].tolist() for c in marks] == [pytest.approx(p) for p in points]
    assert all(c.has_xerr and c.has_yerr for c in marks)
    for c, row in zip(marks, group.rows):  # the cross spans the row's two intervals
        (xs, _), (_, ys) = (seg.get_segments()[0].T for seg in c.lines[2])
        ci = row.threats[t].ci
        assert sorted(xs) == pytest.approx([100 * ci.avg.lo, 100 * ci.avg.hi])
        assert sorted(ys) == pytest.approx([100 * ci.worst.lo, 100 * ci.worst.hi])
    assert [x.get_text() for x in ax.texts] == [point_label(r, usual_seeds(group)) for r in group.rows]
    assert "trades (beta=3) (1 seed)" in [x.get_text() for x in ax.texts]  # the others have the usual 2
    front = next(line for line in ax.lines if line.get_label() == "Pareto front").get_xydata()
    on_front = {tuple(p) for p in front.tolist()}
    for i in pareto_front(points):
        assert tuple(points[i]) in on_front
    assert "PGD-20" in ax.get_xlabel() and "worst-class" in ax.get_ylabel()
    # the axes hold the points and their intervals, inside 0-100, not the whole 0-100
    (x0, x1), (_, y1) = ax.get_xlim(), ax.get_ylim()
    lows = [100 * r.threats[t].ci.avg.lo for r in group.rows]
    assert 0 <= x0 <= min(lows) and x1 <= 100 and y1 <= 100 and (x1 - x0) < 100
    assert pareto_front([(1, 5), (2, 2), (3, 3), (1, 5), (0.5, 9)]) == [4, 0, 3, 1]


def test_tradeoff_labels_do_not_cover_each_other() -> None:
    """Four methods at almost the same point: each label goes to a free side of the point."""
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.add_subplot()
    points = [(30.0, 60.0), (30.2, 60.1), (29.9, 59.8), (30.1, 59.9), (45.0, 90.0)]
    ax.plot(*zip(*points), "o")
    ax.set_xlim(20, 50)
    ax.set_ylim(40, 100)
    legend = ax.legend(["a"], loc="lower right")
    labels = [f"method-{i} (3 seeds)" for i in range(len(points))]
    _place_labels(fig, ax, points, labels, legend)
    assert [t.get_text() for t in ax.texts] == labels
    renderer = FigureCanvasAgg(fig).get_renderer()
    for t in ax.texts:
        t.update_positions(renderer)
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]  # the text, not its leader line
    marks = [Bbox.from_extents(px - 3, py - 3, px + 3, py + 3) for px, py in ax.transData.transform(points)]
    for i, a in enumerate(boxes):
        assert all(_overlap(a, b) == 0 for b in boxes[i + 1 :]), labels[i]
        assert all(_overlap(a, m) == 0 for m in marks), labels[i]  # no label covers a point
        assert _overlap(a, legend.get_window_extent(renderer)) == 0


def test_tradeoff_figure_is_shown_in_index_html_in_chromium(reported: tuple[Path, str, str], tmp_path: Path) -> None:
    """The page, loaded in an iframe of a probe page, shows each group's trade-off image decoded."""
    results = reported[0]
    dom = probe(
        results / "index.html",
        tmp_path,
        'doc.querySelectorAll("figure.tradeoff img").forEach(function (img) {'
        ' out.push(["IMG", img.complete, img.naturalWidth, img.naturalHeight,'
        '           Math.round(img.getBoundingClientRect().width), img.alt].join("|")); });',
    )
    shown = [found.split("|") for found in re.findall(r"IMG\|[^\n<]*", dom)]
    board = build_leaderboard(results)
    png = (results / "figures").glob("*_tradeoff.png")
    sizes = sorted(_png_size(p) for p in png)
    assert len(shown) == len(board.groups) == len(sizes)
    assert sorted((int(w), int(h)) for _, _, w, h, _, _ in shown) == sizes
    for _, complete, w, _, on_page, alt in shown:
        assert complete == "true" and int(on_page) > 300 and alt.startswith("trade-off: average vs worst-class")


def test_runs_with_another_batch_norm_batch_are_separate_rows(tmp_path: Path) -> None:
    """Plain DDP normalises each process's share of the batch (16 images on 8 GPUs): such a run is
    not the same experiment as a one-process run, so it gets its own row, labelled. A run written
    before bn_batch was recorded gets it from its batch size and world size."""
    one = record("pgd-at", {}, 0, 2, ALL_THREATS, 0.55)
    eight = record("pgd-at", {}, 0, 2, ALL_THREATS, 0.55) | {"timing": {"train_s": 1.0, "world_size": 8}}
    synced = json.loads(json.dumps(eight)) | {"seed": 1}
    synced["training"] |= {"seed": 1, "sync_bn": True, "world_size": 8, "bn_batch": 128}
    for name, doc in (("one", one), ("eight", eight), ("synced", synced)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "metrics.json").write_text(json.dumps(doc))
    board = build_leaderboard(tmp_path)
    assert not board.skipped
    (group,) = board.groups
    rows = {r.label: r.seeds for r in group.rows}
    assert rows == {"pgd-at (bn_batch=128)": [0, 1], "pgd-at (bn_batch=16)": [0]}  # synced joins one


def test_weight_averaging_and_a_starting_run_make_their_own_rows(tmp_path: Path) -> None:
    """A run evaluated on its EMA (or started from another run) is another experiment: its own row,
    labelled, never averaged with the plain runs of the same seed."""
    plain = record("pgd-at", {}, 0, 2, ALL_THREATS, 0.55)
    ema = record("pgd-at", {}, 0, 2, ALL_THREATS, 0.60)
    ema["training"] = RunConfig(
        method="pgd-at",
        arch="small-cnn",
        dataset="fashion-mnist",
        epochs=2,
        eps=0.1,
        step_size=0.025,
        train_per_class=50,
        ema=0.85,
        eval_per_class=N_PER_CLASS,
    ).training_dict() | {"eval_per_class": N_PER_CLASS}
    for i, doc in enumerate((plain, ema | {"run_id": "ema"})):
        (tmp_path / "runs" / f"r{i}").mkdir(parents=True)
        (tmp_path / "runs" / f"r{i}" / "metrics.json").write_text(json.dumps(doc))
    board = build_leaderboard(tmp_path)
    (group,) = board.groups
    assert sorted(row.label for row in group.rows) == ["pgd-at (ema=0.85)", "pgd-at (ema=None)"]
    assert not board.skipped


def test_a_fine_tuning_run_joins_its_sources_table_one_row_over_seeds(tmp_path: Path) -> None:
    """FAAL fine-tunes a finished run (--init-from): it is compared with the runs trained like its
    source (the group's budget is the source's), its seeds share one row although each starts from
    another source folder, the row says what it adds, and its own recipe (lr, epochs) does not
    label the rows trained from scratch."""
    docs = {}
    for seed in (0, 1):
        docs[f"base{seed}"] = record("pgd-at", {}, seed, 4, ALL_THREATS, 0.55)
        tuned = record("faal", {}, seed, 2, ALL_THREATS, 0.6)
        tuned["training"] |= {
            "lr": 0.005,
            "schedule": "piecewise:0.5",
            "init_from": f"pgd-at_small-cnn_fashion-mnist_seed{seed}_abc",
        }
        tuned["init_from"] = {
            "run_id": f"pgd-at_small-cnn_fashion-mnist_seed{seed}_abc",
            "method": "pgd-at",
            "epochs": 4,
            "budget_epochs": 4,
        }
        docs[f"faal{seed}"] = tuned | {"run_id": f"faal-{seed}"}
    for name, doc in docs.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "metrics.json").write_text(json.dumps(doc))
    board = build_leaderboard(tmp_path)
    assert not board.skipped
    (group,) = board.groups
    assert group.key.epochs == 4
    assert {r.label: r.seeds for r in group.rows} == {"pgd-at": [0, 1], "faal (from pgd-at, 4+2 epochs)": [0, 1]}


def test_the_group_says_how_many_images_autoattack_ran_on(tmp_path: Path) -> None:
    """AutoAttack on a subset is part of the protocol: the table's title says so, and runs whose
    subsets differ are not ranked in one table."""
    for name, aa in (("a", AA_PER_CLASS), ("b", 5)):
        doc = record("pgd-at", {}, 0, 2, ALL_THREATS, 0.55) | {"run_id": name}
        doc["training"] |= {"aa_per_class": aa}
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "metrics.json").write_text(json.dumps(doc))
    board = build_leaderboard(tmp_path)
    labels = sorted(g.key.label() for g in board.groups)
    assert len(labels) == 2 and f"(AutoAttack: {AA_PER_CLASS}/class)" in labels[0] + labels[1]
    assert all("AutoAttack: 5/class" in lab or f"AutoAttack: {AA_PER_CLASS}/class" in lab for lab in labels)
