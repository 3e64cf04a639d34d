"""The one schema of a run's results: ``metrics.json`` and ``outcomes.csv.gz``, built, checked, read.

``outcomes.csv.gz`` holds one row per evaluated test image (``index,label``, then one 1/0 column
per registered threat and ``union``; empty where a threat did not run on that image); every
number in ``metrics.json`` is what these rows give (`metrics_from_outcomes`). One typed record
(`RunRecord`), one builder (`build_record`), one validator (`validate`, and `check_outcomes`
for the rows) serve the writers (`fairbench run`, `fairbench eval`) and the reader
(`fairbench report`).

Result files may come from strangers. Every field is checked before anything uses it: threat
names only from the registered threats, class names equal to the registered data set's, numbers
in range, every list as long as the number of classes. Files are read only when they are regular
files (no FIFO, device or symlink) no larger than `MAX_METRICS_BYTES` / `MAX_OUTCOMES_BYTES`
(`MAX_OUTCOMES_TEXT` once decompressed).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import os
import re
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

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
SELECT_RULES = ("last", "best-val")
NORMS = ("Linf", "L2", "L1")
FINISHED = (None, "complete", "completed", "finished", "done")
UNION = "union"
TOL = 2e-6  # numbers are stored rounded to 6 decimals
RUN_ID = re.compile(r"[\w+=-][\w.+=-]{0,199}", re.ASCII)


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
        return {"per_class": list(self.per_class),
                "per_class_error": [round(1 - a, 6) for a in self.per_class],
                "n_per_class": list(self.n_per_class), "avg": self.avg, "worst": self.worst,
                "worst_class": self.worst_class, "best": self.best, "best_class": self.best_class,
                "std": self.std}


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
    ema: float | None = None  # weight averaging (decay); None: none
    init_from: str | None = None  # the run this one was initialised from
    attack_settings: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    timing: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "evaluation" and value is None:
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
    from fairbench.threats import threat_names

    return threat_names() + [UNION]


def _dataset(name: str) -> Any:
    from fairbench.data import get_dataset

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
        per_class=tuple(round(float(a), 6) for a in acc), n_per_class=tuple(int(c) for c in n),
        avg=round(float(correct.mean()), 6), worst=round(float(acc[worst_i]), 6),
        worst_class=classes[worst_i], best=round(float(acc[best_i]), 6), best_class=classes[best_i],
        std=round(float(acc[present].std()), 6))


def metrics_from_outcomes(outcomes: Outcomes, classes: Sequence[str]) -> dict[str, ThreatMetrics]:
    """The per-class metrics of every threat that ran on at least one example, in column order."""
    return {t: summarize(v[v >= 0] == 1, outcomes.label[v >= 0], classes)
            for t, v in outcomes.results.items() if (v >= 0).any()}


def make_outcomes(index: Any, label: Any, correct: dict[str, Any],
                  ran: dict[str, Any] | None = None) -> Outcomes:
    """Outcomes from per-threat bool arrays over the same examples; ``ran[t]`` marks the examples
    threat ``t`` was run on (default: all). ``union`` is derived: right under every threat that
    ran on the example, on the examples every threat that ran on any example ran on."""
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    label = np.asarray(label, dtype=np.int64).reshape(-1)
    ran = ran or {}
    results: dict[str, np.ndarray] = {}
    for t in threat_columns():
        if t == UNION or t not in correct:
            continue
        mask = np.ones(len(index), bool) if ran.get(t) is None else np.asarray(ran[t], bool).reshape(-1)
        results[t] = np.where(mask, np.asarray(correct[t], bool).reshape(-1), -1).astype(np.int8)
    if len(results) > 1:
        results[UNION] = derive_union(results)
    return Outcomes(index, label, results)


def derive_union(results: dict[str, np.ndarray]) -> np.ndarray:
    """1 where every threat is right, 0 where one is wrong, -1 where one did not run."""
    cols = np.stack([v for t, v in results.items() if t != UNION])
    return np.where((cols < 0).any(0), -1, cols.min(0)).astype(np.int8)


def build_record(*, run_id: str, method: str, params: dict[str, Any], arch: str, dataset: str,
                 seed: int, epochs: int | None, eps: float, training: dict[str, Any],
                 outcomes: Outcomes, norm: str = "Linf", **extra: Any) -> RunRecord:
    """The one builder of a run's record: its metrics come from ``outcomes``; it is validated."""
    classes = tuple(_dataset(dataset).classes)
    record = RunRecord(run_id=run_id, method=method, params=dict(params), arch=arch, dataset=dataset,
                       seed=seed, epochs=epochs, threat=ThreatModel(norm, eps), training=dict(training),
                       classes=classes, metrics=metrics_from_outcomes(outcomes, classes), **extra)
    validated = validate(json.loads(json.dumps(record.to_json())), "the run's record")
    check_outcomes(outcomes, validated, "the run's outcomes")
    return validated


