"""The grid of a sweep: methods x seeds x method parameters x `fairbench run` options, from flags
or a sweep file (TOML, or YAML), expanded into runs with the ids `fairbench run` gives them and
validated the way `fairbench run` validates one, before anything starts."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fairbench.config import MAX_SEED
from fairbench.errors import FairbenchError
from fairbench.registry import did_you_mean
from fairbench.sweep.plan import PlannedRun, eval_settings

# `fairbench run` options a sweep sets itself, with what to use instead
OWN_OPTIONS = {
    "method": "--methods",
    "seed": "--seeds",
    "run_id": "the grid (runs get the ids `fairbench run` gives them)",
    "resume": "nothing (a sweep resumes a run that has a checkpoint by itself)",
    "stop_after_epoch": "a plain `fairbench run`",
}
FILE_KEYS = ("methods", "seeds", "run", "params", "param-grid", "grid")
MAX_SEEDS = 1_000_000  # seeds one --seeds may list (the grid's own cap, --max-runs, is far lower)
DEFAULT_MAX_RUNS = 1000  # runs a grid may have unless --max-runs raises it

# parse_run(argv) -> (RunConfig, {option name: explicitly given?}), from `fairbench run`'s parser
ParseRun = Callable[[list[str]], "tuple[Any, dict[str, bool]]"]


@dataclass(frozen=True)
class RunOption:
    """One `fairbench run` option: its flag, the ``--no-`` form of a true/false flag."""

    flag: str
    negative: str | None = None
    is_flag: bool = False


@dataclass
class GridSpec:
    """What to expand: the axes, and the `fairbench run` arguments every run shares."""

    methods: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    param_grid: dict[str, list[str]] = field(default_factory=dict)  # method parameters
    option_grid: dict[str, list[str]] = field(default_factory=dict)  # `fairbench run` options
    run_args: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ the grid


def parse_seeds(text: str) -> list[int]:
    """``0-2`` or ``0,1,5`` or ``0-2,7`` as a list of seeds, in order. Each seed is one `fairbench run`
    takes ([0, 2**32 - 1]); a list of more than `MAX_SEEDS` is refused before it is built (a range
    like 0-99999999999 would not fit in memory)."""
    parts: list[tuple[int, int]] = []
    total = 0
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d{1,20})(?:-(\d{1,20}))?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise FairbenchError(f"--seeds expects seeds like 0-2 or 0,1,5, got {text!r:.60}")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if last > MAX_SEED:
            raise FairbenchError(
                f"--seeds: seed {last} is more than {MAX_SEED}, the largest seed `fairbench run` takes"
            )
        total += last - first + 1
        if total > MAX_SEEDS:
            raise FairbenchError(
                f"--seeds {text!s:.60} gives more than {MAX_SEEDS} seeds; a sweep of that many runs cannot be meant"
            )
        parts.append((first, last))
    return [seed for first, last in parts for seed in range(first, last + 1)]


def parse_axis(item: str, flag: str) -> tuple[str, list[str]]:
    """``name=v1,v2`` as (name, [v1, v2])."""
    name, sep, values = item.partition("=")
    name = name.strip().lstrip("-")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w-]*", name):
        raise FairbenchError(f"{flag} expects name=value1,value2, got {item!r:.60}")
    return name, [v.strip() for v in values.split(",") if v.strip()]


def split_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def expand(
    spec: GridSpec,
    parse_run: ParseRun,
    run_options: dict[str, RunOption],
    max_runs: int = DEFAULT_MAX_RUNS,
    echo: Callable[[str], None] | None = None,
) -> list[PlannedRun]:
    """Every run of the grid, validated the way `fairbench run` validates one, before any starts.

    ``run_options`` maps each `fairbench run` option name to its flags (`fairbench.cli.run_options`).
    A ``param_grid`` parameter multiplies the runs of the methods that have it; one that no method
    of the grid has is an error, and so is a grid that names one run twice. The grid's size is
    counted (and given to ``echo``) before any run is built; more than ``max_runs`` is an error.

    Runs that differ only in their seed share one config shape: each shape is parsed with `fairbench
    run`'s parser and checked by `runner.prepare` once, and each seed's run is that config with its
    seed (and the run id `fairbench run` gives it). The seed changes nothing that `prepare` checks
    or fills in, so this is the config that parsing the seed's own command line gives.
    """
    from fairbench.methods import METHODS
    from fairbench.train.runner import prepare

    if not spec.methods:
        raise FairbenchError("the grid is empty: --methods (or `methods` in the sweep file) names no method")
    if not spec.seeds:
        raise FairbenchError("the grid is empty: --seeds names no seed")
    bad_seed = next(
        (s for s in spec.seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED), None
    )
    if bad_seed is not None:
        raise FairbenchError(f"seed {bad_seed!r:.40} is not a whole number in [0, {MAX_SEED}]")
    _, given = parse_run(spec.run_args)
    for name, instead in OWN_OPTIONS.items():
        if given.get(name):
            raise FairbenchError(f"fairbench sweep sets --{name.replace('_', '-')} itself; use {instead}")
    fields = {m: {f.name for f in dataclasses.fields(METHODS.get(m).Params)} for m in spec.methods}
    option_grid = _check_axes(spec, fields, run_options)
    size = grid_size(spec, fields, option_grid)
    if echo is not None:
        echo(f"the grid has {size} run(s): {_size_text(spec, fields, option_grid)}")
    if size > max_runs:
        raise FairbenchError(
            f"the grid has {size} runs, more than --max-runs {max_runs}; check --seeds, "
            f"--param-grid and --grid, or pass --max-runs {size} to run them all"
        )
    option_points = list(itertools.product(*option_grid.values()))
    shapes = []  # (coords without the seed, argv without the seed, resolved config)
    for method, options in itertools.product(spec.methods, option_points):
        names = [n for n in spec.param_grid if n in fields[method]]
        for values in itertools.product(*(spec.param_grid[n] for n in names)):
            argv = list(spec.run_args)
            for name, value in zip(option_grid, options):
                argv += [run_options[name].flag, value]
            argv += ["--method", method]
            params = []
            for name, value in zip(names, values):
                params += ["--param", f"{name}={value}"]
            cfg = prepare(parse_run([*argv, "--seed", str(spec.seeds[0]), *params])[0])[0]
            shapes.append(((*zip(option_grid, options), *zip(names, values)), method, argv, params, cfg))
    runs: list[PlannedRun] = []
    seen: dict[str, tuple] = {}
    for seed in spec.seeds:
        for rest, method, argv, params, cfg in shapes:
            coords = (("method", method), ("seed", str(seed)), *rest)
            run_id = dataclasses.replace(cfg, seed=seed, run_id=None).default_run_id()
            if run_id in seen:
                raise FairbenchError(
                    f"the grid gives run {run_id} twice ({_coords(seen[run_id])} "
                    f"and {_coords(coords)}); drop one of the values"
                )
            seen[run_id] = coords
            runs.append(
                PlannedRun(
                    run_id,
                    (*argv, "--seed", str(seed), *params),
                    coords,
                    cfg.epochs,
                    cfg.out,
                    cfg.device,
                    eval_settings(cfg),
                )
            )
    return runs


def grid_size(spec: GridSpec, fields: dict[str, set[str]], option_grid: dict[str, list[str]]) -> int:
    """How many runs the grid has, counted without building them."""
    per_method = sum(
        math.prod(len(spec.param_grid[n]) for n in spec.param_grid if n in fields[m]) for m in spec.methods
    )
    return len(spec.seeds) * per_method * math.prod(len(v) for v in option_grid.values())


def _size_text(spec: GridSpec, fields: dict[str, set[str]], option_grid: dict[str, list[str]]) -> str:
    parts = [f"{len(spec.methods)} method(s)", f"{len(spec.seeds)} seed(s)"]
    parts += [f"{len(v)} {n}" for n, v in spec.param_grid.items()]
    parts += [f"{len(v)} {n.replace('_', '-')}" for n, v in option_grid.items()]
    return " x ".join(parts)


def _check_axes(spec: GridSpec, fields: dict[str, set[str]], run_options: dict[str, RunOption]) -> dict[str, list[str]]:
    """Check both grids; returns the option grid by option name (``train-per-class`` ->
    ``train_per_class``)."""
    for name, values in spec.param_grid.items():
        if not values:
            raise FairbenchError(f"the grid is empty: --param-grid {name}= gives no value")
        if not any(name in f for f in fields.values()):
            known = "; ".join(f"{m}: {', '.join(sorted(f)) or 'none'}" for m, f in fields.items())
            raise FairbenchError(f"unknown parameter '{name}' in --param-grid: no method of the grid has it ({known})")
    for name, values in spec.option_grid.items():
        if not values:
            raise FairbenchError(f"the grid is empty: --grid {name}= gives no value")
        key = name.replace("-", "_")
        if key not in run_options or key in OWN_OPTIONS or key in ("param", "out"):
            hint = {
                "method": " (use --methods)",
                "seed": " (use --seeds)",
                "param": " (use --param-grid)",
                "out": " (a sweep writes to one results folder)",
            }.get(key, _did_you_mean(key, run_options))
            raise FairbenchError(f"--grid {name}: not a `fairbench run` option that can vary{hint}")
        if run_options[key].is_flag:
            raise FairbenchError(f"--grid {name}: a true/false flag cannot vary in the grid")
    return {k.replace("-", "_"): v for k, v in spec.option_grid.items()}


def _did_you_mean(name: str, choices: Any) -> str:
    """The registry's hint (one rule for every unknown name), spelled as options are: with hyphens."""
    return did_you_mean(name.replace("_", "-"), [str(c).replace("_", "-") for c in choices])


