"""`fairbench report` on result files from strangers (issue 14): a folder of hostile files beside
valid runs. Nothing is written outside the results folder, nothing the report did not make is
removed, the page holds no element or attribute that fairbench did not write, the .tex no line,
valid runs still appear, and every hostile file is skipped with the file and the field named.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from fairbench.errors import FairbenchError
from fairbench.report.command import MANIFEST
from fairbench.schema import build_record, make_outcomes, outcomes_bytes, read_metrics, read_outcomes, write_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from browser import chromium
from cli_helpers import exit_code

PER_CLASS = 12
XSS = '"><img src=x onerror=document.body.dataset.pwned=1>'
TEX = "\\input{/etc/passwd}"


def good_run(method: str, seed: int, level: float = 0.7, attacks: bool = True):
    """A valid record and its outcomes (clean and PGD-20 on all images, AutoAttack on half)."""
    rng = np.random.default_rng(seed + 100 * len(method))
    labels = np.repeat(np.arange(10), PER_CLASS)
    clean = rng.random(labels.size) < level + 0.2
    pgd = clean & (rng.random(labels.size) < level)
    aa = pgd & (rng.random(labels.size) < 0.9)
    aa = np.where(np.arange(labels.size) % 2 == 0, aa, -1)
    correct = {"clean": clean, "pgd20": pgd, "autoattack": aa} if attacks else {"clean": clean}
    outcomes = make_outcomes(np.arange(labels.size) * 3, labels, correct)
    record = build_record(
        run_id=f"{re.sub(r'[^A-Za-z0-9]', '-', method)[:40]}-{seed}",
        method=method,
        params={},
        arch="small-cnn",
        dataset="fashion-mnist",
        seed=seed,
        epochs=2,
        eps=0.1,
        training={"epochs": 2, "train_per_class": 50, "eval_per_class": None},
        outcomes=outcomes,
    )
    return record, outcomes


def put(root: Path, name: str, doc, outcomes: bytes | None = None) -> Path:
    folder = root / "runs" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    if outcomes is not None:
        (folder / "outcomes.csv.gz").write_bytes(outcomes)
    return folder


def valid_folder(root: Path) -> dict:
    """Two methods x two seeds with outcomes, one run without (older results), one broken file."""
    for method in ("pgd-at", "trades"):
        for seed in (0, 1):
            record, outcomes = good_run(method, seed)
            folder = root / "runs" / f"good-{method}-{seed}"
            folder.mkdir(parents=True)
            write_run(folder, record, outcomes)
    record, _ = good_run("fairat", 0)
    put(root, "older-fairat", record.to_json())
    put(root, "broken", '{"schema_version": 1, "run_id": "x", "metr')
    return record.to_json()


def hostile_folder(root: Path, outside: Path) -> dict[str, str]:
    """Hostile files beside valid ones; returns {run folder: the field its skip reason must name}."""
    base = valid_folder(root)
    skipped = {}

    def bad(name: str, field: str, change=None, text: str | None = None, outcomes: bytes | None = None) -> Path:
        doc = copy.deepcopy(base)
        if change:
            change(doc)
        skipped[name] = field
        return put(root, name, text if text is not None else doc, outcomes)

    # 1. a threat name that would script the page; 2. one that would write outside the folder
    bad("threat-xss", "metrics", lambda d: d["metrics"].__setitem__(XSS, d["metrics"].pop("pgd20")))
    bad("threat-path", "metrics", lambda d: d["metrics"].__setitem__("x/../../../ESCAPED", d["metrics"].pop("pgd20")))
    (root / "figures" / "x").mkdir(parents=True)
    # 4. LaTeX / Markdown injection through names that are not names
    bad("dataset-tex", "'dataset'", lambda d: d.__setitem__("dataset", f"fmnist\n{TEX}\n"))
    bad("method-newline", "'method'", lambda d: d.__setitem__("method", f"evil\n| a | b |\n<script>x</script>\n{TEX}"))
    bad("params-newline", "params.p", lambda d: d["params"].__setitem__("p", f"x\n{TEX}"))
    # 5. mathtext in a class name, an epoch count whose file name would be too long
    bad("class-mathtext", "'classes'", lambda d: d["classes"].__setitem__(6, "$\\foo{$"))
    bad("epochs-huge", "training.epochs", lambda d: d["training"].__setitem__("epochs", 10**300))
    bad("run-id-path", "run_id", lambda d: d.__setitem__("run_id", "../../etc"))
    bad("nan-accuracy", "metrics.clean.avg", lambda d: d["metrics"]["clean"].__setitem__("avg", float("nan")))
    bad("worst-wrong", "metrics.clean.worst", lambda d: d["metrics"]["clean"].__setitem__("worst", 0.0))
    bad("short-list", "metrics.pgd20.per_class", lambda d: d["metrics"]["pgd20"]["per_class"].pop())
    bad("unknown-field", "unknown field", lambda d: d.__setitem__("extra", "<script>"))
    # 6. unbounded reads: a FIFO, /dev/zero, a long list, a large file, a gzip bomb
    fifo = root / "runs" / "fifo"
    fifo.mkdir(parents=True)
    os.mkfifo(fifo / "metrics.json")
    skipped["fifo"] = "not a regular file"
    (root / "runs" / "zero").mkdir()
    (root / "runs" / "zero" / "metrics.json").symlink_to("/dev/zero")
    skipped["zero"] = "symlink"
    bad(
        "long-list",
        "metrics.clean.per_class",
        lambda d: d["metrics"]["clean"].__setitem__("per_class", [0.5] * 100_000),
    )
    bad(
        "large",
        "bytes",
        lambda d: d["env"].__setitem__("pad", "x" * 900) or d["env"].update({f"k{i}": "y" * 900 for i in range(1200)}),
    )
    record, outcomes = good_run("pgd-at", 7)
    bomb = gzip.compress(b"index,label,clean\n" + b"0" * (80 << 20), mtime=0)
    bad("gzip-bomb", "decompressed", text=json.dumps(record.to_json()), outcomes=bomb)
    commas = gzip.compress(b"index,label," + b"," * (64 << 20), mtime=0)  # issue 28, case 8: 64 KB
    bad("header-of-commas", "decompressed", text=json.dumps(record.to_json()), outcomes=commas)
    # outcomes that disagree with metrics.json, outcomes that are a FIFO
    record, outcomes = good_run("pgd-at", 8)
    flipped = outcomes.results["pgd20"].copy()
    flipped[np.flatnonzero(flipped == 1)[0]] = 0
    disagree = type(outcomes)(outcomes.index, outcomes.label, {**outcomes.results, "pgd20": flipped})
    bad("outcomes-disagree", "outcomes.csv.gz", text=json.dumps(record.to_json()), outcomes=outcomes_bytes(disagree))
    record, _ = good_run("pgd-at", 9)
    os.mkfifo(bad("outcomes-fifo", "not a regular file", text=json.dumps(record.to_json())) / "outcomes.csv.gz")
    # a run folder that is a symlink out of the results folder (its run must not appear)
    record, outcomes = good_run("outsider", 0)
    (outside / "run").mkdir(parents=True)
    write_run(outside / "run", record, outcomes)
    (root / "runs" / "linked").symlink_to(outside / "run")
    # outputs that are symlinks out of the folder: replaced by the report's own files, never written through
    (outside / "mine.md").write_text("mine")
    (root / "leaderboard.md").symlink_to(outside / "mine.md")
    (outside / "mine.png").write_bytes(b"mine")
    (root / "figures" / "fashion-mnist_small-cnn_linf-0.1_e2_tr50_teall_clean.png").symlink_to(outside / "mine.png")
    # a user's own chart, and a forged manifest naming it and files that are not report outputs
    (root / "figures" / "my_paper_plot.png").write_bytes(b"mine")
    # issue 28, case 5: report output names holding the bytes the forged manifest says (the true
    # sha256 of a user's figure, and of empty bytes for an empty file)
    for name, data in USERS_FIGURES.items():
        (root / name).write_bytes(data)
    (root / MANIFEST).write_text(
        json.dumps(
            {
                "format": 1,
                "files": {
                    "figures/my_paper_plot.png": hashlib.sha256(b"not mine").hexdigest(),
                    **{name: hashlib.sha256(data).hexdigest() for name, data in USERS_FIGURES.items()},
                    "runs/good-pgd-at-0/metrics.json": "0" * 64,
                    "../outside.txt": "0" * 64,
                    "/etc/passwd": "0" * 64,
                },
            }
        )
    )
    return skipped


USERS_FIGURES = {"figures/cifar10_old-group_clean.png": b"\x89PNG my figure", "figures/empty_clean.svg": b""}


def cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = exit_code(args)
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (symlinks as their target, FIFOs by kind), not following links."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir" if p.is_dir() else "special"
    return out


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One report over the hostile folder; the world around it snapshotted before and after."""
    world = tmp_path_factory.mktemp("world")
    results, outside = world / "a" / "b" / "results", world / "outside"
    results.mkdir(parents=True)
    outside.mkdir()
    (world / "a" / "keep.txt").write_text("keep")
    expected = hostile_folder(results, outside)
    before = snapshot(world)
    t0 = time.perf_counter()
    code, out, err = cli(["report", "--results", str(results)])
    seconds = time.perf_counter() - t0
    return {
        "world": world,
        "results": results,
        "expected": expected,
        "before": before,
        "after": snapshot(world),
        "code": code,
        "out": out,
        "err": err,
        "seconds": seconds,
    }