# ---------------------------------------------------------------- writing

def outcomes_bytes(outcomes: Outcomes) -> bytes:
    """``outcomes.csv.gz``'s bytes: every registered threat's column (empty where not run)."""
    cols = threat_columns()
    lines = ["index,label," + ",".join(cols)]
    cells = {-1: "", 0: "0", 1: "1"}
    missing = [""] * len(outcomes)
    columns = [[cells[int(v)] for v in outcomes.results[t]] if t in outcomes.results else missing
               for t in cols]
    for i, (idx, lab) in enumerate(zip(outcomes.index.tolist(), outcomes.label.tolist())):
        lines.append(f"{idx},{lab}," + ",".join(c[i] for c in columns))
    return gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)


def write_run(run_dir: Path, record: RunRecord, outcomes: Outcomes) -> None:
    """Write the outcomes, then metrics.json (its presence marks a finished run), atomically."""
    from fairbench.results import atomic_write_bytes

    check_outcomes(outcomes, record, OUTCOMES_FILE)
    atomic_write_bytes(Path(run_dir) / OUTCOMES_FILE, outcomes_bytes(outcomes))
    atomic_write_bytes(Path(run_dir) / METRICS_FILE,
                       (json.dumps(record.to_json(), indent=2) + "\n").encode())


# ---------------------------------------------------------------- reading

