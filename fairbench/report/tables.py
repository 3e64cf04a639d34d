"""Leaderboard tables: Markdown (printed and committed), CSV (for scripts) and booktabs LaTeX.

Each group opens with a compact table (`compact_columns`: at most 8 columns, the answer under the
ranking threat) and then one full table per threat (`threat_table_columns`); the union's table is
left out where the union equals one single threat's outcomes in every run (`shown_threats`); a
tuned group ends with its tuning table (`tuning_columns`: each row against its paper-hyperparameter
row).
Errors are shown in percent as the mean over seeds with its 95% interval (or ± the sample std over
seeds for a row without outcomes), differences from the group's baseline with theirs; the CSVs
keep fractions in [0, 1] like metrics.json: ``leaderboard.csv`` one line per row, and
``leaderboard_long.csv`` one line per group x row x threat x statistic (`long_frame`).
Markdown and HTML work from the same `Column` lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Callable, cast

import pandas as pd

from fairbench.report.model import Group, Leaderboard, Row, Stat, TuningEffect, ordered_threats, threat_name
from fairbench.report.stats import Delta, Interval

LEGEND = (
    "Errors in %, mean over seeds [95% interval: a bootstrap resampling seeds and test images, never "
    "narrower than the Wilson score interval of the images counted, so a few images per class give a "
    "wide interval, not a false zero-width one] (mean ± std over seeds for a row without per-example "
    "outcomes). Each group opens with a compact table under the threat it is ranked by, then one "
    "table per threat. *avg*: average error; *worst*: the mean over seeds of each seed's worst-class "
    "error, and the class worst in most seeds (k/n: in k of n seeds; classes that tie are joined by "
    "=); *spread*: std of the per-class errors. *Δ*: difference from the group's baseline row "
    "(paired bootstrap over the same seeds and test images); † where its interval excludes 0 and both "
    "rows have more than one seed (with one, the interval resamples test images only, not the "
    "variation between training seeds). *#*: "
    "rank by the statistic named above each table (default: worst-class error under the strongest "
    "attack run on every test image, PGD-20 where AutoAttack runs on a subset); a row whose interval "
    "overlaps the best one's shares its rank. *possibly masked*: AutoAttack, run on a subset, finds a "
    "higher error than the ranking attack on the same images, by an interval that excludes 0, so the "
    "ranking attack may understate that row's error. *union*: an image is robust only if every "
    "attack run on it fails; counted on the images every attack ran on."
)
MARK = "†"  # a difference whose interval excludes 0
MASKED = "possibly masked"


@dataclass(frozen=True)
class Column:
    """One table column: ``cell(row)`` gives the text shown and the value it sorts by."""

    key: str
    header: str
    cell: Callable[[Row], tuple[str, float | str | None]]
    numeric: bool = True
    threat: str | None = None  # the threat a column belongs to
    short: str = ""  # the header under the threat's name


@dataclass(frozen=True)
class Table:
    """One table of a group: ``key`` names it in HTML ids, ``title`` heads it (empty: none)."""

    key: str
    title: str
    columns: list[Column]
    note: str = ""  # said under the title


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


def _stat_column(threat: str, field: str, header: str, named: bool = True) -> Column:
    def cell(row: Row) -> tuple[str, float | None]:
        s = row.threats.get(threat)
        stat = getattr(s, field) if s else None
        ci = interval(row, threat, field) if field in ("avg", "worst") else None
        return pct(stat, len(row.runs), ci), (stat.mean if stat else None)

    title = f"{threat_name(threat)} {header}" if named else header
    return Column(f"{threat}_{field}", title, cell, True, threat, header)


def _delta_column(group: Group, threat: str, field: str, named: bool = True) -> Column:
    def cell(row: Row) -> tuple[str, float | None]:
        delta = cast("Delta | None", interval(row, threat, f"{field}_delta"))  # a *_delta field holds a Delta
        text = delta_text(delta, row.label == group.baseline and threat in row.threats)
        return text, (delta.value if delta else None)

    title = f"{threat_name(threat)} Δ{field}" if named else f"Δ{field}"
    return Column(f"{threat}_{field}_delta", title, cell, True, threat, f"Δ{field}")


def _class_column(threat: str, named: bool = True) -> Column:
    def cell(row: Row) -> tuple[str, str | None]:
        s = row.threats.get(threat)
        if s is None:
            return "-", None
        n = s.worst.n
        return s.worst_class + (f" ({s.worst_class_votes}/{n})" if s.worst_class_votes < n else ""), s.worst_class

    title = f"{threat_name(threat)} worst class" if named else "worst class"
    return Column(f"{threat}_worst_class", title, cell, False, threat, "worst class")


def method_text(row: Row) -> str:
    """The row's label, and ``(possibly masked)`` where its check says so."""
    return row.label + (f" ({MASKED})" if row.possibly_masked else "")


