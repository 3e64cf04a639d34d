"""The leaderboard's data model: runs read through the results schema, grouped, aggregated over seeds.

Runs are grouped by data set, architecture, threat model, training budget and model-selection rule;
inside a group there is one row per method (and non-default parameters), aggregated over seeds
with pandas from a tidy table of per-run, per-class errors (`tidy`). A file that the schema's
validator refuses (unreadable, invalid, unfinished, outcomes that disagree) is listed as skipped
with the file and the field, and never stops the report; a run without outcomes is used and
listed in ``warnings``.
The same inputs always give byte-identical outputs: no timestamps, sorted inputs, fixed figure
metadata. This module is the bottom of the report package (it imports only the pure `stats`);
`intervals` adds the bootstrap from the runs' outcomes, rendering lives in `tables`, `figures`
and `html`, the command that writes them in `command`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeGuard

import pandas as pd

from fairbench.errors import FairbenchError
from fairbench.files import canonical_json
from fairbench.report.stats import ZERO, Delta, RowStats, tied_ranks
from fairbench.schema import (
    OUTCOMES_FILE,
    UNION,
    Outcomes,
    RunRecord,
    find_metrics,
    read_metrics,
    read_outcomes,
    threat_columns,
)
from fairbench.specs.threats import subset_key, subsets_from_keys, threat_label, threat_spec

# Training settings outside the group's budget: shown in a row's label when they vary in the group.
EXTRA_TRAINING = (
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "step_size",
    "attack_steps",
    "val_per_class",
    "bn_batch",
    "ema",
    "init_from",
)


def threat_name(threat: str) -> str:
    """The label people read for a (validated, hence registered) threat name."""
    return threat_label(threat)


def robust_precedence() -> tuple[str, ...]:
    """A group is sorted by the worst-class error under the first of these that every row has:
    the strongest registered attack, then the union, then the other attacks, then clean."""
    attacks = [t for t in reversed(threat_columns()) if t != UNION and threat_spec(t).attack]
    return tuple(attacks[:1] + [UNION] + attacks[1:]) + tuple(
        t for t in threat_columns() if t != UNION and t not in attacks
    )


def on_every_image(runs: Iterable[Run], threat: str) -> bool:
    """Every run evaluated ``threat`` on all the images it evaluated clean (not on a subset, as
    a threat runs with --subset THREAT=K)."""

    def full(run: Run) -> bool:
        m = run.record.metrics
        return threat in m and sum(m[threat].n_per_class) == sum(m.get("clean", m[threat]).n_per_class)

    return all(full(r) for r in runs)


def default_rank_threat(rows: Sequence["Row"]) -> str | None:
    """What a group is ranked by unless ``report --rank-by`` says otherwise: the strongest attack
    (or the union) in `robust_precedence` that every row has and every run evaluated on all its
    test images (PGD-20 where AutoAttack runs on a subset; never the union of a single attack); else
    the first of `robust_precedence` every row has, else any row has. The worst-class error under it
    ranks the rows."""
    runs = [r for row in rows for r in row.runs]
    order = robust_precedence()
    single = {t for row in rows for t in row.threats if t not in ("clean", UNION)}
    # the union of one attack is that attack: name the attack
    attacks = [t for t in order if t != "clean" and (t != UNION or len(single) > 1)]
    whole = [t for t in attacks if all(t in row.threats for row in rows) and on_every_image(runs, t)]
    in_all = [t for t in order if all(t in row.threats for row in rows)]
    in_any = [t for t in order if any(t in row.threats for row in rows)]
    return next(iter(whole or in_all or in_any), None)


def check_threat(group_threats: Sequence[str], rank_threat: str) -> str | None:
    """The threat a ranking is checked with: the strongest registered attack (AutoAttack), where the
    group has it and does not rank by it."""
    strongest = robust_precedence()[0]
    return strongest if strongest in group_threats and strongest != rank_threat else None


def fmt_value(value: Any) -> str:
    """A parameter value as a person reads it (floats without binary noise)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def printable(text: str) -> str:
    """``text`` with control characters (terminal escapes, newlines) shown as ``?``."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _is_count(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


@dataclass(frozen=True)
class Run:
    """One validated result: ``path`` (of its metrics.json, relative to the results folder, POSIX),
    its record, and its per-example outcomes (None for results written before outcomes existed)."""

    path: str
    record: RunRecord
    outcomes: Outcomes | None = None

    @property
    def training(self) -> dict[str, Any]:
        training = dict(self.record.training)
        if "bn_batch" not in training and _is_count(training.get("batch_size")):
            # runs written before bn_batch was recorded: plain DDP split the batch norm per process
            world = (self.record.timing or {}).get("world_size")
            training["bn_batch"] = training["batch_size"] // (world if _is_count(world) else 1)
        return training

    @property
    def seed(self) -> int:
        return self.record.seed

    @property
    def source(self) -> dict[str, Any] | None:
        """For a run that fine-tunes another (``--init-from``): the source's method and training
        budget in epochs (its own and its sources'), else None. A source that is a bare file
        has neither (None values)."""
        start = self.record.init_from
        if start is None:
            return None
        if not isinstance(start, dict):  # a bare path, as early records kept it
            return {"method": None, "budget_epochs": None}
        method, budget = start.get("method"), start.get("budget_epochs")
        named = isinstance(method, str) and 0 < len(method) <= 64 and method.isprintable()
        return {"method": method if named else None, "budget_epochs": budget if _is_count(budget) else None}

    def identity(self) -> tuple[str, str, str]:
        """What makes two runs the same experiment up to the seed (inside one group). A fine-tuning
        run is identified by its source's method and budget, not by the source run itself (whose
        folder differs from seed to seed)."""
        extra = {k: self.training.get(k) for k in EXTRA_TRAINING}
        if self.source is not None:
            extra["init_from"] = self.source
        return self.record.method, canonical_json(self.record.params), canonical_json(extra)


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
    select: str = "last"
    # (threat, K) of each threat run on K of the evaluated images per class (--subset), in column order
    subsets: tuple[tuple[str, int], ...] = ()
    tuned: tuple[str, int] | None = None  # a tuned row's run: (study, trials per method); `tuned_of`

    @classmethod
    def of(cls, run: Run) -> "GroupKey":
        """A run that fine-tunes another is compared with the runs trained like its source: its
        group's budget is the source's (the row's label shows the epochs it adds)."""
        r, t = run.record, run.training
        epochs = t.get("epochs", r.epochs)
        if run.source is not None and run.source["budget_epochs"] is not None:
            epochs = run.source["budget_epochs"]
        subsets = tuple(
            (threat, k) for threat, k in subsets_from_keys(t).items() if threat in r.metrics and _is_count(k)
        )
        return cls(
            r.dataset,
            r.arch,
            r.threat.norm,
            round(r.threat.eps, 8),
            epochs,
            t.get("train_per_class"),
            t.get("eval_per_class"),
            r.classes,
            r.select,
            subsets,
            tuned_of(t),
        )

    def label(self) -> str:
        eps = f"{round(self.eps * 255)}/255" if abs(self.eps * 255 - round(self.eps * 255)) < 1e-4 else f"{self.eps:g}"
        train = f"{self.train_per_class} train/class" if self.train_per_class else "full train set"
        test = f"{self.eval_per_class} test/class" if self.eval_per_class else "full test set"
        for threat, k in self.subsets:
            test += f" ({threat_label(threat)}: {k}/class)"
        epochs = (
            f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}" if self.epochs is not None else "epochs unknown"
        )
        select = "" if self.select == "last" else f" · {self.select} selection"
        tuned = (
            ""
            if self.tuned is None
            else f" · tuned ({self.tuned[1]} trials, validation selection; study {self.tuned[0]})"
        )
        return f"{self.dataset} · {self.arch} · {self.norm} eps {eps} · {epochs} · {train} · {test}{select}{tuned}"

    def slug(self) -> str:
        text = (
            f"{self.dataset}_{self.arch}_{self.norm}-{self.eps:g}_e{self.epochs}"
            f"_tr{self.train_per_class or 'all'}_te{self.eval_per_class or 'all'}"
            + "".join(f"_{subset_key(threat).removesuffix('_per_class')}{k}" for threat, k in self.subsets)
            + ("" if self.select == "last" else f"_{self.select}")
            + ("" if self.tuned is None else f"_tuned-{self.tuned[0]}")
        )
        return slug(text)

    def sort_key(self) -> tuple:
        return (
            self.dataset,
            self.arch,
            self.norm,
            self.eps,
            self.epochs or 0,
            self.train_per_class or 0,
            self.eval_per_class or 0,
            self.classes,
            self.select,
            self.subsets,
            self.tuned or ("", 0),
        )


