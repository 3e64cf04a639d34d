"""Bootstrap intervals, baseline comparisons and tied ranks for a leaderboard, from the outcomes.

The step between the model (`model`: runs read through the schema, grouped and aggregated over
seeds) and the renderers. From each run's per-example outcomes (`Run.outcomes`: read and checked
against its metrics.json by `fairbench.schema`; a run whose outcomes disagree is skipped there),
`add_intervals` returns the leaderboard with

- each row's threat summaries carrying their bootstrap intervals and their difference from the
  group's baseline row (`ThreatSummary.ci`, computed by `stats.bootstrap_threat`);
- each group's baseline (`Group.baseline`) and its rows ranked with ties by the interval of the
  ranked statistic (``report --rank-by``; default: worst-class error under
  `model.default_rank_threat`, PGD-20 where AutoAttack runs on a subset) (`model.rank_rows`);
- each row's check (`Row.check`): AutoAttack's error minus the ranking threat's, the ranked
  statistic on the images AutoAttack ran on, by the same paired bootstrap; a row whose check
  excludes 0 from above is *possibly masked* (`Row.possibly_masked`);
- for a tuned group beside its paper-hyperparameter group, each row against its method's row there
  (`Group.tuning`, `tuning_effects`), by the same paired bootstrap;
- warnings for what has no interval or comparison, and why, and for a model at chance level or
  right on one class only (`sanity_warnings`).

A row gets an interval under a threat only when every one of its runs has outcomes and all were
evaluated on the same test images, with the same labels, as the group's shared pool; otherwise it is
shown without one, and a warning names the run. The shared pool is the baseline row's (its runs must
agree on it), never a tie-break between contributed runs: a run that claims other images or other
labels for the same images cannot take the baseline's intervals away. Without a baseline row, the
pool is the one most runs share, and only when no other pool is shared as often (a tie gives no
intervals under that threat, with a warning). The report cannot read the data set's own labels
(the data may not be on the machine that makes the report), so an image's label is checked against
the baseline's runs: a run whose label for an image differs from the baseline's is named.
The bootstrap's seed names the group and threat, so each
group's numbers do not depend on which other groups the results folder holds.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import replace

import numpy as np

from fairbench.errors import FairbenchError
from fairbench.files import canonical_json
from fairbench.report.model import (
    Group,
    Leaderboard,
    Row,
    Run,
    TuningEffect,
    check_threat,
    rank_rows,
    threat_name,
)
from fairbench.report.stats import N_RESAMPLES, Delta, RowStats, bootstrap_threat, wilson
from fairbench.schema import Outcomes, threat_columns

DEFAULT_BASELINE = "pgd-at"
BOOTSTRAP_SEED = 11  # with each group's and threat's name, the bootstrap's seed


def _seed_order(run: Run) -> str:
    return canonical_json(run.seed)


def baseline_row(group: Group, name: str) -> Row | None:
    """The row ``name`` picks: the row labelled so, else the only row of method ``name``, else the
    only one of them trained from scratch (a fine-tuning control of the method, such as FAAL's, is
    not its baseline: in a tuned group PGD-AT's row is labelled with its tuned lr, and its control
    sits beside it)."""
    for row in group.rows:
        if row.label == name:
            return row
    same = [row for row in group.rows if row.method == name]
    scratch = [row for row in same if row.runs[0].source is None]
    if len(same) > 1 and len(scratch) == 1:
        return scratch[0]
    if len(same) > 1:
        raise FairbenchError(
            f"--baseline {name} matches {len(same)} rows of {group.key.label()}: "
            f"{'; '.join(r.label for r in same)}; pass one of these labels"
        )
    return same[0] if same else None


def pool(outcomes: Outcomes, threat: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(test-set index, label, wrong) of the images ``threat`` ran on, in index order."""
    ran = outcomes.ran(threat)
    order = np.argsort(outcomes.index[ran], kind="stable")
    return outcomes.index[ran][order], outcomes.label[ran][order], (outcomes.results[threat][ran] == 0)[order]