def _method_column(key: str = "method") -> Column:
    return Column(key, "method", lambda r: (r.label, r.label), numeric=False)


def _seeds_column() -> Column:
    return Column("seeds", "seeds", lambda r: (str(len(r.runs)), float(len(r.runs))))


def compact_columns(group: Group) -> list[Column]:
    """The compact table (with the rank, at most 8 columns): method, seeds, average and
    worst-class error under the ranking threat, Δworst and Δavg against the baseline, clean
    average error (not repeated when the ranking threat is clean)."""
    t = group.sort_threat
    cols = [_method_column(), _seeds_column(), _stat_column(t, "avg", "avg"), _stat_column(t, "worst", "worst")]
    if group.baseline is not None:
        cols += [_delta_column(group, t, "worst"), _delta_column(group, t, "avg")]
    if t != "clean" and "clean" in group.threats:
        cols.append(_stat_column("clean", "avg", "avg"))
    return cols


def threat_table_columns(group: Group, threat: str) -> list[Column]:
    """One threat's full table: method, seeds, avg, worst, worst class, spread, Δavg, Δworst."""
    cols = [
        _method_column(),
        _seeds_column(),
        _stat_column(threat, "avg", "avg", False),
        _stat_column(threat, "worst", "worst", False),
        _class_column(threat, False),
        _stat_column(threat, "spread", "spread", False),
    ]
    if group.baseline is not None:
        cols += [_delta_column(group, threat, "avg", False), _delta_column(group, threat, "worst", False)]
    return cols


def union_same_as(group: Group) -> str | None:
    """The single threat whose outcomes the union equals in every run of the group (per class,
    AutoAttack's where the union is counted on its subset), else None."""
    if "union" not in group.threats:
        return None
    runs = [r for row in group.rows for r in row.runs if "union" in r.record.metrics]
    for t in group.threats:
        if t in ("union", "clean"):
            continue
        if runs and all(
            t in r.record.metrics
            and r.record.metrics[t].per_class == r.record.metrics["union"].per_class
            and r.record.metrics[t].n_per_class == r.record.metrics["union"].n_per_class
            for r in runs
        ):
            return t
    return None


def shown_threats(group: Group) -> tuple[list[str], str]:
    """The threats that get a full table, and a note for the union when it is left out."""
    same = union_same_as(group)
    if same is None:
        return list(group.threats), ""
    return [t for t in group.threats if t != "union"], (
        f"union: the same outcomes as {threat_name(same)} in every run (no attack added an image), so "
        f"its table is not repeated."
    )


def tuning_reading(effect: TuningEffect, row: Row, group: Group) -> str:
    """How a method's difference from its group's baseline changed between the paper-hyperparameter
    group and the tuned one (both under the ranked statistic; `Delta.significant` for each)."""
    tuned = cast("Delta | None", interval(row, effect.threat, f"{group.sort_stat}_delta"))
    tuned_base = row.label == group.baseline
    if effect.paper_is_baseline and tuned_base:
        return "baseline"
    paper = effect.paper_delta
    if paper is None or tuned is None or effect.paper_is_baseline or tuned_base:
        return "-"
    if paper.one_seed or tuned.one_seed:
        return "not measured (one seed)"
    if paper.significant and tuned.significant:
        return "same sign" if (paper.value > 0) == (tuned.value > 0) else "changed sign"
    if paper.significant:
        return "difference gone"
    return "new difference" if tuned.significant else "no difference either way"


