"""How much each method's result depends on its hyperparameters: every tuning trial's validation
criterion, the trial validation selected and the paper default marked (issue 25, item 5).

A study is a ``trials.csv`` that `fairbench tune` wrote (`fairbench.tune.study`): one row per
finished trial, ``criterion`` = validation average + worst-class robust accuracy, ``selected`` 1
for the best trial of a finished study. Trial 0 of every study is the method's defaults (the
paper's values at the protocol). A trial whose training diverged has empty accuracy and criterion
cells: it is drawn as a cross under the scored ones, and is never selected. Read like every other
result file: a bounded regular file, every field checked, a bad file skipped with its reason;
torch-free.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from fairbench.errors import FairbenchError
from fairbench.report.figures import _render, method_style
from fairbench.report.model import printable, slug
from fairbench.schema import read_regular

TRIALS_FILE = "trials.csv"
MAX_TRIALS_BYTES = 4 << 20
MAX_ROWS = 20_000
REQUIRED = ("method", "trial", "run_dir", "val_avg_acc", "val_worst_acc", "criterion", "selected")


@dataclass(frozen=True)
class TrialPoint:
    method: str
    trial: int
    val_avg: float | None  # None: the trial diverged (no score)
    val_worst: float | None
    criterion: float | None
    selected: bool

    @property
    def diverged(self) -> bool:
        return self.criterion is None


@dataclass(frozen=True)
class Study:
    path: str  # the trials.csv, relative to the results folder (POSIX)
    points: tuple[TrialPoint, ...]

    @property
    def methods(self) -> list[str]:
        return sorted({p.method for p in self.points}, key=lambda m: (m != "pgd-at", m))

    @property
    def stem(self) -> str:
        return slug(f"sensitivity_{Path(self.path).parent.as_posix() or 'results'}")


def parse_trials(data: bytes, where: str) -> tuple[TrialPoint, ...]:
    """The rows of one trials.csv, checked (FairbenchError naming the first problem)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FairbenchError(f"{where}: not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise FairbenchError(f"{where}: missing column(s) {', '.join(missing)}")
    points, seen = [], set()
    for n, row in enumerate(reader, start=2):
        if n - 1 > MAX_ROWS:
            raise FairbenchError(f"{where}: more than {MAX_ROWS} rows")
        try:
            method, trial = row["method"], int(row["trial"])
            cells = [row[c] for c in ("val_avg_acc", "val_worst_acc", "criterion")]
            values = [] if cells == ["", "", ""] else [float(c) for c in cells]
            selected = {"0": False, "1": True}[row["selected"]]
        except (KeyError, TypeError, ValueError):
            raise FairbenchError(f"{where}: line {n}: a value is not of its column's type") from None
        if not (method and len(method) <= 64 and method.isprintable()) or not 0 <= trial <= 100_000:
            raise FairbenchError(f"{where}: line {n}: bad method name or trial number")
        if (method, trial) in seen:
            raise FairbenchError(f"{where}: line {n}: trial {trial} of {method} twice")
        seen.add((method, trial))
        if not values:  # a diverged trial: no score, never selected
            if selected:
                raise FairbenchError(f"{where}: line {n}: a trial without a score cannot be selected")
            points.append(TrialPoint(method, trial, None, None, None, False))
            continue
        if not all(math.isfinite(v) for v in values) or not (0 <= values[0] <= 1 and 0 <= values[1] <= 1):
            raise FairbenchError(f"{where}: line {n}: accuracies must be fractions in [0, 1]")
        if abs(values[2] - values[0] - values[1]) > 1e-5:
            raise FairbenchError(f"{where}: line {n}: criterion is not val_avg_acc + val_worst_acc")
        points.append(TrialPoint(method, trial, values[0], values[1], values[2], selected))
    for method in {p.method for p in points}:
        if sum(p.selected for p in points if p.method == method) > 1:
            raise FairbenchError(f"{where}: more than one trial of {method} is selected")
    return tuple(sorted(points, key=lambda p: (p.method, p.trial)))


def load_studies(results_dir: Path) -> tuple[list[Study], list[tuple[str, str]]]:
    """Every trials.csv under ``results_dir`` (never through a symlinked folder), and those skipped."""
    studies, skipped = [], []
    for folder, dirs, files in os.walk(results_dir, followlinks=False):
        dirs.sort()
        if TRIALS_FILE not in files:
            continue
        path = Path(folder) / TRIALS_FILE
        rel = printable(path.relative_to(results_dir).as_posix())
        try:
            points = parse_trials(read_regular(path, MAX_TRIALS_BYTES), rel)
        except FairbenchError as exc:
            skipped.append((rel, printable(str(exc).removeprefix(f"{rel}: "))))
            continue
        if points:
            studies.append(Study(rel, points))
    return sorted(studies, key=lambda s: s.path), skipped


def sensitivity_paths(study: Study) -> tuple[str, str]:
    return f"figures/{study.stem}.png", f"figures/{study.stem}.svg"


def sensitivity_figure(study: Study) -> Figure:
    """Per method (a column), each trial's criterion as a dot; the paper default (trial 0) a
    hollow diamond, the validation-selected trial a star; a diverged trial (no score) a cross under
    the scored ones; the count of trials under each name."""
    methods = study.methods
    fig = Figure(figsize=(max(5.0, 1.0 + 0.75 * len(methods)), 4.0))
    ax = fig.subplots()
    ys = [100 * p.criterion for p in study.points if p.criterion is not None] or [100.0]
    pad = max(2.0, 0.08 * (max(ys) - min(ys)))
    low = min(ys) - pad  # the bottom of the scored range
    any_diverged = any(p.diverged for p in study.points)
    bottom = low - pad  # a band of its own under it, for the diverged trials
    for x, method in enumerate(methods):
        mine = [p for p in study.points if p.method == method]
        style = method_style(method)
        for i, p in enumerate(mine):
            dx = (i - (len(mine) - 1) / 2) * min(0.06, 0.5 / max(len(mine), 1))
            if p.criterion is None:
                y = bottom
                ax.plot(x + dx, y, "x", color=style.color, markersize=7, markeredgewidth=1.5, zorder=2)
            else:
                y = 100 * p.criterion
                ax.plot(x + dx, y, "o", color=style.color, markersize=5, alpha=0.75, zorder=2)
            if p.trial == 0:
                ax.plot(
                    x + dx,
                    y,
                    "D",
                    markerfacecolor="none",
                    markeredgecolor="0.1",
                    markersize=10,
                    markeredgewidth=1.2,
                    zorder=3,
                )
            if p.selected:
                ax.plot(x + dx, y, "*", color="0.1", markersize=14, zorder=4)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels([f"{m}\n({sum(p.method == m for p in study.points)} trials)" for m in methods], fontsize=8)
    if any_diverged:  # no number on the diverged band: its own tick, under a dotted line
        ax.set_ylim(bottom - pad / 2, max(ys) + pad)
        ticks = [t for t in ax.get_yticks() if low <= t <= max(ys) + pad]
        ax.set_yticks([bottom, *ticks], ["diverged", *(f"{t:g}" for t in ticks)])
        ax.axhline(low, color="0.6", linestyle=":", linewidth=1)
    else:
        ax.set_ylim(low, max(ys) + pad)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_ylabel("validation robust accuracy:\naverage + worst class (points)")
    ax.grid(axis="y", alpha=0.3)
    ax.plot([], [], "D", markerfacecolor="none", markeredgecolor="0.1", label="paper default (trial 0)")
    ax.plot([], [], "*", color="0.1", markersize=10, label="selected on validation")
    if any_diverged:
        ax.plot([], [], "x", color="0.1", markersize=7, label="diverged (no score)")
    ax.legend(loc="best", fontsize=8, frameon=False)
    fig.suptitle(f"Sensitivity to hyperparameters: every trial of {study.path}", fontsize=9)
    fig.tight_layout()
    return fig


def render_sensitivity(study: Study) -> tuple[bytes, bytes]:
    """The sensitivity figure as (PNG bytes, SVG bytes), byte-identical for the same study."""
    return _render(lambda: sensitivity_figure(study))