def _coords(coords: tuple) -> str:
    return " ".join(f"{k}={v}" for k, v in coords)


# ------------------------------------------------------------------------------ sweep files


def load_sweep_file(path: Path, run_options: dict[str, RunOption]) -> GridSpec:
    """A sweep file (TOML; YAML when it ends in .yaml/.yml) as a GridSpec; unknown keys are errors."""
    data = _read_sweep_file(Path(path))
    where = str(path)
    for key in data:
        if key not in FILE_KEYS:
            raise FairbenchError(
                f"{where}: unknown key '{key}'{_did_you_mean(key, FILE_KEYS)}; a sweep file has {', '.join(FILE_KEYS)}"
            )
    spec = GridSpec()
    spec.methods = _str_list(data.get("methods", []), f"{where}: methods")
    if "seeds" in data:
        seeds = data["seeds"]
        spec.seeds = parse_seeds(seeds) if isinstance(seeds, str) else [_seed(s, where) for s in _list(seeds)]
    for table in ("run", "params", "param-grid", "grid"):
        if not isinstance(data.get(table, {}), dict):
            raise FairbenchError(f"{where}: [{table}] must be a table of name = value")
    for name, value in data.get("run", {}).items():
        spec.run_args += _run_option_args(name, value, run_options, where)
    for name, value in data.get("params", {}).items():
        spec.run_args += ["--param", f"{name}={_scalar(value, f'{where}: params.{name}')}"]
    for name, values in data.get("param-grid", {}).items():
        spec.param_grid[name] = [_scalar(v, f"{where}: param-grid.{name}") for v in _list(values)]
    for name, values in data.get("grid", {}).items():
        spec.option_grid[name] = [_scalar(v, f"{where}: grid.{name}") for v in _list(values)]
    return spec


