"""Fuzzing the readers of untrusted input: metrics.json, config.json and ``--param name=value``.

Whatever the input, the only exception allowed out is `FairbenchError` (one clear line).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from fairbench.cli import parse_param_options
from fairbench.config import RunConfig
from fairbench.errors import FairbenchError
from fairbench.methods.base import Method, coerce, parse_params
from fairbench.schema import parse_metrics, read_metrics, validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_schema import valid_metrics

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=30,
)


def only_fairbench_errors(fn, *args: Any) -> Any:
    try:
        return fn(*args)
    except FairbenchError as exc:
        assert str(exc) and "\n" not in str(exc)  # one line for the terminal
        return None


# ---------------------------------------------------------------- metrics.json


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path in a JSON document."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated_metrics(draw: st.DrawFn) -> dict:
    """A valid metrics document with a few fields replaced by arbitrary values or deleted."""
    doc = valid_metrics()
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return doc


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_metrics_text(text: str) -> None:
    only_fairbench_errors(parse_metrics, text)


@FUZZ
@given(json_values)
def test_fuzz_metrics_any_json(value: Any) -> None:
    only_fairbench_errors(parse_metrics, json.dumps(value))


@FUZZ
@given(mutated_metrics())
def test_fuzz_metrics_mutated(doc: dict) -> None:
    """Accepted documents really hold what the leaderboard reads: fractions, one per class."""
    out = only_fairbench_errors(validate, copy.deepcopy(doc))
    if out is not None:
        k = len(out.classes)
        for block in out.metrics.values():
            assert len(block.per_class) == k == len(block.n_per_class)
            assert all(isinstance(v, float) and (0 <= v <= 1 or math.isnan(v)) for v in block.per_class)
            assert block.worst_class in out.classes


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_metrics_file_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "metrics.json"
        path.write_bytes(data)
        only_fairbench_errors(read_metrics, path)


def test_valid_metrics_pass() -> None:
    assert validate(valid_metrics()).run_id == "r"


# ---------------------------------------------------------------- --param name=value


class Typed(Method):
    """A method with one parameter of each supported type, to fuzz the parsing against."""

    name = "typed"

    @dataclasses.dataclass
    class Params:
        rate: float = 0.5
        count: int = 3
        flag: bool = False
        mode: str = "a"


@FUZZ
@given(st.lists(st.text(max_size=30), max_size=5))
def test_fuzz_param_options(items: list[str]) -> None:
    params = only_fairbench_errors(parse_param_options, items)
    if params is not None:
        assert all(name.isidentifier() for name in params)
        only_fairbench_errors(parse_params, Typed, params)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["rate", "count", "flag", "mode", "other"]),
        st.one_of(st.text(max_size=30), scalars, st.lists(scalars, max_size=2)),
    )
)
def test_fuzz_parse_params_typed(raw: dict) -> None:
    """Values from the CLI (strings) or a config.json (any JSON): the declared type, or an error."""
    params = only_fairbench_errors(parse_params, Typed, raw)
    if params is not None:
        assert isinstance(params.rate, float) and math.isfinite(params.rate)
        assert type(params.count) is int and type(params.flag) is bool and isinstance(params.mode, str)


@FUZZ
@given(st.one_of(st.text(max_size=40), scalars))
def test_fuzz_coerce_each_type(value: Any) -> None:
    for f in dataclasses.fields(Typed.Params):
        only_fairbench_errors(coerce, value, f, "typed")


# ---------------------------------------------------------------- config.json (fairbench resume)

config_fields = st.sampled_from([f.name for f in dataclasses.fields(RunConfig)] + ["unknown"])


@FUZZ
@given(st.dictionaries(config_fields, json_values, max_size=6))
def test_fuzz_config_from_dict(changes: dict) -> None:
    """A hand-edited config.json is refused with a clear line, or resolves to a valid config."""
    base = RunConfig("pgd-at", "small-cnn", "fashion-mnist").to_dict()
    cfg = only_fairbench_errors(RunConfig.from_dict, {**base, **changes})
    if cfg is not None:
        only_fairbench_errors(cfg.resolve, 0.1, 0.025)


# ---------------------------------------------------------------- sweep files (issue 28, case 6)


def _plan_doc() -> dict:
    from fairbench.sweep.plan import PlannedRun

    run = PlannedRun(
        "pgd-at_small-cnn_fashion-mnist_seed0_0ee07036",
        ("--epochs", "1", "--method", "pgd-at"),
        (("method", "pgd-at"), ("seed", "0")),
        1,
        "out",
        "cpu",
        {"attacks": ["clean"], "eval_per_class": 2, "aa_per_class": None},
    )
    return {
        "version": 1,
        "launcher": "slurm",
        "created": "2026-01-01T00:00:00",
        "runs": [run.to_dict()],
        "slurm": {"job_id": "42", "tasks": {run.run_id: "42_0"}},
    }


@st.composite
def mutated_plans(draw: st.DrawFn) -> dict:
    doc = _plan_doc()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return doc


@FUZZ
@given(st.one_of(mutated_plans(), json_values))
def test_fuzz_sweep_plan(doc: Any) -> None:
    """A plan.json of anything: `read_plan` gives runs whose fields have their types, or one line."""
    from fairbench.sweep.plan import read_plan
    from fairbench.sweep.view import Row, render_text

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "sweep").mkdir()
        (Path(folder) / "sweep" / "plan.json").write_text(json.dumps(doc))
        got = only_fairbench_errors(read_plan, Path(folder))
        if got is not None:
            _, _, runs = got
            assert all(type(r.epochs) is int and all(isinstance(a, str) for a in r.argv) for r in runs)
            text = render_text([Row(r, "not started") for r in runs])
            assert all(c.isprintable() for line in text.splitlines() for c in line)


@FUZZ
@given(
    st.one_of(
        json_values,
        st.dictionaries(
            st.sampled_from(["state", "seconds", "pid", "host", "exit_code", "job", "time", "launcher"]), json_values
        ),
    )
)
def test_fuzz_sweep_status_file(doc: Any) -> None:
    """A status file of anything: only fields of their type are kept, and the status table renders."""
    from fairbench.sweep.launch import _local_row
    from fairbench.sweep.plan import STATUS_FIELDS, PlannedRun, read_status
    from fairbench.sweep.slurm import slurm_state
    from fairbench.sweep.view import Row, render_text

    with tempfile.TemporaryDirectory() as folder:
        sweep = Path(folder) / "sweep"
        (sweep / "status").mkdir(parents=True)
        run = PlannedRun.from_dict(_plan_doc()["runs"][0])
        run = PlannedRun(run.run_id, run.argv, run.coords, run.epochs, folder, run.device, run.evaluation)
        (sweep / "status" / f"{run.run_id}.json").write_text(json.dumps(doc))
        status = read_status(sweep, run.run_id)
        assert all(STATUS_FIELDS[k](v) for k, v in status.items())
        rows = [_local_row(run, sweep), Row(run, *slurm_state(run, sweep, {}, {}))]
        assert all(c.isprintable() for line in render_text(rows).splitlines() for c in line)


# ---------------------------------------------------------------- issue 28: --init-from records, saved evaluation state


@FUZZ
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_fuzz_init_from_source_config(config: dict) -> None:
    """Any source config.json: `--init-from`'s check (`check_init_from`) refuses it with one line, or
    the record it keeps passes the validator of metrics.json, so the run never fails when it writes
    its result after training."""
    from fairbench.schema import check_init_from

    record = {
        "run_dir": "runs/src",
        "run_id": "src",
        "method": "pgd-at",
        "epochs": 2,
        "budget_epochs": 2,
        "weights": "last",
        "checkpoint_sha256": "0" * 64,
        "config": config | {"init_source": None},
    }
    try:
        check_init_from(record, "--init-from src")
    except FairbenchError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    doc = valid_metrics()
    doc["init_from"] = record
    validate(doc)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["format", "key", "threat", "done", "n", "seconds", "correct", "tag"]), json_values, max_size=8
    )
)
def test_fuzz_saved_evaluation_state(doc: dict) -> None:
    """A state file of any fields (a tag made up, the right key): never resumed, never a traceback."""
    import torch
    from fairbench.distributed import DistInfo
    from fairbench.eval.state import EvalState

    with tempfile.TemporaryDirectory() as folder:
        said: list[str] = []
        state = EvalState(Path(folder), {"m": 1}, torch.arange(3), DistInfo(), torch.device("cpu"), said.append)
        doc = dict(doc)
        if doc.get("key") == "right":
            doc["key"] = state.key("clean", {})
        doc.setdefault("correct", torch.ones(3, dtype=torch.bool))
        torch.save(doc, Path(folder) / "clean.pt")
        assert state.load("clean", {}, 3).done == 0
