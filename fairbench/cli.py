"""The command line: ``fairbench list | run | resume | eval | report | sweep`` (typer).

One vocabulary: an option means the same thing under the same name in every command (``--eps``,
``--eval-per-class``, ``--subset``, ``--eval-batch-size``, ``--attacks``, ``--no-download``);
``--eps`` and ``--step-size`` take a number or a fraction (``8/255``); every table a person reads
gives error in % (lower is better), as the report does.

Exit codes: 0 done; 2 bad input or an expected failure (one ``error:`` line on stderr);
75 (EX_TEMPFAIL) stopped by SIGTERM/SIGINT after saving a checkpoint, so rerun with --resume;
130 interrupted by a second Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import shutil
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, List, Optional, TypeGuard

import typer

from fairbench.config import NOT_RUN_OPTIONS, PRESET_DESCRIPTIONS, PRESETS, RunConfig
from fairbench.errors import FairbenchError
from fairbench.registry import unknown_name
from fairbench.runs.memory import keep_freed_memory
from fairbench.runs.signals import Preempted, StopSignals
from fairbench.specs.threats import parse_subsets, subset_aliases, subset_flag

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train and evaluate robust-fairness methods; per-class leaderboards.",
)


def _print_version(value: bool) -> None:
    if value:
        from fairbench import __version__

        typer.echo(f"fairbench {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print fairbench's version and exit"
    ),
) -> None:
    """Train and evaluate robust-fairness methods; per-class leaderboards (error in %, lower is better)."""


def parse_number(text: str) -> float:
    """A number, or a fraction of two numbers (``8/255``, as papers write eps), as the float it
    divides to (``8/255`` is recorded as 0.03137254901960784, exactly ``8 / 255`` in Python)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    raw = str(text).strip()
    num, sep, den = raw.partition("/")
    try:
        value = float(num) / float(den) if sep else float(raw)
    except (ValueError, ZeroDivisionError):
        raise typer.BadParameter(f"{raw[:40]!r} is not a number or a fraction such as 8/255") from None
    if not math.isfinite(value):
        raise typer.BadParameter(f"{raw[:40]!r} is not a finite number")
    return value


def parse_param_options(options: list[str]) -> dict[str, str]:
    """``--param name=value`` options as a dict; a malformed one is a clear error."""
    params: dict[str, str] = {}
    for item in options:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise FairbenchError(f"--param expects name=value, got {item[:60]!r}")
        if name in params:
            raise FairbenchError(f"--param {name} is given twice")
        params[name] = value.strip()
    return params


def parse_attacks(text: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in text.split(",") if a.strip())


@app.command("list")
def list_cmd(
    as_json: bool = typer.Option(
        False,
        "--json",
        help="print one JSON document (for scripts): every entry's whole summary and its parameters' exact defaults",
    ),
) -> None:
    """List the registered methods, architectures, data sets, threats and presets with their parameters."""
    from fairbench.methods import METHODS
    from fairbench.models import MODELS
    from fairbench.specs.datasets import DATASETS
    from fairbench.specs.threats import THREATS

    registries = (("methods", METHODS), ("architectures", MODELS), ("datasets", DATASETS), ("threats", THREATS))
    if as_json:
        doc: dict[str, Any] = {
            title: [{"name": e.name, "summary": e.summary, "params": _jsonable(e.params)} for e in registry.entries()]
            for title, registry in registries
        }
        for entry in doc["methods"]:
            entry["space"] = _space_of(entry["name"])
        doc["presets"] = [
            {"name": name, "description": PRESET_DESCRIPTIONS.get(name, ""), "settings": _jsonable(settings)}
            for name, settings in PRESETS.items()
        ]
        typer.echo(json.dumps(doc, indent=2, allow_nan=False))
        return
    width = max(len(name) for name in [*PRESETS, *(e.name for _, r in registries for e in r.entries())])
    indent = " " * (width + 4)
    columns = max(60, shutil.get_terminal_size((100, 24)).columns)

    def show(name: str, text: str, params: dict[str, Any]) -> None:
        typer.echo(
            textwrap.fill(f"  {name:<{width}}  {text}", columns, subsequent_indent=indent, break_on_hyphens=False)
        )
        if params:
            typer.echo(
                textwrap.fill(
                    ", ".join(f"{k}={_show_value(v)}" for k, v in params.items()),
                    columns,
                    initial_indent=indent,
                    subsequent_indent=indent,
                    break_on_hyphens=False,
                )
            )

    for title, registry in registries:
        typer.echo(f"{title}:")
        for entry in registry.entries():
            show(entry.name, entry.summary, entry.params)
            space = _space_of(entry.name) if registry is METHODS else None
            if space:
                typer.echo(
                    textwrap.fill(
                        "tune: " + ", ".join(f"{k} ~ {d}" for k, d in space.items()),
                        columns,
                        initial_indent=indent,
                        subsequent_indent=indent + "  ",
                        break_on_hyphens=False,
                    )
                )
    typer.echo("presets (--preset NAME; options given beside it win):")
    for name, settings in PRESETS.items():
        show(name, PRESET_DESCRIPTIONS.get(name, ""), settings)


