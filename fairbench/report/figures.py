"""The report's figures, one style per method everywhere (`method_style`):

- the forest plot: each row's Δworst and Δavg against the baseline with their intervals, under the
  ranking threat (the figure a paper would use);
- the heatmap: robust error of every method (rows, in rank order) on every class, ranking threat;
- the trade-off figure: average against worst-class error under the ranking threat, one point per
  method, labels placed where they cover no point, no other label and not the legend;
- class-wise bar charts (as in the FairAT paper's figure), one per threat.

A method has one colour in every group and figure, from the Okabe-Ito palette (readable with the
common colour-vision deficiencies), fixed by its name (`METHOD_ORDER`, else a hash of the name);
beyond its 8 colours a method also gets its own marker and hatch. The baseline row is drawn with a
thick black edge and named in bold.

Figures are drawn on a bare `matplotlib.figure.Figure` (Agg, no pyplot state) and saved with the
metadata that would change between runs (date, software version, random SVG ids) fixed or
removed, so the same leaderboard always gives the same bytes.
"""

from __future__ import annotations

import io
import math
import textwrap
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from fairbench.report.model import Group, Leaderboard, Row, slug, threat_name
from fairbench.report.stats import Interval

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

# text.parse_math off: a "$" in a class or method name is a dollar sign, never mathtext
_RC: dict[RcKeyType, Any] = {
    "svg.hashsalt": "fairbench",
    "svg.fonttype": "none",
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "text.parse_math": False,
    "text.usetex": False,
}
_PNG_META = {"Software": None}
_SVG_META = {"Date": None, "Creator": "fairbench"}
DPI = 110

# Okabe & Ito (2008), "Color universal design": black, orange, sky blue, bluish green, yellow,
# blue, vermillion, reddish purple.
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
# The registered methods, each with its palette index: the first 8 a colour of their own (PGD-AT,
# the default baseline, black); the rest share a colour but not a marker or hatch.
METHOD_ORDER = {
    "pgd-at": 0,
    "trades": 1,
    "frl-rwrm": 2,
    "frl-rw": 3,
    "fairat": 4,
    "dafa": 5,
    "faal": 6,
    "wat": 7,
    "cfa": 13,
    "bat": 9,
    "frl-rm": 15,
}
MARKERS = ("o", "s", "D", "^", "v", "P")
HATCHES = ("", "///", "\\\\\\", "xx", "..", "++")


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    hatch: str


def method_style(method: str) -> Style:
    """The one style of ``method`` in every figure: from `METHOD_ORDER`, else from a hash of the
    name (so two unknown methods can share one; never a registered method's first 8 colours' style)."""
    i = METHOD_ORDER.get(method)
    if i is None:
        i = 16 + zlib.crc32(method.encode()) % (len(OKABE_ITO) * (len(MARKERS) - 2))
    k = i // len(OKABE_ITO)
    return Style(OKABE_ITO[i % len(OKABE_ITO)], MARKERS[k % len(MARKERS)], HATCHES[k % len(HATCHES)])


def figure_paths(group: Group, stem: str) -> dict[str, tuple[str, str]]:
    """Per threat, the PNG and SVG paths of its class-wise chart, relative to the results folder;
    ``stem`` is one of `group_slugs`, and every file name is a `slug`."""
    return {t: (f"figures/{stem}_{slug(t)}.png", f"figures/{stem}_{slug(t)}.svg") for t in group.threats}


def tradeoff_paths(slug: str) -> tuple[str, str]:
    """The PNG and SVG paths of a group's trade-off figure, relative to the results folder."""
    return f"figures/{slug}_tradeoff.png", f"figures/{slug}_tradeoff.svg"


def forest_paths(slug: str) -> tuple[str, str]:
    """The PNG and SVG paths of a group's forest plot (differences from the baseline)."""
    return f"figures/{slug}_forest.png", f"figures/{slug}_forest.svg"


def heatmap_paths(slug: str) -> tuple[str, str]:
    """The PNG and SVG paths of a group's methods x classes heatmap (ranking threat)."""
    return f"figures/{slug}_heatmap.png", f"figures/{slug}_heatmap.svg"


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