def tuned_of(training: dict[str, Any]) -> tuple[str, int] | None:
    """(study, trials per method) of a tuned row's run (`fairbench tune --confirm` records them as
    ``tuning_study`` and ``tuning_trials``), else None. Runs of one study and N form one group."""
    study, trials = training.get("tuning_study"), training.get("tuning_trials")
    if isinstance(study, str) and 0 < len(study) <= 100 and study.isprintable() and _is_count(trials):
        return study, int(trials)
    return None


SLUG_MAX = 80


def slug(text: str) -> str:
    """A file-name stem from the allow-list ``[a-z0-9._-]``: at most `SLUG_MAX` characters, never
    starting with ``.`` or ``-`` (so never ``..``, a hidden file or an option), never empty."""
    out = "".join(c if c in "abcdefghijklmnopqrstuvwxyz0123456789._-" else "-" for c in text.lower())
    out = out[:SLUG_MAX].lstrip(".-")
    return out or "x"


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds (``std`` is None for a single seed)."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, agg: pd.Series) -> "Stat | None":
        """From a row of ``.agg(["mean", "std", "count"])`` (NaN values were left out)."""
        if not agg["count"]:
            return None
        return cls(float(agg["mean"]), None if agg["count"] < 2 else float(agg["std"]), int(agg["count"]))


