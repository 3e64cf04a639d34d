"""`fairbench report`: per-class leaderboards built from metrics.json files and nothing else.

Runs are grouped by data set, architecture, threat model and training budget; inside a group there
is one row per method (and non-default parameters), aggregated over seeds. A file that cannot be
used (unreadable, unknown schema, unfinished run) is listed as skipped and never stops the report.
The same inputs always give byte-identical outputs: no timestamps, sorted inputs, fixed figure
metadata. Rendering lives in `report_tables`, `report_figures` and `report_html`.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from fairbench.errors import FairbenchError
from fairbench.results import atomic_write_bytes, ensure_writable, find_metrics, load_metrics

THREAT_ORDER = ("clean", "pgd20", "autoattack", "union")
THREAT_NAMES = {"clean": "clean", "pgd20": "PGD-20", "autoattack": "AutoAttack", "union": "union"}
# A group is sorted by the worst-class error under the first of these that every row has.
ROBUST_PRECEDENCE = ("autoattack", "union", "pgd20", "clean")
# Training settings outside the group's budget: shown in a row's label when they vary in the group.
EXTRA_TRAINING = ("batch_size", "lr", "momentum", "weight_decay", "schedule", "step_size",
                  "attack_steps", "val_per_class", "bn_batch")
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
        training = dict(training) if isinstance(training, dict) else {}
        if "bn_batch" not in training and _is_count(training.get("batch_size")):
            # runs written before bn_batch was recorded: plain DDP split the batch norm per process
            world = (self.data.get("timing") or {}).get("world_size")
            training["bn_batch"] = training["batch_size"] // (world if _is_count(world) else 1)
        return training

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


@dataclass(frozen=True)
class Row:
    label: str
    method: str
    runs: tuple[Run, ...]
    threats: dict[str, ThreatSummary]

    @property
    def seeds(self) -> list[Any]:
        return sorted((r.seed for r in self.runs), key=_canon)


@dataclass(frozen=True)
class Group:
    key: GroupKey
    threats: tuple[str, ...]
    sort_threat: str
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Leaderboard:
    groups: tuple[Group, ...]
    skipped: tuple[tuple[str, str], ...]  # (path, reason)
    n_files: int


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


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


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

    def order(row: Row) -> tuple:
        s = row.threats.get(sort_threat)
        return (s is None, s.worst.mean if s else 0.0, s.avg.mean if s else 0.0, row.label)

    return Group(key, threats, sort_threat, tuple(sorted(rows, key=order)))


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


def write_report(results_dir: Path, board: Leaderboard | None = None) -> tuple[Leaderboard, str, list[Path]]:
    """Write every output for ``board`` (default: built from ``results_dir``) into ``results_dir``.

    Returns the leaderboard, its Markdown and the files written.
    """
    from fairbench.report_figures import figure_paths, group_slugs, render_chart
    from fairbench.report_html import to_html
    from fairbench.report_tables import to_csv, to_latex, to_markdown

    results_dir = Path(results_dir)
    board = board if board is not None else build_leaderboard(results_dir)
    if not board.groups:
        raise FairbenchError(f"no usable metrics.json under {results_dir} "
                             f"({board.n_files} found, {len(board.skipped)} skipped)")
    outputs: dict[str, bytes] = {}
    charts: dict[str, bytes] = {}
    for group, slug in zip(board.groups, group_slugs(board)):
        for threat, (png, svg) in figure_paths(group, slug).items():
            outputs[png], outputs[svg] = render_chart(group, threat)
            charts[png] = outputs[png]
    markdown = to_markdown(board)
    outputs["leaderboard.md"] = markdown.encode()
    outputs["leaderboard.csv"] = to_csv(board).encode()
    outputs["leaderboard.tex"] = to_latex(board).encode()
    outputs["index.html"] = to_html(board, group_slugs(board), charts).encode()
    ensure_writable(results_dir / "figures")  # one clear line, not an OSError halfway through
    written = []
    for rel in sorted(outputs):
        atomic_write_bytes(results_dir / rel, outputs[rel])
        written.append(results_dir / rel)
    for old in sorted((results_dir / "figures").glob("*")):  # charts of groups that are gone
        if old.is_file() and old.suffix in (".png", ".svg") and old not in written:
            old.unlink()
    return board, markdown, written

