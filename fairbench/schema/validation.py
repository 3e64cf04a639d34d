"""A tuning trial's record, ``validation.json``: the validation score of the weights it keeps.

A trial (``score_on="validation"``) never loads the test set, so its folder holds this file in
place of metrics.json and outcomes.csv.gz. Torch-free: `fairbench tune`, the sweep's "done" check
and the report read it. The criterion is declared once, here (`RULE`), and recorded in each file.

A trial whose training diverged (a NaN or infinite loss or weights, `fairbench.train.faults`) is
a finished trial with no score: its record holds ``diverged`` (where it happened) in place of the
per-class accuracies, average, worst class and criterion (`build_diverged`), so a study counts it
among its N trials and never selects it (every method keeps the same N draws).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairbench.errors import FairbenchError
from fairbench.schema.files import read_regular

VALIDATION_FILE = "validation.json"
KIND = "fairbench-validation"
VERSION = 1
MAX_VALIDATION_BYTES = 1 << 20
MAX_CLASSES = 1000
MAX_REASON = 500
SCORE_KEYS = ("classes", "n_per_class", "per_class", "avg", "worst", "worst_class", "criterion")
RULE = (
    "best-val: criterion = average + worst-class robust accuracy (PGD with the training attack's "
    "eps, step and steps, uniform start) on the validation split, of the weights the protocol keeps"
)


def criterion(per_class: list[float]) -> float:
    """The selection criterion: average plus worst-class validation robust accuracy."""
    return sum(per_class) / len(per_class) + min(per_class)


@dataclass(frozen=True)
class TrialIdentity:
    """The fields every trial record opens with, scored or diverged: which trial, of what."""

    run_id: str
    method: str
    params: dict[str, Any]
    seed: int
    epochs: int
    training: dict[str, Any]


def _header(trial: TrialIdentity, selected_epoch: int) -> dict[str, Any]:
    """What every trial record opens with: which trial, of what, and the rule it is scored by."""
    return {
        "kind": KIND,
        "version": VERSION,
        "run_id": trial.run_id,
        "method": trial.method,
        "params": trial.params,
        "seed": trial.seed,
        "epochs": trial.epochs,
        "selected_epoch": selected_epoch,
        "training": trial.training,
        "rule": RULE,
    }


def build_validation(
    trial: TrialIdentity,
    *,
    selected_epoch: int,
    classes: list[str],
    n_per_class: list[int],
    per_class: list[float],
    attack: dict[str, Any],
    timing: dict[str, Any],
    env: dict[str, Any],
) -> dict[str, Any]:
    """The record of a trial (accuracies are fractions in [0, 1], lists in class-index order)."""
    worst = min(range(len(per_class)), key=lambda i: (per_class[i], i))
    return {
        **_header(trial, selected_epoch),
        "attack": attack,
        "classes": classes,
        "n_per_class": n_per_class,
        "per_class": [round(a, 6) for a in per_class],
        "avg": round(sum(per_class) / len(per_class), 6),
        "worst": round(per_class[worst], 6),
        "worst_class": classes[worst],
        "criterion": round(criterion(per_class), 6),
        "timing": timing,
        "env": env,
    }


def build_diverged(trial: TrialIdentity, *, reason: str, env: dict[str, Any]) -> dict[str, Any]:
    """The record of a trial whose training diverged: ``reason`` (the error naming the epoch and
    step) in place of a score; ``selected_epoch`` 0, since no weights are kept."""
    return {
        **_header(trial, 0),
        "diverged": reason[:MAX_REASON],
        "env": env,
    }


def is_diverged(record: dict[str, Any]) -> bool:
    """Whether a record `read_validation` returned is a diverged trial's (it has no score)."""
    return "diverged" in record


def read_validation(path: Path) -> dict[str, Any]:
    """A trial's validation.json, checked: a bounded regular file, the declared kind and version,
    per-class accuracies in [0, 1] that give the recorded average, worst class and criterion; or,
    for a trial that diverged, a ``diverged`` reason and none of the score's fields."""
    try:
        data = json.loads(read_regular(path, MAX_VALIDATION_BYTES))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FairbenchError(f"{path}: not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise FairbenchError(f"{path}: not a fairbench validation record")
    if data.get("version") != VERSION:
        raise FairbenchError(f"{path}: validation record version {data.get('version')!r:.20}, expected {VERSION}")
    for key, kind in (
        ("run_id", str),
        ("method", str),
        ("params", dict),
        ("training", dict),
        ("seed", int),
        ("epochs", int),
        ("selected_epoch", int),
    ):
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise FairbenchError(f"{path}: field '{key}' must be {kind.__name__}")
    if "diverged" in data:
        reason = data["diverged"]
        if not (isinstance(reason, str) and 0 < len(reason) <= MAX_REASON):
            raise FairbenchError(f"{path}: field 'diverged' must be a reason of 1 to {MAX_REASON} characters")
        scored = [key for key in SCORE_KEYS if key in data]
        if scored or data["selected_epoch"] != 0:
            raise FairbenchError(
                f"{path}: a diverged trial's record has no score, but it holds "
                f"{', '.join(scored) or 'a selected epoch'}"
            )
        return data
    classes, per_class, n = data.get("classes"), data.get("per_class"), data.get("n_per_class")
    if not (
        isinstance(classes, list) and 2 <= len(classes) <= MAX_CLASSES and all(isinstance(c, str) for c in classes)
    ):
        raise FairbenchError(f"{path}: field 'classes' must be a list of 2 to {MAX_CLASSES} names")
    if not (isinstance(per_class, list) and len(per_class) == len(classes) and all(_fraction(a) for a in per_class)):
        raise FairbenchError(f"{path}: field 'per_class' must hold one accuracy in [0, 1] per class")
    if not (
        isinstance(n, list)
        and len(n) == len(classes)
        and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in n)
    ):
        raise FairbenchError(f"{path}: field 'n_per_class' must hold one count >= 1 per class")
    for key, value in (
        ("avg", sum(per_class) / len(per_class)),
        ("worst", min(per_class)),
        ("criterion", criterion(per_class)),
    ):
        if not _number(data.get(key)) or abs(data[key] - value) > 1e-5:
            raise FairbenchError(f"{path}: field '{key}' disagrees with the per-class accuracies")
    return data


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fraction(x: Any) -> bool:
    return _number(x) and 0 <= x <= 1
