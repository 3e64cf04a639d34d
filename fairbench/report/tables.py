"""Leaderboard tables: Markdown (printed and committed), CSV (for scripts) and booktabs LaTeX.

Errors are shown in percent as mean ± sample std over seeds; the CSV keeps fractions in [0, 1]
like metrics.json. Every renderer works from the same `columns` so the formats never disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from fairbench.report.model import Group, Leaderboard, Row, Stat, ordered_threats, threat_name

LEGEND = ("Errors in %, mean ± std over seeds. *avg*: average error; *worst*: the worst class's error "
          "and that class (k/n: the worst in k of n seeds); *spread*: std of the per-class errors. "
          "Each table is sorted by worst-class robust error, the robust-fairness headline.")


@dataclass(frozen=True)
class Column:
    """One table column: ``cell(row)`` gives the text shown and the value it sorts by."""

    key: str
    header: str
    cell: Callable[[Row], tuple[str, float | str | None]]
    numeric: bool = True
    threat: str | None = None  # the threat a column belongs to (the HTML groups headers by it)
    short: str = ""  # the header under the threat's name


def pct(stat: Stat | None, n_runs: int) -> str:
    if stat is None:
        return "-"
    text = f"{100 * stat.mean:.1f}" + (f" ± {100 * stat.std:.1f}" if stat.std is not None else "")
    return text + (f" (n={stat.n})" if stat.n < n_runs else "")


def _stat_column(threat: str, field: str, header: str) -> Column:
    def cell(row: Row) -> tuple[str, float | None]:
        s = row.threats.get(threat)
        stat = getattr(s, field) if s else None
        return pct(stat, len(row.runs)), (stat.mean if stat else None)

    return Column(f"{threat}_{field}", f"{threat_name(threat)} {header}", cell, True, threat, header)


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
    return cols


def sort_note(group: Group) -> str:
    return f"Sorted by worst-class {threat_name(group.sort_threat)} error."


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
        for rank, row in enumerate(group.rows, 1):
            lines.append(f"| {rank} | " + " | ".join(md_escape(c.cell(row)[0]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _csv_text(text: str) -> str:
    """A text cell that a spreadsheet will not run as a formula, on one line."""
    text = one_line(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def _csv_threat_fields(row: Row, threat: str) -> dict[str, Any]:
    s = row.threats.get(threat)
    values = ([s.avg.mean, s.avg.std, s.worst.mean, s.worst.std, _csv_text(s.worst_class), s.spread.mean,
               s.spread.std, s.avg.n] if s else [None] * 8)
    names = ["avg_err", "avg_err_std", "worst_err", "worst_err_std", "worst_class", "spread", "spread_std", "n"]
    return {f"{threat}_{name}": v for name, v in zip(names, values)}


def leaderboard_frame(board: Leaderboard) -> pd.DataFrame:
    """The CSV's table: one line per row of every group; errors as fractions."""
    threats = ordered_threats(t for g in board.groups for t in g.threats)
    lines = []
    for group in board.groups:
        k = group.key
        for rank, row in enumerate(group.rows, 1):
            line = {"dataset": k.dataset, "arch": _csv_text(k.arch), "norm": k.norm, "eps": f"{k.eps:g}",
                    "epochs": k.epochs, "train_per_class": k.train_per_class,
                    "eval_per_class": k.eval_per_class, "select": k.select, "sorted_by": group.sort_threat,
                    "rank": rank, "label": _csv_text(row.label), "method": _csv_text(row.method),
                    "params": _csv_text(json.dumps(row.runs[0].record.params, sort_keys=True)),
                    "n_seeds": len(row.runs), "seeds": " ".join(map(str, row.seeds))}
            for t in threats:
                line |= _csv_threat_fields(row, t)
            lines.append(line)
    frame = pd.DataFrame(lines)
    whole = [c for c in frame.columns if c in ("epochs", "train_per_class", "eval_per_class") or c.endswith("_n")]
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


def _tex_stat(stat: Stat | None) -> str:
    if stat is None:
        return "--"
    return f"${100 * stat.mean:.1f}" + (f" \\pm {100 * stat.std:.1f}$" if stat.std is not None else "$")


def _tex_table(group: Group) -> list[str]:
    n = len(group.threats)
    spec = "lr" + " rrlr" * n
    heads = " & ".join(f"\\multicolumn{{4}}{{c}}{{{tex_escape(threat_name(t))}}}" for t in group.threats)
    rules = " ".join(f"\\cmidrule(lr){{{3 + 4 * i}-{6 + 4 * i}}}" for i in range(n))
    label = tex_escape(group.key.label().replace(" · ", ", "))
    lines = [f"% {label}", r"\begin{table}[t]", r"\centering",
             f"\\caption{{{label}. Error (\\%), mean $\\pm$ std over seeds; worst: the worst class's error "
             f"and that class; spread: std across classes. {tex_escape(sort_note(group))}}}",
             f"\\label{{tab:fairbench-{group.key.slug()}}}", r"\resizebox{\linewidth}{!}{%",
             f"\\begin{{tabular}}{{{spec}}}", r"\toprule", f" & & {heads} \\\\", rules,
             "Method & Seeds" + " & Avg & Worst & Class & Spread" * n + r" \\", r"\midrule"]
    for row in group.rows:
        cells = [tex_escape(row.label), str(len(row.runs))]
        for t in group.threats:
            s = row.threats.get(t)
            cells += ([_tex_stat(s.avg), _tex_stat(s.worst), tex_escape(s.worst_class), _tex_stat(s.spread)]
                      if s else ["--"] * 4)
        lines.append(" & ".join(cells) + r" \\")
    return lines + [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]


def to_latex(board: Leaderboard) -> str:
    """One booktabs table per group; needs \\usepackage{booktabs,graphicx}."""
    lines = ["% fairbench leaderboard, generated by `fairbench report` from metrics.json files.",
             r"% Needs \usepackage{booktabs} and \usepackage{graphicx}."]
    for group in board.groups:
        lines += [""] + _tex_table(group)
    return "\n".join(lines) + "\n"