def _group_threat(
    group: Group, threat: str, baseline: str | None, n_resamples: int
) -> tuple[dict[str, RowStats], list[tuple[str, str]]]:
    """Per row label, its `RowStats` under ``threat``; and warnings about rows left without one."""
    members = {
        row.label: sorted((r for r in row.runs if threat in r.record.metrics), key=_seed_order)
        for row in group.rows
        if threat in row.threats
    }
    pools = {r.path: pool(r.outcomes, threat) for rs in members.values() for r in rs if r.outcomes is not None}
    keys = {path: index.tobytes() + b"|" + label.tobytes() for path, (index, label, _) in pools.items()}
    if not keys:
        return {}, []
    shared, why = _shared_pool(members, keys, baseline)
    if shared is None:
        return {}, [(group.key.label(), f"{threat_name(threat)}: {why}; no row has a {threat_name(threat)} interval")]
    whose = f"the baseline's ({baseline})" if why == "baseline" else "most of its group's"
    shared_pool = next(pools[path] for path, key in keys.items() if key == shared)
    wrong: list[np.ndarray]  # per run, whether each pooled image was misclassified
    warnings, labels, rows, wrong = [], [], [], []
    for label, runs in members.items():
        off = [r.path for r in runs if r.path in keys and keys[r.path] != shared]
        warnings += [
            (
                path,
                f"{threat_name(threat)}: {_how_off(pools[path], shared_pool, whose)}; "
                f"row {label} has no {threat_name(threat)} interval",
            )
            for path in off
        ]
        if off or any(r.path not in keys for r in runs):
            continue
        labels.append(label)
        rows.append(list(range(len(wrong), len(wrong) + len(runs))))
        wrong += [pools[r.path][2] for r in runs]
    if not labels:
        return {}, warnings
    pool_labels = next(pools[path][1] for path, key in keys.items() if key == shared)
    key = json.dumps([group.key.label(), group.key.classes, threat])
    stats = bootstrap_threat(
        pool_labels,
        np.array(wrong),
        rows,
        n_classes=len(group.key.classes),
        baseline=labels.index(baseline) if baseline in labels else None,
        n_resamples=n_resamples,
        seed=[BOOTSTRAP_SEED, zlib.crc32(key.encode())],
    )
    return dict(zip(labels, stats)), warnings


def row_check(group: Group, row: Row, n_resamples: int = N_RESAMPLES) -> Delta | None:
    """The group's check threat (AutoAttack) minus its ranking threat for ``row``: the ranked
    statistic (`Group.sort_stat`) of both on the images the check ran on, paired over those images
    and the row's seeds by `bootstrap_threat`. None where a run lacks outcomes or either threat, or
    the runs' check images differ."""
    check, rank = group.check_threat, group.sort_threat
    if check is None or check == rank:
        return None
    runs = sorted(row.runs, key=_seed_order)
    if not runs or any(
        r.outcomes is None or check not in r.record.metrics or rank not in r.record.metrics for r in runs
    ):
        return None
    wrong: dict[str, list[np.ndarray]]
    pools, wrong = [], {check: [], rank: []}
    for run in runs:
        out = run.outcomes
        assert out is not None  # runs without outcomes returned None above
        ran = out.ran(check) & out.ran(rank)
        order = np.argsort(out.index[ran], kind="stable")
        pools.append((out.index[ran][order], out.label[ran][order]))
        for t in (check, rank):
            wrong[t].append((out.results[t][ran] == 0)[order])
    index, labels = pools[0]
    if len(index) == 0 or any(not (np.array_equal(i, index) and np.array_equal(lab, labels)) for i, lab in pools):
        return None
    s = len(runs)
    key = json.dumps([group.key.label(), group.key.classes, check, rank, row.label])
    stats = bootstrap_threat(
        labels,
        np.array(wrong[check] + wrong[rank]),
        [list(range(s)), list(range(s, 2 * s))],
        n_classes=len(group.key.classes),
        baseline=1,
        n_resamples=n_resamples,
        seed=[BOOTSTRAP_SEED, zlib.crc32(key.encode())],
    )
    return stats[0].worst_delta if group.sort_stat == "worst" else stats[0].avg_delta


def _paper_row(twin: Group, row: Row) -> Row | None:
    """The row of ``twin`` (the paper-hyperparameter group) that ``row`` is the tuned version of:
    the only one of the same method, trained from scratch or fine-tuned as ``row`` is."""
    same = [
        r for r in twin.rows if r.method == row.method and (r.runs[0].source is None) == (row.runs[0].source is None)
    ]
    return same[0] if len(same) == 1 else None