@dataclass(frozen=True)
class ThreatSummary:
    """One row's errors under one threat, aggregated over the row's seeds."""

    avg: Stat
    worst: Stat
    spread: Stat
    worst_class: str  # the class worst in most seeds; classes that tie joined by " = " (`tie_text`)
    worst_class_votes: int  # in how many seeds it is the worst (or tied for the worst)
    per_class: tuple[Stat | None, ...]  # error per class, for the charts
    ci: RowStats | None = None  # bootstrap intervals from the outcomes (`report.intervals`)
    worst_classes: tuple[str, ...] = ()  # every class tied for the worst (one name without a tie)


@dataclass(frozen=True)
class Row:
    label: str
    method: str
    runs: tuple[Run, ...]
    threats: dict[str, ThreatSummary]
    rank: int | None = None  # None: the row lacks the threat the group is ranked by
    # the group's check threat minus its ranking threat, the ranked statistic on the same images
    check: Delta | None = None

    @property
    def seeds(self) -> list[Any]:
        return sorted((r.seed for r in self.runs), key=canonical_json)

    @property
    def possibly_masked(self) -> bool:
        """The check threat (AutoAttack) finds a higher error than the ranking threat on the same
        images, by an interval that excludes 0: the ranking threat may overstate the robustness."""
        return self.check is not None and self.check.lo > ZERO


@dataclass(frozen=True)
class TuningEffect:
    """A tuned row against the same method's row in the paper-hyperparameter group beside it
    (`intervals.tuning_effects`), under the tuned group's ranking threat: ``worst``/``avg`` are the
    tuned row's error minus the paper row's, paired over test images and seeds; ``paper_delta`` is
    the paper row's difference from its own group's baseline (None where it is that baseline);
    ``n_seeds``: how many seeds the two rows share (the differences are over those)."""

    paper: Row
    threat: str
    n_seeds: int
    worst: Delta | None
    avg: Delta | None
    paper_delta: Delta | None
    paper_is_baseline: bool