def test_hostile_files_are_skipped_naming_the_field(hostile: dict) -> None:
    assert hostile["code"] == 0, hostile["err"]
    err = hostile["err"]
    for name, field in hostile["expected"].items():
        line = next((line for line in err.splitlines() if line.startswith(f"  runs/{name}/")), None)
        assert line is not None, (name, err)
        assert field in line, (name, field, line)
    assert "runs/older-fairat/metrics.json: no outcomes.csv.gz: reported without intervals" in err
    assert "outsider" not in err + hostile["out"]  # the symlinked folder is never read


def test_valid_runs_beside_hostile_ones_still_appear(hostile: dict) -> None:
    rows = list(csv.DictReader((hostile["results"] / "leaderboard.csv").open()))
    assert sorted((r["label"], r["n_seeds"]) for r in rows) == [("fairat", "1"), ("pgd-at", "2"), ("trades", "2")]
    page = (hostile["results"] / "index.html").read_text()
    compact = page.split('class="leaderboard compact"')[1].split("</table>")[0]
    assert compact.count('<tr class="row') == 3


def test_unbounded_reads_are_refused_quickly(hostile: dict) -> None:
    """Defect 6: a FIFO, /dev/zero, a 100k-item list, a 2 MB file and a gzip bomb cost nothing."""
    assert hostile["seconds"] < 60


