"""`fairbench report`: write the leaderboard's tables, charts and page into the results folder.

The top of the report package: it builds the model (`model`) and hands it to the renderers
(`tables`, `figures`, `html`); nothing in the package imports this module.

The report touches only what it owns: it writes only the files named by `OUTPUT` (fixed names and
`slug`-named charts in ``figures/``) inside the results folder, refuses a ``figures`` that is a
symlink or not a folder, and removes only files that its own manifest (`MANIFEST`) says it wrote
last time and that still hold the bytes it wrote. The manifest is kept outside the results folder,
where only this user writes (`manifest_path`: under fairbench's state folder, named by the results
folder's path): anyone who contributes to a results folder can write there, and a manifest in it
could name a user's own file with its true sha256. A `MANIFEST` file in the results folder (earlier
versions wrote one) is never read, and the report's outputs do not depend on where the folder lies.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import replace
from pathlib import Path

from fairbench.errors import FairbenchError
from fairbench.files import atomic_write_bytes, ensure_writable
from fairbench.report.figures import (
    figure_paths,
    forest_paths,
    group_slugs,
    heatmap_paths,
    render_chart,
    render_forest,
    render_heatmap,
    render_tradeoff,
    tradeoff_paths,
)
from fairbench.report.html import to_html
from fairbench.report.intervals import add_intervals
from fairbench.report.model import LabelParams, Leaderboard, build_leaderboard
from fairbench.report.sensitivity import load_studies, render_sensitivity, sensitivity_paths
from fairbench.report.tables import to_csv, to_latex, to_long_csv, to_markdown
from fairbench.runs.machine_key import state_dir
from fairbench.schema import read_regular

__all__ = ["build_leaderboard", "build_report", "write_report"]


MANIFEST = ".fairbench-report.json"  # where earlier versions kept the manifest (never read now)
MANIFEST_FORMAT = 1
OUTPUT = re.compile(
    r"leaderboard\.(md|csv|tex)|leaderboard_long\.csv|index\.html"
    r"|figures/[a-z0-9][a-z0-9._-]{0,200}\.(png|svg)"
)


def build_report(
    results_dir: Path,
    baseline: str | None = None,
    rank_by: str | None = None,
    label_params: LabelParams | None = None,
) -> Leaderboard:
    """The leaderboard of ``results_dir`` with intervals, comparisons with ``baseline`` and ranks by
    ``rank_by`` (``THREAT[:worst|avg]``; default: `model.default_rank_threat`'s worst-class error).
    ``label_params``: see `model.build_leaderboard`."""
    board = add_intervals(build_leaderboard(results_dir, label_params), baseline, rank_by=rank_by)
    studies, skipped = load_studies(results_dir)
    return replace(board, studies=tuple(studies), skipped=board.skipped + tuple(skipped))


def render(board: Leaderboard) -> tuple[dict[str, bytes], str]:
    """Every output file's bytes by its path relative to the results folder, and the Markdown."""
    outputs: dict[str, bytes] = {}
    charts: dict[str, bytes] = {}
    slugs = group_slugs(board)
    for group, stem in zip(board.groups, slugs):
        for paths, render_fn in (
            (tradeoff_paths, render_tradeoff),
            (forest_paths, render_forest),
            (heatmap_paths, render_heatmap),
        ):
            png, svg = paths(stem)
            outputs[png], outputs[svg] = render_fn(group)
            charts[png] = outputs[png]
        for threat, (png, svg) in figure_paths(group, stem).items():
            outputs[png], outputs[svg] = render_chart(group, threat)
            charts[png] = outputs[png]
    for study in board.studies:
        png, svg = sensitivity_paths(study)
        outputs[png], outputs[svg] = render_sensitivity(study)
        charts[png] = outputs[png]
    markdown = to_markdown(board)
    outputs["leaderboard.md"] = markdown.encode()
    outputs["leaderboard.csv"] = to_csv(board).encode()
    outputs["leaderboard_long.csv"] = to_long_csv(board).encode()
    outputs["leaderboard.tex"] = to_latex(board).encode()
    outputs["index.html"] = to_html(board, slugs, charts).encode()
    bad = [rel for rel in outputs if not OUTPUT.fullmatch(rel)]
    if bad:  # a bug, not bad input: file names are built from slugs
        raise AssertionError(f"report output names outside the allow-list: {bad}")
    return outputs, markdown


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_path(results_dir: Path) -> Path:
    """Where the report keeps what it wrote into ``results_dir``: this user's state folder
    (`fairbench.runs.machine_key.state_dir`), ``reports/<sha256 of the folder's real path>.json``."""
    where = str(Path(results_dir).resolve())
    return state_dir() / "reports" / f"{hashlib.sha256(where.encode()).hexdigest()[:32]}.json"


def previous_outputs(results_dir: Path) -> dict[str, str]:
    """What the last report wrote into ``results_dir`` (path -> sha256), from its manifest
    (`manifest_path`); {} if there is none usable."""
    path = manifest_path(results_dir)
    if not os.path.lexists(path):
        return {}
    try:
        doc = json.loads(read_regular(path, 1 << 20))
    except (FairbenchError, ValueError, RecursionError):
        return {}
    files = doc.get("files") if isinstance(doc, dict) and doc.get("format") == MANIFEST_FORMAT else None
    if not isinstance(files, dict) or doc.get("folder") != str(Path(results_dir).resolve()):
        return {}
    return {
        rel: sha
        for rel, sha in files.items()
        if isinstance(rel, str) and OUTPUT.fullmatch(rel) and isinstance(sha, str)
    }


def _still_ours(path: Path, sha: str) -> bool:
    """A regular file (not a symlink) that still holds the bytes the report wrote."""
    try:
        return path.is_file() and not path.is_symlink() and _sha256(read_regular(path, 64 << 20)) == sha
    except FairbenchError:
        return False


def _check_folders(results_dir: Path) -> None:
    figures = results_dir / "figures"
    if figures.is_symlink() or (os.path.lexists(figures) and not figures.is_dir()):
        raise FairbenchError(
            f"{figures} is a symlink or not a folder; the report writes only inside {results_dir}: remove or rename it"
        )
    ensure_writable(figures)  # one clear line, not an OSError halfway through


def write_report(results_dir: Path, board: Leaderboard | None = None) -> tuple[Leaderboard, str, list[Path]]:
    """Write every output for ``board`` (default: `build_report` of ``results_dir``) into ``results_dir``,
    then remove the outputs of the previous report that this one did not write again.

    Returns the leaderboard, its Markdown and the files written.
    """
    results_dir = Path(results_dir)
    board = board if board is not None else build_report(results_dir)
    if not board.groups:
        raise FairbenchError(
            f"no usable metrics.json under {results_dir} ({board.n_files} found, {len(board.skipped)} skipped)"
        )
    outputs, markdown = render(board)
    _check_folders(results_dir)
    previous = previous_outputs(results_dir)
    written = []
    for rel in sorted(outputs):
        atomic_write_bytes(results_dir / rel, outputs[rel])
        written.append(results_dir / rel)
    manifest = {
        "format": MANIFEST_FORMAT,
        "folder": str(results_dir.resolve()),
        "files": {rel: _sha256(outputs[rel]) for rel in sorted(outputs)},
    }
    try:
        manifest_path(results_dir).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_bytes(manifest_path(results_dir), (json.dumps(manifest, indent=1) + "\n").encode())
    except (OSError, FairbenchError):  # no state folder here (an unwritable home): the next report removes nothing
        pass
    for rel, sha in sorted(previous.items()):  # charts of groups that are gone
        if rel not in outputs and _still_ours(results_dir / rel, sha):
            (results_dir / rel).unlink()
    return board, markdown, written