def _read_sweep_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise FairbenchError(f"cannot read sweep file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise FairbenchError(
                f"{path}: reading a YAML sweep file needs PyYAML (pip install pyyaml); or write it in TOML"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise FairbenchError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    else:
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise FairbenchError(f"{path}: not valid TOML ({exc})") from None
    if not isinstance(data, dict):
        raise FairbenchError(f"{path}: a sweep file is a table of keys ({', '.join(FILE_KEYS)})")
    return data


def _run_option_args(name: str, value: Any, run_options: dict[str, RunOption], where: str) -> list[str]:
    key = name.replace("-", "_")
    if key not in run_options:
        raise FairbenchError(
            f"{where}: unknown key 'run.{name}'{_did_you_mean(key, run_options)}; [run] takes `fairbench run` options"
        )
    option = run_options[key]
    if key == "param":
        raise FairbenchError(f"{where}: give method parameters in [params], not run.param")
    if option.is_flag:
        if not isinstance(value, bool):
            raise FairbenchError(f"{where}: run.{name} is true or false, got {value!r:.40}")
        if not value and option.negative is None:
            raise FairbenchError(f"{where}: run.{name} is a flag: it can only be true")
        return [option.flag if value else str(option.negative)]
    if key == "attacks" and isinstance(value, list):
        value = ",".join(_scalar(v, f"{where}: run.attacks") for v in value)
    return [option.flag, _scalar(value, f"{where}: run.{name}")]


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise FairbenchError(f"{where} must be a number, a string or true/false, got {type(value).__name__}")


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _str_list(value: Any, where: str) -> list[str]:
    return split_list(value) if isinstance(value, str) else [_scalar(v, where) for v in _list(value)]


def _seed(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FairbenchError(f"{where}: seeds must be whole numbers >= 0, got {value!r:.40}")
    return value