def _tuning_delta(
    group: Group, row: Row, paper: Row, common: set[str], n_resamples: int
) -> tuple[Delta | None, Delta | None]:
    """(worst, avg) of ``row`` minus ``paper`` under the group's ranking threat, on the seeds both
    rows have (``common``, as `_seed_order` writes them), paired over the test images and, seed by
    seed, over those seeds (`bootstrap_threat`); None where they share no seed, a run lacks outcomes
    or the two rows' runs were not evaluated on the same images with the same labels."""
    threat = group.sort_threat
    runs = [sorted((run for run in r.runs if _seed_order(run) in common), key=_seed_order) for r in (row, paper)]
    every = runs[0] + runs[1]
    if not common or len(runs[0]) != len(common) or len(runs[1]) != len(common):  # one run per seed each
        return None, None
    if any(r.outcomes is None or threat not in r.record.metrics for r in every):
        return None, None
    pools = [pool(r.outcomes, threat) for r in every if r.outcomes is not None]
    index, labels, _ = pools[0]
    if any(not (np.array_equal(i, index) and np.array_equal(lab, labels)) for i, lab, _ in pools):
        return None, None
    key = json.dumps([group.key.label(), group.key.classes, "tuning", threat, row.label])
    n = len(runs[0])
    stats = bootstrap_threat(
        labels,
        np.array([w for _, _, w in pools]),
        [list(range(n)), list(range(n, len(every)))],
        n_classes=len(group.key.classes),
        baseline=1,
        n_resamples=n_resamples,
        seed=[BOOTSTRAP_SEED, zlib.crc32(key.encode())],
    )
    return stats[0].worst_delta, stats[0].avg_delta


def tuning_effects(group: Group, twin: Group, n_resamples: int = N_RESAMPLES) -> dict[str, TuningEffect]:
    """Each row of the tuned ``group`` against its row in ``twin``, the paper-hyperparameter group
    beside it (`TuningEffect`), by row label; rows without a paper row are left out."""
    out = {}
    for row in group.rows:
        paper = _paper_row(twin, row)
        if paper is None or group.sort_threat not in paper.threats:
            continue
        common = {_seed_order(r) for r in row.runs} & {_seed_order(r) for r in paper.runs}
        worst, avg = _tuning_delta(group, row, paper, common, n_resamples)
        summary = paper.threats[group.sort_threat]
        paper_delta = getattr(summary.ci, f"{group.sort_stat}_delta") if summary.ci is not None else None
        is_base = paper.label == twin.baseline
        out[row.label] = TuningEffect(
            paper, group.sort_threat, len(common), worst, avg, None if is_base else paper_delta, is_base
        )
    return out


def _shared_pool(
    members: dict[str, list[Run]], keys: dict[str, bytes], baseline: str | None
) -> tuple[bytes | None, str]:
    """The key of the group's shared pool and where it comes from ("baseline" or "most"), or None
    and why there is none."""
    base = members.get(baseline) if baseline is not None else None
    if base and all(r.path in keys for r in base):
        pools = {keys[r.path] for r in base}
        if len(pools) > 1:
            return None, (
                f"the baseline's runs ({baseline}) were evaluated on different test images or "
                f"labels ({', '.join(r.path for r in base)})"
            )
        return pools.pop(), "baseline"
    counts = Counter(keys.values()).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None, (
            "its runs were evaluated on different test images, as many on one set as on another, "
            "and no baseline row with outcomes says which set is the group's (--baseline names one)"
        )
    return counts[0][0], "most"


def _how_off(pool: tuple, shared: tuple, whose: str) -> str:
    """How a run's pool (index, label, wrong) differs from the shared one: labels that disagree for
    the same images, or other images."""
    _, here, there = np.intersect1d(pool[0], shared[0], assume_unique=True, return_indices=True)
    differ = np.flatnonzero(pool[1][here] != shared[1][there])
    if differ.size:
        i = differ[0]
        return (
            f"its labels of {differ.size} test image(s) are not {whose} (image {int(pool[0][here[i]])}: "
            f"{int(pool[1][here[i]])} here, {int(shared[1][there[i]])} there)"
        )
    return f"ran on other test images than {whose}"


def _with_intervals(group: Group, baseline: str | None, n_resamples: int) -> tuple[Group, list[tuple[str, str]]]:
    per_threat, warnings = {}, []
    for threat in group.threats:
        per_threat[threat], notes = _group_threat(group, threat, baseline, n_resamples)
        warnings += notes
    rows = tuple(
        replace(row, threats={t: replace(s, ci=per_threat[t].get(row.label)) for t, s in row.threats.items()})
        for row in group.rows
    )
    group = replace(group, rows=rows, baseline=baseline)
    group = replace(group, rows=tuple(replace(row, check=row_check(group, row, n_resamples)) for row in rows))
    return rank_rows(group), warnings


RANK_STATS = ("worst", "avg")


def parse_rank_by(text: str) -> tuple[str, str]:
    """``THREAT`` or ``THREAT:STAT`` (STAT: worst, the default, or avg) as (threat, statistic);
    a `FairbenchError` naming the choices otherwise."""
    threat, _, stat = text.strip().partition(":")
    stat = stat or "worst"
    names = threat_columns()
    if threat not in names or stat not in RANK_STATS:
        raise FairbenchError(
            f"--rank-by {text!r} is not THREAT[:STAT]; THREAT is one of {', '.join(names)}, "
            f"STAT one of {', '.join(RANK_STATS)} (e.g. pgd20:worst)"
        )
    return threat, stat