@pytest.mark.parametrize(
    "text",
    [
        b"index,label," + b"," * (64 << 20),
        b"index,label,clean\n" + b"," * (64 << 20),
        b"index,label,clean\n" + b"\n" * (64 << 20),
    ],
    ids=["header-of-commas", "row-of-commas", "empty-lines"],
)
def test_parsing_outcomes_costs_memory_in_proportion_to_the_test_set(text: bytes) -> None:
    """Issue 28, case 8: a 64 KB gzip that expands to a 64 MiB header of commas took `report` to
    1.9 GB of memory. The size is checked before the text is split (and a file of a data set with a
    known test set is cut at the most its rows can take once decompressed)."""
    import tracemalloc

    from fairbench.schema import parse_outcomes
    from fairbench.schema.files import outcomes_text_bound

    record, _ = good_run("pgd-at", 0)
    assert outcomes_text_bound("fashion-mnist") < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(FairbenchError):
            parse_outcomes(text, record, "outcomes.csv.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MiB"


def test_nothing_written_outside_the_results_folder(hostile: dict) -> None:
    """Defect 2: outside the results folder nothing is added, changed or removed."""
    prefix = hostile["results"].relative_to(hostile["world"]).as_posix() + "/"
    outside = lambda snap: {k: v for k, v in snap.items() if not k.startswith(prefix)}  # noqa: E731
    assert outside(hostile["after"]) == outside(hostile["before"])
    assert not [p for p in hostile["world"].rglob("*ESCAPED*")]


def test_nothing_removed_that_the_report_did_not_make(hostile: dict) -> None:
    """Defect 3: every file that was there is still there, unchanged, except the report's own outputs."""
    ours = re.compile(r"leaderboard\.(md|csv|tex)|index\.html|\.fairbench-report\.json|figures/[a-z0-9._-]+\.(png|svg)")
    prefix = hostile["results"].relative_to(hostile["world"]).as_posix() + "/"
    for rel, digest in hostile["before"].items():
        inner = rel.removeprefix(prefix)
        if not ours.fullmatch(inner) or inner == "figures/my_paper_plot.png":
            assert hostile["after"].get(rel) == digest, rel


def test_a_forged_manifest_removes_nothing(hostile: dict) -> None:
    """Issue 28, case 5: a forged manifest carrying the true sha256 of a user's figure (or of empty
    bytes, for an empty file) got that file deleted. The report reads no manifest in the results
    folder: its own lies in this user's state folder."""
    for name, data in USERS_FIGURES.items():
        assert (hostile["results"] / name).read_bytes() == data, name


def test_only_the_manifest_in_the_users_state_folder_removes_files(tmp_path: Path, monkeypatch) -> None:
    """The report's own manifest (outside the results folder) still removes the charts of groups
    that are gone; the results folder holds no manifest, so its outputs do not depend on its path."""
    from fairbench.report.command import manifest_path

    monkeypatch.setenv("FAIRBENCH_STATE_DIR", str(tmp_path / "state"))
    results = tmp_path / "results"
    valid_folder(results)
    assert cli(["report", "--results", str(results)])[0] == 0
    assert not (results / MANIFEST).exists()
    mine = manifest_path(results)
    assert mine.parent.parent == tmp_path / "state" and mine.is_file()
    old = "figures/cifar10_gone-group_clean.png"  # a chart of a group that is gone, as the manifest says
    doc = json.loads(mine.read_text())
    doc["files"][old] = hashlib.sha256(b"an old chart").hexdigest()
    (results / old).write_bytes(b"an old chart")
    (results / MANIFEST).write_text(json.dumps(doc))  # the same list in the results folder: not read
    other = tmp_path / "other"
    shutil.copytree(results, other)
    assert cli(["report", "--results", str(other)])[0] == 0
    assert (other / old).read_bytes() == b"an old chart"  # another folder's manifest says nothing here
    mine.write_text(json.dumps(doc))
    assert cli(["report", "--results", str(results)])[0] == 0
    assert not (results / old).exists()


def test_outputs_that_were_symlinks_are_the_reports_own_files(hostile: dict) -> None:
    """A leaderboard.md or chart that is a symlink out of the folder is replaced, not written through."""
    chart = hostile["results"] / "figures" / "fashion-mnist_small-cnn_linf-0.1_e2_tr50_teall_clean.png"
    for path in (hostile["results"] / "leaderboard.md", chart):
        assert path.is_file() and not path.is_symlink(), path
    assert chart.read_bytes().startswith(b"\x89PNG")
    assert (hostile["world"] / "outside" / "mine.md").read_text() == "mine"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_file_names_are_allow_listed_slugs(text: str) -> None:
    """Every file name the report makes comes from `slug`: [a-z0-9._-], at most 80 characters,
    never empty, never starting with "." or "-" (so never "..", a hidden file or an option)."""
    from fairbench.report.model import slug

    assert re.fullmatch(r"[a-z0-9_][a-z0-9._-]{0,79}", slug(text)), slug(text)


def test_figures_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    results, target = tmp_path / "results", tmp_path / "elsewhere"
    valid_folder(results)
    target.mkdir()
    (target / "precious.png").write_bytes(b"precious")
    (results / "figures").symlink_to(target)
    code, _, err = cli(["report", "--results", str(results)])
    assert code == 2 and "error: " in err and "figures is a symlink or not a folder" in err
    assert [p.name for p in target.iterdir()] == ["precious.png"]
    assert not (results / "index.html").exists()


class _Tags(HTMLParser):
    """Every (tag, attribute name) in a page, and every script's and image's source."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: set[tuple[str, str]] = set()
        self.scripts = 0
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.pairs.add((tag, ""))
        self.pairs.update((tag, name) for name, _ in attrs)
        self.scripts += tag == "script"
        self.srcs += [v or "" for name, v in attrs if name in ("src", "href") and tag != "a"]


def _dom(page: Path, profile: Path) -> _Tags:
    dom = chromium(profile, "--dump-dom", page.as_uri()).stdout
    assert "data-pwned" not in dom
    tags = _Tags()
    tags.feed(dom)
    return tags


def test_page_holds_only_what_fairbench_writes(hostile: dict, tmp_path: Path) -> None:
    """Defect 1: the hostile page, run by Chromium, has no element or attribute that the page of
    the valid runs alone does not have, one script (ours), and images only from data URIs."""
    clean = tmp_path / "clean"
    valid_folder(clean)
    assert cli(["report", "--results", str(clean)])[0] == 0
    baseline = _dom(clean / "index.html", tmp_path / "p1")
    page = _dom(hostile["results"] / "index.html", tmp_path / "p2")
    assert page.pairs <= baseline.pairs, page.pairs - baseline.pairs
    assert page.scripts == 1 and all(s.startswith("data:image/png;base64,") for s in page.srcs)
    assert "data-pwned" not in (hostile["results"] / "index.html").read_text()


ESCAPES = {"\\textbackslash", "\\textasciitilde", "\\textasciicircum"}
# template lines whose shape depends on the group (threats, a baseline's two extra columns) but hold no data
ALLOWED_TEX = re.compile(
    r"% .*|\\caption\{.*\}|\\label\{tab:fairbench-[a-z0-9._-]+\}|.* & .* \\\\"
    r"|\\begin\{tabular\}\{[rl ]+\}|\\begin\{tabular\}\{@\{\}r p\{0\.\d+\\linewidth\}( r)+@\{\}\}"
    r"|\\cmidrule\(lr\)\{\d+-\d+\}( \\cmidrule\(lr\)\{\d+-\d+\})*"
)


def _tex_lines_from_fairbench(tex: str, baseline: str) -> list[str]:
    """The lines of ``tex`` that are neither fixed lines of fairbench's nor its templates."""
    fixed = set(baseline.splitlines())
    return [line for line in tex.splitlines() if line not in fixed and not ALLOWED_TEX.fullmatch(line)]


def test_tex_and_markdown_hold_no_injected_line(hostile: dict, tmp_path: Path) -> None:
    """Defect 4: names with LaTeX commands, HTML and pipes are escaped; none starts a line."""
    results = hostile["results"]
    clean = tmp_path / "clean"
    valid_folder(clean)
    cli(["report", "--results", str(clean)])
    tex = (results / "leaderboard.tex").read_text()
    assert not _tex_lines_from_fairbench(tex, (clean / "leaderboard.tex").read_text())
    commands = set(re.findall(r"\\[A-Za-z]+", tex))
    assert commands <= ESCAPES | set(re.findall(r"\\[A-Za-z]+", (clean / "leaderboard.tex").read_text()))
    assert "\\input" not in tex


def _accepted_names(root: Path) -> None:
    """Runs whose names are printable but hostile: accepted, and escaped wherever they appear."""
    for i, method in enumerate(
        [
            "<script>document.body.dataset.pwned=2</script>|x|",
            "$\\foo{$ \\input{x} %c",
            "[link](javascript:alert(1)) `code` & &amp;",
            '=HYPERLINK("http://x")',
        ]
    ):
        record, outcomes = good_run(method, 0)
        doc = record.to_json()
        doc["arch"] = XSS if i == 0 else "a|b\\c"
        doc["params"] = {"p": "</pre><script>document.body.dataset.pwned=3</script>", "q": TEX}
        doc["env"] = {"x": "</details><img src=x onerror=document.body.dataset.pwned=4>"}
        folder = f"{XSS}\n{TEX}\x1b[31m" if i == 1 else f"names-{i}"  # a folder name is data too
        put(root, folder, doc, outcomes_bytes(outcomes))


def test_printable_hostile_names_are_escaped_everywhere(tmp_path: Path) -> None:
    """Defects 1, 4, 5: accepted names with HTML, LaTeX, Markdown, mathtext and formulas render inert."""
    results = tmp_path / "results"
    valid_folder(results)
    _accepted_names(results)
    code, out, err = cli(["report", "--results", str(results)])
    assert code == 0, err
    md = (results / "leaderboard.md").read_text()
    assert "<" not in md.replace("&lt;", "") and "\\input" not in md.replace("\\\\input", "")
    cells = 0
    for line in md.splitlines():  # every row has its own table's (its header's) number of cells
        if line.startswith("| # |"):
            cells = len(re.findall(r"(?<!\\)\|", line))
        elif line.startswith("| "):
            assert len(re.findall(r"(?<!\\)\|", line.replace("\\\\", ""))) == cells, line
    tex = (results / "leaderboard.tex").read_text()
    clean = tmp_path / "clean"
    valid_folder(clean)
    cli(["report", "--results", str(clean)])
    assert not _tex_lines_from_fairbench(tex, (clean / "leaderboard.tex").read_text())
    assert set(re.findall(r"\\[A-Za-z]+", tex)) <= ESCAPES | set(
        re.findall(r"\\[A-Za-z]+", (clean / "leaderboard.tex").read_text())
    )
    for line in (results / "leaderboard.csv").read_text().splitlines()[1:]:
        # no cell starts a formula (a negative number, such as an interval's lower end, is a number)
        assert not re.search(r"(^|,)([=+@]|-(?!\d+(\.\d+)?(,|$)))", line.replace(",-,", ",")), line
    page = _dom(results / "index.html", tmp_path / "p")
    baseline = _dom(clean / "index.html", tmp_path / "p0")
    assert page.pairs <= baseline.pairs and page.scripts == 1
    svg = next((results / "figures").glob("*_clean.svg")).read_text()
    assert "$\\foo{$" in svg.replace("&lt;", "<")  # the dollar signs are text, not mathtext


# ---------------------------------------------------------------- fuzz: metrics.json fields

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12) | st.sampled_from(
    [XSS, TEX, "$\\foo{$", "a\nb", "|", "../../x", "", "%", "\x1b[31m"]
)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=5,
)