def tuning_columns(group: Group) -> list[Column]:
    """The tuning table of a tuned group (`model.TuningEffect`): each row against its method's row
    in the paper-hyperparameter group, and each one's difference from its own group's baseline."""
    effects = group.tuning or {}
    stat = group.sort_stat

    def paper_stat(row: Row) -> tuple[str, float | None]:
        e = effects.get(row.label)
        s = e.paper.threats.get(e.threat) if e is not None else None
        if e is None or s is None:
            return "-", None
        value = getattr(s, stat)
        return pct(value, len(e.paper.runs), interval(e.paper, e.threat, stat)), (value.mean if value else None)

    def effect_delta(field: str) -> Callable[[Row], tuple[str, float | None]]:
        def cell(row: Row) -> tuple[str, float | None]:
            e = effects.get(row.label)
            d = getattr(e, field) if e is not None else None
            return delta_text(d, False), (d.value if d is not None else None)

        return cell

    def paper_vs_base(row: Row) -> tuple[str, float | None]:
        e = effects.get(row.label)
        if e is None:
            return "-", None
        return delta_text(e.paper_delta, e.paper_is_baseline), (e.paper_delta.value if e.paper_delta else None)

    def seeds_compared(row: Row) -> tuple[str, float | None]:
        e = effects.get(row.label)
        return ("-", None) if e is None else (str(e.n_seeds), float(e.n_seeds))

    def reading(row: Row) -> tuple[str, str | None]:
        e = effects.get(row.label)
        text = tuning_reading(e, row, group) if e is not None else "-"
        return text, text

    t = group.sort_threat
    return [  # the reading first after the method: the answer, before the numbers behind it
        _method_column(),
        Column("reading", "reading", reading, numeric=False),
        Column("common_seeds", "seeds", seeds_compared),
        Column(f"paper_{stat}", f"paper {stat}", paper_stat, threat=t),
        _stat_column(t, stat, f"tuned {stat}", False),
        Column("tuning_worst", "Δworst tuned − paper", effect_delta("worst"), threat=t),
        Column("tuning_avg", "Δavg tuned − paper", effect_delta("avg"), threat=t),
        Column("paper_vs_baseline", f"Δ{stat} vs baseline, paper", paper_vs_base, threat=t),
        replace(_delta_column(group, t, stat, False), header=f"Δ{stat} vs baseline, tuned"),
    ]


def tuning_note(group: Group) -> str:
    return (
        f"Each tuned row against its method's row in the paper-hyperparameter group beside this one, "
        f"under {threat_name(group.sort_threat)}: Δ tuned − paper on the seeds both rows have (*seeds*), "
        f"paired over the same test images and, seed by seed, those seeds. The last columns give each row's "
        f"difference from its own group's baseline; *reading* says how that difference changed with "
        f"tuning ({MARK} on both sides: *same sign* or *changed sign*; on one side only: *difference "
        f"gone* or *new difference*)."
    )


def group_tables(group: Group) -> list[Table]:
    """The compact table, then a full table per shown threat, then, for a tuned group beside a
    paper-hyperparameter one, the tuning table (`tuning_columns`)."""
    tables = [Table("compact", "", compact_columns(group))]
    threats, _ = shown_threats(group)
    tables += [Table(t, threat_name(t), threat_table_columns(group, t)) for t in threats]
    if group.tuning:
        tables.append(
            Table(
                "tuning",
                f"Tuning's effect ({threat_name(group.sort_threat)})",
                tuning_columns(group),
                tuning_note(group),
            )
        )
    return tables


def rank_text(row: Row) -> str:
    return "-" if row.rank is None else str(row.rank)


def ranked_by(group: Group) -> str:
    """The statistic that ranks the group, as people read it."""
    what = "worst-class" if group.sort_stat == "worst" else "average"
    return f"{what} {threat_name(group.sort_threat)} error"


def sort_note(group: Group) -> str:
    """What ranks the group, what checks it, and the baseline."""
    text = f"Ranked by {ranked_by(group)}"
    if group.check_threat is not None:
        k = dict(group.key.subsets).get(group.check_threat)
        subset = f" on {k} images per class" if k is not None else ""
        masked = [r.label for r in group.rows if r.possibly_masked]
        text += (
            f"; checked with {threat_name(group.check_threat)}{subset} "
            f"({len(masked)} row{'s' if len(masked) != 1 else ''} {MASKED})"
        )
    text += "."
    if group.baseline is not None:
        text += f" Δ: against {group.baseline}."
    return text