def _apply_rank_by(board: Leaderboard, rank_by: str | None) -> tuple[Leaderboard, list[tuple[str, str]]]:
    """Every group that has the ``rank_by`` threat ranked by it; the others keep their default, with
    a warning. A threat that no group has is an error."""
    if rank_by is None:
        return board, []
    threat, stat = parse_rank_by(rank_by)
    if not any(threat in g.threats for g in board.groups):
        raise FairbenchError(f"--rank-by {rank_by}: no group has {threat_name(threat)} results")
    groups, warnings = [], []
    for g in board.groups:
        if threat in g.threats:
            g = replace(g, sort_threat=threat, sort_stat=stat, check_threat=check_threat(g.threats, threat))
        else:
            warnings.append(
                (
                    g.key.label(),
                    f"no {threat_name(threat)} results: ranked by worst-class "
                    f"{threat_name(g.sort_threat)} error instead of --rank-by {rank_by}",
                )
            )
        groups.append(g)
    return replace(board, groups=tuple(groups)), warnings


def sanity_warnings(board: Leaderboard) -> list[tuple[str, str]]:
    """Runs whose clean accuracy does not exceed chance (its Wilson interval reaches down to
    1/classes) or
    that are right on one class only (they may predict that class alone): their robust numbers
    say nothing about the method."""
    out = []
    for group in board.groups:
        k = len(group.key.classes)
        for run in sorted((r for row in group.rows for r in row.runs), key=lambda r: r.path):
            clean = run.record.metrics.get("clean")
            if clean is None or k < 2:
                continue
            n = sum(clean.n_per_class)
            if n and wilson(clean.avg * n, n)[0] <= 1 / k:
                out.append(
                    (
                        run.path,
                        f"clean accuracy {100 * clean.avg:.1f}% is not above chance "
                        f"({100 / k:.1f}% for {k} classes): the model has not learned",
                    )
                )
            right = [
                name for name, acc, m in zip(group.key.classes, clean.per_class, clean.n_per_class) if m and acc > 0
            ]
            if len(right) == 1:
                out.append((run.path, f"right only on class {right[0]!r} (clean): it may predict that class alone"))
    return out


def _resolve_baseline(board: Leaderboard, baseline: str | None) -> tuple[list[str | None], list[tuple[str, str]]]:
    """The baseline row's label in each group. An explicit name found in no group is an error."""
    name = baseline or DEFAULT_BASELINE
    picked: list[str | None] = []
    for group in board.groups:
        try:
            row = baseline_row(group, name)
        except FairbenchError:
            if baseline is not None:
                raise
            row = None  # several rows of the default baseline's method, none with default params
        picked.append(row.label if row else None)
    if baseline is not None and not any(picked):
        listing = "; ".join(f"{g.key.label()}: {', '.join(r.label for r in g.rows)}" for g in board.groups)
        raise FairbenchError(f"--baseline {baseline} is not a method of any group; the groups' methods are {listing}")
    warnings = [
        (g.key.label(), f"no {name} row, so no comparisons with a baseline (--baseline picks one)")
        for g, p in zip(board.groups, picked)
        if p is None and len(g.rows) > 1
    ]
    return picked, warnings


def add_intervals(
    board: Leaderboard, baseline: str | None = None, n_resamples: int = N_RESAMPLES, rank_by: str | None = None
) -> Leaderboard:
    """``board`` with intervals, comparisons with ``baseline`` (default `DEFAULT_BASELINE`), the
    masking check and ranks by ``rank_by`` (`parse_rank_by`; default: `model.default_rank_threat`).

    Raises `FairbenchError` when an explicitly named ``baseline`` is in no group, or ``rank_by`` is
    not a threat of any group.
    """
    board, warnings = _apply_rank_by(board, rank_by)
    picked, notes = _resolve_baseline(board, baseline)
    warnings += notes + sanity_warnings(board)
    done = []
    for group, base in zip(board.groups, picked):
        group, notes = _with_intervals(group, base, n_resamples)
        done.append(group)
        warnings += notes
    by_key = {g.key: g for g in done}
    for i, group in enumerate(done):
        twin = by_key.get(replace(group.key, tuned=None)) if group.key.tuned is not None else None
        if twin is not None:
            done[i] = replace(group, tuning=tuning_effects(group, twin, n_resamples))
    return replace(board, groups=tuple(done), warnings=board.warnings + tuple(warnings))