def _paths(doc, prefix=()):
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    out = []
    for key, value in items:
        out += [prefix + (key,)] + _paths(value, prefix + (key,))
    return out


FUZZ_BASE = None


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzz_metrics_fields_through_the_report(data: st.DataObject) -> None:
    """Any field of a metrics.json replaced, deleted or renamed: `fairbench report` exits 0 with
    the valid run reported (and the changed one reported or skipped), never a traceback. Clean
    accuracy only: one chart per group keeps an example under a second."""
    global FUZZ_BASE
    if FUZZ_BASE is None:
        record, outcomes = good_run("pgd-at", 0, attacks=False)
        FUZZ_BASE = (record.to_json(), outcomes_bytes(outcomes))
    doc = copy.deepcopy(FUZZ_BASE[0])
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        how = data.draw(st.sampled_from(["replace", "delete", "rename"]))
        if how == "delete" or (how == "rename" and isinstance(parent, dict)):
            value = parent.pop(path[-1]) if isinstance(parent, dict) else parent.pop(path[-1])
            if how == "rename":
                parent[data.draw(TEXT)] = value
        else:
            parent[path[-1]] = data.draw(VALUES)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "results"
        other, outcomes = good_run("trades", 1, attacks=False)
        put(root, "valid", other.to_json(), outcomes_bytes(outcomes))
        try:
            text = json.dumps(doc)
        except (ValueError, TypeError):
            return
        folder = put(root, "fuzzed", text, FUZZ_BASE[1])
        try:  # what the one validator says of the file, used directly
            read_outcomes(folder / "outcomes.csv.gz", read_metrics(folder / "metrics.json"))
            valid = True
        except FairbenchError:
            valid = False
        code, out, err = cli(["report", "--results", str(root)])
        assert code == 0, err
        assert "Traceback" not in err and "trades" in out
        skipped = "  runs/fuzzed/metrics.json: " in err
        assert skipped != valid or "same experiment and seed" in err  # the report uses the same rules


