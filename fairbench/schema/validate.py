"""The one validator of a run's results: every field of a metrics.json document (`validate`) and
every row of its outcomes (`check_outcomes`), used when writing and when reading.

Result files may come from strangers. Every field is checked before anything uses it: threat
names only from the registered threats, class names equal to the registered data set's, numbers
in range and consistent with each other, every list as long as the number of classes, no unknown
fields. A failure is one `FairbenchError` naming the source and the field.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from fairbench.config import SELECT_RULES, is_run_id
from fairbench.errors import FairbenchError
from fairbench.schema.record import (
    FINISHED,
    MAX_COUNT,
    MAX_EPOCHS,
    MAX_PARAMS,
    MAX_SETTING_TEXT,
    MAX_TEXT,
    METRICS_FILE,
    NORMS,
    SCHEMA_VERSION,
    TOL,
    UNION,
    Outcomes,
    RunRecord,
    ThreatMetrics,
    ThreatModel,
    dataset_spec,
    derive_union,
    metrics_from_outcomes,
    short,
    test_size,
    threat_columns,
)
from fairbench.specs.threats import CLEAN, threat_names


def check_outcomes(outcomes: Outcomes, record: RunRecord, source: str) -> None:
    """The rows agree with themselves and with ``record``: known indices and labels, attacks only
    on clean-correct images, ``union`` derived from the others, and ``record``'s metrics exactly
    what the rows give."""
    k, n = len(record.classes), len(outcomes)

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise FairbenchError(f"{source}: {what}")

    need(n > 0 and outcomes.label.shape == (n,) and outcomes.index.shape == (n,), "no rows")
    need(
        bool((outcomes.index >= 0).all() and (outcomes.index < test_size(record.dataset)).all()),
        f"an index outside the {record.dataset} test split",
    )
    need(len(np.unique(outcomes.index)) == n, "an image appears twice")
    need(bool(((outcomes.label >= 0) & (outcomes.label < k)).all()), f"a label outside 0..{k - 1}")
    res = outcomes.results
    need(CLEAN in res and bool((res[CLEAN] >= 0).all()), "the clean column is not filled on every row")
    for t, v in res.items():
        need(v.shape == (n,), f"column {t} has {v.shape[0]} values for {n} rows")
        if t not in (UNION, CLEAN):
            need(not ((v == 1) & (res[CLEAN] != 1)).any(), f"{t} is right where clean is wrong")
    attacks = [t for t in res if t != UNION]
    if len(attacks) > 1:
        need(
            UNION in res and np.array_equal(res[UNION], derive_union(res)),
            "the union column is not the AND of the threats that ran",
        )
    else:
        need(UNION not in res, "a union column with a single threat")
    need(
        set(res) == set(record.metrics),
        f"threats {sorted(res)} in the rows but {sorted(record.metrics)} in metrics.json",
    )
    for t, m in metrics_from_outcomes(outcomes, record.classes).items():
        stored = record.metrics[t]
        need(m.n_per_class == stored.n_per_class, f"metrics.{t}.n_per_class is not what the rows count")
        for key in ("per_class", "avg", "worst", "best", "std"):
            a, b = np.asarray(getattr(m, key), float), np.asarray(getattr(stored, key), float)
            need(
                bool(np.all((np.abs(a - b) <= TOL) | (np.isnan(a) & np.isnan(b)))),
                f"metrics.{t}.{key} is not what the rows give",
            )


# ---------------------------------------------------------------- the validator


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def need(self, ok: bool, where: str, what: str) -> None:
        if not ok:
            raise FairbenchError(f"{self.source}: {where} {what}")


def validate(data: Any, source: str = METRICS_FILE) -> RunRecord:
    """Check every field of a metrics.json document and return it typed; raises FairbenchError
    naming the source and the first bad field. A document that would build a row of the
    leaderboard passes; anything else (unknown fields included) does not."""
    c = _Checker(source)
    need = c.need
    if not isinstance(data, dict):
        raise FairbenchError(f"{source}: not a JSON object")
    version = data.get("schema_version")
    need(
        _is_int(version) and version == SCHEMA_VERSION,
        "unknown schema_version",
        f"{short(version)} (this fairbench reads {SCHEMA_VERSION})",
    )
    names = {f.name for f in dataclasses.fields(RunRecord)} | {"schema_version", "status"}
    unknown = sorted(str(k) for k in data if k not in names)
    need(not unknown, "unknown field(s)", short(", ".join(unknown)))
    need(data.get("status") in FINISHED, "'status'", f"is {short(data.get('status'))}: an unfinished run")
    for key in ("method", "arch"):
        need(_is_name(data.get(key)), f"'{key}'", f"is missing or not a name (printable, 1 to {MAX_TEXT} characters)")
    run_id: Any = data.get("run_id")  # JSON values: Any (need() checks them, not the type checker)
    need(is_run_id(run_id), "'run_id'", "is missing or not a folder name (letters, digits, . _ - + =)")
    dataset: Any = data.get("dataset")
    need(isinstance(dataset, str) and bool(dataset), "'dataset'", "is missing or not a string")
    try:
        spec = dataset_spec(dataset)
    except FairbenchError as exc:
        raise FairbenchError(f"{source}: 'dataset' {exc}") from None
    classes: Any = data.get("classes")
    need(classes == list(spec.classes), "'classes'", f"is not the {dataset} classes in their order")
    need(
        _is_int(data.get("seed")) and 0 <= data["seed"] < 2**32,
        "'seed'",
        "is missing or not a whole number in [0, 2**32)",
    )
    epochs = data.get("epochs")
    need(
        epochs is None or (_is_int(epochs) and 0 <= epochs <= MAX_EPOCHS),
        "'epochs'",
        f"is not a whole number in [0, {MAX_EPOCHS}] or null",
    )
    threat: Any = data.get("threat")
    need(
        isinstance(threat, dict) and set(threat) <= {"norm", "eps"},
        "'threat'",
        "is missing or not an object of norm and eps",
    )
    need(threat.get("norm", "Linf") in NORMS, "threat.norm", f"is {short(threat.get('norm'))}, not one of {NORMS}")
    need(
        _is_number(threat.get("eps")) and 0 < threat["eps"] <= 1,
        "threat.eps",
        f"is {short(threat.get('eps'))}, not in (0, 1]",
    )
    params = _check_settings(data.get("params"), "params", c)
    training = _check_training(data.get("training", {}), c)
    preset = data.get("preset")
    need(preset is None or _is_name(preset), "'preset'", "is not a name or null")
    need(data.get("select", "last") in SELECT_RULES, "'select'", f"is not one of {', '.join(SELECT_RULES)}")
    selected = data.get("selected_epoch")
    need(
        selected is None or (_is_int(selected) and 0 <= selected <= (epochs or 0)),
        "'selected_epoch'",
        "is not an epoch of the run or null",
    )
    ema = data.get("ema")
    need(ema is None or (_is_number(ema) and 0 <= ema < 1), "'ema'", "is not a decay in [0, 1) or null")
    init_from = data.get("init_from")
    _check_init_from(init_from, c)
    for key in ("attack_settings", "timing", "env", "checkpoint", "evaluation", "averaging"):
        value = data.get(key)
        need(value is None or isinstance(value, dict), f"'{key}'", "is not an object")
        _check_free(value, key, 3, c)
    metrics = _check_metrics(data.get("metrics"), classes, c)
    return RunRecord(
        run_id=run_id,
        method=data["method"],
        params=params,
        arch=data["arch"],
        dataset=dataset,
        seed=data["seed"],
        epochs=epochs,
        threat=ThreatModel(threat.get("norm", "Linf"), float(threat["eps"])),
        training=training,
        classes=tuple(classes),
        metrics=metrics,
        preset=preset,
        select=data.get("select", "last"),
        selected_epoch=selected,
        ema=ema,
        init_from=init_from,
        averaging=data.get("averaging"),
        attack_settings=data.get("attack_settings") or {},
        evaluation=data.get("evaluation"),
        timing=data.get("timing") or {},
        env=data.get("env") or {},
        checkpoint=data.get("checkpoint") or {},
    )


def check_init_from(value: Any, source: str) -> None:
    """What a run records of the run it started from (metrics.json's ``init_from``), checked as
    `validate` checks it; `--init-from` checks its source with it before training."""
    _check_init_from(value, _Checker(source))


def _check_init_from(value: Any, c: _Checker) -> None:
    c.need(
        value is None or _is_name(value, 1000) or isinstance(value, dict),
        "'init_from'",
        "is not a record, a path or null",
    )
    if isinstance(value, dict):
        _check_free(value, "init_from", 3, c)


def _check_settings(value: Any, where: str, c: _Checker) -> dict[str, Any]:
    """A flat object of named settings (``where`` is its dotted name): identifier keys; finite
    numbers, booleans, null, printable strings of at most `MAX_SETTING_TEXT`, or lists of those."""
    c.need(
        isinstance(value, dict) and len(value) <= MAX_PARAMS,
        f"'{where}'",
        f"is missing or not an object of at most {MAX_PARAMS} settings",
    )
    for key, v in value.items():
        c.need(key.isidentifier() and len(key) <= 64, f"'{where}'", f"has a key {short(key)} that is not a name")
        items = v if isinstance(v, list) and len(v) <= MAX_PARAMS else [v]
        c.need(
            all(_is_setting(x) for x in items),
            f"{where}.{key}",
            f"is {short(v)}: not a finite number, boolean, null or printable string",
        )
    return dict(value)


def _check_free(value: Any, where: str, depth: int, c: _Checker) -> None:
    """Free-form records (timing, environment, ...): nested at most ``depth`` deep, of settings."""
    if isinstance(value, (dict, list)):
        c.need(
            depth > 0 and len(value) <= MAX_PARAMS,
            where,
            f"is nested deeper than allowed or has more than {MAX_PARAMS} entries",
        )
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, v in items:
            c.need(isinstance(key, int) or _is_name(key, 64), where, f"has a key {short(key)} that is not a name")
            _check_free(v, f"{where}.{key}", depth - 1, c)
    else:
        c.need(_is_setting(value), where, f"is {short(value)}: not a finite number, boolean, null or printable string")


def _check_training(value: Any, c: _Checker) -> dict[str, Any]:
    training = dict(value) if isinstance(value, dict) else value
    c.need(isinstance(training, dict), "'training'", "is not an object")
    inner = training.pop("params", None)
    training = _check_settings(training, "training", c)
    if inner is not None:
        training["params"] = _check_settings(inner, "training.params", c)
    epochs = training.get("epochs")
    c.need(
        epochs is None or (_is_int(epochs) and 0 <= epochs <= MAX_EPOCHS),
        "training.epochs",
        f"is {short(epochs)}, not a whole number in [0, {MAX_EPOCHS}] or null",
    )
    for key in ("train_per_class", "val_per_class", "eval_per_class"):
        v = training.get(key)
        c.need(
            v is None or (_is_int(v) and 1 <= v <= MAX_COUNT),
            f"training.{key}",
            f"is {short(v)}, not a whole number in [1, {MAX_COUNT}] or null",
        )
    return training


def _check_metrics(value: Any, classes: list[str], c: _Checker) -> dict[str, ThreatMetrics]:
    known = threat_columns()
    c.need(isinstance(value, dict), "'metrics'", "is missing or not an object")
    c.need(bool(value), "'metrics'", "is empty: an unfinished run (no threat evaluated)")
    bad = [t for t in value if t not in known]
    c.need(
        not bad,
        "'metrics'",
        f"has threat(s) {short(', '.join(map(str, bad)))} that are not registered (known: {', '.join(known)})",
    )
    c.need(CLEAN in value, "'metrics'", "has no clean accuracy")
    attacks = [t for t in value if t in threat_names()]
    c.need(
        (UNION in value) == (len(attacks) > 1),
        "metrics.union",
        "must be present exactly when more than one threat was evaluated",
    )
    return {t: _check_threat(value[t], classes, f"metrics.{t}", c) for t in known if t in value}


def _check_threat(block: Any, classes: list[str], where: str, c: _Checker) -> ThreatMetrics:
    """Fractions in [0, 1], one per class, and a summary that agrees with them."""
    need = c.need
    need(isinstance(block, dict), where, "is not an object")
    allowed = {
        "per_class",
        "per_class_error",
        "n_per_class",
        "avg",
        "worst",
        "worst_class",
        "best",
        "best_class",
        "std",
    }
    need(set(block) <= allowed, where, f"has unknown field(s) {short(', '.join(sorted(set(block) - allowed)))}")
    k = len(classes)
    counts = block.get("n_per_class")
    need(
        isinstance(counts, list) and len(counts) == k and all(_is_int(v) and 0 <= v <= MAX_COUNT for v in counts),
        f"{where}.n_per_class",
        f"is not a list of {k} whole numbers in [0, {MAX_COUNT}]",
    )
    need(sum(counts) > 0, f"{where}.n_per_class", "counts no example")
    acc = block.get("per_class")
    need(isinstance(acc, list) and len(acc) == k, f"{where}.per_class", f"is not a list of {k} numbers (one per class)")
    for i, (v, n) in enumerate(zip(acc, counts)):  # a class without test examples has NaN
        need(
            _is_fraction(v) if n else (_is_number(v) and math.isnan(v)),
            f"{where}.per_class[{i}]",
            f"is {short(v)}, not a fraction in [0, 1]" if n else f"is {short(v)}, not NaN (no examples)",
        )
    errors = block.get("per_class_error")
    if errors is not None:
        need(
            isinstance(errors, list)
            and len(errors) == k
            and all(
                _is_number(e) and (abs(e - (1 - a)) <= TOL or (math.isnan(e) and math.isnan(a)))
                for e, a in zip(errors, acc)
            ),
            f"{where}.per_class_error",
            "is not 1 - per_class",
        )
    for key in ("avg", "worst", "best", "std"):
        need(_is_fraction(block.get(key)), f"{where}.{key}", f"is {short(block.get(key))}, not in [0, 1]")
    for key in ("worst_class", "best_class"):
        need(block.get(key) in classes, f"{where}.{key}", f"is {short(block.get(key))}, not one of the classes")
    present = np.array([a for a, n in zip(acc, counts) if n], float)
    weights = np.array([n for n in counts if n], float)
    expect = {
        "avg": float(present @ weights / weights.sum()),
        "worst": float(present.min()),
        "best": float(present.max()),
        "std": float(present.std()),
    }
    for key, v in expect.items():
        need(
            abs(block[key] - v) <= 2 * TOL, f"{where}.{key}", f"is {block[key]}, but the per-class numbers give {v:.6f}"
        )
    for key in ("worst", "best"):
        i = classes.index(block[f"{key}_class"])
        need(
            counts[i] > 0 and abs(acc[i] - block[key]) <= TOL,
            f"{where}.{key}_class",
            f"is {block[f'{key}_class']!r}, whose accuracy is not the {key}",
        )
    return ThreatMetrics(
        tuple(float(a) for a in acc),
        tuple(counts),
        float(block["avg"]),
        float(block["worst"]),
        block["worst_class"],
        float(block["best"]),
        block["best_class"],
        float(block["std"]),
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_fraction(v: Any) -> bool:
    return _is_number(v) and 0 <= v <= 1  # NaN fails both comparisons


def _is_name(v: Any, limit: int = MAX_TEXT) -> bool:
    return isinstance(v, str) and 0 < len(v) <= limit and v.isprintable()


def _is_setting(v: Any) -> bool:
    if v is None or isinstance(v, bool):
        return True
    if _is_number(v):
        return abs(v) < 1e300 and math.isfinite(v) if isinstance(v, float) else abs(v) < 10**18
    return isinstance(v, str) and len(v) <= MAX_SETTING_TEXT and v.isprintable()
