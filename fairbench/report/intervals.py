"""Bootstrap intervals, baseline comparisons and tied ranks for a leaderboard, from the outcomes.

The step between the model (`model`: metrics.json files grouped and aggregated over seeds) and the
renderers. `add_intervals` reads every run's ``outcomes.csv.gz`` (`outcomes`) and returns the
leaderboard with

- each row's threat summaries carrying their bootstrap intervals and their difference from the
  group's baseline row (`ThreatSummary.ci`, computed by `stats.bootstrap_threat`);
- each group's baseline (`Group.baseline`) and its rows ranked with ties by the interval of the
  sort threat's worst-class error (`model.rank_rows`);
- a run whose outcomes are unreadable or disagree with its metrics.json moved to the skipped files
  (its group re-aggregated without it), and warnings for what has no interval and why.

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
from pathlib import PurePosixPath, Path

import numpy as np

from fairbench.errors import FairbenchError
from fairbench.report.model import Group, Leaderboard, Row, Run, build_group, rank_rows, threat_name
from fairbench.report.outcomes import OUTCOMES_FILE, Outcomes, load_outcomes
from fairbench.report.stats import N_RESAMPLES, RowStats, bootstrap_threat

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


def _pool_key(outcomes: Outcomes, threat: str) -> bytes:
    index, label, _ = outcomes.pool(threat)
    return index.tobytes() + b"|" + label.tobytes()


def _group_threat(group: Group, threat: str, outcomes: dict[str, Outcomes], baseline: str | None,
                  n_resamples: int) -> tuple[dict[str, RowStats], list[str]]:
    """Per row label, its `RowStats` under ``threat``; and warnings about rows left without one."""
    members = {row.label: sorted((r for r in row.runs if threat in r.data["metrics"]), key=_seed_order)
               for row in group.rows if threat in row.threats}
    keys = {r.path: _pool_key(outcomes[r.path], threat) for rs in members.values() for r in rs
            if r.path in outcomes}
    if not keys:
        return {}, []
    pool = max(Counter(keys.values()).items(), key=lambda kv: (kv[1], kv[0]))[0]
    warnings, labels, rows, wrong = [], [], [], []
    for label, runs in members.items():
        off = [r.path for r in runs if r.path in keys and keys[r.path] != pool]
        if off:
            warnings.append(f"{', '.join(off)}: {threat_name(threat)} was evaluated on other test images "
                            f"than the rest of its group; row {label!r} has no {threat_name(threat)} interval")
        if off or any(r.path not in keys for r in runs):
            continue
        labels.append(label)
        rows.append(list(range(len(wrong), len(wrong) + len(runs))))
        wrong += [outcomes[r.path].pool(threat)[2] for r in runs]
    if not labels:
        return {}, warnings
    any_run = next(r.path for rs in members.values() for r in rs if keys.get(r.path) == pool)
    _, pool_labels, _ = outcomes[any_run].pool(threat)
    key = json.dumps([group.key.label(), group.key.classes, threat])
    stats = bootstrap_threat(pool_labels, np.array(wrong), rows, n_classes=len(group.key.classes),
                             baseline=labels.index(baseline) if baseline in labels else None,
                             n_resamples=n_resamples, seed=[BOOTSTRAP_SEED, zlib.crc32(key.encode())])
    return dict(zip(labels, stats)), warnings


def _with_intervals(group: Group, outcomes: dict[str, Outcomes], baseline: str | None,
                    n_resamples: int) -> tuple[Group, list[str]]:
    per_threat, warnings = {}, []
    for threat in group.threats:
        per_threat[threat], notes = _group_threat(group, threat, outcomes, baseline, n_resamples)
        warnings += notes
    rows = tuple(replace(row, threats={t: replace(s, ci=per_threat[t].get(row.label))
                                       for t, s in row.threats.items()}) for row in group.rows)
    return rank_rows(replace(group, rows=rows, baseline=baseline)), warnings


def _read_all(board: Leaderboard, results_dir: Path) -> tuple[dict[str, Outcomes], dict[str, str], list[str]]:
    """Outcomes per run path; runs whose outcomes are unusable (path -> why); runs without any."""
    found, bad, missing = {}, {}, []
    for group in board.groups:
        for row in group.rows:
            for run in row.runs:
                folder = results_dir / PurePosixPath(run.path).parent
                try:
                    outcomes = load_outcomes(folder, run.data)
                except FairbenchError as exc:
                    bad[run.path] = f"{OUTCOMES_FILE} disagrees with metrics.json or is unreadable: {exc}"
                    continue
                if outcomes is None:
                    missing.append(run.path)
                else:
                    found[run.path] = outcomes
    return found, bad, sorted(missing)


def _resolve_baseline(board: Leaderboard, baseline: str | None) -> tuple[list[str | None], list[str]]:
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
    warnings = [f"{g.key.label()}: no {name} row, so no comparisons with a baseline there "
                f"(--baseline picks another)" for g, p in zip(board.groups, picked) if p is None and len(g.rows) > 1]
    return picked, warnings


def add_intervals(board: Leaderboard, results_dir: Path, baseline: str | None = None,
                  n_resamples: int = N_RESAMPLES) -> Leaderboard:
    """``board`` with intervals, comparisons with ``baseline`` (default `DEFAULT_BASELINE`) and ranks.

    Raises `FairbenchError` when an explicitly named ``baseline`` is in no group.
    """
    outcomes, bad, missing = _read_all(board, Path(results_dir))
    groups = list(board.groups)
    if bad:  # re-aggregate the groups those runs were in, without them
        groups = [build_group(g.key, kept) for g in groups
                  if (kept := [r for row in g.rows for r in row.runs if r.path not in bad])]
        groups.sort(key=lambda g: g.key.sort_key())
    board = replace(board, groups=tuple(groups), skipped=board.skipped + tuple(sorted(bad.items())))
    picked, warnings = _resolve_baseline(board, baseline)
    if missing:
        warnings.insert(0, f"{len(missing)} run(s) have no {OUTCOMES_FILE} (older results), so their rows "
                           f"have no intervals: {', '.join(missing)}")
    done = []
    for group, base in zip(board.groups, picked):
        group, notes = _with_intervals(group, outcomes, base, n_resamples)
        done.append(group)
        warnings += notes
    return replace(board, groups=tuple(done), warnings=board.warnings + tuple(warnings))
