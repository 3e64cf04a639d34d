"""The leaderboard's data model: runs read from metrics.json files, grouped and aggregated over seeds.

Runs are grouped by data set, architecture, threat model and training budget; inside a group there
is one row per method (and non-default parameters), aggregated over seeds. A file that cannot be
used (unreadable, unknown schema, unfinished run) is listed as skipped and never stops the report.
The same inputs always give byte-identical outputs: no timestamps, sorted inputs, fixed figure
metadata. This module is the bottom of the report package (it imports only the pure `stats`);
`intervals` adds the bootstrap from the runs' outcomes, rendering lives in `tables`, `figures`
and `html`, the command that writes them in `command`.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from fairbench.errors import FairbenchError
from fairbench.report.stats import RowStats, tied_ranks
from fairbench.results import find_metrics, load_metrics

THREAT_ORDER = ("clean", "pgd20", "autoattack", "union")
THREAT_NAMES = {"clean": "clean", "pgd20": "PGD-20", "autoattack": "AutoAttack", "union": "union"}
# A group is sorted by the worst-class error under the first of these that every row has.
ROBUST_PRECEDENCE = ("autoattack", "union", "pgd20", "clean")
# Training settings outside the group's budget: shown in a row's label when they vary in the group.
EXTRA_TRAINING = ("batch_size", "lr", "momentum", "weight_decay", "schedule", "step_size",
                  "attack_steps", "val_per_class")
FINISHED = (None, "complete", "completed", "finished", "done")


def threat_name(threat: str) -> str:
    return THREAT_NAMES.get(threat, threat)


def fmt_value(value: Any) -> str:
    """A parameter value as a person reads it (floats without binary noise)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class Run:
    """One usable metrics.json; ``path`` is relative to the results folder (POSIX)."""

    path: str
    data: dict[str, Any]

    @property
    def training(self) -> dict[str, Any]:
        training = self.data.get("training")
        return training if isinstance(training, dict) else {}

    @property
    def seed(self) -> Any:
        return self.data.get("seed")

    def identity(self) -> tuple[str, str, str]:
        """What makes two runs the same experiment up to the seed (inside one group)."""
        extra = {k: self.training.get(k) for k in EXTRA_TRAINING}
        return self.data["method"], _canon(self.data.get("params") or {}), _canon(extra)


@dataclass(frozen=True)
class GroupKey:
    """Data set, architecture, threat model and training budget: runs compared in one table."""

    dataset: str
    arch: str
    norm: str
    eps: float
    epochs: int | None
    train_per_class: int | None
    eval_per_class: int | None
    classes: tuple[str, ...]

    @classmethod
    def of(cls, run: Run) -> "GroupKey":
        d, t = run.data, run.training
        return cls(d["dataset"], d["arch"], str(d["threat"].get("norm", "Linf")),
                   round(float(d["threat"]["eps"]), 8), t.get("epochs", d.get("epochs")),
                   t.get("train_per_class"), t.get("eval_per_class"), tuple(d["classes"]))

    def label(self) -> str:
        eps = f"{round(self.eps * 255)}/255" if abs(self.eps * 255 - round(self.eps * 255)) < 1e-4 \
            else f"{self.eps:g}"
        train = f"{self.train_per_class} train/class" if self.train_per_class else "full train set"
        test = f"{self.eval_per_class} test/class" if self.eval_per_class else "full test set"
        epochs = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}" if self.epochs is not None \
            else "epochs unknown"
        return f"{self.dataset} · {self.arch} · {self.norm} eps {eps} · {epochs} · {train} · {test}"

    def slug(self) -> str:
        text = (f"{self.dataset}_{self.arch}_{self.norm}-{self.eps:g}_e{self.epochs}"
                f"_tr{self.train_per_class or 'all'}_te{self.eval_per_class or 'all'}")
        return "".join(c if c.isalnum() or c in "-._" else "-" for c in text).lower()

    def sort_key(self) -> tuple:
        return (self.dataset, self.arch, self.norm, self.eps, self.epochs or 0,
                self.train_per_class or 0, self.eval_per_class or 0, self.classes)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds (``std`` is None for a single seed)."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> "Stat | None":
        vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if not vals:
            return None
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


@dataclass(frozen=True)
class ThreatSummary:
    """One row's errors under one threat, aggregated over the row's seeds."""

    avg: Stat
    worst: Stat
    spread: Stat
    worst_class: str  # the class that is worst in most seeds
    worst_class_votes: int  # in how many seeds it is the worst
    per_class: tuple[Stat | None, ...]  # error per class, for the charts
    ci: RowStats | None = None  # bootstrap intervals from the outcomes (`report.intervals`)