def _space_of(method: str) -> dict[str, str] | None:
    """The search space `fairbench tune` draws ``method``'s trials from, described; None without one."""
    from fairbench.methods import METHODS
    from fairbench.methods.space import describe_space, method_space

    space = method_space(METHODS.get(method))
    return None if space is None else describe_space(space)


def _show_value(v: Any) -> str:
    """A default as `fairbench list` prints it: floats to 4 significant digits (0.6364, 1e-05)."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_show_value(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _jsonable(v: Any) -> Any:
    """``v`` as plain JSON: tuples as lists, a non-finite float or any other object as its text."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


@app.command("run")
def run_cmd(ctx: typer.Context, **options: Any) -> None:
    """Train one method on one architecture and data set, then evaluate it per class."""
    cfg = config_from_run_options(ctx.params, given=_given_options(ctx))
    with StopSignals():  # a signal while torch loads, before the runner's own handler: exit 75 too
        from fairbench.train.runner import run

        run(
            cfg,
            resume=options["resume"],
            progress=options["progress"],
            echo=typer.echo,
            stop_after_epoch=options["stop_after_epoch"],
        )


def _process_options() -> dict[str, tuple[Any, Any]]:
    """`fairbench run`'s options that are no RunConfig field: how this process carries the run out."""
    return {
        "resume": (bool, typer.Option(False, help="continue the run from its last checkpoint")),
        "stop_after_epoch": (
            Optional[int],
            typer.Option(
                None, help="checkpoint and stop after this epoch, without evaluating (continue with --resume)"
            ),
        ),
        "progress": (bool, typer.Option(True, help="show a progress bar")),
    }