def read_regular(path: Path, cap: int) -> bytes:
    """The bytes of ``path`` if it is a regular file (not a symlink, FIFO or device) of at most
    ``cap`` bytes; else FairbenchError. Opening never blocks (a FIFO is refused, not waited on)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise FairbenchError(f"{path}: unreadable ({'a symlink' if os.path.islink(path) else exc.strerror})") \
            from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FairbenchError(f"{path}: not a regular file")
        if info.st_size > cap:
            raise FairbenchError(f"{path}: {info.st_size} bytes, more than the {cap} this reader accepts")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(cap + 1)
    except OSError as exc:
        raise FairbenchError(f"{path}: unreadable ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > cap:
        raise FairbenchError(f"{path}: more than the {cap} bytes this reader accepts")
    return data


def parse_metrics(data: bytes | str, source: str = METRICS_FILE) -> RunRecord:
    """Parse and validate a metrics.json document."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        doc = json.loads(text)
    except UnicodeDecodeError:
        raise FairbenchError(f"{source}: unreadable, not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:  # ValueError covers JSONDecodeError, huge ints
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FairbenchError(f"{source}: unreadable, not valid JSON ({first[:200]})") from None
    return validate(doc, source)


def read_metrics(path: Path) -> RunRecord:
    """Read and validate one metrics.json (see `read_regular` for which files are read)."""
    return parse_metrics(read_regular(Path(path), MAX_METRICS_BYTES), str(path))


def read_outcomes(path: Path, record: RunRecord) -> Outcomes | None:
    """The outcomes beside a metrics.json, checked against it; None when there is no such file."""
    path = Path(path)
    if not os.path.lexists(path):
        return None
    raw = read_regular(path, MAX_OUTCOMES_BYTES)
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            text = f.read(MAX_OUTCOMES_TEXT + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise FairbenchError(f"{path}: unreadable, not gzip ({str(exc)[:100]})") from None
    if len(text) > MAX_OUTCOMES_TEXT:
        raise FairbenchError(f"{path}: more than {MAX_OUTCOMES_TEXT} bytes once decompressed")
    outcomes = parse_outcomes(text, record, str(path))
    check_outcomes(outcomes, record, str(path))
    return outcomes


def parse_outcomes(data: bytes, record: RunRecord, source: str) -> Outcomes:
    """The rows of an outcomes file as arrays (format only; `check_outcomes` checks the numbers)."""
    try:
        lines = data.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise FairbenchError(f"{source}: not ASCII text") from None
    if lines and lines[-1] == "":
        lines.pop()
    header = lines[0].split(",") if lines else []
    known = threat_columns()
    cols = header[2:]
    if header[:2] != ["index", "label"] or not cols or len(set(cols)) != len(cols) \
            or any(c not in known for c in cols):
        raise FairbenchError(f"{source}: header {_short(','.join(header))} is not 'index,label' and "
                             f"threat columns from {', '.join(known)}")
    n_rows = len(lines) - 1
    limit = _test_size(record)
    if not 0 < n_rows <= limit:
        raise FairbenchError(f"{source}: {n_rows} rows; expected 1 to {limit}")
    width = len(header)
    values = {"0": 0, "1": 1, "": -1}
    index = np.empty(n_rows, np.int64)
    label = np.empty(n_rows, np.int64)
    table = np.empty((n_rows, len(cols)), np.int8)
    for r, line in enumerate(lines[1:]):
        cells = line.split(",")
        if len(cells) != width or not (cells[0].isdigit() and cells[1].isdigit()) \
                or len(cells[0]) > 9 or len(cells[1]) > 9:
            raise FairbenchError(f"{source}: row {r + 1} is not {width} cells of index,label and 1/0/empty")
        index[r], label[r] = int(cells[0]), int(cells[1])
        try:
            table[r] = [values[c] for c in cells[2:]]
        except KeyError:
            raise FairbenchError(f"{source}: row {r + 1} holds a value other than 1, 0 or empty") from None
    results = {c: table[:, j] for j, c in enumerate(cols) if (table[:, j] >= 0).any()}
    return Outcomes(index, label, {t: results[t] for t in known if t in results})


def check_outcomes(outcomes: Outcomes, record: RunRecord, source: str) -> None:
    """The rows agree with themselves and with ``record``: known indices and labels, attacks only
    on clean-correct images, ``union`` derived from the others, and ``record``'s metrics exactly
    what the rows give."""
    k, n = len(record.classes), len(outcomes)

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise FairbenchError(f"{source}: {what}")

    need(n > 0 and outcomes.label.shape == (n,) and outcomes.index.shape == (n,), "no rows")
    need(bool((outcomes.index >= 0).all() and (outcomes.index < _test_size(record)).all()),
         f"an index outside the {record.dataset} test split")
    need(len(np.unique(outcomes.index)) == n, "an image appears twice")
    need(bool(((outcomes.label >= 0) & (outcomes.label < k)).all()), f"a label outside 0..{k - 1}")
    res = outcomes.results
    need("clean" in res and bool((res["clean"] >= 0).all()), "the clean column is not filled on every row")
    for t, v in res.items():
        need(v.shape == (n,), f"column {t} has {v.shape[0]} values for {n} rows")
        if t not in (UNION, "clean"):
            need(not ((v == 1) & (res["clean"] != 1)).any(), f"{t} is right where clean is wrong")
    attacks = [t for t in res if t != UNION]
    if len(attacks) > 1:
        need(UNION in res and np.array_equal(res[UNION], derive_union(res)),
             "the union column is not the AND of the threats that ran")
    else:
        need(UNION not in res, "a union column with a single threat")
    need(set(res) == set(record.metrics), f"threats {sorted(res)} in the rows but {sorted(record.metrics)} "
         f"in metrics.json")
    for t, m in metrics_from_outcomes(outcomes, record.classes).items():
        stored = record.metrics[t]
        need(m.n_per_class == stored.n_per_class, f"metrics.{t}.n_per_class is not what the rows count")
        for key in ("per_class", "avg", "worst", "best", "std"):
            a, b = np.asarray(getattr(m, key), float), np.asarray(getattr(stored, key), float)
            need(bool(np.all((np.abs(a - b) <= TOL) | (np.isnan(a) & np.isnan(b)))),
                 f"metrics.{t}.{key} is not what the rows give")


def _test_size(record: RunRecord) -> int:
    return getattr(_dataset(record.dataset), "test_size", None) or MAX_TEST_SIZE


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
    need(_is_int(version) and version == SCHEMA_VERSION, "unknown schema_version",
         f"{_short(version)} (this fairbench reads {SCHEMA_VERSION})")
    names = {f.name for f in dataclasses.fields(RunRecord)} | {"schema_version", "status"}
    unknown = sorted(str(k) for k in data if k not in names)
    need(not unknown, "unknown field(s)", _short(", ".join(unknown)))
    need(data.get("status") in FINISHED, "'status'", f"is {_short(data.get('status'))}: an unfinished run")
    for key in ("method", "arch"):
        need(_is_name(data.get(key)), f"'{key}'", f"is missing or not a name (printable, 1 to {MAX_TEXT} characters)")
    run_id = data.get("run_id")
    need(isinstance(run_id, str) and RUN_ID.fullmatch(run_id) is not None, "'run_id'",
         "is missing or not a folder name (letters, digits, . _ - + =)")
    dataset = data.get("dataset")
    need(isinstance(dataset, str) and bool(dataset), "'dataset'", "is missing or not a string")
    try:
        spec = _dataset(dataset)
    except FairbenchError as exc:
        raise FairbenchError(f"{source}: 'dataset' {exc}") from None
    classes = data.get("classes")
    need(classes == list(spec.classes), "'classes'", f"is not the {dataset} classes in their order")
    need(_is_int(data.get("seed")) and 0 <= data["seed"] < 2**32, "'seed'",
         "is missing or not a whole number in [0, 2**32)")
    epochs = data.get("epochs")
    need(epochs is None or (_is_int(epochs) and 0 <= epochs <= MAX_EPOCHS), "'epochs'",
         f"is not a whole number in [0, {MAX_EPOCHS}] or null")
    threat = data.get("threat")
    need(isinstance(threat, dict) and set(threat) <= {"norm", "eps"}, "'threat'",
         "is missing or not an object of norm and eps")
    need(threat.get("norm", "Linf") in NORMS, "threat.norm", f"is {_short(threat.get('norm'))}, not one of {NORMS}")
    need(_is_number(threat.get("eps")) and 0 < threat["eps"] <= 1, "threat.eps",
         f"is {_short(threat.get('eps'))}, not in (0, 1]")
    params = _check_settings(data.get("params"), "params", c)
    training = _check_training(data.get("training", {}), c)
    preset = data.get("preset")
    need(preset is None or _is_name(preset), "'preset'", "is not a name or null")
    need(data.get("select", "last") in SELECT_RULES, "'select'", f"is not one of {', '.join(SELECT_RULES)}")
    ema = data.get("ema")
    need(ema is None or (_is_number(ema) and 0 <= ema < 1), "'ema'", "is not a decay in [0, 1) or null")
    init_from = data.get("init_from")
    need(init_from is None or _is_name(init_from, 1000), "'init_from'", "is not a path or null")
    for key in ("attack_settings", "timing", "env", "checkpoint", "evaluation"):
        value = data.get(key)
        need(value is None or isinstance(value, dict), f"'{key}'", "is not an object")
    metrics = _check_metrics(data.get("metrics"), classes, c)
    return RunRecord(
        run_id=run_id, method=data["method"], params=params, arch=data["arch"], dataset=dataset,
        seed=data["seed"], epochs=epochs, threat=ThreatModel(threat.get("norm", "Linf"), float(threat["eps"])),
        training=training, classes=tuple(classes), metrics=metrics, preset=preset,
        select=data.get("select", "last"), ema=ema, init_from=init_from,
        attack_settings=data.get("attack_settings") or {}, evaluation=data.get("evaluation"),
        timing=data.get("timing") or {}, env=data.get("env") or {}, checkpoint=data.get("checkpoint") or {})


def _check_settings(value: Any, where: str, c: _Checker) -> dict[str, Any]:
    """A flat object of named settings (``where`` is its dotted name): identifier keys; finite
    numbers, booleans, null, printable strings of at most `MAX_SETTING_TEXT`, or lists of those."""
    c.need(isinstance(value, dict) and len(value) <= MAX_PARAMS, f"'{where}'",
           f"is missing or not an object of at most {MAX_PARAMS} settings")
    for key, v in value.items():
        c.need(key.isidentifier() and len(key) <= 64, f"'{where}'", f"has a key {_short(key)} that is not a name")
        items = v if isinstance(v, list) and len(v) <= MAX_PARAMS else [v]
        c.need(all(_is_setting(x) for x in items), f"{where}.{key}",
               f"is {_short(v)}: not a finite number, boolean, null or printable string")
    return dict(value)


def _check_training(value: Any, c: _Checker) -> dict[str, Any]:
    training = dict(value) if isinstance(value, dict) else value
    c.need(isinstance(training, dict), "'training'", "is not an object")
    inner = training.pop("params", None)
    training = _check_settings(training, "training", c)
    if inner is not None:
        training["params"] = _check_settings(inner, "training.params", c)
    epochs = training.get("epochs")
    c.need(epochs is None or (_is_int(epochs) and 0 <= epochs <= MAX_EPOCHS), "training.epochs",
           f"is {_short(epochs)}, not a whole number in [0, {MAX_EPOCHS}] or null")
    for key in ("train_per_class", "val_per_class", "eval_per_class"):
        v = training.get(key)
        c.need(v is None or (_is_int(v) and 1 <= v <= MAX_COUNT), f"training.{key}",
               f"is {_short(v)}, not a whole number in [1, {MAX_COUNT}] or null")
    return training


def _check_metrics(value: Any, classes: list[str], c: _Checker) -> dict[str, ThreatMetrics]:
    from fairbench.threats import threat_names

    known = threat_columns()
    c.need(isinstance(value, dict), "'metrics'", "is missing or not an object")
    c.need(bool(value), "'metrics'", "is empty: an unfinished run (no threat evaluated)")
    bad = [t for t in value if t not in known]
    c.need(not bad, "'metrics'", f"has threat(s) {_short(', '.join(map(str, bad)))} that are not registered "
                                 f"(known: {', '.join(known)})")
    c.need("clean" in value, "'metrics'", "has no clean accuracy")
    attacks = [t for t in value if t in threat_names()]
    c.need((UNION in value) == (len(attacks) > 1), "metrics.union",
           "must be present exactly when more than one threat was evaluated")
    return {t: _check_threat(value[t], classes, f"metrics.{t}", c) for t in known if t in value}


def _check_threat(block: Any, classes: list[str], where: str, c: _Checker) -> ThreatMetrics:
    """Fractions in [0, 1], one per class, and a summary that agrees with them."""
    need = c.need
    need(isinstance(block, dict), where, "is not an object")
    allowed = {"per_class", "per_class_error", "n_per_class", "avg", "worst", "worst_class", "best",
               "best_class", "std"}
    need(set(block) <= allowed, where, f"has unknown field(s) {_short(', '.join(sorted(set(block) - allowed)))}")
    k = len(classes)
    counts = block.get("n_per_class")
    need(isinstance(counts, list) and len(counts) == k and all(_is_int(v) and 0 <= v <= MAX_COUNT for v in counts),
         f"{where}.n_per_class", f"is not a list of {k} whole numbers in [0, {MAX_COUNT}]")
    need(sum(counts) > 0, f"{where}.n_per_class", "counts no example")
    acc = block.get("per_class")
    need(isinstance(acc, list) and len(acc) == k, f"{where}.per_class", f"is not a list of {k} numbers (one per class)")
    for i, (v, n) in enumerate(zip(acc, counts)):  # a class without test examples has NaN
        need(_is_fraction(v) if n else (_is_number(v) and math.isnan(v)), f"{where}.per_class[{i}]",
             f"is {_short(v)}, not a fraction in [0, 1]" if n else f"is {_short(v)}, not NaN (no examples)")
    errors = block.get("per_class_error")
    if errors is not None:
        need(isinstance(errors, list) and len(errors) == k
             and all(_is_number(e) and (abs(e - (1 - a)) <= TOL or (math.isnan(e) and math.isnan(a)))
                     for e, a in zip(errors, acc)), f"{where}.per_class_error", "is not 1 - per_class")
    for key in ("avg", "worst", "best", "std"):
        need(_is_fraction(block.get(key)), f"{where}.{key}", f"is {_short(block.get(key))}, not in [0, 1]")
    for key in ("worst_class", "best_class"):
        need(block.get(key) in classes, f"{where}.{key}", f"is {_short(block.get(key))}, not one of the classes")
    present = np.array([a for a, n in zip(acc, counts) if n], float)
    weights = np.array([n for n in counts if n], float)
    expect = {"avg": float(present @ weights / weights.sum()), "worst": float(present.min()),
              "best": float(present.max()), "std": float(present.std())}
    for key, v in expect.items():
        need(abs(block[key] - v) <= 2 * TOL, f"{where}.{key}", f"is {block[key]}, but the per-class numbers give {v:.6f}")
    for key in ("worst", "best"):
        i = classes.index(block[f"{key}_class"])
        need(counts[i] > 0 and abs(acc[i] - block[key]) <= TOL, f"{where}.{key}_class",
             f"is {block[f'{key}_class']!r}, whose accuracy is not the {key}")
    return ThreatMetrics(tuple(float(a) for a in acc), tuple(counts), float(block["avg"]), float(block["worst"]),
                         block["worst_class"], float(block["best"]), block["best_class"], float(block["std"]))


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


def _short(v: Any) -> str:
    text = repr(v) if not isinstance(v, (list, dict)) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- finding result files

def find_metrics(results_dir: Path) -> list[Path]:
    """Every metrics.json under ``results_dir``, sorted, never through a symlinked folder."""
    found = []
    for folder, dirs, files in os.walk(results_dir, followlinks=False):
        dirs.sort()
        if METRICS_FILE in files:
            found.append(Path(folder) / METRICS_FILE)
    return sorted(found)