@dataclass(frozen=True)
class Group:
    key: GroupKey
    threats: tuple[str, ...]
    sort_threat: str
    rows: tuple[Row, ...]
    baseline: str | None = None  # the label of the row the others are compared with
    sort_stat: str = "worst"  # the statistic under sort_threat that ranks: "worst" or "avg"
    check_threat: str | None = None  # the threat the ranking is checked with (`check_threat`)
    tier: int = 3  # where the group goes on the page (`group_tier`)
    # a tuned group's shortfall against the paper-hyperparameter group beside it (`with_shortfall`):
    # (methods, each as "method (k of n seeds)", whose tuned row is missing or has fewer seeds; n methods)
    shortfall: tuple[tuple[str, ...], int] | None = None
    # a tuned group's rows against their paper-hyperparameter rows, by row label (`TuningEffect`)
    tuning: dict[str, TuningEffect] | None = None


@dataclass(frozen=True)
class Leaderboard:
    groups: tuple[Group, ...]
    skipped: tuple[tuple[str, str], ...]  # (path, reason): files the report could not use
    n_files: int
    warnings: tuple[tuple[str, str], ...] = ()  # (path, what): runs used, with something missing
    studies: tuple[Any, ...] = ()  # tuning studies (`fairbench.report.sensitivity.Study`), from trials.csv files


def load_runs(results_dir: Path) -> tuple[list[Run], list[tuple[str, str]], list[tuple[str, str]], int]:
    """Every usable result under ``results_dir`` (sorted by path), the skipped files with why, the
    runs used without outcomes, and how many metrics.json files there were."""
    seen: dict[tuple[Any, ...], str]  # (group, experiment, seed) -> the run folder that has it
    runs, skipped, warnings, seen = [], [], [], {}
    paths = find_metrics(results_dir)
    tainted = tainted_trials(results_dir)
    for path in paths:
        rel = printable(path.relative_to(results_dir).as_posix())
        if path.parent in tainted:
            skipped.append((rel, "a tuning trial's folder (it holds validation.json) must hold no test outcomes"))
            continue
        try:
            record = read_metrics(path)
            outcomes = read_outcomes(path.parent / OUTCOMES_FILE, record)
        except FairbenchError as exc:
            why = str(exc).replace(f"{path.parent}/", "").removeprefix(f"{path.name}: ")
            skipped.append((rel, printable(why)))
            continue
        run = Run(rel, record, outcomes)
        if tainted and tuned_of(run.training) is not None:
            first = printable(sorted(tainted)[0].relative_to(results_dir).as_posix())
            skipped.append(
                (
                    rel,
                    f"tuned groups are refused: the tuning trial {first} (and "
                    f"{len(tainted) - 1} more) holds test outcomes, so its selection may "
                    f"have seen the test set",
                )
            )
            continue
        dup = (GroupKey.of(run), run.identity(), run.seed)
        if dup in seen:
            skipped.append((rel, f"same experiment and seed as {seen[dup]}"))
            continue
        seen[dup] = rel
        if outcomes is None:
            warnings.append((rel, f"no {OUTCOMES_FILE}: reported without intervals"))
        runs.append(run)
    return runs, skipped, warnings, len(paths)


TRIAL_FILE = "validation.json"  # fairbench.schema.validation.VALIDATION_FILE (a trial's record)
TEST_OUTCOMES = ("metrics.json", OUTCOMES_FILE, "eval_state")


def tainted_trials(results_dir: Path) -> set[Path]:
    """The tuning trials' folders under ``results_dir`` (they hold validation.json) that also hold
    test outcomes: a trial scores on validation only, so such a folder means the selection it fed
    may have seen the test set. Never through a symlinked folder."""
    found = set()
    for folder, dirs, files in os.walk(results_dir, followlinks=False):
        dirs.sort()
        if TRIAL_FILE in files and any(name in files or name in dirs for name in TEST_OUTCOMES):
            found.add(Path(folder))
    return found


