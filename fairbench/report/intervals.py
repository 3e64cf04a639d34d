"""Bootstrap intervals, baseline comparisons and tied ranks for a leaderboard, from the outcomes.

The step between the model (`model`: runs read through the schema, grouped and aggregated over
seeds) and the renderers. From each run's per-example outcomes (`Run.outcomes`: read and checked
against its metrics.json by `fairbench.schema`; a run whose outcomes disagree is skipped there),
`add_intervals` returns the leaderboard with

- each row's threat summaries carrying their bootstrap intervals and their difference from the
  group's baseline row (`ThreatSummary.ci`, computed by `stats.bootstrap_threat`);
- each group's baseline (`Group.baseline`) and its rows ranked with ties by the interval of the
  sort threat's worst-class error (`model.rank_rows`);
- warnings for what has no interval or comparison, and why.

A row gets an interval under a threat only when every one of its runs has outcomes and all were
evaluated on the same test images as most of the group's runs with outcomes (the shared pool);
otherwise it is shown without one. The bootstrap's seed names the group and threat, so each
group's numbers do not depend on which other groups the results folder holds.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import replace

import numpy as np

from fairbench.errors import FairbenchError
from fairbench.report.model import Group, Leaderboard, Row, Run, rank_rows, threat_name
from fairbench.report.stats import N_RESAMPLES, RowStats, bootstrap_threat
from fairbench.schema import Outcomes

DEFAULT_BASELINE = "pgd-at"
BOOTSTRAP_SEED = 11  # with each group's and threat's name, the bootstrap's seed


def _seed_order(run: Run) -> str:
    return json.dumps(run.seed, sort_keys=True, default=str)


def baseline_row(group: Group, name: str) -> Row | None:
    """The row ``name`` picks: the row labelled so, else the only row of method ``name``."""
    for row in group.rows:
        if row.label == name:
            return row
    same = [row for row in group.rows if row.method == name]
    if len(same) > 1:
        raise FairbenchError(f"--baseline {name} matches {len(same)} rows of {group.key.label()}: "
                             f"{'; '.join(r.label for r in same)}; pass one of these labels")
    return same[0] if same else None


def pool(outcomes: Outcomes, threat: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(test-set index, label, wrong) of the images ``threat`` ran on, in index order."""
    ran = outcomes.ran(threat)
    order = np.argsort(outcomes.index[ran], kind="stable")
    return outcomes.index[ran][order], outcomes.label[ran][order], (outcomes.results[threat][ran] == 0)[order]


def _group_threat(group: Group, threat: str, baseline: str | None, n_resamples: int
                  ) -> tuple[dict[str, RowStats], list[tuple[str, str]]]:
    """Per row label, its `RowStats` under ``threat``; and warnings about rows left without one."""
    members = {row.label: sorted((r for r in row.runs if threat in r.record.metrics), key=_seed_order)
               for row in group.rows if threat in row.threats}
    pools = {r.path: pool(r.outcomes, threat) for rs in members.values() for r in rs if r.outcomes is not None}
    keys = {path: index.tobytes() + b"|" + label.tobytes() for path, (index, label, _) in pools.items()}
    if not keys:
        return {}, []
    shared = max(Counter(keys.values()).items(), key=lambda kv: (kv[1], kv[0]))[0]
    warnings, labels, rows, wrong = [], [], [], []
    for label, runs in members.items():
        off = [r.path for r in runs if r.path in keys and keys[r.path] != shared]
        warnings += [(path, f"{threat_name(threat)} ran on other test images than the rest of its group; "
                            f"row {label} has no {threat_name(threat)} interval") for path in off]
        if off or any(r.path not in keys for r in runs):
            continue
        labels.append(label)
        rows.append(list(range(len(wrong), len(wrong) + len(runs))))
        wrong += [pools[r.path][2] for r in runs]
    if not labels:
        return {}, warnings
    pool_labels = next(pools[path][1] for path, key in keys.items() if key == shared)
    key = json.dumps([group.key.label(), group.key.classes, threat])
    stats = bootstrap_threat(pool_labels, np.array(wrong), rows, n_classes=len(group.key.classes),
                             baseline=labels.index(baseline) if baseline in labels else None,
                             n_resamples=n_resamples, seed=[BOOTSTRAP_SEED, zlib.crc32(key.encode())])
    return dict(zip(labels, stats)), warnings


def _with_intervals(group: Group, baseline: str | None, n_resamples: int) -> tuple[Group, list[tuple[str, str]]]:
    per_threat, warnings = {}, []
    for threat in group.threats:
        per_threat[threat], notes = _group_threat(group, threat, baseline, n_resamples)
        warnings += notes
    rows = tuple(replace(row, threats={t: replace(s, ci=per_threat[t].get(row.label))
                                       for t, s in row.threats.items()}) for row in group.rows)
    return rank_rows(replace(group, rows=rows, baseline=baseline)), warnings


def _resolve_baseline(board: Leaderboard, baseline: str | None
                      ) -> tuple[list[str | None], list[tuple[str, str]]]:
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
        raise FairbenchError(f"--baseline {baseline} is not a method of any group; the groups' methods "
                             f"are {listing}")
    warnings = [(g.key.label(), f"no {name} row, so no comparisons with a baseline (--baseline picks one)")
                for g, p in zip(board.groups, picked) if p is None and len(g.rows) > 1]
    return picked, warnings


def add_intervals(board: Leaderboard, baseline: str | None = None, n_resamples: int = N_RESAMPLES
                  ) -> Leaderboard:
    """``board`` with intervals, comparisons with ``baseline`` (default `DEFAULT_BASELINE`) and ranks.

    Raises `FairbenchError` when an explicitly named ``baseline`` is in no group.
    """
    picked, warnings = _resolve_baseline(board, baseline)
    done = []
    for group, base in zip(board.groups, picked):
        group, notes = _with_intervals(group, base, n_resamples)
        done.append(group)
        warnings += notes
    return replace(board, groups=tuple(done), warnings=board.warnings + tuple(warnings))
