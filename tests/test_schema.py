"""The results schema: one validator for metrics.json, the outcomes it comes from, safe reads."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from fairbench.data.datasets import FASHION_MNIST_CLASSES as CLASSES
from fairbench.errors import FairbenchError
from fairbench.schema import (
    MAX_METRICS_BYTES,
    Outcomes,
    build_record,
    find_metrics,
    make_outcomes,
    metrics_from_outcomes,
    outcomes_bytes,
    parse_outcomes,
    read_metrics,
    read_outcomes,
    summarize,
    validate,
    write_run,
)

REPO = Path(__file__).resolve().parent.parent


def valid_metrics() -> dict:
    """A small valid metrics.json document: Fashion-MNIST, 2 test images per class."""
    labels = [c for c in range(10) for _ in range(2)]
    clean = summarize([i % 3 > 0 for i in range(20)], labels, CLASSES).to_json()
    pgd = summarize([i % 3 == 1 for i in range(20)], labels, CLASSES).to_json()
    union = dict(pgd)
    return {
        "schema_version": 1,
        "run_id": "r",
        "method": "pgd-at",
        "params": {},
        "arch": "small-cnn",
        "dataset": "fashion-mnist",
        "seed": 0,
        "epochs": 1,
        "threat": {"norm": "Linf", "eps": 0.1},
        "classes": list(CLASSES),
        "metrics": {"clean": clean, "pgd20": pgd, "union": union},
        "timing": {},
    }


def _set(doc: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is KeyError:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("schema_version", 2, "unknown schema_version 2 (this fairbench reads 1)"),
        ("schema_version", True, "unknown schema_version True"),
        ("run_id", KeyError, "'run_id' is missing"),
        ("run_id", "../x", "'run_id' is missing or not a folder name"),
        ("run_id", "abc\n", "'run_id' is missing or not a folder name"),
        ("method", 3, "'method' is missing or not a name"),
        ("method", "a\nb", "'method' is missing or not a name"),
        ("arch", "x" * 201, "'arch' is missing or not a name"),
        ("dataset", "mnist", "'dataset' unknown dataset 'mnist'"),
        ("seed", "0", "'seed' is missing or not a whole number"),
        ("epochs", 10**300, "'epochs' is not a whole number in [0, 100000]"),
        ("threat.eps", 2.0, "threat.eps is 2.0, not in (0, 1]"),
        ("threat.norm", "L3", "threat.norm is 'L3'"),
        ("classes", list(CLASSES[:9]) + ["$\\foo{$"], "'classes' is not the fashion-mnist classes"),
        ("classes", list(reversed(CLASSES)), "'classes' is not the fashion-mnist classes"),
        ("params", {"a b": 1}, "'params' has a key 'a b' that is not a name"),
        ("params", {"p": "x\n\\input{y}"}, "params.p is"),
        ("params", {"p": float("inf")}, "params.p is inf"),
        ("training", {"epochs": 10**300}, "training.epochs is"),
        ("training", {"eval_per_class": 0}, "training.eval_per_class is 0"),
        ("select", "best", "'select' is not one of last, best-val"),
        ("selected_epoch", -1, "'selected_epoch' is not an epoch of the run"),
        ("selected_epoch", 2, "'selected_epoch' is not an epoch of the run"),
        ("preset", "a\nb", "'preset' is not a name or null"),
        ("ema", 1.5, "'ema' is not a decay"),
        ("status", "running", "'status' is 'running': an unfinished run"),
        ("extra", "<script>", "unknown field(s) 'extra'"),
        ("env", {"x": {"y": {"z": {"w": 1}}}}, "env.x.y.z is nested deeper"),
        ("env", {"x": "a\nb"}, "env.x is 'a\\nb'"),
        ("metrics", [], "'metrics' is missing or not an object"),
        ("metrics", {}, "'metrics' is empty: an unfinished run"),
        ("metrics.<img src=x>", {}, "has threat(s) '<img src=x>' that are not registered"),
        ("metrics.x/ESCAPED", {}, "has threat(s) 'x/ESCAPED' that are not registered"),
        ("metrics.union", KeyError, "metrics.union must be present exactly when"),
        ("metrics.clean.per_class.1", 1.5, "metrics.clean.per_class[1] is 1.5, not a fraction"),
        ("metrics.clean.per_class", [0.5] * 11, "metrics.clean.per_class is not a list of 10 numbers"),
        ("metrics.clean.per_class", [0.5] * 100_000, "metrics.clean.per_class is not a list of 10 numbers"),
        ("metrics.pgd20.per_class.1", "1.0", "metrics.pgd20.per_class[1] is '1.0'"),
        ("metrics.pgd20.per_class.1", float("nan"), "metrics.pgd20.per_class[1] is nan"),
        ("metrics.clean.n_per_class.1", -1, "metrics.clean.n_per_class is not a list of 10"),
        ("metrics.clean.n_per_class", [0] * 10, "metrics.clean.n_per_class counts no example"),
        ("metrics.clean.avg", None, "metrics.clean.avg is None, not in [0, 1]"),
        ("metrics.clean.avg", 0.9, "metrics.clean.avg is 0.9, but the per-class numbers give"),
        ("metrics.clean.std", 0.0, "metrics.clean.std is 0.0, but the per-class numbers give"),
        ("metrics.clean.worst_class", "z", "metrics.clean.worst_class is 'z', not one of the classes"),
        ("metrics.clean.worst_class", "pullover", "metrics.clean.worst_class is 'pullover', whose accuracy is not"),
        ("metrics.clean.per_class_error", [0.0] * 10, "metrics.clean.per_class_error is not 1 - per_class"),
        ("metrics.clean.extra", 1, "metrics.clean has unknown field(s) 'extra'"),
        ("metrics.pgd20", [], "metrics.pgd20 is not an object"),
        ("timing", [], "'timing' is not an object"),
        ("threat", {"norm": "Linf", "eps": 0.1, "x": 1}, "'threat' is missing or not an object of norm and eps"),
        ("training", [1], "'training' is not an object"),
        ("training", {"params": {"p": [float("nan")]}}, "training.params.p is"),
        ("init_from", 3, "'init_from' is not a record, a path or null"),
        ("init_from", "a\nb", "'init_from' is not a record, a path or null"),
        ("init_from", {"run_id": "<script>\n"}, "init_from.run_id is"),
        ("averaging", "x", "'averaging' is not an object"),
        ("attack_settings", {"pgd20": {"steps": 10**30}}, "attack_settings.pgd20.steps is"),
        ("evaluation", {"k": list(range(1000))}, "evaluation.k is nested deeper than allowed or has more than"),
        ("checkpoint", {"sha256": "a\x1b[31m"}, "checkpoint.sha256 is"),
    ],
)
def test_every_field_is_checked_and_named(tmp_path: Path, field: str, value, message: str) -> None:
    """Every field the report reads is checked before use; a failure names the file and the field."""
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(_set(valid_metrics(), field, value)))
    with pytest.raises(FairbenchError) as exc:
        read_metrics(path)
    assert str(exc.value).startswith(f"{path}: ") and message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_valid_and_older_documents_read_with_defaults() -> None:
    """Files from before preset/select/ema/init_from existed read with the defaults."""
    record = validate(valid_metrics())
    assert (record.preset, record.select, record.ema, record.init_from, record.selected_epoch) == (
        None,
        "last",
        None,
        None,
        None,
    )
    assert validate(valid_metrics() | {"epochs": None}).epochs is None  # `fairbench eval`: not trained
    assert validate(record.to_json()) == record


def test_committed_results_pass_the_validator() -> None:
    """Every committed metrics.json (and its outcomes, where committed) reads with today's schema."""
    paths = find_metrics(REPO / "results")
    assert paths
    for path in paths:
        record = read_metrics(path)
        read_outcomes(path.parent / "outcomes.csv.gz", record)