def one_line(text: str) -> str:
    """``text`` with every control character (newline, tab, terminal escape) as a space."""
    return "".join(c if c.isprintable() else " " for c in str(text))


_MD_SPECIAL = {"\\": "\\\\", "|": "\\|", "[": "\\[", "]": "\\]", "`": "\\`", "<": "&lt;", ">": "&gt;", "&": "&amp;"}


def md_escape(text: str) -> str:
    """Text for a Markdown table cell or heading: one line; no table break (``|``), no HTML, no
    link or code span."""
    return "".join(_MD_SPECIAL.get(c, c) for c in one_line(text))


def superseded(group: Group, board: Leaderboard) -> bool:
    """A group after the canonical one (the first, when it is the tuned board or the standard
    protocol's group: `model.group_tier`). Such groups are collapsed in the HTML."""
    first = board.groups[0] if board.groups else None
    return first is not None and first.tier <= 1 and group is not first and group.shortfall is None


def group_title(group: Group, board: Leaderboard) -> str:
    """A group's heading: its label, marked superseded (`superseded`) or, for a tuned group that
    lacks some method's tuned row or seeds (`model.with_shortfall`), incomplete."""
    label = group.key.label()
    if group.shortfall is not None:
        short, n = group.shortfall
        return f"{label} (incomplete: {len(short)} of {n} methods lack their tuned row or seeds)"
    return label + (" (superseded)" if superseded(group, board) else "")


def shortfall_note(group: Group) -> str:
    """What an incomplete tuned group lacks, said under its heading; empty for any other group."""
    if group.shortfall is None:
        return ""
    short, n = group.shortfall
    return (
        f"Not the leaderboard yet: tuned rows with as many seeds as the paper-hyperparameter group's exist "
        f"for {n - len(short)} of its {n} methods; still missing: {', '.join(short)}. Until every method "
        f"has its tuned row, the group without tuning stays the board."
    )


def _md_table(table: Table, group: Group) -> list[str]:
    cols = table.columns
    lines = [
        "| # | " + " | ".join(md_escape(c.header) for c in cols) + " |",
        "|---:|" + "".join("---:|" if c.numeric else "---|" for c in cols),
    ]
    for row in group.rows:
        cells = []
        for c in cols:
            text = method_text(row) if c.key == "method" else c.cell(row)[0]
            # numeric cells are built here from numbers (their brackets are intervals, not links)
            cells.append(text if c.numeric else md_escape(text))
        lines.append(f"| {rank_text(row)} | " + " | ".join(cells) + " |")
    return lines


def to_markdown(board: Leaderboard) -> str:
    lines = ["# fairbench leaderboard", "", LEGEND]
    for group in board.groups:
        tables = group_tables(group)
        lines += ["", f"## {md_escape(group_title(group, board))}", ""]
        if group.shortfall is not None:
            lines += [md_escape(shortfall_note(group)), ""]
        lines += [md_escape(sort_note(group)), ""]
        lines += _md_table(tables[0], group)
        for table in tables[1:]:
            lines += ["", f"### {md_escape(table.title)}", ""]
            lines += [md_escape(table.note), ""] if table.note else []
            lines += _md_table(table, group)
        _, note = shown_threats(group)
        if note:
            lines += ["", md_escape(note)]
    return "\n".join(lines) + "\n"


