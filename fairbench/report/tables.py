"""Leaderboard tables: Markdown (printed and committed), CSV (for scripts) and booktabs LaTeX.

Errors are shown in percent as mean ± sample std over seeds; the CSV keeps fractions in [0, 1]
like metrics.json. Every renderer works from the same `columns` so the formats never disagree.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Callable

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


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(board: Leaderboard) -> str:
    lines = ["# fairbench leaderboard", "", LEGEND]
    for group in board.groups:
        cols = columns(group)
        lines += ["", f"## {group.key.label()}", "", sort_note(group), "",
                  "| # | " + " | ".join(c.header for c in cols) + " |",
                  "|---:|" + "".join("---:|" if c.numeric else "---|" for c in cols)]
        for rank, row in enumerate(group.rows, 1):
            lines.append(f"| {rank} | " + " | ".join(_md_escape(c.cell(row)[0]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _csv_threat_fields(row: Row, threat: str) -> list[str]:
    s = row.threats.get(threat)
    if s is None:
        return [""] * 8
    return [_num(s.avg.mean), _num(s.avg.std), _num(s.worst.mean), _num(s.worst.std), s.worst_class,
            _num(s.spread.mean), _num(s.spread.std), str(s.avg.n)]


def to_csv(board: Leaderboard) -> str:
    """One table for every group; errors as fractions, std empty for a single seed."""
    threats = ordered_threats(t for g in board.groups for t in g.threats)
    header = ["dataset", "arch", "norm", "eps", "epochs", "train_per_class", "eval_per_class",
              "sorted_by", "rank", "label", "method", "params", "n_seeds", "seeds"]
    for t in threats:
        header += [f"{t}_avg_err", f"{t}_avg_err_std", f"{t}_worst_err", f"{t}_worst_err_std",
                   f"{t}_worst_class", f"{t}_spread", f"{t}_spread_std", f"{t}_n"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for group in board.groups:
        k = group.key
        for rank, row in enumerate(group.rows, 1):
            params = json.dumps(row.runs[0].data.get("params") or {}, sort_keys=True)
            fields = [k.dataset, k.arch, k.norm, f"{k.eps:g}", k.epochs, k.train_per_class or "",
                      k.eval_per_class or "", group.sort_threat, rank, row.label, row.method, params,
                      len(row.runs), " ".join(map(str, row.seeds))]
            for t in threats:
                fields += _csv_threat_fields(row, t)
            writer.writerow(["" if f is None else f for f in fields])
    return buf.getvalue()


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(c, c) for c in text)


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
    lines = [f"% {group.key.label()}", r"\begin{table}[t]", r"\centering",
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