def test_truncated_or_binary_metrics_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    text = json.dumps(valid_metrics())
    path.write_text(text)
    assert read_metrics(path).run_id == "r"
    for bad in (text[: len(text) // 2], "", "[" * 100_000, "1" * 5000):
        path.write_text(bad)
        with pytest.raises(FairbenchError, match="unreadable, not valid JSON|: not a JSON object"):
            read_metrics(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FairbenchError, match="unreadable"):
        read_metrics(path)


def test_only_regular_files_under_the_cap_are_read(tmp_path: Path) -> None:
    """A FIFO does not hang, /dev/zero and other symlinks are not followed, a large file is refused
    before it is read."""
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")
    (tmp_path / "real.json").write_text(json.dumps(valid_metrics()))
    inner = tmp_path / "inner.json"
    inner.symlink_to(tmp_path / "real.json")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_METRICS_BYTES + 1))
    t0 = time.perf_counter()
    for path, message in (
        (fifo, "not a regular file"),
        (link, "a symlink"),
        (inner, "a symlink"),
        (big, f"more than the {MAX_METRICS_BYTES}"),
    ):
        with pytest.raises(FairbenchError, match=message):
            read_metrics(path)
    assert time.perf_counter() - t0 < 5


# ---------------------------------------------------------------- outcomes