# ---------------------------------------------------------------- issue 28, case 4: the shared image pool


def _copy_run(method: str, source_seed: int, index_shift: int = 0, relabel: bool = False, seed: int = 0):
    """A run of ``method`` with the outcomes of ``good_run("pgd-at", source_seed)`` (so the same
    numbers), its images shifted in the test set or its labels permuted."""
    _, outcomes = good_run("pgd-at", source_seed)
    label = (outcomes.label + 1) % 10 if relabel else outcomes.label
    results = {t: v for t, v in outcomes.results.items() if t != "union"}
    moved = make_outcomes(outcomes.index + index_shift, label, results)
    record = build_record(
        run_id=f"{method}-{seed}",
        method=method,
        params={},
        arch="small-cnn",
        dataset="fashion-mnist",
        seed=seed,
        epochs=2,
        eps=0.1,
        training={"epochs": 2, "train_per_class": 50, "eval_per_class": None},
        outcomes=moved,
    )
    return record, moved


def _board(root: Path, runs: dict, baseline: str | None = None):
    from fairbench.report.command import build_report

    for name, (record, outcomes) in runs.items():
        (root / "runs" / name).mkdir(parents=True)
        write_run(root / "runs" / name, record, outcomes)
    board = build_report(root, baseline)
    (group,) = board.groups
    return {row.label: row for row in group.rows}, board.warnings


