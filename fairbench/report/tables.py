"""Leaderboard tables: Markdown (printed and committed), CSV (for scripts) and booktabs LaTeX.

Errors are shown in percent as the mean over seeds with its 95% bootstrap interval (or ± the sample
std over seeds for a row without outcomes), differences from the group's baseline with theirs; the
CSV keeps fractions in [0, 1] like metrics.json. Markdown and HTML work from the same `columns`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from fairbench.report.model import Group, Leaderboard, Row, Stat, ordered_threats, threat_name
from fairbench.report.stats import Delta, Interval

LEGEND = ("Errors in %, mean over seeds [95% bootstrap interval: seeds and test images resampled] "
          "(mean ± std over seeds for a row without per-example outcomes). *avg*: average error; "
          "*worst*: the mean over seeds of each seed's worst-class error, and the class worst in most seeds "
          "(k/n: in k of n seeds); *spread*: std of the per-class errors. *Δ*: difference from the "
          "group's baseline row (paired bootstrap over the same seeds and test images); † where its "
          "interval excludes 0. *#*: rank by worst-class robust error; a row whose interval overlaps "
          "the best one's shares its rank. *union*: an image is robust only if every attack run on it "
          "fails; counted on the images every attack ran on (the AutoAttack subset where AutoAttack ran "
          "on fewer than the others).")
MARK = "†"  # a difference whose interval excludes 0


@dataclass(frozen=True)
class Column:
    """One table column: ``cell(row)`` gives the text shown and the value it sorts by."""

    key: str
    header: str
    cell: Callable[[Row], tuple[str, float | str | None]]
    numeric: bool = True
    threat: str | None = None  # the threat a column belongs to (the HTML groups headers by it)
    short: str = ""  # the header under the threat's name


def pct(stat: Stat | None, n_runs: int, ci: Interval | None = None) -> str:
    """``mean [lo, hi]`` with an interval, else ``mean ± std``; ``(n=k)`` when seeds are missing."""
    if stat is None:
        return "-"
    if ci is not None:
        text = f"{100 * stat.mean:.1f} [{100 * ci.lo:.1f}, {100 * ci.hi:.1f}]"
    else:
        text = f"{100 * stat.mean:.1f}" + (f" ± {100 * stat.std:.1f}" if stat.std is not None else "")
    return text + (f" (n={stat.n})" if stat.n < n_runs else "")


def signed(x: float) -> str:
    return f"{round(100 * x, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"


def delta_text(delta: Delta | None, is_baseline: bool) -> str:
    if is_baseline:
        return "baseline"
    if delta is None:
        return "-"
    return f"{signed(delta.value)} [{signed(delta.lo)}, {signed(delta.hi)}]" + (f" {MARK}" if delta.significant else "")


def interval(row: Row, threat: str, field: str) -> Interval | Delta | None:
    """``field`` (avg, worst, avg_delta, worst_delta) of the row's bootstrap under ``threat``."""
    s = row.threats.get(threat)
    return getattr(s.ci, field) if s is not None and s.ci is not None else None


def _stat_column(threat: str, field: str, header: str) -> Column:
    def cell(row: Row) -> tuple[str, float | None]:
        s = row.threats.get(threat)
        stat = getattr(s, field) if s else None
        ci = interval(row, threat, field) if field in ("avg", "worst") else None
        return pct(stat, len(row.runs), ci), (stat.mean if stat else None)

    return Column(f"{threat}_{field}", f"{threat_name(threat)} {header}", cell, True, threat, header)


def _delta_column(group: Group, threat: str, field: str) -> Column:
    def cell(row: Row) -> tuple[str, float | None]:
        delta = interval(row, threat, f"{field}_delta")
        text = delta_text(delta, row.label == group.baseline and threat in row.threats)
        return text, (delta.value if delta else None)

    return Column(f"{threat}_{field}_delta", f"{threat_name(threat)} Δ{field}", cell, True, threat, f"Δ{field}")


def _class_column(threat: str) -> Column:
    def cell(row: Row) -> tuple[str, str | None]:
        s = row.threats.get(threat)
        if s is None:
            return "-", None
        n = s.worst.n
        return s.worst_class + (f" ({s.worst_class_votes}/{n})" if s.worst_class_votes < n else ""), s.worst_class

    return Column(f"{threat}_worst_class", f"{threat_name(threat)} worst class", cell, False, threat, "worst class")