def run_signature(config: type = RunConfig) -> inspect.Signature:
    """`fairbench run`'s parameters, as typer reads them from ``run_cmd.__signature__``: one option per
    field of ``config`` (its type, default and `fairbench.config.option` metadata; `NOT_RUN_OPTIONS`
    excepted), then `_process_options`."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    hints = typing.get_type_hints(config)
    for f in _option_fields(config):
        annotation, info = _field_option(f, hints[f.name])
        params.append(inspect.Parameter(option_name(f), keyword, annotation=annotation, default=info))
    for name, (annotation, info) in {**_subset_alias_options(), **_process_options()}.items():
        params.append(inspect.Parameter(name, keyword, annotation=annotation, default=info))
    return inspect.Signature(params)


def _subset_alias_options() -> dict[str, tuple[Any, Any]]:
    """A threat's older subset option (``--aa-per-class K``, `fairbench.specs.threats.subset_aliases`): hidden,
    the same as ``--subset THREAT=K``."""
    return {
        key: (Optional[int], typer.Option(None, subset_flag(key), hidden=True, help=f"the same as --subset {threat}=K"))
        for key, threat in subset_aliases().items()
    }


def with_subset_aliases(subsets: dict[str, int], o: dict[str, Any], given: set[str]) -> dict[str, int]:
    """``subsets`` with the subset aliases given in ``o`` (``aa_per_class``: ``--aa-per-class K``); an
    alias replaces a preset's subset of its threat, and is an error beside ``--subset`` of that threat
    (``given``: the threats --subset named)."""
    out = dict(subsets)
    for key, threat in subset_aliases().items():
        if o.get(key) is not None:
            if threat in given:
                raise FairbenchError(f"{subset_flag(key)} is --subset {threat}=K: give one of them")
            out[threat] = o[key]
    return out


def _option_fields(config: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config) if f.name not in NOT_RUN_OPTIONS]


def option_name(f: dataclasses.Field) -> str:
    """The `fairbench run` option of field ``f`` as ``ctx.params`` (and a sweep's ``--grid``) names it."""
    return (f.metadata.get("flag") or f.name).lstrip("-").replace("-", "_")


def option_help(f: dataclasses.Field) -> str:
    """Field ``f``'s help, from its metadata (`fairbench.config.option`)."""
    text = f.metadata.get("help") or ""
    return text() if callable(text) else text


def _field_option(f: dataclasses.Field, hint: Any) -> tuple[Any, Any]:
    """(annotation, typer.Option) of field ``f``: its type without None, its default (so that
    ``--help`` shows it; a preset's setting replaces a default, `config_from_run_options`)."""
    meta = f.metadata
    flag = "--" + option_name(f).replace("_", "-")
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] if isinstance(hint, types.UnionType) else [hint]
    base = (typing.get_origin(kinds[0]) or kinds[0]) if len(kinds) == 1 else None
    default = meta.get("cli_default") if f.default is dataclasses.MISSING else f.default
    info: dict[str, Any] = {"help": option_help(f), "hidden": bool(meta.get("hidden"))}
    if meta.get("shown") is not None:
        info["show_default"] = meta["shown"]
    if meta.get("syntax") == "name=value" and base is dict:
        return List[str], typer.Option([], flag, metavar="NAME=VALUE", **info)
    if meta.get("syntax") == "fraction" and base is float:
        return Optional[float], typer.Option(default, flag, parser=parse_number, metavar="FLOAT|A/B", **info)
    if meta.get("parse") is not None:
        return Optional[str], typer.Option(default, flag, **info)
    if base is tuple and typing.get_args(kinds[0]) == (str, Ellipsis):
        return Optional[str], typer.Option(",".join(default) if default else None, flag, **info)
    if base is bool:
        return Optional[bool], typer.Option(default, f"{flag}/--no-{flag[2:]}", **info)
    if base in (int, float, str) and not meta.get("syntax"):
        return Optional[base], typer.Option(default, flag, **info)
    raise TypeError(
        f"RunConfig.{f.name}: no `fairbench run` option reads {hint} (see fairbench.config.option), "
        f"or name the field in NOT_RUN_OPTIONS"
    )


def _read_option(f: dataclasses.Field, hint: Any, value: Any) -> Any:
    """Field ``f`` (of type ``hint``)'s value from its option's parsed value (None: no value)."""
    if value is None:
        return None
    if f.metadata.get("syntax") == "name=value":
        return (f.metadata.get("parse") or parse_param_options)(value)
    if f.metadata.get("parse") is not None:
        return f.metadata["parse"](value)
    if isinstance(value, str) and tuple in (typing.get_origin(t) for t in (hint, *typing.get_args(hint))):
        return parse_attacks(value)
    return value


run_cmd.__signature__ = run_signature()  # type: ignore[attr-defined]