TIDY = ["run", "threat", "class_index", "error", "avg_err", "worst_err", "spread", "worst_class"]
TIE = 1e-9  # class errors closer than this tie for the worst (equal counts give equal floats)


def tie_text(names: Sequence[str], n_classes: int) -> str:
    """Classes tied for the worst as people read them: ``coat``, ``coat = shirt``, ``all 10 classes``."""
    if len(names) == 1:
        return names[0]
    if len(names) == n_classes:
        return f"all {n_classes} classes"
    return " = ".join(names) if len(names) <= 3 else f"{' = '.join(names[:3])} = {len(names) - 3} more"


def tidy(runs: Sequence[Run]) -> pd.DataFrame:
    """The leaderboard's data: one row per run, threat and class (``run`` is a position in
    ``runs``); a class's error, and the run's average and worst-class error and spread."""
    return pd.DataFrame(
        [
            (i, t, j, 1 - acc, 1 - m.avg, 1 - m.worst, m.std, m.worst_class)
            for i, run in enumerate(runs)
            for t, m in run.record.metrics.items()
            for j, acc in enumerate(m.per_class)
        ],
        columns=TIDY,
    )


def summarize_rows(
    data: pd.DataFrame, row_of_run: Sequence[int], class_names: Sequence[str]
) -> dict[tuple[int, str], ThreatSummary]:
    """Per (row, threat): the statistics over the row's seeds (its runs) of the `tidy` ``data``."""
    data = data.assign(row=[row_of_run[i] for i in data["run"]])
    per_run = data.drop_duplicates(["run", "threat"])
    summary: list[Any] = ["mean", "std", "count"]  # (pandas-stubs: agg takes a list of functions or names)
    over_seeds = per_run.groupby(["row", "threat"])[["avg_err", "worst_err", "spread"]].agg(summary)
    per_class = data.groupby(["row", "threat", "class_index"])["error"].agg(summary)
    # each run's vote goes to every class tied for its worst (metrics.json names only one of them)
    top = data.groupby(["run", "threat"])["error"].transform("max")
    tied = data[data["error"] >= top - TIE]
    votes = tied.groupby(["row", "threat"])["class_index"].value_counts()
    out = {}
    for (row, threat), stats in over_seeds.iterrows():
        classes = [Stat.of(c) for _, c in per_class.loc[(row, threat)].iterrows()]
        counts = votes.loc[(row, threat)]
        err = {j: (c.mean if c else -1.0) for j, c in enumerate(classes)}
        best = max((int(counts[j]), err[j]) for j in counts.index)
        names = tuple(
            class_names[j] for j in sorted(counts.index) if (int(counts[j]), err[j]) >= (best[0], best[1] - TIE)
        )
        avg, worst, spread = Stat.of(stats["avg_err"]), Stat.of(stats["worst_err"]), Stat.of(stats["spread"])
        # every run has these three numbers (metrics.json's avg, worst and std)
        assert avg is not None and worst is not None and spread is not None
        out[row, threat] = ThreatSummary(
            avg, worst, spread, tie_text(names, len(class_names)), best[0], tuple(classes), worst_classes=names
        )
    return out


LabelParams = Callable[[str, Mapping[str, Any]], "list[str] | None"]


def _label_params(method: str, params: Mapping[str, Any]) -> list[str] | None:
    """Without ``label_params`` from the caller the report knows no method's defaults (it imports
    no training code): a row then shows the parameters that vary between its method's rows."""
    return None


def fine_tuning_label(run: Run) -> str:
    """How a fine-tuning run was made, e.g. ``from pgd-at, 4+2 epochs``."""
    source = run.source or {}
    method = source.get("method") or "a checkpoint file"
    own = run.training.get("epochs", run.record.epochs)
    before = source.get("budget_epochs")
    budget = f"{before}+{own} epochs" if before is not None and isinstance(own, int) else f"+{own} epochs"
    return f"from {method}, {budget}"


