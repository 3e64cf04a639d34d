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

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fairbench.cli import parse_param_options
from fairbench.config import RunConfig
from fairbench.errors import FairbenchError
from fairbench.method import Method, coerce, parse_params
from fairbench.schema import parse_metrics, read_metrics, validate
from test_schema import valid_metrics

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)), max_leaves=30)


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
@given(st.dictionaries(st.sampled_from(["rate", "count", "flag", "mode", "other"]),
                       st.one_of(st.text(max_size=30), scalars, st.lists(scalars, max_size=2))))
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
