"""A run's per-example outcomes (``outcomes.csv.gz``), read and checked against its metrics.json.

The file has one row per evaluated test image, ``index,label,<threat>,...`` (in practice
``index,label,clean,pgd20,autoattack,union``): the image's position in the test set, its class,
and per threat 1 (right), 0 (wrong) or empty (that threat was not run on that image). The report
reads it for the bootstrap (`fairbench.report.stats`); a file that does not give exactly the
metrics.json's per-class numbers is refused, so intervals never describe other data than the table.

This is the report's own small reader until the results schema (issue 11: one module that reads
and validates metrics.json and the outcomes file) provides one; then this module should go.
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fairbench.errors import FairbenchError

OUTCOMES_FILE = "outcomes.csv.gz"
MAX_BYTES = 256 << 20  # decompressed; 50,000 images take about 1 MB
TOLERANCE = 1.5e-6  # metrics.json rounds fractions to 6 decimals


@dataclass(frozen=True, eq=False)
class Outcomes:
    """One run's outcomes, sorted by test-set index. ``correct[t]``: 1 right, 0 wrong, -1 not run."""

    index: np.ndarray
    label: np.ndarray
    correct: dict[str, np.ndarray]

    def pool(self, threat: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(test-set index, label, wrong) of the images ``threat`` was run on."""
        ran = self.correct[threat] >= 0
        return self.index[ran], self.label[ran], self.correct[threat][ran] == 0


def read_outcomes(path: Path) -> Outcomes:
    """Parse ``path``; a file that is not a well-formed outcomes table raises `FairbenchError`."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise FairbenchError(f"{path.name} is not a readable gzip file ({exc})") from None
    if len(raw) > MAX_BYTES:
        raise FairbenchError(f"{path.name} is over {MAX_BYTES >> 20} MiB once decompressed")
    try:
        lines = raw.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise FairbenchError(f"{path.name} is not ASCII text") from None
    header = lines[0].split(",") if lines else []
    if header[:2] != ["index", "label"] or len(set(header)) != len(header) or len(header) < 3:
        raise FairbenchError(f"{path.name} must start with the header index,label,<threat>,... "
                             f"(got {','.join(header[:6])!r})")
    rows = [line.split(",") for line in lines[1:]]
    if not rows or any(len(r) != len(header) for r in rows):
        raise FairbenchError(f"{path.name}: every row needs {len(header)} fields and there must be rows")
    cells = np.array(rows, dtype=str)
    ints = cells[:, :2]
    if not (np.char.isdigit(ints) & (np.char.str_len(ints) <= 9)).all():
        raise FairbenchError(f"{path.name}: index and label must be whole numbers >= 0")
    index, label = ints.astype(np.int64).T
    flags = cells[:, 2:]
    if not np.isin(flags, ["0", "1", ""]).all():
        raise FairbenchError(f"{path.name}: outcomes must be 1, 0 or empty")
    order = np.argsort(index, kind="stable")
    if (np.diff(index[order]) == 0).any():
        raise FairbenchError(f"{path.name}: a test image appears twice")
    values = np.where(flags == "", -1, flags == "1").astype(np.int8)[order]
    return Outcomes(index[order], label[order], {t: values[:, i] for i, t in enumerate(header[2:])})


def check_outcomes(outcomes: Outcomes, metrics: dict[str, Any]) -> None:
    """Raise `FairbenchError` unless ``outcomes`` give exactly metrics.json's per-class numbers."""
    classes = metrics["classes"]
    if (outcomes.label >= len(classes)).any():
        raise FairbenchError(f"outcomes name a class beyond the {len(classes)} in metrics.json")
    for threat, ran in outcomes.correct.items():
        if threat not in metrics["metrics"] and (ran >= 0).any():
            raise FairbenchError(f"outcomes have {threat} results that metrics.json lacks")
    for threat, m in metrics["metrics"].items():
        if threat not in outcomes.correct:
            raise FairbenchError(f"outcomes lack the {threat} column")
        _, label, wrong = outcomes.pool(threat)
        n = np.bincount(label, minlength=len(classes))
        acc = np.bincount(label, weights=(~wrong).astype(float), minlength=len(classes)) / np.maximum(n, 1)
        if "n_per_class" in m and list(n) != list(m["n_per_class"]):
            raise FairbenchError(f"{threat}: outcomes have {n.tolist()} images per class, metrics.json "
                                 f"{m['n_per_class']}")
        for c, (a, stored) in enumerate(zip(acc, m["per_class"])):
            absent = stored is None or (isinstance(stored, float) and math.isnan(stored))
            if (n[c] == 0) != absent or (n[c] and abs(a - stored) > TOLERANCE):
                raise FairbenchError(f"{threat}: class {classes[c]!r} accuracy is {a:.6f} in the outcomes "
                                     f"({n[c]} images), {stored} in metrics.json")
        if n.sum() == 0 or abs(1 - wrong.mean() - m["avg"]) > TOLERANCE:
            raise FairbenchError(f"{threat}: average accuracy {1 - wrong.mean() if n.sum() else 'none'} in the "
                                 f"outcomes, {m['avg']} in metrics.json")


def load_outcomes(run_dir: Path, metrics: dict[str, Any]) -> Outcomes | None:
    """The run's checked outcomes, None when it has no outcomes file; `FairbenchError` if unusable."""
    path = Path(run_dir) / OUTCOMES_FILE
    if not path.is_file():
        return None
    outcomes = read_outcomes(path)
    check_outcomes(outcomes, metrics)
    return outcomes