def outcomes_and_record(seed: int = 0) -> tuple[Outcomes, object]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), 6)
    clean = rng.random(60) < 0.9
    pgd = clean & (rng.random(60) < 0.6)
    aa = np.where(np.arange(60) % 3 == 0, pgd & (rng.random(60) < 0.9), -1)
    outcomes = make_outcomes(np.arange(60) * 7, labels, {"clean": clean, "pgd20": pgd, "autoattack": aa})
    record = build_record(
        run_id="r",
        method="pgd-at",
        params={},
        arch="small-cnn",
        dataset="fashion-mnist",
        seed=0,
        epochs=1,
        eps=0.1,
        training={},
        outcomes=outcomes,
    )
    return outcomes, record


def test_outcomes_round_trip_and_give_the_metrics(tmp_path: Path) -> None:
    outcomes, record = outcomes_and_record()
    write_run(tmp_path, record, outcomes)
    assert (tmp_path / "outcomes.csv.gz").read_bytes() == outcomes_bytes(outcomes)  # same bytes each time
    text = gzip.decompress((tmp_path / "outcomes.csv.gz").read_bytes()).decode()
    assert text.splitlines()[0] == "index,label,clean,pgd20,autoattack,union"
    assert text.splitlines()[2].endswith(",,")  # AutoAttack (hence union) not run on the second image
    back = read_outcomes(tmp_path / "outcomes.csv.gz", read_metrics(tmp_path / "metrics.json"))
    assert np.array_equal(back.index, outcomes.index) and back.results.keys() == outcomes.results.keys()
    for t in outcomes.results:
        assert np.array_equal(back.results[t], outcomes.results[t])
    assert metrics_from_outcomes(back, CLASSES) == record.metrics
    assert record.metrics["autoattack"].n_per_class == (2,) * 10 and record.metrics["pgd20"].n_per_class == (6,) * 10


def _rows(outcomes: Outcomes, **changes) -> bytes:
    results = {t: v.copy() for t, v in outcomes.results.items()}
    for t, (i, v) in changes.items():
        results[t][i] = v
    return gzip.decompress(outcomes_bytes(Outcomes(outcomes.index, outcomes.label, results)))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda o: _rows(o, pgd20=(int(np.flatnonzero(o.results["pgd20"] == 1)[-1]), 0)),
            "not what the rows|not the AND",
        ),
        (lambda o: _rows(o, clean=(int(np.flatnonzero(o.results["clean"] == 0)[0]), 1)), "not what the rows"),
        (lambda o: _rows(o, union=(0, 1 - o.results["union"][0])), "union column is not the AND"),
        (lambda o: _rows(o, pgd20=(int(np.flatnonzero(o.results["clean"] == 0)[0]), 1)), "pgd20 is right where clean"),
        (lambda o: _rows(o, autoattack=(1, 1)), "union column is not the AND|not what the rows"),
        (lambda o: _rows(o).replace(b"\n0,0,", b"\n7,0,", 1), "an image appears twice"),
        (lambda o: _rows(o).replace(b"\n0,0,", b"\n0,10,", 1), "a label outside"),
        (lambda o: _rows(o).replace(b"\n0,0,", b"\n99999,0,", 1), "an index outside"),
        (lambda o: _rows(o).replace(b"\n0,0,1", b"\n0,0,2", 1), "a value other than 1, 0 or empty"),
        (lambda o: _rows(o).replace(b"\n0,0,1", b"\n0,0,", 1), "clean column is not filled"),
        (lambda o: _rows(o).replace(b"index,label,clean", b"index,label,<b>", 1), "header"),
        (lambda o: b"index,label,clean\n", "0 rows"),
        (lambda o: _rows(o).replace(b"\n0,0,", b"\n-1,0,", 1), "is not 6 cells"),
    ],
)
def test_outcomes_that_disagree_are_refused(tmp_path: Path, edit, message: str) -> None:
    outcomes, record = outcomes_and_record()
    path = tmp_path / "outcomes.csv.gz"
    path.write_bytes(gzip.compress(edit(outcomes)))
    with pytest.raises(FairbenchError, match=message):
        read_outcomes(path, record)


def test_outcomes_files_are_bounded(tmp_path: Path) -> None:
    """A gzip bomb stops at the decompressed cap; a file that is not gzip is one clear error."""
    _, record = outcomes_and_record()
    path = tmp_path / "outcomes.csv.gz"
    path.write_bytes(gzip.compress(b"index,label,clean\n" + b"0" * (70 << 20)))
    with pytest.raises(FairbenchError, match="once decompressed"):
        read_outcomes(path, record)
    path.write_bytes(b"not gzip")
    with pytest.raises(FairbenchError, match="not gzip"):
        read_outcomes(path, record)
    assert read_outcomes(tmp_path / "absent.csv.gz", record) is None
    with pytest.raises(FairbenchError, match="rows; expected 1 to 10000"):
        parse_outcomes(b"index,label,clean\n" + b"0,0,1\n" * 10_001, record, "x")
