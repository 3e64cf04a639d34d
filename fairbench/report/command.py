"""`fairbench report`: write the leaderboard's tables, charts and page into the results folder.

The top of the report package: it builds the model (`model`) and hands it to the renderers
(`tables`, `figures`, `html`); nothing in the package imports this module.
"""

from __future__ import annotations

from pathlib import Path

from fairbench.errors import FairbenchError
from fairbench.report.figures import figure_paths, group_slugs, render_chart, render_tradeoff, tradeoff_paths
from fairbench.report.html import to_html
from fairbench.report.intervals import add_intervals
from fairbench.report.model import Leaderboard, build_leaderboard
from fairbench.report.tables import to_csv, to_latex, to_markdown
from fairbench.results import atomic_write_bytes, ensure_writable

__all__ = ["build_leaderboard", "build_report", "write_report"]


def build_report(results_dir: Path, baseline: str | None = None) -> Leaderboard:
    """The leaderboard of ``results_dir`` with intervals, comparisons with ``baseline`` and ranks."""
    return add_intervals(build_leaderboard(results_dir), results_dir, baseline)


def write_report(results_dir: Path, board: Leaderboard | None = None) -> tuple[Leaderboard, str, list[Path]]:
    """Write every output for ``board`` (default: `build_report` of ``results_dir``) into ``results_dir``.

    Returns the leaderboard, its Markdown and the files written.
    """
    results_dir = Path(results_dir)
    board = board if board is not None else build_report(results_dir)
    if not board.groups:
        raise FairbenchError(f"no usable metrics.json under {results_dir} "
                             f"({board.n_files} found, {len(board.skipped)} skipped)")
    outputs: dict[str, bytes] = {}
    charts: dict[str, bytes] = {}
    for group, slug in zip(board.groups, group_slugs(board)):
        png, svg = tradeoff_paths(slug)
        outputs[png], outputs[svg] = render_tradeoff(group)
        charts[png] = outputs[png]
        for threat, (png, svg) in figure_paths(group, slug).items():
            outputs[png], outputs[svg] = render_chart(group, threat)
            charts[png] = outputs[png]
    markdown = to_markdown(board)
    outputs["leaderboard.md"] = markdown.encode()
    outputs["leaderboard.csv"] = to_csv(board).encode()
    outputs["leaderboard.tex"] = to_latex(board).encode()
    outputs["index.html"] = to_html(board, group_slugs(board), charts).encode()
    ensure_writable(results_dir / "figures")  # one clear line, not an OSError halfway through
    written = []
    for rel in sorted(outputs):
        atomic_write_bytes(results_dir / rel, outputs[rel])
        written.append(results_dir / rel)
    for old in sorted((results_dir / "figures").glob("*")):  # charts of groups that are gone
        if old.is_file() and old.suffix in (".png", ".svg") and old not in written:
            old.unlink()
    return board, markdown, written