@pytest.mark.parametrize(
    "forge, says",
    [
        (dict(index_shift=5000), "ran on other test images than the baseline's (pgd-at)"),
        (
            dict(relabel=True),
            "its labels of 120 test image(s) are not the baseline's (pgd-at) (image 0: 1 here, 0 there)",
        ),
    ],
)
def test_a_contributed_run_cannot_take_the_baselines_intervals(forge: dict, says: str, tmp_path: Path) -> None:
    """Issue 28, case 4: beside a genuine pgd-at run, a "trades" run with the same numbers whose
    outcomes name test images shifted by 5,000 won the byte-order tie-break for the group's shared
    image pool: the baseline lost every interval and Δ, and the warning blamed it. The pool is the
    baseline's; the contributed run is named, and labels are checked against the baseline's."""
    rows, warnings = _board(
        tmp_path / "results", {"genuine": good_run("pgd-at", 0), "contributed": _copy_run("trades", 0, **forge)}
    )
    for threat in ("clean", "pgd20", "autoattack"):
        assert rows["pgd-at"].threats[threat].ci is not None, threat
        assert rows["trades"].threats[threat].ci is None, threat
    named = [path for path, what in warnings if says in what]
    assert named and set(named) == {"runs/contributed/metrics.json"}, warnings
    assert not any("genuine" in path for path, _ in warnings)


