"""The typed record of a run's results and the per-example outcomes its numbers come from.

The bottom of `fairbench.schema`: dataclasses, the limits every reader enforces, and the
arithmetic from outcomes to per-class metrics (`summarize`, `metrics_from_outcomes`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from fairbench.errors import FairbenchError

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
OUTCOMES_FILE = "outcomes.csv.gz"
MAX_METRICS_BYTES = 1 << 20  # 1 MiB; a CIFAR-100 metrics.json is about 60 KB
MAX_OUTCOMES_BYTES = 8 << 20  # 8 MiB compressed; 10,000 rows take about 40 KB
MAX_OUTCOMES_TEXT = 64 << 20  # 64 MiB decompressed (a gzip bomb stops here)
MAX_TEXT = 200  # characters of a name (method, arch, preset, parameter values shown in tables)
MAX_SETTING_TEXT = 1000  # characters of a string setting (a path, say)
MAX_EPOCHS = 100_000
MAX_COUNT = 10_000_000  # test images per class, training images per class
MAX_PARAMS = 100  # entries of 'params' or 'training'
MAX_TEST_SIZE = 10_000_000  # when a data set does not say how large its test split is
NORMS = ("Linf", "L2", "L1")
FINISHED = (None, "complete", "completed", "finished", "done")
UNION = "union"
TOL = 2e-6  # numbers are stored rounded to 6 decimals


# ---------------------------------------------------------------- the typed record


@dataclass(frozen=True)
class ThreatMetrics:
    """One threat's per-class accuracy (NaN for a class without examples) and its summary."""

    per_class: tuple[float, ...]
    n_per_class: tuple[int, ...]
    avg: float  # over examples (count-weighted over classes)
    worst: float
    worst_class: str
    best: float
    best_class: str
    std: float  # of the per-class accuracies (population std)

    def to_json(self) -> dict[str, Any]:
        return {
            "per_class": list(self.per_class),
            "per_class_error": [round(1 - a, 6) for a in self.per_class],
            "n_per_class": list(self.n_per_class),
            "avg": self.avg,
            "worst": self.worst,
            "worst_class": self.worst_class,
            "best": self.best,
            "best_class": self.best_class,
            "std": self.std,
        }


@dataclass(frozen=True)
class ThreatModel:
    norm: str
    eps: float


@dataclass(frozen=True)
class RunRecord:
    """Everything a finished run reports (metrics.json); built by `build_record`, read by `validate`."""

    run_id: str
    method: str
    params: dict[str, Any]
    arch: str
    dataset: str
    seed: int
    epochs: int | None  # None: not trained by fairbench (`fairbench eval`)
    threat: ThreatModel
    training: dict[str, Any]
    classes: tuple[str, ...]
    metrics: dict[str, ThreatMetrics]
    preset: str | None = None
    select: str = "last"  # model selection: the last epoch's weights or the best on validation
    selected_epoch: int | None = None  # the epoch whose weights were evaluated (None: not recorded)
    ema: float | None = None  # weight averaging (decay); None: none
    init_from: str | dict[str, Any] | None = None  # the run (or file) this one started from: its record
    averaging: dict[str, Any] | None = None  # who averaged (--ema or a method), updates, what was evaluated
    attack_settings: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    timing: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("evaluation", "averaging") and value is None:
                continue
            if f.name == "threat":
                value = {"norm": value.norm, "eps": value.eps}
            elif f.name == "classes":
                value = list(value)
            elif f.name == "metrics":
                value = {t: m.to_json() for t, m in value.items()}
            out[f.name] = value
        return out


@dataclass(frozen=True)
class Outcomes:
    """Per-example outcomes: ``results[threat][i]`` is 1 (right), 0 (wrong) or -1 (not run)."""

    index: np.ndarray  # int64: the image's position in the data set's full test split
    label: np.ndarray  # int64
    results: dict[str, np.ndarray]  # int8 per threat column, ``union`` included when derived

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def ran(self, threat: str) -> np.ndarray:
        return self.results[threat] >= 0


# ---------------------------------------------------------------- registered names


def threat_columns() -> list[str]:
    """The outcome columns: every registered threat in order, then ``union``."""
    from fairbench.specs.threats import threat_names

    return threat_names() + [UNION]


def dataset_spec(name: str) -> Any:
    from fairbench.specs.datasets import get_dataset

    return get_dataset(name)


# ---------------------------------------------------------------- building


def summarize(correct: Any, labels: Any, classes: Sequence[str]) -> ThreatMetrics:
    """Per-class accuracy, count-weighted average, worst/best class and spread of ``correct``."""
    correct = np.asarray(correct, dtype=bool).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = np.bincount(labels, minlength=len(classes))
    hits = np.bincount(labels, weights=correct.astype(np.float64), minlength=len(classes))
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n > 0, hits / np.maximum(n, 1), np.nan)
    present = np.flatnonzero(n > 0)
    if present.size == 0:
        raise FairbenchError("no examples to summarize")
    worst_i = int(present[np.argmin(acc[present])])
    best_i = int(present[np.argmax(acc[present])])
    return ThreatMetrics(
        per_class=tuple(round(float(a), 6) for a in acc),
        n_per_class=tuple(int(c) for c in n),
        avg=round(float(correct.mean()), 6),
        worst=round(float(acc[worst_i]), 6),
        worst_class=classes[worst_i],
        best=round(float(acc[best_i]), 6),
        best_class=classes[best_i],
        std=round(float(acc[present].std()), 6),
    )


def metrics_from_outcomes(outcomes: Outcomes, classes: Sequence[str]) -> dict[str, ThreatMetrics]:
    """The per-class metrics of every threat that ran on at least one example, in column order."""
    return {
        t: summarize(v[v >= 0] == 1, outcomes.label[v >= 0], classes)
        for t, v in outcomes.results.items()
        if (v >= 0).any()
    }


def make_outcomes(index: Any, label: Any, results: dict[str, Any]) -> Outcomes:
    """Outcomes from per-threat columns over the same examples (arrays or CPU tensors): 1 right,
    0 wrong, -1 not run (a bool column: run on every example). ``union`` is derived when absent."""
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    label = np.asarray(label, dtype=np.int64).reshape(-1)
    cols = {t: np.asarray(results[t]).astype(np.int8).reshape(-1) for t in threat_columns() if t in results}
    if len(cols) > 1 and UNION not in cols:
        cols[UNION] = derive_union(cols)
    return Outcomes(index, label, cols)


def derive_union(results: dict[str, np.ndarray]) -> np.ndarray:
    """1 where every threat is right, 0 where one is wrong, -1 where one did not run."""
    cols = np.stack([v for t, v in results.items() if t != UNION])
    return np.where((cols < 0).any(0), -1, cols.min(0)).astype(np.int8)


def test_size(dataset: str) -> int:
    """Images in ``dataset``'s test split (bounds an outcome's index), or a generous bound."""
    return getattr(dataset_spec(dataset), "test_size", None) or MAX_TEST_SIZE


def short(v: Any) -> str:
    text = repr(v) if not isinstance(v, (list, dict)) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."
