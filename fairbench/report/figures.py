"""Class-wise error bar charts (as in the FairAT paper's figure): classes on x, one bar per method;
and the trade-off figure: average against worst-class robust error, one point per method.

Figures are drawn on a bare `matplotlib.figure.Figure` (Agg, no pyplot state) and saved with the
metadata that would change between runs (date, software version, random SVG ids) fixed or
removed, so the same leaderboard always gives the same bytes.
"""

from __future__ import annotations

import io
import textwrap
from typing import Callable

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from fairbench.report.model import Group, Leaderboard, Row, slug, threat_name
from fairbench.report.stats import Interval

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


def _class_errors(row: Row, threat: str) -> tuple[list[float], list[list[float]] | None]:
    """Bar heights (%) and, when the row has intervals, their asymmetric error bars (%)."""
    s = row.threats[threat]
    heights = [100 * st.mean if st else float("nan") for st in s.per_class]
    if s.ci is None:
        return heights, None
    low = [max(0.0, h - 100 * ci.lo) if ci.lo == ci.lo else 0.0 for h, ci in zip(heights, s.ci.per_class)]
    high = [max(0.0, 100 * ci.hi - h) if ci.hi == ci.hi else 0.0 for h, ci in zip(heights, s.ci.per_class)]
    return heights, [low, high]


def class_wise_figure(group: Group, threat: str) -> Figure:
    """Grouped bars: per class (by name), one bar per row of ``group``; error bars = 95% intervals."""
    classes = group.key.classes
    rows = [r for r in group.rows if threat in r.threats]
    k, n = len(classes), max(1, len(rows))
    fig = Figure(figsize=(min(max(8.0, 3.0 + k * (0.16 * n + 0.4)), 48.0), 4.8), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / n
    for i, (row, color) in enumerate(zip(rows, _colors(len(rows)))):
        heights, errors = _class_errors(row, threat)
        offsets = [c + (i - (n - 1) / 2) * width for c in range(k)]
        ax.bar(offsets, heights, width, color=color, label=legend_label(row),
               yerr=errors, capsize=2 if k <= 20 else 0,
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


def tradeoff_paths(slug: str) -> tuple[str, str]:
    """The PNG and SVG paths of a group's trade-off figure, relative to the results folder."""
    return f"figures/{slug}_tradeoff.png", f"figures/{slug}_tradeoff.svg"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (<= in both errors, < in one), sorted by x then y."""
    front = [i for i, (x, y) in enumerate(points)
             if not any(a <= x and b <= y and (a, b) != (x, y) for a, b in points)]
    return sorted(front, key=lambda i: (points[i], i))


def _span(value: float, ci: Interval | None) -> list[list[float]] | None:
    """Asymmetric error bar (%) from a bootstrap interval, none without one."""
    if ci is None:
        return None
    return [[max(0.0, value - 100 * ci.lo)], [max(0.0, 100 * ci.hi - value)]]


def tradeoff_figure(group: Group) -> Figure:
    """Average (x) against worst-class (y) error under the group's sort threat: one point per row,
    its 95% intervals as a cross, and the Pareto front (the rows no other row beats on both)."""
    threat = group.sort_threat
    rows = [r for r in group.rows if threat in r.threats]
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.add_subplot()
    points = [(100 * r.threats[threat].avg.mean, 100 * r.threats[threat].worst.mean) for r in rows]
    for row, (x, y), color in zip(rows, points, _colors(len(rows))):
        ci = row.threats[threat].ci
        ax.errorbar([x], [y], xerr=_span(x, ci.avg if ci else None), yerr=_span(y, ci.worst if ci else None),
                    fmt="o", color=color, markersize=5, capsize=3, elinewidth=1.0)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    front = [points[i] for i in pareto_front(points)]
    if front:  # the edge of what the front's methods beat: a staircase from the top to the right edge
        xs, ys = [front[0][0]], [y1]
        for (x, y), (nx, _) in zip(front, front[1:] + [(x1, None)]):
            xs += [x, nx]
            ys += [y, y]
        ax.plot(xs, ys, color="0.35", linestyle="--", linewidth=1.0, label="Pareto front", zorder=0)
    ax.plot([x0, x1], [x0, x1], color="0.7", linestyle=":", linewidth=1.0, label="worst = average", zorder=0)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    name = threat_name(threat)
    ax.set_xlabel(f"average {name} error (%)")
    ax.set_ylabel(f"worst-class {name} error (%)")
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    label = textwrap.fill(group.key.label(), 95)  # a long group label would run off the figure
    ax.set_title(f"{name} error: average vs worst class (mean over seeds, 95% intervals)\n{label}", fontsize=9)
    legend = ax.legend(loc="lower right", fontsize=8, frameon=False)
    _place_labels(fig, ax, points, [legend_label(r) for r in rows], legend)
    return fig


# where a point's label may go, in points from the point: (dx, dy, horizontal, vertical alignment);
# the first that overlaps nothing is taken
_LABEL_SPOTS = ((5, 4, "left", "bottom"), (5, -4, "left", "top"), (-5, 4, "right", "bottom"),
                (-5, -4, "right", "top"), (0, 7, "center", "bottom"), (0, -7, "center", "top"))


def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _place_labels(fig: Figure, ax, points: list[tuple[float, float]], labels: list[str], legend) -> None:
    """Label each point where its text covers the least of the other labels, the points, the legend
    and the space outside the axes (greedy, in row order, so the same rows give the same figure)."""
    canvas = FigureCanvasAgg(fig)  # a bare Figure has no renderer to measure text with
    fig.draw_without_rendering()  # runs the layout: display coordinates below are final
    renderer = canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    r = renderer.points_to_pixels(4.0)
    taken = [Bbox.from_extents(px - r, py - r, px + r, py + r) for px, py in ax.transData.transform(points)]
    taken.append(legend.get_window_extent(renderer))
    for (x, y), label in zip(points, labels):
        best = None  # (cost, text, its box): the text kept so far; the others are removed
        for dx, dy, ha, va in _LABEL_SPOTS:
            text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                               fontsize=8, color="0.15")
            box = text.get_window_extent(renderer)
            cost = sum(_overlap(box, b) for b in taken) + box.width * box.height - _overlap(box, frame)
            if best is not None and cost >= best[0]:
                text.remove()
                continue
            if best is not None:
                best[1].remove()
            best = (cost, text, box)
            if cost == 0:
                break
        taken.append(best[2])


def _render(fig_fn: Callable[[], Figure]) -> tuple[bytes, bytes]:
    with matplotlib.rc_context(_RC):
        fig = fig_fn()
        png, svg = io.BytesIO(), io.BytesIO()
        fig.savefig(png, format="png", dpi=DPI, metadata=_PNG_META)
        fig.savefig(svg, format="svg", metadata=_SVG_META)
    return png.getvalue(), svg.getvalue()


def render_chart(group: Group, threat: str) -> tuple[bytes, bytes]:
    """The class-wise chart as (PNG bytes, SVG bytes), byte-identical for the same group."""
    return _render(lambda: class_wise_figure(group, threat))


def render_tradeoff(group: Group) -> tuple[bytes, bytes]:
    """The trade-off figure as (PNG bytes, SVG bytes), byte-identical for the same group."""
    return _render(lambda: tradeoff_figure(group))
