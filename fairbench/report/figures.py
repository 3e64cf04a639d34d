"""Class-wise error bar charts (as in the FairAT paper's figure): classes on x, one bar per method.

Figures are drawn on a bare `matplotlib.figure.Figure` (Agg, no pyplot state) and saved with the
metadata that would change between runs (date, software version, random SVG ids) fixed or
removed, so the same leaderboard always gives the same bytes.
"""

from __future__ import annotations

import io

import matplotlib
from matplotlib.figure import Figure

from fairbench.report.model import Group, Leaderboard, Row, slug, threat_name

# text.parse_math off: a "$" in a class or method name is a dollar sign, never mathtext
_RC = {"svg.hashsalt": "fairbench", "svg.fonttype": "none", "font.size": 10,
       "axes.spines.top": False, "axes.spines.right": False, "text.parse_math": False,
       "text.usetex": False}
_PNG_META = {"Software": None}
_SVG_META = {"Date": None, "Creator": "fairbench"}
DPI = 110


def _colors(n: int) -> list:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def figure_paths(group: Group, stem: str) -> dict[str, tuple[str, str]]:
    """Per threat, the PNG and SVG paths of its class-wise chart, relative to the results folder;
    ``stem`` is one of `group_slugs`, and every file name is a `slug`."""
    return {t: (f"figures/{stem}_{slug(t)}.png", f"figures/{stem}_{slug(t)}.svg") for t in group.threats}


def group_slugs(board: Leaderboard) -> list[str]:
    """File-name stems per group, made unique (two groups differing only in class names)."""
    slugs: list[str] = []
    for group in board.groups:
        stem, n = group.key.slug(), 1
        while (name := stem if n == 1 else f"{stem}-{n}") in slugs:
            n += 1
        slugs.append(name)
    return slugs


def legend_label(row: Row) -> str:
    n = len(row.runs)
    return f"{row.label} ({n} seed{'s' if n != 1 else ''})"


def class_wise_figure(group: Group, threat: str) -> Figure:
    """Grouped bars: per class (by name), one bar per row of ``group``; error bars = std over seeds."""
    classes = group.key.classes
    rows = [r for r in group.rows if threat in r.threats]
    k, n = len(classes), max(1, len(rows))
    fig = Figure(figsize=(min(max(8.0, 3.0 + k * (0.16 * n + 0.4)), 48.0), 4.8), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / n
    for i, (row, color) in enumerate(zip(rows, _colors(len(rows)))):
        stats = row.threats[threat].per_class
        heights = [100 * s.mean if s else float("nan") for s in stats]
        errors = [100 * s.std if s and s.std is not None else 0.0 for s in stats]
        offsets = [c + (i - (n - 1) / 2) * width for c in range(k)]
        ax.bar(offsets, heights, width, color=color, label=legend_label(row),
               yerr=errors if any(errors) else None, capsize=2 if k <= 20 else 0,
               error_kw={"elinewidth": 0.8, "ecolor": "0.2"})
    ax.set_xticks(range(k), classes, rotation=30 if k > 6 else 0, ha="right" if k > 6 else "center",
                  fontsize=9 if k <= 20 else 6)
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_ylim(0, 100)
    ax.set_xlabel("class")
    ax.set_ylabel(f"{threat_name(threat)} error (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(f"{threat_name(threat)} error per class: {group.key.label()}", fontsize=10)
    if rows:
        fig.legend(loc="outside right upper", title="method", fontsize=9, title_fontsize=9, frameon=False)
    return fig


def render_chart(group: Group, threat: str) -> tuple[bytes, bytes]:
    """The chart as (PNG bytes, SVG bytes), byte-identical for the same group."""
    with matplotlib.rc_context(_RC):
        fig = class_wise_figure(group, threat)
        png, svg = io.BytesIO(), io.BytesIO()
        fig.savefig(png, format="png", dpi=DPI, metadata=_PNG_META)
        fig.savefig(svg, format="svg", metadata=_SVG_META)
    return png.getvalue(), svg.getvalue()