def _labels(
    buckets: dict[tuple[str, str, str], list[Run]], label_params: LabelParams | None = None
) -> dict[tuple[str, str, str], str]:
    """Method name plus the parameters and training settings that tell the rows apart: the
    parameters ``label_params(method, params)`` names (those that differ from the method's defaults
    and that its configuration uses; None where the method is unknown), else those that vary
    between the method's rows."""

    # a fine-tuning run's own recipe (lr, schedule, ...) is told apart only from other fine-tuning
    # runs; the rows trained from scratch are compared among themselves
    def varying_among(fine_tuning: bool) -> list[str]:
        same = [rs[0] for rs in buckets.values() if (rs[0].source is not None) == fine_tuning]
        return [
            f for f in EXTRA_TRAINING if f != "init_from" and len({canonical_json(r.training.get(f)) for r in same}) > 1
        ]

    varying_of = {False: varying_among(False), True: varying_among(True)}
    labels: dict[tuple[str, str, str], str] = {}
    for ident, rs in buckets.items():
        varying = varying_of[rs[0].source is not None]
        method, params = ident[0], rs[0].record.params
        shown = (label_params or _label_params)(method, params)
        if shown is None:  # unknown defaults: show what varies between this method's rows
            same = [b[0].record.params for i, b in buckets.items() if i[0] == method]
            shown = [k for k in sorted(params) if len({canonical_json(p.get(k)) for p in same}) > 1]
        parts = [f"{k}={fmt_value(params[k])}" for k in shown]
        parts += [f"{f}={fmt_value(rs[0].training.get(f))}" for f in varying]
        if rs[0].source is not None:
            parts.append(fine_tuning_label(rs[0]))
        label = method + (f" ({', '.join(parts)})" if parts else "")
        n = sum(1 for other in labels.values() if other == label or other.startswith(label + " #"))
        labels[ident] = label if n == 0 else f"{label} #{n + 1}"
    return labels


def ordered_threats(names: Iterable[str]) -> tuple[str, ...]:
    names = set(names)
    return tuple(t for t in threat_columns() if t in names)


def build_group(key: GroupKey, runs: list[Run], label_params: LabelParams | None = None) -> Group:
    """One table: rows aggregated over seeds, sorted by worst-class robust error."""
    buckets: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        buckets.setdefault(run.identity(), []).append(run)
    labels = _labels(buckets, label_params)
    ordered = [r for rs in buckets.values() for r in rs]
    row_of_run = [i for i, rs in enumerate(buckets.values()) for _ in rs]
    summaries = summarize_rows(tidy(ordered), row_of_run, key.classes)
    threats = ordered_threats(t for _, t in summaries)
    rows = [
        Row(labels[ident], ident[0], tuple(rs), {t: summaries[i, t] for t in threats if (i, t) in summaries})
        for i, (ident, rs) in enumerate(buckets.items())
    ]
    sort_threat = default_rank_threat(rows) or threats[0]
    return rank_rows(
        Group(
            key,
            threats,
            sort_threat,
            tuple(rows),
            check_threat=check_threat(threats, sort_threat),
            tier=group_tier(key, runs),
        )
    )


def rank_rows(group: Group) -> Group:
    """The group with its rows ranked and sorted by its statistic (``sort_stat``: worst-class or
    average error) under its sort threat.

    Ranks admit ties (`stats.tied_ranks`): a row whose interval (``ThreatSummary.ci``) overlaps the
    best row's shares its rank; rows without intervals tie only on equal values. Rows are sorted by
    rank, then the ranked statistic, the other one and label; rows without the threat come last.
    """
    stat, other = (group.sort_stat, "avg" if group.sort_stat == "worst" else "worst")

    def value(row: Row, field: str) -> float | None:
        s = row.threats.get(group.sort_threat)
        return getattr(s, field).mean if s else None

    def bound(row: Row, end: str) -> float | None:
        s = row.threats.get(group.sort_threat)
        return getattr(getattr(s.ci, stat), end) if s and s.ci else None

    rows = group.rows
    ranks = tied_ranks([value(r, stat) for r in rows], [bound(r, "lo") for r in rows], [bound(r, "hi") for r in rows])
    ranked = [replace(row, rank=rank) for row, rank in zip(rows, ranks)]
    ranked.sort(key=lambda r: (r.rank is None, r.rank or 0, value(r, stat) or 0.0, value(r, other) or 0.0, r.label))
    return replace(group, rows=tuple(ranked))


