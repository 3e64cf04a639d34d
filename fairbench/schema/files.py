"""Result files: building a run's record, writing it with its outcomes, and reading both back.

Files are read only when they are regular files (no FIFO, device or symlink) no larger than
`MAX_METRICS_BYTES` / `MAX_OUTCOMES_BYTES` (`MAX_OUTCOMES_TEXT` once decompressed); whatever is
read goes through the validator before anything uses it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fairbench.errors import FairbenchError
from fairbench.files import atomic_write_bytes
from fairbench.schema.record import (
    MAX_METRICS_BYTES,
    MAX_OUTCOMES_BYTES,
    MAX_OUTCOMES_TEXT,
    METRICS_FILE,
    OUTCOMES_FILE,
    Outcomes,
    RunRecord,
    ThreatModel,
    dataset_spec,
    metrics_from_outcomes,
    short,
    test_size,
    threat_columns,
)
from fairbench.schema.validate import check_outcomes, validate


def build_record(
    *,
    run_id: str,
    method: str,
    params: dict[str, Any],
    arch: str,
    dataset: str,
    seed: int,
    epochs: int | None,
    eps: float,
    training: dict[str, Any],
    outcomes: Outcomes,
    norm: str = "Linf",
    **extra: Any,
) -> RunRecord:
    """The one builder of a run's record: its metrics come from ``outcomes``; it is validated."""
    classes = tuple(dataset_spec(dataset).classes)
    record = RunRecord(
        run_id=run_id,
        method=method,
        params=dict(params),
        arch=arch,
        dataset=dataset,
        seed=seed,
        epochs=epochs,
        threat=ThreatModel(norm, eps),
        training=dict(training),
        classes=classes,
        metrics=metrics_from_outcomes(outcomes, classes),
        **extra,
    )
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
    columns = [[cells[int(v)] for v in outcomes.results[t]] if t in outcomes.results else missing for t in cols]
    for i, (idx, lab) in enumerate(zip(outcomes.index.tolist(), outcomes.label.tolist())):
        lines.append(f"{idx},{lab}," + ",".join(c[i] for c in columns))
    return gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)


def write_run(run_dir: Path, record: RunRecord, outcomes: Outcomes) -> None:
    """Write the outcomes, then metrics.json (its presence marks a finished run), atomically."""
    check_outcomes(outcomes, record, OUTCOMES_FILE)
    atomic_write_bytes(Path(run_dir) / OUTCOMES_FILE, outcomes_bytes(outcomes))
    atomic_write_bytes(Path(run_dir) / METRICS_FILE, (json.dumps(record.to_json(), indent=2) + "\n").encode())


# ---------------------------------------------------------------- reading


def read_regular(path: Path, cap: int) -> bytes:
    """The bytes of ``path`` if it is a regular file (not a symlink, FIFO or device) of at most
    ``cap`` bytes; else FairbenchError. Opening never blocks (a FIFO is refused, not waited on)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise FairbenchError(f"{path}: unreadable ({'a symlink' if os.path.islink(path) else exc.strerror})") from None
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
    cap = min(MAX_OUTCOMES_TEXT, outcomes_text_bound(record.dataset))
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            text = f.read(cap + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise FairbenchError(f"{path}: unreadable, not gzip ({str(exc)[:100]})") from None
    if len(text) > cap:
        raise FairbenchError(
            f"{path}: more than {cap} bytes once decompressed (the most that {test_size(record.dataset)} rows can take)"
        )
    outcomes = parse_outcomes(text, record, str(path))
    check_outcomes(outcomes, record, str(path))
    return outcomes


MAX_HEADER = 4096  # bytes of the header line: index,label and every registered threat's name


def _row_width() -> int:
    """The longest row `outcomes_bytes` writes: two 9-digit numbers, a cell and a comma per column."""
    return 9 + 1 + 9 + 2 * len(threat_columns()) + 1


def outcomes_text_bound(dataset: str) -> int:
    """The most bytes an outcomes file of ``dataset`` can hold once decompressed."""
    return MAX_HEADER + test_size(dataset) * _row_width()


def parse_outcomes(data: bytes, record: RunRecord, source: str) -> Outcomes:
    """The rows of an outcomes file as arrays (format only; `check_outcomes` checks the numbers).

    Its size is checked before it is split into lines and cells (a 64 KB gzip expanded to a 64 MiB
    header of commas and took the report to 1.9 GB splitting it): a header of at most `MAX_HEADER`
    bytes, at most the test set's rows, each at most as wide as the widest row fairbench writes."""
    limit = test_size(record.dataset)
    end = data.find(b"\n", 0, MAX_HEADER + 1)
    if len(data) > MAX_HEADER and end < 0:
        raise FairbenchError(f"{source}: a header line longer than {MAX_HEADER} bytes")
    rows = data.count(b"\n", max(end, 0)) - (1 if data.endswith(b"\n") else 0)
    if rows > limit:
        raise FairbenchError(f"{source}: {rows} rows; expected 1 to {limit}")
    if len(data) > max(end, 0) + 1 + (rows + 1) * _row_width():
        raise FairbenchError(f"{source}: rows longer than a row of index,label and one cell per threat")
    try:
        lines = data.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise FairbenchError(f"{source}: not ASCII text") from None
    if lines and lines[-1] == "":
        lines.pop()
    header = lines[0].split(",") if lines else []
    known = threat_columns()
    cols = header[2:]
    if header[:2] != ["index", "label"] or not cols or len(set(cols)) != len(cols) or any(c not in known for c in cols):
        raise FairbenchError(
            f"{source}: header {short(','.join(header))} is not 'index,label' and "
            f"threat columns from {', '.join(known)}"
        )
    n_rows = len(lines) - 1
    if not 0 < n_rows <= limit:
        raise FairbenchError(f"{source}: {n_rows} rows; expected 1 to {limit}")
    width = len(header)
    values = {"0": 0, "1": 1, "": -1}
    index = np.empty(n_rows, np.int64)
    label = np.empty(n_rows, np.int64)
    table = np.empty((n_rows, len(cols)), np.int8)
    for r, line in enumerate(lines[1:]):
        cells = line.split(",")
        if (
            len(cells) != width
            or not (cells[0].isdigit() and cells[1].isdigit())
            or len(cells[0]) > 9
            or len(cells[1]) > 9
        ):
            raise FairbenchError(f"{source}: row {r + 1} is not {width} cells of index,label and 1/0/empty")
        index[r], label[r] = int(cells[0]), int(cells[1])
        try:
            table[r] = [values[c] for c in cells[2:]]
        except KeyError:
            raise FairbenchError(f"{source}: row {r + 1} holds a value other than 1, 0 or empty") from None
    results = {c: table[:, j] for j, c in enumerate(cols) if (table[:, j] >= 0).any()}
    return Outcomes(index, label, {t: results[t] for t in known if t in results})


# ---------------------------------------------------------------- finding result files


def find_metrics(results_dir: Path) -> list[Path]:
    """Every metrics.json under ``results_dir``, sorted, never through a symlinked folder."""
    found = []
    for folder, dirs, files in os.walk(results_dir, followlinks=False):
        dirs.sort()
        if METRICS_FILE in files:
            found.append(Path(folder) / METRICS_FILE)
    return sorted(found)