@dataclass(frozen=True)
class Row:
    label: str
    method: str
    runs: tuple[Run, ...]
    threats: dict[str, ThreatSummary]
    rank: int | None = None  # None: the row lacks the threat the group is ranked by

    @property
    def seeds(self) -> list[Any]:
        return sorted((r.seed for r in self.runs), key=_canon)


@dataclass(frozen=True)
class Group:
    key: GroupKey
    threats: tuple[str, ...]
    sort_threat: str
    rows: tuple[Row, ...]
    baseline: str | None = None  # the label of the row the others are compared with


@dataclass(frozen=True)
class Leaderboard:
    groups: tuple[Group, ...]
    skipped: tuple[tuple[str, str], ...]  # (path, reason)
    n_files: int
    warnings: tuple[str, ...] = ()


def _check_usable(data: dict[str, Any]) -> None:
    """Beyond `load_metrics`: a finished run with every field the report reads, of the right type."""
    if data.get("status") not in FINISHED or not data["metrics"]:
        raise FairbenchError(f"unfinished run (status {data.get('status')!r}, "
                             f"{len(data['metrics'])} threat(s) evaluated)")
    classes, threat, training = data["classes"], data.get("threat"), data.get("training", {})
    if not classes or not all(isinstance(c, str) for c in classes):
        raise FairbenchError("'classes' must be a non-empty list of names")
    if not (isinstance(threat, dict) and _finite(threat.get("eps")) and isinstance(threat.get("norm", ""), str)):
        raise FairbenchError("field 'threat' needs a numeric 'eps' and a 'norm' name")
    budget = [data.get("epochs")] + ([training.get(k) for k in ("epochs", "train_per_class", "eval_per_class")]
                                     if isinstance(training, dict) else [""])
    if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in budget):
        raise FairbenchError("'training' must be an object with whole-number epochs and per-class counts")
    if not isinstance(data.get("params") or {}, dict):
        raise FairbenchError("field 'params' is not an object")
    for name, m in data["metrics"].items():
        if not (isinstance(m, dict) and isinstance(m.get("per_class"), list)
                and len(m["per_class"]) == len(classes)
                and all(v is None or _finite(v) or v != v for v in m["per_class"])  # NaN: class absent
                and all(_finite(m.get(k)) for k in ("avg", "worst", "std"))
                and m.get("worst_class") in classes):
            raise FairbenchError(f"metrics.{name} lacks per_class/avg/worst/worst_class/std for "
                                 f"{len(classes)} classes")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_runs(results_dir: Path) -> tuple[list[Run], list[tuple[str, str]], int]:
    """Every usable metrics.json under ``results_dir`` (sorted by path), the skipped ones, the count."""
    runs, skipped, seen = [], [], {}
    paths = find_metrics(results_dir)
    for path in paths:
        rel = path.relative_to(results_dir).as_posix()
        try:
            data = load_metrics(path)
            _check_usable(data)
        except FairbenchError as exc:
            skipped.append((rel, str(exc).removeprefix(f"{path}: ")))
            continue
        run = Run(rel, data)
        dup = (GroupKey.of(run), run.identity(), _canon(run.seed))
        if dup in seen:
            skipped.append((rel, f"same experiment and seed as {seen[dup]}"))
            continue
        seen[dup] = rel
        runs.append(run)
    return runs, skipped, len(paths)


def _summarize(runs: list[Run], threat: str, classes: tuple[str, ...]) -> ThreatSummary | None:
    ms = [r.data["metrics"][threat] for r in runs if threat in r.data["metrics"]]
    if not ms:
        return None
    per_class = tuple(Stat.of(None if m["per_class"][i] is None else 1 - m["per_class"][i] for m in ms)
                      for i in range(len(classes)))
    votes = Counter(m["worst_class"] for m in ms)
    mean_err = {c: (s.mean if s else -1.0) for c, s in zip(classes, per_class)}
    worst_class = max(votes, key=lambda c: (votes[c], mean_err[c], c))
    return ThreatSummary(Stat.of(1 - m["avg"] for m in ms), Stat.of(1 - m["worst"] for m in ms),
                         Stat.of(m["std"] for m in ms), worst_class, votes[worst_class], per_class)