CANONICAL_PRESET = "fmnist-standard"


def group_tier(key: GroupKey, runs: Sequence[Run]) -> int:
    """Where a group goes on the page; groups sort by tier, then by key. 0: the tuned board (runs of
    `fairbench tune --confirm`: ``GroupKey.tuned``), once it has every method's row with every seed
    (`with_shortfall` moves an incomplete one to tier 2); 1: the standard protocol's group (every run
    from the `CANONICAL_PRESET` preset, at that preset's data set, architecture, epochs and selection
    rule: 8 epochs, last weights); 2: a tuned group not complete yet; 3: any other. The first group
    is the canonical one when its tier is 0 or 1, and every group after it but an incomplete tuned
    one is shown as superseded (collapsed in the HTML)."""
    from fairbench.config import PRESETS

    if key.tuned is not None:
        return 0
    preset = PRESETS.get(CANONICAL_PRESET, {})
    same = (key.dataset, key.arch, key.epochs, key.select) == (
        preset.get("dataset"),
        preset.get("arch"),
        preset.get("epochs"),
        preset.get("select", "last"),
    )
    return 1 if same and runs and all(r.record.preset == CANONICAL_PRESET for r in runs) else 3


def build_leaderboard(results_dir: Path, label_params: LabelParams | None = None) -> Leaderboard:
    """Read every result under ``results_dir`` and aggregate; reads only, never writes.
    ``label_params``: which of a row's parameters its label names (the CLI passes
    `fairbench.methods.label_params`; the report itself imports no training code)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FairbenchError(
            f"results folder {results_dir} does not exist; run `fairbench run` first or pass --results DIR"
        )
    runs, skipped, warnings, n_files = load_runs(results_dir)
    by_key: dict[GroupKey, list[Run]] = {}
    for run in runs:
        by_key.setdefault(GroupKey.of(run), []).append(run)
    built = [build_group(k, by_key[k], label_params) for k in by_key]
    built = [with_shortfall(g, built) for g in built]
    groups = sorted(built, key=lambda g: (g.tier, g.key.sort_key()))
    return Leaderboard(tuple(groups), tuple(skipped), n_files, tuple(warnings))


def with_shortfall(group: Group, groups: Sequence[Group]) -> Group:
    """``group``, if it is a tuned group (`fairbench tune --confirm`), with what it lacks to be the
    board: each method of the paper-hyperparameter group beside it (the same key without the study)
    whose tuned row is missing or has fewer seeds than that method's rows there. A tuned group that
    lacks any is not the board yet: it goes right after the standard protocol's group (tier 2), which
    stays the canonical one, and its heading says it is incomplete (`tables.group_title`). A partial tuned
    board is never shown as the leaderboard."""
    if group.key.tuned is None:
        return group
    twin = next((g for g in groups if g.key == replace(group.key, tuned=None)), None)
    if twin is None:
        return group

    def seeds(rows: Sequence[Row]) -> dict[str, int]:
        most: dict[str, int] = {}
        for row in rows:
            most[row.method] = max(most.get(row.method, 0), len(row.seeds))
        return most

    have, need = seeds(group.rows), seeds(twin.rows)
    short = tuple(f"{m} ({have.get(m, 0)} of {n} seeds)" for m, n in sorted(need.items()) if have.get(m, 0) < n)
    if not short:
        return group
    return replace(group, shortfall=(short, len(need)), tier=2)