def columns(group: Group) -> list[Column]:
    cols = [Column("method", "method", lambda r: (r.label, r.label), numeric=False),
            Column("seeds", "seeds", lambda r: (str(len(r.runs)), float(len(r.runs))))]
    for t in group.threats:
        cols += [_stat_column(t, "avg", "avg"), _stat_column(t, "worst", "worst"), _class_column(t),
                 _stat_column(t, "spread", "spread")]
        if group.baseline is not None:
            cols += [_delta_column(group, t, "avg"), _delta_column(group, t, "worst")]
    return cols


def rank_text(row: Row) -> str:
    return "-" if row.rank is None else str(row.rank)


def sort_note(group: Group) -> str:
    base = f" Δ: against {group.baseline}." if group.baseline is not None else ""
    return f"Sorted by worst-class {threat_name(group.sort_threat)} error.{base}"


def one_line(text: str) -> str:
    """``text`` with every control character (newline, tab, terminal escape) as a space."""
    return "".join(c if c.isprintable() else " " for c in str(text))


_MD_SPECIAL = {"\\": "\\\\", "|": "\\|", "[": "\\[", "]": "\\]", "`": "\\`",
               "<": "&lt;", ">": "&gt;", "&": "&amp;"}


def md_escape(text: str) -> str:
    """Text for a Markdown table cell or heading: one line; no table break (``|``), no HTML, no
    link or code span."""
    return "".join(_MD_SPECIAL.get(c, c) for c in one_line(text))