def _csv_text(text: str) -> str:
    """A text cell that a spreadsheet will not run as a formula, on one line."""
    text = one_line(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


CSV_THREAT_FIELDS = (
    "avg_err",
    "avg_err_std",
    "worst_err",
    "worst_err_std",
    "worst_class",
    "spread",
    "spread_std",
    "n",
    "avg_err_lo",
    "avg_err_hi",
    "worst_err_lo",
    "worst_err_hi",
    "avg_err_delta",
    "avg_err_delta_lo",
    "avg_err_delta_hi",
    "worst_err_delta",
    "worst_err_delta_lo",
    "worst_err_delta_hi",
)


def _csv_threat_fields(row: Row, threat: str) -> dict[str, Any]:
    s = row.threats.get(threat)
    values: list[Any] = [None] * len(CSV_THREAT_FIELDS)
    if s is not None:
        values[:8] = [
            s.avg.mean,
            s.avg.std,
            s.worst.mean,
            s.worst.std,
            _csv_text(s.worst_class),
            s.spread.mean,
            s.spread.std,
            s.avg.n,
        ]
        for i, name in ((8, "avg"), (10, "worst")):
            if ci := interval(row, threat, name):
                values[i : i + 2] = [ci.lo, ci.hi]
        for i, name in ((12, "avg_delta"), (15, "worst_delta")):
            if d := interval(row, threat, name):
                values[i : i + 3] = [d.value, d.lo, d.hi]
    return {f"{threat}_{name}": v for name, v in zip(CSV_THREAT_FIELDS, values)}


def _group_fields(group: Group) -> dict[str, Any]:
    k = group.key
    return {
        "group": _csv_text(k.label()),
        "dataset": _csv_text(k.dataset),
        "arch": _csv_text(k.arch),
        "norm": k.norm,
        "eps": f"{k.eps:g}",
        "epochs": k.epochs,
        "train_per_class": k.train_per_class,
        "eval_per_class": k.eval_per_class,
        "select": k.select,
        "sorted_by": group.sort_threat,
        "sort_stat": group.sort_stat,
        "baseline": None if group.baseline is None else _csv_text(group.baseline),
    }


def _tuning_fields(group: Group, row: Row) -> dict[str, Any]:
    """A tuned row against its paper-hyperparameter row (`model.TuningEffect`); empty elsewhere."""
    e = (group.tuning or {}).get(row.label)
    fields: dict[str, Any] = {
        "tuning_paper_label": _csv_text(e.paper.label) if e else None,
        "tuning_seeds_compared": e.n_seeds if e else None,
    }
    for name in ("worst", "avg"):
        d = getattr(e, name) if e else None
        fields |= {
            f"tuning_{name}_err_delta": d.value if d else None,
            f"tuning_{name}_err_delta_lo": d.lo if d else None,
            f"tuning_{name}_err_delta_hi": d.hi if d else None,
        }
    return fields | {"tuning_reading": tuning_reading(e, row, group) if e else None}


def _check_fields(group: Group, row: Row) -> dict[str, Any]:
    c = row.check
    return {
        "check_threat": group.check_threat,
        "check_delta": c.value if c else None,
        "check_delta_lo": c.lo if c else None,
        "check_delta_hi": c.hi if c else None,
        "possibly_masked": row.possibly_masked,
    }


def leaderboard_frame(board: Leaderboard) -> pd.DataFrame:
    """The CSV's table: one line per row of every group; errors as fractions.

    ``T_*_lo``/``T_*_hi``: the 95% interval; ``T_*_delta``: this row minus the group's ``baseline``
    row (empty without outcomes or without a baseline); ``rank`` admits ties and ranks by
    ``sort_stat`` (worst or avg) under ``sorted_by``; ``check_delta``: ``check_threat`` minus
    ``sorted_by`` on the same images, the ranked statistic; ``possibly_masked`` where it excludes 0;
    ``tuning_*``: a tuned row minus its method's paper-hyperparameter row under ``sorted_by``, and
    ``tuning_reading`` (`tuning_reading`).
    """
    threats = ordered_threats(t for g in board.groups for t in g.threats)
    lines = []
    for group in board.groups:
        for row in group.rows:
            line = (
                _group_fields(group)
                | {
                    "rank": row.rank,
                    "label": _csv_text(row.label),
                    "method": _csv_text(row.method),
                    "params": _csv_text(json.dumps(row.runs[0].record.params, sort_keys=True)),
                    "n_seeds": len(row.runs),
                    "seeds": " ".join(map(str, row.seeds)),
                }
                | _check_fields(group, row)
                | _tuning_fields(group, row)
            )
            for t in threats:
                line |= _csv_threat_fields(row, t)
            lines.append(line)
    frame = pd.DataFrame(lines).drop(columns=["group"])
    whole = [
        c for c in frame.columns if c in ("epochs", "train_per_class", "eval_per_class", "rank") or c.endswith("_n")
    ]
    return frame.astype({c: "Int64" for c in whole + ["tuning_seeds_compared"]})


def to_csv(board: Leaderboard) -> str:
    """One table for every group; errors as fractions (6 decimals), std empty for a single seed."""
    return leaderboard_frame(board).to_csv(index=False, float_format="%.6f", na_rep="", lineterminator="\n")


LONG_COLUMNS = (
    "group",
    "dataset",
    "arch",
    "norm",
    "eps",
    "epochs",
    "train_per_class",
    "eval_per_class",
    "select",
    "sorted_by",
    "sort_stat",
    "baseline",
    "rank",
    "label",
    "method",
    "n_seeds",
    "threat",
    "statistic",
    "class",
    "value",
    "lo",
    "hi",
    "std",
    "n",
    "significant",
)


def long_frame(board: Leaderboard) -> pd.DataFrame:
    """The tidy table: one line per group x row x threat x statistic (and class, for ``class_err``).

    ``statistic``: avg_err, worst_err (``class``: the class worst in most seeds), spread,
    class_err (one line per class), avg_err_delta and worst_err_delta (against ``baseline``), and
    check_delta (``threat`` is the check threat: its error minus the ranking threat's, the ranked
    statistic, on its images). ``value`` is the mean over seeds; ``lo``/``hi`` its 95% interval
    (empty without outcomes); ``std`` over seeds; ``n`` seeds with the threat; ``significant`` for a
    difference whose interval excludes 0. Errors are fractions.
    """
    lines = []
    for group in board.groups:
        fixed = _group_fields(group)
        for row in group.rows:
            base = fixed | {
                "rank": row.rank,
                "label": _csv_text(row.label),
                "method": _csv_text(row.method),
                "n_seeds": len(row.runs),
            }
            for t in group.threats:
                s = row.threats.get(t)
                if s is None:
                    continue
                ci = s.ci

                def add(
                    stat: str,
                    value: float,
                    iv: Interval | None,
                    std: float | None = None,
                    cls: str | None = None,
                    n: int = s.avg.n,
                ) -> None:
                    lines.append(
                        base
                        | {
                            "threat": t,
                            "statistic": stat,
                            "class": cls,
                            "value": value,
                            "lo": iv.lo if iv else None,
                            "hi": iv.hi if iv else None,
                            "std": std,
                            "n": n,
                            "significant": iv.significant if isinstance(iv, Delta) else None,
                        }
                    )

                add("avg_err", s.avg.mean, ci.avg if ci else None, s.avg.std)
                add("worst_err", s.worst.mean, ci.worst if ci else None, s.worst.std, _csv_text(s.worst_class))
                add("spread", s.spread.mean, None, s.spread.std)
                for j, (name, c) in enumerate(zip(group.key.classes, s.per_class)):
                    if c is not None:
                        add("class_err", c.mean, ci.per_class[j] if ci else None, c.std, _csv_text(name), c.n)
                for field in ("avg", "worst"):
                    d = getattr(ci, f"{field}_delta") if ci else None
                    if d is not None:
                        add(f"{field}_err_delta", d.value, d)
            if row.check is not None:
                lines.append(
                    base
                    | {
                        "threat": group.check_threat,
                        "statistic": "check_delta",
                        "value": row.check.value,
                        "lo": row.check.lo,
                        "hi": row.check.hi,
                        "n": len(row.runs),
                        "significant": row.possibly_masked,
                    }
                )
    frame = pd.DataFrame(lines, columns=list(LONG_COLUMNS))
    return frame.astype({c: "Int64" for c in ("epochs", "train_per_class", "eval_per_class", "rank", "n_seeds", "n")})


def to_long_csv(board: Leaderboard) -> str:
    return long_frame(board).to_csv(index=False, float_format="%.6f", na_rep="", lineterminator="\n")


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    """Text for LaTeX: every special character escaped and no line break, so data never starts
    a line, a command or a comment."""
    return "".join(_TEX_SPECIAL.get(c, c) for c in one_line(text))


def _tex_num(x: float) -> str:
    return f"{100 * x:.1f}"


def _tex_signed(x: float) -> str:
    return signed(x).replace("-", "$-$")


def _tex_pair(stat: Stat | None, ci: Interval | None) -> tuple[str, str]:
    """(the value, its interval) for two stacked lines of a cell."""
    if stat is None:
        return "--", ""
    if ci is not None:
        return _tex_num(stat.mean), f"[{_tex_num(ci.lo)},\\,{_tex_num(ci.hi)}]"
    return _tex_num(stat.mean), (f"$\\pm${_tex_num(stat.std)}" if stat.std is not None else "")


def _tex_delta_pair(delta: Delta | None, is_baseline: bool) -> tuple[str, str]:
    if is_baseline:
        return "base", ""
    if delta is None:
        return "--", ""
    mark = "$^\\dagger$" if delta.significant else ""
    return _tex_signed(delta.value) + mark, f"[{_tex_signed(delta.lo)},\\,{_tex_signed(delta.hi)}]"


def _tex_group_label(group: Group) -> str:
    """The group's label as a caption names it, marked incomplete where it is (`model.with_shortfall`)."""
    return tex_escape(group.key.label().replace(" · ", ", ") + (" (incomplete)" if group.shortfall else ""))


def _tex_threat_table(group: Group, threat: str, index: int) -> list[str]:
    """One booktabs table: a row's values on one line, their intervals under them in a smaller
    size, the method's name in a column that wraps; fits a two-column paper's column."""
    has_delta = group.baseline is not None
    name = tex_escape(threat_name(threat))
    label = _tex_group_label(group)
    what = "worst-class" if group.sort_stat == "worst" else "average"
    base = (
        f" $\\Delta$: difference from {tex_escape(group.baseline)} (paired bootstrap), $^\\dagger$ where its "
        f"interval excludes 0 and both rows have more than one seed."
        if group.baseline is not None
        else ""
    )
    masked = (
        f" \\S: possibly masked ({tex_escape(threat_name(group.check_threat))} finds a higher error on the "
        f"same images)."
        if group.check_threat is not None and any(r.possibly_masked for r in group.rows)
        else ""
    )  # a row is possibly masked only where the group has a check threat
    spec = "@{}r p{0.16\\linewidth} r r" + (" r r" if has_delta else "") + "@{}"
    heads = r"\# & Method & Avg & Worst" + (r" & $\Delta$Avg & $\Delta$Worst" if has_delta else "") + r" \\"
    caption = (
        f"{name} error (\\%), {label}. Mean over seeds, 95\\% interval below it (bootstrap, at "
        f"least the Wilson interval; $\\pm$ std over seeds without per-example outcomes); worst: the mean of "
        f"each seed's worst-class error, the class worst in most seeds under the method's name, its number "
        f"of seeds in brackets.{base} \\#: rank by {what} "
        f"{tex_escape(threat_name(group.sort_threat))} error; rows whose interval overlaps the best one's "
        f"share its rank.{masked}"
    )
    rows = []
    for row in group.rows:
        s = row.threats.get(threat)
        method = tex_escape(row.label) + (r" \S" if row.possibly_masked else "")
        method += f" ({len(row.runs)})"
        if s is None:
            cells = [("--", "")] * (4 if has_delta else 2)
            cls = ""
        else:
            cells = [_tex_pair(s.avg, interval(row, threat, "avg")), _tex_pair(s.worst, interval(row, threat, "worst"))]
            if has_delta:
                is_base = row.label == group.baseline
                cells += [
                    _tex_delta_pair(cast("Delta | None", interval(row, threat, f"{f}_delta")), is_base)
                    for f in ("avg", "worst")
                ]
            cls = tex_escape(s.worst_class)
        rows.append((row, method, cls, cells))
    return _tex_table(f"% {label}: {name}", caption, f"tab:fairbench-{group.key.slug()}-{index}", spec, heads, rows)


def _tex_table(
    comment: str,
    caption: str,
    label: str,
    spec: str,
    heads: str,
    rows: list[tuple[Row, str, str, list[tuple[str, str]]]],
    env: str = "table",
) -> list[str]:
    """One booktabs table of the report: per row (the row, its method text, a note set small under
    it, its cells as (value, interval)), the rank, method and values on one line and the note and
    intervals under them in a smaller size."""
    lines = [
        comment,
        f"\\begin{{{env}}}[t]",
        r"\centering",
        r"\footnotesize",
        r"\setlength{\tabcolsep}{2pt}",
        f"\\caption{{{caption}}}",
        f"\\label{{{label}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        heads,
        r"\midrule",
    ]
    for row, method, note, cells in rows:
        top = [rank_text(row).replace("-", "--"), r"\raggedright " + method] + [c[0] for c in cells]
        below = ["", f"{{\\scriptsize {note}}}" if note else ""] + [
            f"{{\\scriptsize {c[1]}}}" if c[1] else "" for c in cells
        ]
        lines += [" & ".join(top) + r" \\", " & ".join(below) + r" \\", r"\addlinespace[2pt]"]
    return lines + [r"\bottomrule", r"\end{tabular}", f"\\end{{{env}}}"]


def _tex_tuning_table(group: Group, index: int) -> list[str]:
    """A tuned group's tuning table (`tuning_columns`) as one booktabs table across both columns of a
    two-column paper (five numbers with their intervals do not fit one): the paper and tuned rows'
    ranked statistic, their difference, and each one's difference from its own group's baseline;
    the reading under the method's name."""
    effects = group.tuning or {}
    t, stat = group.sort_threat, group.sort_stat
    name = tex_escape(threat_name(t))
    label = _tex_group_label(group)
    caption = (
        f"Tuning's effect, {name} {stat} error (\\%), {label}: each tuned row against its method's "
        f"row in the paper-hyperparameter group; $\\Delta$T$-$P: tuned minus paper on the seeds both have (their "
        f"number in brackets), paired over test images and seeds; $\\Delta$P, $\\Delta$T: each row's difference "
        f"from its own group's baseline, $^\\dagger$ where the interval excludes 0 and both rows have more than "
        f"one seed; under each method, how that difference changed."
    )
    rows = []
    for row in group.rows:
        e = effects.get(row.label)
        s = row.threats.get(t)
        if e is None or s is None:
            continue
        paper = e.paper.threats.get(t)
        cells = [
            _tex_pair(getattr(paper, stat) if paper else None, interval(e.paper, t, stat)),
            _tex_pair(getattr(s, stat), interval(row, t, stat)),
            _tex_delta_pair(getattr(e, stat), False),
            _tex_delta_pair(e.paper_delta, e.paper_is_baseline),
            _tex_delta_pair(cast("Delta | None", interval(row, t, f"{stat}_delta")), row.label == group.baseline),
        ]
        method = f"{tex_escape(row.label)} ({e.n_seeds})"
        rows.append((row, method, tex_escape(tuning_reading(e, row, group)), cells))
    heads = r"\# & Method & Paper & Tuned & $\Delta$T$-$P & $\Delta$P & $\Delta$T \\"
    return _tex_table(
        f"% {label}: tuning's effect",
        caption,
        f"tab:fairbench-{group.key.slug()}-tuning-{index}",
        r"@{}r p{0.3\linewidth} r r r r r@{}",
        heads,
        rows,
        env="table*",
    )


def to_latex(board: Leaderboard) -> str:
    """Per group, one booktabs table per shown threat (the ranking threat's first), and a tuned
    group's tuning table (`_tex_tuning_table`); needs \\usepackage{booktabs}. Method names are
    followed by their number of seeds in brackets."""
    lines = [
        "% fairbench leaderboard, generated by `fairbench report` from metrics.json files.",
        r"% Needs \usepackage{booktabs}. One table per group and threat, each fits one column;",
        r"% a tuned group's tuning table spans both (table*).",
    ]
    for group in board.groups:
        threats, _ = shown_threats(group)
        threats = sorted(threats, key=lambda t: t != group.sort_threat)
        for i, t in enumerate(threats):
            lines += [""] + _tex_threat_table(group, t, i)
        if group.tuning:
            lines += [""] + _tex_tuning_table(group, len(threats))
    return "\n".join(lines) + "\n"