def _method_defaults(method: str) -> dict[str, Any] | None:
    from fairbench.registry import METHODS

    try:
        return METHODS.entry(method).params
    except FairbenchError:  # results of a method that is not installed here
        return None


def _labels(buckets: dict[tuple[str, str, str], list[Run]]) -> dict[tuple[str, str, str], str]:
    """Method name plus the parameters and training settings that tell the rows apart."""
    varying = [f for f in EXTRA_TRAINING if len({_canon(rs[0].training.get(f)) for rs in buckets.values()}) > 1]
    labels: dict[tuple[str, str, str], str] = {}
    for ident, rs in buckets.items():
        method, params = ident[0], rs[0].data.get("params") or {}
        defaults = _method_defaults(method)
        if defaults is None:  # unknown defaults: show what varies between this method's rows
            same = [b[0].data.get("params") or {} for i, b in buckets.items() if i[0] == method]
            shown = [k for k in sorted(params) if len({_canon(p.get(k)) for p in same}) > 1]
        else:
            shown = [k for k in sorted(params) if k not in defaults or _canon(params[k]) != _canon(defaults[k])]
        parts = [f"{k}={fmt_value(params[k])}" for k in shown]
        parts += [f"{f}={fmt_value(rs[0].training.get(f))}" for f in varying]
        label = method + (f" ({', '.join(parts)})" if parts else "")
        n = sum(1 for other in labels.values() if other == label or other.startswith(label + " #"))
        labels[ident] = label if n == 0 else f"{label} #{n + 1}"
    return labels


def ordered_threats(names: Iterable[str]) -> tuple[str, ...]:
    names = set(names)
    return tuple(t for t in THREAT_ORDER if t in names) + tuple(sorted(names - set(THREAT_ORDER)))


def build_group(key: GroupKey, runs: list[Run]) -> Group:
    """One table: rows aggregated over seeds, sorted by worst-class robust error."""
    buckets: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        buckets.setdefault(run.identity(), []).append(run)
    labels = _labels(buckets)
    threats = ordered_threats(t for r in runs for t in r.data["metrics"])
    rows = []
    for ident, rs in buckets.items():
        summaries = {t: s for t in threats if (s := _summarize(rs, t, key.classes)) is not None}
        rows.append(Row(labels[ident], ident[0], tuple(rs), summaries))
    in_all = [t for t in ROBUST_PRECEDENCE if all(t in row.threats for row in rows)]
    in_any = [t for t in ROBUST_PRECEDENCE if any(t in row.threats for row in rows)]
    sort_threat = (in_all or in_any or [threats[0]])[0]

    return rank_rows(Group(key, threats, sort_threat, tuple(rows)))


def rank_rows(group: Group) -> Group:
    """The group with its rows ranked and sorted by worst-class error under its sort threat.

    Ranks admit ties (`stats.tied_ranks`): a row whose interval (``ThreatSummary.ci``) overlaps the
    best row's shares its rank; rows without intervals tie only on equal values. Rows are sorted by
    rank, then worst-class error, average error and label; rows without the threat come last.
    """
    def value(row: Row, field: str) -> float | None:
        s = row.threats.get(group.sort_threat)
        return getattr(s, field).mean if s else None

    def bound(row: Row, end: str) -> float | None:
        s = row.threats.get(group.sort_threat)
        return getattr(s.ci.worst, end) if s and s.ci else None

    rows = group.rows
    ranks = tied_ranks([value(r, "worst") for r in rows], [bound(r, "lo") for r in rows],
                       [bound(r, "hi") for r in rows])
    ranked = [replace(row, rank=rank) for row, rank in zip(rows, ranks)]
    ranked.sort(key=lambda r: (r.rank is None, r.rank or 0, value(r, "worst") or 0.0, value(r, "avg") or 0.0,
                               r.label))
    return replace(group, rows=tuple(ranked))


def build_leaderboard(results_dir: Path) -> Leaderboard:
    """Read every metrics.json under ``results_dir`` and aggregate; reads only, never writes."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FairbenchError(f"results folder {results_dir} does not exist; run `fairbench run` first "
                             f"or pass --results DIR")
    runs, skipped, n_files = load_runs(results_dir)
    by_key: dict[GroupKey, list[Run]] = {}
    for run in runs:
        by_key.setdefault(GroupKey.of(run), []).append(run)
    groups = tuple(build_group(k, by_key[k]) for k in sorted(by_key, key=GroupKey.sort_key))
    return Leaderboard(groups, tuple(skipped), n_files)