def to_markdown(board: Leaderboard) -> str:
    lines = ["# fairbench leaderboard", "", LEGEND]
    for group in board.groups:
        cols = columns(group)
        lines += ["", f"## {md_escape(group.key.label())}", "", md_escape(sort_note(group)), "",
                  "| # | " + " | ".join(md_escape(c.header) for c in cols) + " |",
                  "|---:|" + "".join("---:|" if c.numeric else "---|" for c in cols)]
        for row in group.rows:
            # numeric cells are built here from numbers (their brackets are intervals, not links)
            lines.append(f"| {rank_text(row)} | " + " | ".join(c.cell(row)[0] if c.numeric else md_escape(c.cell(row)[0])
                                                              for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _csv_text(text: str) -> str:
    """A text cell that a spreadsheet will not run as a formula, on one line."""
    text = one_line(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


CSV_THREAT_FIELDS = ("avg_err", "avg_err_std", "worst_err", "worst_err_std", "worst_class", "spread",
                     "spread_std", "n", "avg_err_lo", "avg_err_hi", "worst_err_lo", "worst_err_hi",
                     "avg_err_delta", "avg_err_delta_lo", "avg_err_delta_hi",
                     "worst_err_delta", "worst_err_delta_lo", "worst_err_delta_hi")


def _csv_threat_fields(row: Row, threat: str) -> dict[str, Any]:
    s = row.threats.get(threat)
    values: list[Any] = [None] * len(CSV_THREAT_FIELDS)
    if s is not None:
        values[:8] = [s.avg.mean, s.avg.std, s.worst.mean, s.worst.std, _csv_text(s.worst_class), s.spread.mean,
                      s.spread.std, s.avg.n]
        for i, name in ((8, "avg"), (10, "worst")):
            if ci := interval(row, threat, name):
                values[i:i + 2] = [ci.lo, ci.hi]
        for i, name in ((12, "avg_delta"), (15, "worst_delta")):
            if d := interval(row, threat, name):
                values[i:i + 3] = [d.value, d.lo, d.hi]
    return {f"{threat}_{name}": v for name, v in zip(CSV_THREAT_FIELDS, values)}


def leaderboard_frame(board: Leaderboard) -> pd.DataFrame:
    """The CSV's table: one line per row of every group; errors as fractions.

    ``T_*_lo``/``T_*_hi``: the 95% bootstrap interval; ``T_*_delta``: this row minus the group's
    ``baseline`` row (empty without outcomes or without a baseline); ``rank`` admits ties.
    """
    threats = ordered_threats(t for g in board.groups for t in g.threats)
    lines = []
    for group in board.groups:
        k = group.key
        for row in group.rows:
            line = {"dataset": k.dataset, "arch": _csv_text(k.arch), "norm": k.norm, "eps": f"{k.eps:g}",
                    "epochs": k.epochs, "train_per_class": k.train_per_class,
                    "eval_per_class": k.eval_per_class, "select": k.select, "sorted_by": group.sort_threat,
                    "baseline": None if group.baseline is None else _csv_text(group.baseline),
                    "rank": row.rank, "label": _csv_text(row.label), "method": _csv_text(row.method),
                    "params": _csv_text(json.dumps(row.runs[0].record.params, sort_keys=True)),
                    "n_seeds": len(row.runs), "seeds": " ".join(map(str, row.seeds))}
            for t in threats:
                line |= _csv_threat_fields(row, t)
            lines.append(line)
    frame = pd.DataFrame(lines)
    whole = [c for c in frame.columns if c in ("epochs", "train_per_class", "eval_per_class", "rank") or c.endswith("_n")]
    return frame.astype({c: "Int64" for c in whole})


def to_csv(board: Leaderboard) -> str:
    """One table for every group; errors as fractions (6 decimals), std empty for a single seed."""
    return leaderboard_frame(board).to_csv(index=False, float_format="%.6f", na_rep="", lineterminator="\n")


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    """Text for LaTeX: every special character escaped and no line break, so data never starts
    a line, a command or a comment."""
    return "".join(_TEX_SPECIAL.get(c, c) for c in one_line(text))


def _tex_stat(stat: Stat | None, ci: Interval | None = None) -> str:
    if stat is None:
        return "--"
    if ci is not None:
        return f"${100 * stat.mean:.1f}$ {{\\scriptsize $[{100 * ci.lo:.1f}, {100 * ci.hi:.1f}]$}}"
    return f"${100 * stat.mean:.1f}" + (f" \\pm {100 * stat.std:.1f}$" if stat.std is not None else "$")


def _tex_delta(delta: Delta | None, is_baseline: bool) -> str:
    if is_baseline:
        return "base"
    if delta is None:
        return "--"
    mark = "^{\\dagger}" if delta.significant else ""
    return f"${signed(delta.value)}{mark}$ {{\\scriptsize $[{signed(delta.lo)}, {signed(delta.hi)}]$}}"


def _tex_cells(group: Group, row: Row, threat: str) -> list[str]:
    s = row.threats.get(threat)
    width = 6 if group.baseline is not None else 4
    if s is None:
        return ["--"] * width
    cells = [_tex_stat(s.avg, interval(row, threat, "avg")), _tex_stat(s.worst, interval(row, threat, "worst")),
             tex_escape(s.worst_class), _tex_stat(s.spread)]
    if group.baseline is not None:
        is_base = row.label == group.baseline
        cells += [_tex_delta(interval(row, threat, f"{f}_delta"), is_base) for f in ("avg", "worst")]
    return cells


def _tex_table(group: Group) -> list[str]:
    n, width = len(group.threats), (6 if group.baseline is not None else 4)
    spec = "rlr" + (" rrlr" + "rr" * (width == 6)) * n
    heads = " & ".join(f"\\multicolumn{{{width}}}{{c}}{{{tex_escape(threat_name(t))}}}" for t in group.threats)
    rules = " ".join(f"\\cmidrule(lr){{{4 + width * i}-{3 + width * (i + 1)}}}" for i in range(n))
    names = " & Avg & Worst & Class & Spread" + (" & $\\Delta$Avg & $\\Delta$Worst" if width == 6 else "")
    base = (f" $\\Delta$: difference from {tex_escape(group.baseline)} (paired bootstrap), "
            f"$^\\dagger$ where its interval excludes 0." if group.baseline is not None else "")
    label = tex_escape(group.key.label().replace(" · ", ", "))
    lines = [f"% {label}", r"\begin{table}[t]", r"\centering",
             f"\\caption{{{label}. Error (\\%), mean over seeds and its 95\\% bootstrap interval "
             f"(mean $\\pm$ std over seeds without per-example outcomes); worst: the mean of each seed's "
             f"worst-class error, and the class worst in most seeds; spread: std across classes.{base} "
             f"\\#: rank by worst-class {tex_escape(threat_name(group.sort_threat))} error; rows whose "
             f"interval overlaps the best one's share its rank.}}",
             f"\\label{{tab:fairbench-{group.key.slug()}}}", r"\resizebox{\linewidth}{!}{%",
             f"\\begin{{tabular}}{{{spec}}}", r"\toprule", f" & & & {heads} \\\\", rules,
             "\\# & Method & Seeds" + names * n + r" \\", r"\midrule"]
    for row in group.rows:
        cells = [rank_text(row).replace("-", "--"), tex_escape(row.label), str(len(row.runs))]
        for t in group.threats:
            cells += _tex_cells(group, row, t)
        lines.append(" & ".join(cells) + r" \\")
    return lines + [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]


def to_latex(board: Leaderboard) -> str:
    """One booktabs table per group; needs \\usepackage{booktabs,graphicx}."""
    lines = ["% fairbench leaderboard, generated by `fairbench report` from metrics.json files.",
             r"% Needs \usepackage{booktabs} and \usepackage{graphicx}."]
    for group in board.groups:
        lines += [""] + _tex_table(group)
    return "\n".join(lines) + "\n"