def usual_seeds(group: Group) -> int:
    """The number of seeds most rows have (said once in a caption, not on every label)."""
    counts = Counter(len(r.runs) for r in group.rows)
    return max(counts, key=lambda n: (counts[n], n)) if counts else 0


def point_label(row: Row, usual: int) -> str:
    """A row's label on a figure: its number of seeds only where it is not the usual one."""
    return row.label if len(row.runs) == usual else legend_label(row)


def tick_label(row: Row, usual: int, width: int = 44) -> str:
    """`point_label` wrapped onto lines of at most ``width`` characters (at its spaces), so that a
    row with many tuned hyperparameters does not squeeze a figure's axes to nothing."""
    return textwrap.fill(point_label(row, usual), width)


def _extra_tick_lines(labels: list[str]) -> int:
    """Lines that wrapped labels add beyond one per row (the row height already holds one)."""
    return sum(label.count("\n") for label in labels)


def _seeds_note(group: Group) -> str:
    n = usual_seeds(group)
    return f"{n} seed{'s' if n != 1 else ''} per method unless labelled"


def _is_baseline(group: Group, row: Row) -> bool:
    return group.baseline is not None and row.label == group.baseline


def _class_errors(row: Row, threat: str) -> tuple[list[float], list[list[float]] | None]:
    """Bar heights (%) and, when the row has intervals, their asymmetric error bars (%)."""
    s = row.threats[threat]
    heights = [100 * st.mean if st else float("nan") for st in s.per_class]
    if s.ci is None:
        return heights, None
    low = [max(0.0, h - 100 * ci.lo) if ci.lo == ci.lo else 0.0 for h, ci in zip(heights, s.ci.per_class)]
    high = [max(0.0, 100 * ci.hi - h) if ci.hi == ci.hi else 0.0 for h, ci in zip(heights, s.ci.per_class)]
    return heights, [low, high]


def _title(ax, text: str, group: Group, width: int = 95) -> None:
    """A title on the left, wrapped (a long group label would run off the figure)."""
    ax.set_title(textwrap.fill(text, width) + "\n" + textwrap.fill(group.key.label(), width), fontsize=10, loc="left")


def class_wise_figure(group: Group, threat: str) -> Figure:
    """Grouped bars: per class (by name), one bar per row of ``group``; error bars = 95% intervals.
    At most 12 inches wide (legend below), so its text stays readable at a page's width."""
    classes = group.key.classes
    rows = [r for r in group.rows if threat in r.threats]
    k, n = len(classes), max(1, len(rows))
    width_in = min(max(8.0, 2.0 + k * (0.09 * n + 0.3)), 12.0)
    fig = Figure(figsize=(width_in, 5.6), layout="constrained")
    ax = fig.add_subplot()
    width, usual = 0.85 / n, usual_seeds(group)
    for i, row in enumerate(rows):
        style, base = method_style(row.method), _is_baseline(group, row)
        heights, errors = _class_errors(row, threat)
        offsets = [c + (i - (n - 1) / 2) * width for c in range(k)]
        ax.bar(
            offsets,
            heights,
            width,
            color=style.color,
            hatch=style.hatch or None,
            label=point_label(row, usual),
            edgecolor="black" if base else "0.25",
            linewidth=1.6 if base else 0.3,
            yerr=errors,
            capsize=1.5 if k * n <= 150 else 0,
            error_kw={"elinewidth": 0.6, "ecolor": "0.3"},
        )
    ax.set_xticks(
        range(k), classes, rotation=25 if k > 6 else 0, ha="right" if k > 6 else "center", fontsize=10 if k <= 20 else 7
    )
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_ylim(0, 100)
    ax.set_xlabel("class")
    ax.set_ylabel(f"{threat_name(threat)} error (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _title(
        ax,
        f"{threat_name(threat)} error per class (mean over {_seeds_note(group)}; 95% intervals; baseline outlined)",
        group,
        int(width_in * 11),
    )
    if rows:
        legend = fig.legend(loc="outside lower center", ncols=min(len(rows), 4), fontsize=9, frameon=False)
        for text, row in zip(legend.get_texts(), rows):
            if _is_baseline(group, row):
                text.set_fontweight("bold")
    return fig