def _given_options(ctx: Any) -> dict[str, bool]:
    """Which of a command's options were given on its command line (not left at their defaults)."""
    return {name: ctx.get_parameter_source(name).name == "COMMANDLINE" for name in ctx.params}


def config_from_run_options(o: dict[str, Any], given: dict[str, bool]) -> RunConfig:
    """The RunConfig that `fairbench run`'s parsed options (``ctx.params``) describe: each option's
    value, where ``given`` on the command line; else the --preset's setting; else the option's
    default (the field's). A preset's method parameters apply to its method, under --param's."""
    preset = _check_preset(o["preset"]) if o.get("preset") else None
    fields = {option_name(f): f for f in _option_fields(RunConfig)}
    hints = typing.get_type_hints(RunConfig)
    values = {f.name: _read_option(f, hints[f.name], o[name]) for name, f in fields.items()}
    values = {k: v for k, v in values.items() if v is not None}  # None: the field's default
    settings = dict(PRESETS[preset]) if preset else {}
    preset_params = settings.pop("params", {})
    options_of = {f.name: name for name, f in fields.items()}
    values.update({k: v for k, v in settings.items() if not given.get(options_of.get(k, k))})
    if preset_params and values.get("method") == settings.get("method"):
        values["params"] = {**preset_params, **values.get("params", {})}
    named = set(values.get("subsets", {})) if given.get(options_of["subsets"]) else set()
    values["subsets"] = with_subset_aliases(values.get("subsets", {}), o, named)
    return RunConfig(**values)