def test_without_a_baseline_a_tie_between_pools_gives_no_intervals(tmp_path: Path) -> None:
    rows, warnings = _board(
        tmp_path / "results", {"a": _copy_run("trades", 0), "b": _copy_run("fairat", 0, index_shift=5000)}
    )
    assert all(s.ci is None for row in rows.values() for s in row.threats.values())
    assert any("as many on one set as on another" in what for _, what in warnings), warnings
    rows, warnings = _board(
        tmp_path / "named",
        {"a": _copy_run("trades", 0), "b": _copy_run("fairat", 0, index_shift=5000)},
        baseline="fairat",
    )
    assert rows["fairat"].threats["pgd20"].ci is not None and rows["trades"].threats["pgd20"].ci is None


# ---------------------------------------------------------------- issue 28, case 9: results/cfa-ablation/compare.py

COMPARE = Path(__file__).resolve().parent.parent / "results" / "cfa-ablation" / "compare.py"


def _compare_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfa_compare", COMPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _link_to_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


@pytest.mark.parametrize(
    "spoil, fragment",
    [
        (lambda here: (here / "metrics-ntrades-seed1.json").write_text('{"schema_version": 1, "run'), "not valid JSON"),
        (lambda here: _fifo(here / "outcomes-last-seed0.csv.gz"), "not a regular file"),
        (lambda here: _link_to_zero(here / "metrics-last-seed2.json"), "a symlink"),
        (lambda here: (here / "outcomes-ntrades-seed2.csv.gz").unlink(), "outcomes-ntrades-seed2.csv.gz: no such file"),
        (lambda here: (here / "metrics-ntrades-seed0.json").unlink(), "metrics-ntrades-seed0.json: unreadable"),
        (lambda here: (here / "outcomes-last-seed1.csv.gz").write_bytes(b"\x1f\x8b not gzip"), "not gzip"),
        (lambda here: None, "does not exist"),  # the files are fine; the results folder is missing
    ],
)
def test_cfa_ablation_compare_names_a_bad_file_in_one_line(spoil, fragment: str, tmp_path: Path) -> None:
    """Issue 28, case 9: compare.py gave tracebacks on a corrupt, FIFO, symlinked or missing file."""
    here = tmp_path / "cfa-ablation"
    shutil.copytree(COMPARE.parent, here)
    spoil(here)
    with pytest.raises(FairbenchError) as err:
        _compare_module().main(results=tmp_path / "no-results", here=here)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_cfa_ablation_compare_as_a_script_prints_one_error_line(tmp_path: Path) -> None:
    here = tmp_path / "results" / "cfa-ablation"
    shutil.copytree(COMPARE.parent, here)
    _fifo(here / "outcomes-last-seed0.csv.gz")
    done = subprocess.run(
        [sys.executable, str(here / "compare.py")], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1 and done.stdout == "", done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and "not a regular file" in done.stderr