def _delta_of(row: Row, threat: str, field: str):
    s = row.threats.get(threat)
    return getattr(s.ci, f"{field}_delta") if s is not None and s.ci is not None else None


def forest_figure(group: Group) -> Figure:
    """Δworst and Δavg (percentage points, row minus baseline) under the ranking threat, each with
    its 95% paired interval; a filled marker where the interval excludes 0. Rows in rank order;
    rows without a comparison are left out."""
    threat = group.sort_threat
    rows = [
        r
        for r in group.rows
        if not _is_baseline(group, r)
        and _delta_of(r, threat, "worst") is not None
        and _delta_of(r, threat, "avg") is not None
    ]
    usual = usual_seeds(group)
    labels = [tick_label(r, usual) for r in rows]
    fig = Figure(figsize=(9.0, 1.6 + 0.36 * max(1, len(rows)) + 0.16 * _extra_tick_lines(labels)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    name = threat_name(threat)
    for ax, field, title in zip(axes, ("worst", "avg"), (f"Δ worst-class {name} error", f"Δ average {name} error")):
        for y, row in enumerate(rows):
            d, style = _delta_of(row, threat, field), method_style(row.method)
            ax.plot([100 * d.lo, 100 * d.hi], [y, y], color=style.color, linewidth=2.2, solid_capstyle="butt")
            ax.plot(
                [100 * d.value],
                [y],
                marker=style.marker,
                markersize=7,
                color=style.color,
                markerfacecolor=style.color if d.significant else "white",
                markeredgecolor="0.15",
                markeredgewidth=1.0,
                linestyle="none",
            )
        ax.axvline(0, color="0.2", linewidth=1.0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("percentage points (row minus baseline)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].set_yticks(range(len(rows)), labels, fontsize=9)
    axes[0].set_ylim(max(len(rows), 1) - 0.5, -0.5)  # rank 1 on top
    if not rows:
        axes[0].text(0, 0, "no row with a comparison", ha="center", va="center", color="0.4")
    base = group.baseline if group.baseline is not None else "no baseline"
    fig.suptitle(
        textwrap.fill(
            f"Against {base}: mean over seeds and 95% paired interval; filled where the "
            f"interval excludes 0 (and both rows have 2+ seeds); negative is better. {group.key.label()}",
            110,
        ),
        fontsize=10,
        x=0.01,
        ha="left",
    )
    return fig


def heatmap_figure(group: Group) -> Figure:
    """Robust error (%) under the ranking threat, methods (rank order) x classes, each cell
    annotated; colour: cividis (ordered, readable with colour-vision deficiencies)."""
    threat = group.sort_threat
    rows = [r for r in group.rows if threat in r.threats]
    classes = group.key.classes
    values = [[100 * st.mean if st else math.nan for st in r.threats[threat].per_class] for r in rows]
    k = len(classes)
    usual = usual_seeds(group)
    labels = [tick_label(r, usual) for r in rows]
    fig = Figure(
        figsize=(
            min(max(7.0, 2.8 + 0.75 * k), 14.0),
            1.8 + 0.36 * max(1, len(rows)) + 0.16 * _extra_tick_lines(labels),
        ),
        layout="constrained",
    )
    ax = fig.add_subplot()
    image = ax.imshow(
        values or [[math.nan] * k], cmap="cividis", vmin=0, vmax=100, aspect="auto", interpolation="nearest"
    )
    for y, line in enumerate(values):
        for x, v in enumerate(line):
            if v == v:
                ax.text(x, y, f"{v:.0f}", ha="center", va="center", fontsize=8, color="black" if v > 55 else "white")
    ax.set_xticks(
        range(k), classes, rotation=25 if k > 6 else 0, ha="right" if k > 6 else "center", fontsize=9 if k <= 20 else 6
    )
    ax.set_yticks(range(len(rows)), labels, fontsize=9)
    for text, row in zip(ax.get_yticklabels(), rows):
        if _is_baseline(group, row):
            text.set_fontweight("bold")
    ax.spines[:].set_visible(False)
    fig.colorbar(image, ax=ax, label=f"{threat_name(threat)} error (%)", shrink=0.9)
    _title(
        ax, f"{threat_name(threat)} error per class and method (mean over {_seeds_note(group)}), rows by rank", group
    )
    return fig


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (<= in both errors, < in one), sorted by x then y."""
    front = [i for i, (x, y) in enumerate(points) if not any(a <= x and b <= y and (a, b) != (x, y) for a, b in points)]
    return sorted(front, key=lambda i: (points[i], i))


def _span(value: float, ci: Interval | None) -> list[list[float]] | None:
    """Asymmetric error bar (%) from a bootstrap interval, none without one."""
    if ci is None:
        return None
    return [[max(0.0, value - 100 * ci.lo)], [max(0.0, 100 * ci.hi - value)]]


def _limits(lows: list[float], highs: list[float]) -> tuple[float, float]:
    """Axis limits around the data (points and interval ends), 6% margin, inside [0, 100]."""
    lo, hi = min(lows), max(highs)
    pad = max(0.06 * (hi - lo), 0.5)
    return max(0.0, lo - pad), min(100.0, hi + pad)


def tradeoff_figure(group: Group) -> Figure:
    """Average (x) against worst-class (y) error under the group's ranking threat: one point per
    row, its 95% intervals as a cross, and the Pareto front (the rows no other row beats on both).
    The axes hold the data and its intervals, not 0-100."""
    threat = group.sort_threat
    rows = [r for r in group.rows if threat in r.threats]
    fig = Figure(figsize=(8.0, 6.0), layout="constrained")
    ax = fig.add_subplot()
    points = [(100 * r.threats[threat].avg.mean, 100 * r.threats[threat].worst.mean) for r in rows]
    xs_lo, xs_hi, ys_lo, ys_hi, bars = [], [], [], [], []
    for row, (x, y) in zip(rows, points):
        ci = row.threats[threat].ci
        style, base = method_style(row.method), _is_baseline(group, row)
        ax.errorbar(
            [x],
            [y],
            xerr=_span(x, ci.avg if ci else None),
            yerr=_span(y, ci.worst if ci else None),
            fmt=style.marker,
            color=style.color,
            markersize=9 if base else 6,
            capsize=3,
            elinewidth=1.0,
            markeredgecolor="black" if base else "0.2",
            markeredgewidth=2.0 if base else 0.6,
        )
        xs_lo.append(100 * ci.avg.lo if ci else x)
        xs_hi.append(100 * ci.avg.hi if ci else x)
        ys_lo.append(100 * ci.worst.lo if ci else y)
        ys_hi.append(100 * ci.worst.hi if ci else y)
    if rows:
        (x0, x1), (y0, y1) = _limits(xs_lo, xs_hi), _limits(ys_lo, ys_hi)
    else:
        (x0, x1), (y0, y1) = (0.0, 100.0), (0.0, 100.0)
    front = [points[i] for i in pareto_front(points)]
    if front:  # the edge of what the front's methods beat: a staircase from the top to the right edge
        xs, ys = [front[0][0]], [y1]
        for (x, y), (nx, _) in zip(front, front[1:] + [(x1, None)]):
            xs += [x, nx]
            ys += [y, y]
        ax.plot(xs, ys, color="0.35", linestyle="--", linewidth=1.0, label="Pareto front", zorder=0)
    lo, hi = max(x0, y0), min(x1, y1)
    if lo < hi:
        ax.plot([lo, hi], [lo, hi], color="0.7", linestyle=":", linewidth=1.0, label="worst = average", zorder=0)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    name = threat_name(threat)
    ax.set_xlabel(f"average {name} error (%)")
    ax.set_ylabel(f"worst-class {name} error (%)")
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    _title(
        ax,
        f"{name} error: average vs worst class (mean over {_seeds_note(group)}; 95% intervals; baseline outlined)",
        group,
        85,
    )
    legend = ax.legend(loc="lower right", fontsize=9, frameon=True, framealpha=0.9)
    usual = usual_seeds(group)
    fig.draw_without_rendering()
    for (x, y), a, b, c, d in zip(points, xs_lo, xs_hi, ys_lo, ys_hi):  # the crosses, 2 px thick
        (px0, py), (px1, _) = ax.transData.transform([(a, y), (b, y)])
        (px, py0), (_, py1) = ax.transData.transform([(x, c), (x, d)])
        bars += [Bbox.from_extents(px0, py - 1, px1, py + 1), Bbox.from_extents(px - 1, py0, px + 1, py1)]
    _place_labels(fig, ax, points, [tick_label(r, usual) for r in rows], legend, bars)
    for text, row in zip(ax.texts, rows):
        if _is_baseline(group, row):
            text.set_fontweight("bold")
    return fig


def _spots() -> list[tuple[float, float, str, str]]:
    """Where a point's label may go, in points from the point: (dx, dy, horizontal, vertical
    alignment), nearest first: beside the point, then on rings further out (with a leader line)."""
    near = [
        (5, 4, "left", "bottom"),
        (5, -4, "left", "top"),
        (-5, 4, "right", "bottom"),
        (-5, -4, "right", "top"),
        (0, 7, "center", "bottom"),
        (0, -7, "center", "top"),
    ]
    far = []
    for r in (16, 26, 38, 52, 68):
        for k in range(16):
            a = 2 * math.pi * k / 16
            dx, dy = r * math.cos(a), r * math.sin(a)
            far.append(
                (
                    round(dx, 2),
                    round(dy, 2),
                    "left" if dx > 1 else "right" if dx < -1 else "center",
                    "bottom" if dy > 1 else "top" if dy < -1 else "center",
                )
            )
    return near + far


_LABEL_SPOTS = _spots()


def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _place_labels(
    fig: Figure, ax, points: list[tuple[float, float]], labels: list[str], legend, lines: list[Bbox] | None = None
) -> None:
    """Label each point at a spot (`_LABEL_SPOTS`) where its text covers no other label, no point,
    not the legend and nothing outside the axes, preferring spots near the point that cross few of
    ``lines`` (boxes in display units, e.g. the intervals' bars); a label set away from its point
    gets a thin leader line. Where no spot is free (a crowded figure), the one covering the least.
    Greedy, in row order, so the same rows give the same figure."""
    canvas = FigureCanvasAgg(fig)  # a bare Figure has no renderer to measure text with
    fig.draw_without_rendering()  # runs the layout: display coordinates below are final
    renderer = canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    r = renderer.points_to_pixels(5.0)
    taken = [Bbox.from_extents(px - r, py - r, px + r, py + r) for px, py in ax.transData.transform(points)]
    taken.append(legend.get_window_extent(renderer))
    pad = renderer.points_to_pixels(1.5)
    per_point = renderer.points_to_pixels(1.0)
    for (x, y), label in zip(points, labels):
        best = None  # ((hard, soft), spot, box): the cheapest so far
        for spot in _LABEL_SPOTS:
            dx, dy, ha, va = spot
            text = ax.annotate(
                label, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=9, color="0.1"
            )
            box = text.get_window_extent(renderer).padded(pad)
            text.remove()
            hard = sum(_overlap(box, b) for b in taken) + box.width * box.height - _overlap(box, frame)
            soft = sum(_overlap(box, b) for b in lines or []) + 0.6 * per_point * math.hypot(dx, dy)
            if best is None or (hard, soft) < best[0]:
                best = ((hard, soft), spot, box)
        assert best is not None  # _LABEL_SPOTS is not empty
        _, (dx, dy, ha, va), box = best
        far = abs(dx) > 8 or abs(dy) > 8
        ax.annotate(
            label,
            (x, y),
            xytext=(dx, dy),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=9,
            color="0.1",
            arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 4}
            if far
            else None,
        )
        taken.append(box)


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


def render_forest(group: Group) -> tuple[bytes, bytes]:
    """The forest plot as (PNG bytes, SVG bytes), byte-identical for the same group."""
    return _render(lambda: forest_figure(group))


def render_heatmap(group: Group) -> tuple[bytes, bytes]:
    """The heatmap as (PNG bytes, SVG bytes), byte-identical for the same group."""
    return _render(lambda: heatmap_figure(group))