@app.command("resume")
def resume_cmd(
    run_dir: Path = typer.Argument(..., help="the run folder, RESULTS/runs/<run-id>"),
    device: Optional[str] = typer.Option(None, help="override the device it ran on"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Continue a stopped run from its last checkpoint, with the config in its folder."""
    import dataclasses

    with StopSignals():
        from fairbench.train.runner import config_from_run_dir, run

        cfg = config_from_run_dir(run_dir)
        if device is not None:
            cfg = dataclasses.replace(cfg, device=device)
        run(cfg, resume=True, progress=progress, echo=typer.echo)


@app.command("report")
def report_cmd(
    results: str = typer.Option("results", help="results folder: reads every metrics.json under it"),
    baseline: Optional[str] = typer.Option(
        None, help="method (or row label) every other row is compared with [default: pgd-at, where a group has it]"
    ),
    rank_by: Optional[str] = typer.Option(
        None,
        "--rank-by",
        help="THREAT[:worst|avg] that ranks each group, "
        "e.g. autoattack:worst [default: worst-class error under the "
        "strongest attack run on every test image, pgd20 where AutoAttack "
        "runs on a subset]",
    ),
) -> None:
    """Leaderboard tables, charts and index.html from the runs' metrics.json and outcomes files."""
    from pathlib import Path

    from fairbench.methods import label_params
    from fairbench.report.command import build_report, write_report

    board = build_report(Path(results), baseline, rank_by, label_params)
    if board.skipped:
        typer.echo(f"warning: skipped {len(board.skipped)} metrics.json file(s):", err=True)
        for path, why in board.skipped:
            typer.echo(f"  {path}: {why}", err=True)
    for path, why in board.warnings:
        typer.echo(f"warning: {path}: {why}", err=True)
    board, markdown, written = write_report(Path(results), board)
    typer.echo(markdown, nl=False)
    figures = sum(1 for p in written if p.parent.name == "figures")
    typer.echo(
        f"wrote {results}/leaderboard.{{md,csv,tex}}, {results}/leaderboard_long.csv, {results}/index.html "
        f"and {figures} figures in {results}/figures/",
        err=True,
    )


# The launcher's options, declared once for every command that starts runs (sweep, tune): a run of a
# sweep and a trial of a study go out the same way.
_LAUNCHER_OPTIONS = {
    "launcher": (str, typer.Option("local", help="local (this machine) or slurm (a job array)")),
    "workers": (
        Optional[int],
        typer.Option(None, help="local: runs at once (default: one per GPU, else one per core)"),
    ),
    "limit": (
        Optional[int],
        typer.Option(
            None,
            help="start at most this many of the runs left to do, in the grid's order; the others "
            "wait for the same command again (e.g. what fits in a time-limited session)",
        ),
    ),
    "partition": (Optional[str], typer.Option(None, help="slurm: partition")),
    "time": (Optional[str], typer.Option(None, help="slurm: each run's time limit (minutes or [D-]HH:MM:SS)")),
    "gpus_per_run": (
        Optional[int],
        typer.Option(None, help="slurm: GPUs per run, 0 or 1 (default 1; 0 for --device cpu)"),
    ),
    "cpus_per_run": (Optional[int], typer.Option(None, help="slurm: CPU cores per run")),
    "mem": (Optional[str], typer.Option(None, help="slurm: memory per run, e.g. 32G")),
    "wait": (bool, typer.Option(False, help="slurm: follow the job array until it ends, then summarize")),
}


def _with_launcher_options(command: Any) -> Any:
    """Give ``command`` the launcher's options (`_LAUNCHER_OPTIONS`) after its own, and call it
    with them gathered into one ``launch`` argument, a `fairbench.sweep.launch.LaunchOptions`
    whose runs call `main`."""
    signature = inspect.signature(command)
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
        for name, (kind, option) in _LAUNCHER_OPTIONS.items()
    ]
    own = [p for p in signature.parameters.values() if p.name != "launch"]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from fairbench.sweep.launch import LaunchOptions

        values = {name: kwargs.pop(name) for name in _LAUNCHER_OPTIONS}
        return command(*args, launch=LaunchOptions(**values, entry=main), **kwargs)

    wrapper.__name__, wrapper.__doc__ = command.__name__, command.__doc__
    wrapper.__signature__ = signature.replace(parameters=own + extra)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
    return wrapper


@app.command("sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_with_launcher_options
def sweep_cmd(
    ctx: typer.Context,
    methods: Optional[str] = typer.Option(None, help="comma list of methods, e.g. pgd-at,trades"),
    seeds: Optional[str] = typer.Option(None, help="seeds: 0-2, or 0,1,5 (default 0)"),
    param_grid: List[str] = typer.Option(
        [],
        help="method parameter with several values, name=v1,v2 (repeatable); multiplies the runs "
        "of the methods that have it",
    ),
    grid: List[str] = typer.Option(
        [], help="`fairbench run` option with several values, name=v1,v2 (repeatable), e.g. arch=small-cnn,testbed-cnn"
    ),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="sweep file (TOML, or YAML)"),
    dry_run: bool = typer.Option(False, help="print the grid and stop"),
    retry_failed: bool = typer.Option(False, help="run again the runs that failed in an earlier sweep"),
    reevaluate: bool = typer.Option(
        False,
        help="evaluate again, from their checkpoints, the finished runs "
        "evaluated with other --attacks, --eval-per-class or --subset",
    ),
    max_runs: int = typer.Option(
        1000, help="the most runs the grid may have (a guard against a typo in --seeds or a grid)"
    ),
    report: bool = typer.Option(False, help="run `fairbench report` on the results folder at the end"),
    status: Optional[Path] = typer.Option(None, help="show where the sweep in this results folder stands"),
    launch: Any = None,
) -> None:
    """Run a grid of runs (methods x seeds x parameters); any `fairbench run` option is passed on.

    Finished runs are skipped and stopped ones resumed, so running the same sweep again continues it.
    """
    from fairbench.sweep import grid as sweep_grid
    from fairbench.sweep import launch as sweep

    if status is not None:
        sweep.show_status(status, typer.echo)
        return
    opts = dataclasses.replace(launch, dry_run=dry_run, retry_failed=retry_failed, reevaluate=reevaluate)
    minutes = opts.check()
    options = run_options()
    spec = sweep_grid.load_sweep_file(file, options) if file is not None else sweep_grid.GridSpec()
    spec.run_args += list(ctx.args)
    if methods is not None:
        spec.methods = sweep_grid.split_list(methods)
    if seeds is not None:
        spec.seeds = sweep_grid.parse_seeds(seeds)
    spec.param_grid.update(dict(sweep_grid.parse_axis(item, "--param-grid") for item in param_grid))
    spec.option_grid.update(dict(sweep_grid.parse_axis(item, "--grid") for item in grid))
    runs = sweep_grid.expand(spec, parse_run_args, options, max_runs=max_runs, echo=typer.echo)
    sweep.launch(runs, opts, minutes, typer.echo)
    if dry_run:
        return
    if report and not (opts.launcher == "slurm" and not opts.wait):
        report_cmd(results=runs[0].out, baseline=None, rank_by=None)
    elif report:
        typer.echo(
            f"--report: the runs are queued; run `fairbench report --results {runs[0].out}` once they "
            f"are done (or pass --wait)",
            err=True,
        )


@app.command("tune", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_with_launcher_options
def tune_cmd(
    ctx: typer.Context,
    methods: str = typer.Option(..., help="comma list of methods to tune, e.g. pgd-at,fairat"),
    trials: int = typer.Option(
        ...,
        help="trials per method (the same N for every method); trial 0 "
        "is the method's defaults, the rest are random draws",
    ),
    study: str = typer.Option("default", help="the study's name (a new name starts a new study)"),
    tune_seed: int = typer.Option(0, help="seed of the draws"),
    dry_run: bool = typer.Option(False, help="print the draws and the trials, start nothing, record nothing"),
    retry_failed: bool = typer.Option(False, help="run again the trials that failed before"),
    confirm: bool = typer.Option(
        False,
        help="run the tuned rows: each method's selected trial at --seeds, "
        "scored on the test set in --confirm-out (seed 0: the selected trial itself)",
    ),
    seeds: str = typer.Option("0-2", help="--confirm: the tuned rows' seeds"),
    confirm_out: Optional[str] = typer.Option(
        None, help="--confirm: results folder of the tuned rows (default: the folder above --out, e.g. results)"
    ),
    init_from_tuned: Optional[str] = typer.Option(
        None,
        metavar="METHOD",
        help="fine-tune METHOD's tuned row of this study at the same seed (faal: pgd-at): the trials and "
        "seed 0 start from METHOD's selected trial, --confirm's seed s from its tuned run of seed s",
    ),
    control: bool = typer.Option(
        False,
        help="--confirm with --init-from-tuned: also run each tuned row's control, the same fine-tuning "
        "(source, lr, weight decay, epochs) with the source method's loss",
    ),
    launch: Any = None,
) -> None:
    """Tune methods with the same budget: N seeded draws each, scored on validation only.

    Any `fairbench run` option is passed on to every trial (e.g. --preset fmnist-standard); the
    trials and the study land in --out (default results/tuning), with trials.csv, one row per
    finished trial and the selected one of each finished study marked. Running the same command
    again continues the study; changing its space, --trials or run options is refused.
    """
    from fairbench.sweep import grid as sweep_grid
    from fairbench.sweep import launch as sweep
    from fairbench.tune import study as tune

    opts = dataclasses.replace(launch, dry_run=dry_run, retry_failed=retry_failed)
    minutes = opts.check()
    run_args = list(ctx.args)
    if "--out" not in run_args and not any(a.startswith("--out=") for a in run_args):
        run_args += ["--out", "results/tuning"]
    out = parse_run_args(run_args)[0].out
    spec = tune.StudySpec(
        name=study,
        trials=trials,
        seed=tune_seed,
        methods=tuple(sweep_grid.split_list(methods)),
        run_args=tuple(run_args),
        out=out,
        init_from_tuned=init_from_tuned,
    )
    if control and not confirm:
        raise FairbenchError("--control belongs to --confirm (the control is a tuned row's, not a trial)")
    if confirm:
        where = confirm_out or str(Path(out).resolve().parent)
        runs, seed0 = tune.confirm_runs(
            spec, parse_run_args, sweep_grid.parse_seeds(seeds), where, typer.echo, control=control
        )
        if not dry_run:
            for trial, cfg in seed0:
                tune.prepare_seed0(spec, trial, cfg, typer.echo)
        sweep.launch(runs, opts, minutes, typer.echo)
        return
    runs, drawn = tune.plan_trials(spec, parse_run_args, persist=not dry_run)
    typer.echo(tune.describe_trials(drawn))
    sweep.launch(runs, opts, minutes, typer.echo)
    if dry_run:
        return
    path, rows = tune.write_trials_csv(Path(out), study)
    chosen = [f"{r['method']}: trial {r['trial']}" for r in rows if r["selected"]]
    diverged = sum(r["criterion"] is None for r in rows)
    typer.echo(
        f"wrote {path} ({len(rows)} finished trial(s)"
        + (f", {diverged} diverged (no score)" if diverged else "")
        + (f"; selected {', '.join(chosen)})" if chosen else ")")
    )


def _run_click_command() -> Any:
    return typer.main.get_command(app).get_command(None, "run")  # type: ignore[attr-defined]


def run_options() -> dict[str, Any]:
    """`fairbench run`'s options by name, for sweeps: their flag and, for a true/false one, its --no- form."""
    from fairbench.sweep.grid import RunOption

    table = {}
    for p in _run_click_command().params:
        if p.opts and p.opts[0].startswith("--"):
            table[p.name] = RunOption(
                p.opts[0], p.secondary_opts[0] if p.secondary_opts else None, bool(getattr(p, "is_flag", False))
            )
    return table


def parse_run_args(argv: list[str]) -> tuple[RunConfig, dict[str, bool]]:
    """Parse `fairbench run` arguments with run's own parser: the RunConfig they describe, and which
    options were given explicitly."""
    command = _run_click_command()
    ctx = command.make_context("fairbench run", list(argv))
    given = _given_options(ctx)
    return config_from_run_options(ctx.params, given), given


@app.command("eval")
def eval_cmd(
    checkpoint: Optional[str] = typer.Option(None, help="state_dict or checkpoint file (any origin)"),
    arch: Optional[str] = typer.Option(None, help="architecture of --checkpoint (see `fairbench list`)"),
    model: Optional[str] = typer.Option(
        None,
        metavar="MODULE:FACTORY",
        help="any importable model instead of --arch: package.module:factory "
        "returns it for inputs in [0, 1] (called with num_classes= and in_channels= when it takes them); "
        "with --checkpoint, those weights are loaded into it",
    ),
    dataset: str = typer.Option("cifar10", help="cifar10, cifar100 or fashion-mnist"),
    robustbench: Optional[str] = typer.Option(
        None, help="a RobustBench zoo model name instead of --checkpoint (needs the robustbench extra)"
    ),
    threat_model: str = typer.Option("Linf", help="RobustBench threat model (fairbench evaluates Linf)"),
    model_dir: Optional[str] = typer.Option(
        None, help="RobustBench model folder (default ~/.cache/fairbench/robustbench)"
    ),
    attacks: str = typer.Option("clean,pgd20,autoattack", help="comma list of clean,pgd20,autoattack"),
    eval_per_class: Optional[int] = typer.Option(None, help="evaluate on the first K test images per class"),
    n_per_class: Optional[int] = typer.Option(None, hidden=True),  # --eval-per-class's old name
    subset: List[str] = typer.Option(
        [],
        metavar="NAME=K",
        help="run threat NAME on the first K evaluated test images per class only (repeatable), e.g. autoattack=50",
    ),
    aa_per_class: Optional[int] = typer.Option(None, hidden=True),  # --subset autoattack=K's old form
    eps: Optional[float] = typer.Option(
        None,
        parser=parse_number,
        metavar="FLOAT|A/B",
        help="L-inf radius, a number or a fraction such as 8/255 (default: 8/255 CIFAR, 0.1 Fashion-MNIST)",
    ),
    seed: int = typer.Option(0, help="seed of the attacks' random starts"),
    eval_batch_size: Optional[int] = typer.Option(None, help="evaluation batch size (default 500 CUDA, 128 CPU)"),
    batch_size: Optional[int] = typer.Option(None, hidden=True),  # --eval-batch-size's old name
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    data_dir: Optional[str] = typer.Option(None, help="data root (else $FAIRBENCH_DATA, else ~/.cache)"),
    download: bool = typer.Option(True, help="download a missing data set (--no-download: offline)"),
    out: str = typer.Option("results", help="results folder"),
    run_id: Optional[str] = typer.Option(None, help="run folder name (default: model, data set, sha256)"),
) -> None:
    """Evaluate any state_dict, importable model or RobustBench model per class; writes metrics.json."""
    from fairbench.eval.external import EvalOptions, run_eval

    subsets = parse_subsets(subset)
    subsets = with_subset_aliases(subsets, {"aa_per_class": aa_per_class}, set(subsets))

    opts = EvalOptions(
        dataset=dataset,
        checkpoint=checkpoint,
        arch=arch,
        model=model,
        robustbench=robustbench,
        threat_model=threat_model,
        model_dir=model_dir,
        attacks=parse_attacks(attacks),
        n_per_class=_one_of(eval_per_class, n_per_class, "--eval-per-class", "--n-per-class"),
        subsets=subsets,
        eps=eps,
        seed=seed,
        batch_size=_one_of(eval_batch_size, batch_size, "--eval-batch-size", "--batch-size"),
        device=device,
        data_dir=data_dir,
        download=download,
        out=out,
        run_id=run_id,
    )
    run_eval(opts, echo=typer.echo)


def _one_of(value: Any, old_value: Any, name: str, old_name: str) -> Any:
    """An option given under its name or under its old, hidden one (kept so old commands still run)."""
    if value is not None and old_value is not None:
        raise FairbenchError(f"{old_name} is the old name of {name}: give {name} only")
    return value if value is not None else old_value


def _check_preset(name: str) -> str:
    if name not in PRESETS:
        raise FairbenchError(unknown_name("preset", name, PRESETS))
    return name


def main(argv: list[str] | None = None) -> None:
    """Console entry point: expected failures print one line and exit with status 2."""
    keep_freed_memory()  # before the first tensor: glibc keeps what a training step frees (runs.memory)
    try:
        # standalone_mode=False: typer turns Ctrl-C into a *returned* 130 rather than an exception
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code != 0:
            if code == 130:
                typer.echo("interrupted", err=True)
            sys.exit(code)
    except FairbenchError as exc:  # one line, even when the message echoes a value with newlines
        typer.echo("error: " + " ".join(line.strip() for line in str(exc).splitlines()), err=True)
        sys.exit(2)
    except Preempted as exc:
        typer.echo(f"preempted: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if _is_usage_error(exc):  # a bad option or value: one line too, with click's exit code
            typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":  # typer's wrapper around an EOFError
            typer.echo(f"error: aborted: {exc.__cause__ or 'end of input'}", err=True)
            sys.exit(1)
        raise


def _is_usage_error(exc: Exception) -> TypeGuard[Any]:
    """click's exceptions, whether from click itself or the copy that newer typer versions vendor
    (told apart by name, so the type checker learns only that it has click's attributes: Any)."""
    names = {t.__name__ for t in type(exc).__mro__}
    return bool(names & {"ClickException", "TyperException"}) and hasattr(exc, "format_message")
