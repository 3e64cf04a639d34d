"""The command line: ``fairbench list | run | resume | eval | report`` (typer).

Exit codes: 0 done; 2 bad input or an expected failure (one ``error:`` line on stderr);
75 (EX_TEMPFAIL) stopped by SIGTERM/SIGINT after saving a checkpoint, so rerun with --resume;
130 interrupted by a second Ctrl-C.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from fairbench.config import PRESETS, RunConfig
from fairbench.errors import FairbenchError
from fairbench.signals import Preempted, StopSignals

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train and evaluate robust-fairness methods; per-class leaderboards.")


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
def list_cmd() -> None:
    """List the registered methods, architectures, data sets and threats with their parameters."""
    from fairbench.registry import DATASETS, METHODS, MODELS, THREATS

    registries = (("methods", METHODS), ("architectures", MODELS), ("datasets", DATASETS),
                  ("threats", THREATS))
    width = max(len(e.name) for _, r in registries for e in r.entries())
    for title, registry in registries:
        typer.echo(f"{title}:")
        for entry in registry.entries():
            typer.echo(f"  {entry.name:<{width}}  {entry.summary}")
            if entry.params:
                typer.echo(" " * (width + 4) + ", ".join(f"{k}={v!r}" for k, v in entry.params.items()))
    typer.echo(f"presets: {', '.join(PRESETS)}")


@app.command("run")
def run_cmd(
    method: str = typer.Option("pgd-at", help="training method (see `fairbench list`)"),
    arch: Optional[str] = typer.Option(None, help="architecture: preact18, wrn-28-10, small-cnn, ..."),
    dataset: Optional[str] = typer.Option(None, help="cifar10, cifar100 or fashion-mnist"),
    preset: Optional[str] = typer.Option(None, help=f"defaults to start from: {', '.join(PRESETS)}"),
    epochs: Optional[int] = typer.Option(None, help="training epochs"),
    batch_size: Optional[int] = typer.Option(None, help="global batch size"),
    seed: int = typer.Option(0),
    eps: Optional[float] = typer.Option(None, help="L-inf radius (default: 8/255 CIFAR, 0.1 Fashion-MNIST)"),
    step_size: Optional[float] = typer.Option(None, help="PGD training step (default eps/4)"),
    attack_steps: Optional[int] = typer.Option(None, help="PGD training steps (default 10)"),
    lr: Optional[float] = typer.Option(None, help="initial learning rate (default 0.1)"),
    momentum: Optional[float] = typer.Option(None, help="SGD momentum (default 0.9)"),
    weight_decay: Optional[float] = typer.Option(None, help="SGD weight decay (default 5e-4)"),
    schedule: Optional[str] = typer.Option(None, help="piecewise (default), cosine or constant"),
    augment: Optional[str] = typer.Option(
        None, help="training augmentation: standard (the data set's, default) or none"),
    param: List[str] = typer.Option([], help="method parameter name=value (repeatable)"),
    train_per_class: Optional[int] = typer.Option(None, help="train on the first K images per class"),
    val_per_class: Optional[int] = typer.Option(None, help="hold out K training images per class"),
    eval_per_class: Optional[int] = typer.Option(None, help="evaluate on the first K test images per class"),
    aa_per_class: Optional[int] = typer.Option(
        None, help="run AutoAttack on the first K evaluated test images per class only"),
    select: Optional[str] = typer.Option(
        None, help="model selection: last (default) or best-val (PGD-10 on the validation split)"),
    eval_batch_size: Optional[int] = typer.Option(
        None, help="batch of the evaluation and of methods' scoring passes (default 500 CUDA, 128 CPU)"),
    attacks: Optional[str] = typer.Option(None, help="comma list of clean,pgd20,autoattack"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
    data_dir: Optional[str] = typer.Option(None, help="data root (else $FAIRBENCH_DATA, else ~/.cache)"),
    download: bool = typer.Option(True, help="download a missing data set (--no-download: offline)"),
    out: str = typer.Option("results", help="results folder"),
    run_id: Optional[str] = typer.Option(None, help="run folder name (default from the config)"),
    resume: bool = typer.Option(False, help="continue the run from its last checkpoint"),
    stop_after_epoch: Optional[int] = typer.Option(
        None, help="checkpoint and stop after this epoch, without evaluating (continue with --resume)"),
    amp: Optional[bool] = typer.Option(None, help="bf16 autocast (default on for CUDA)"),
    channels_last: Optional[bool] = typer.Option(None, help="channels-last memory format (default on)"),
    compile: bool = typer.Option(False, help="torch.compile the model"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Train one method on one architecture and data set, then evaluate it per class."""
    values = dict(PRESETS[_check_preset(preset)], preset=preset) if preset else {}
    cli = dict(arch=arch, dataset=dataset, epochs=epochs, batch_size=batch_size, eps=eps,
               step_size=step_size, attack_steps=attack_steps, lr=lr, momentum=momentum,
               weight_decay=weight_decay, schedule=schedule, augment=augment,
               train_per_class=train_per_class,
               val_per_class=val_per_class, eval_per_class=eval_per_class,
               aa_per_class=aa_per_class, select=select, eval_batch_size=eval_batch_size, device=device, data_dir=data_dir, amp=amp,
               channels_last=channels_last, run_id=run_id,
               attacks=parse_attacks(attacks) if attacks is not None else None)
    values.update({k: v for k, v in cli.items() if v is not None})
    values.setdefault("dataset", "cifar10")
    values.setdefault("arch", "preact18")
    cfg = RunConfig(method=method, seed=seed, params=parse_param_options(param), out=out,
                    compile=compile, download=download, **values)
    with StopSignals():  # a signal while torch loads, before the runner's own handler: exit 75 too
        from fairbench.runner import run

        run(cfg, resume=resume, progress=progress, echo=typer.echo,
            stop_after_epoch=stop_after_epoch)


@app.command("resume")
def resume_cmd(
    run_dir: Path = typer.Argument(..., help="the run folder, RESULTS/runs/<run-id>"),
    device: Optional[str] = typer.Option(None, help="override the device it ran on"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Continue a stopped run from its last checkpoint, with the config in its folder."""
    import dataclasses

    with StopSignals():
        from fairbench.runner import config_from_run_dir, run

        cfg = config_from_run_dir(run_dir)
        if device is not None:
            cfg = dataclasses.replace(cfg, device=device)
        run(cfg, resume=True, progress=progress, echo=typer.echo)


@app.command("report")
def report_cmd(
    results: str = typer.Option("results", help="results folder: reads every metrics.json under it"),
    baseline: Optional[str] = typer.Option(None, help="method (or row label) every other row is "
                                           "compared with [default: pgd-at, where a group has it]"),
) -> None:
    """Leaderboard tables, charts and index.html from the runs' metrics.json and outcomes files."""
    from pathlib import Path

    from fairbench.report.command import build_report, write_report

    board = build_report(Path(results), baseline)
    if board.skipped:
        typer.echo(f"warning: skipped {len(board.skipped)} metrics.json file(s):", err=True)
        for path, why in board.skipped:
            typer.echo(f"  {path}: {why}", err=True)
    for path, why in board.warnings:
        typer.echo(f"warning: {path}: {why}", err=True)
    board, markdown, written = write_report(Path(results), board)
    typer.echo(markdown, nl=False)
    figures = sum(1 for p in written if p.parent.name == "figures")
    typer.echo(f"wrote {results}/leaderboard.{{md,csv,tex}}, {results}/index.html and {figures} "
               f"figures in {results}/figures/", err=True)


@app.command("eval")
def eval_cmd(
    checkpoint: Optional[str] = typer.Option(None, help="state_dict or checkpoint file (any origin)"),
    arch: Optional[str] = typer.Option(None, help="architecture of --checkpoint (see `fairbench list`)"),
    dataset: str = typer.Option("cifar10", help="cifar10, cifar100 or fashion-mnist"),
    robustbench: Optional[str] = typer.Option(None, help="a RobustBench zoo model name instead of "
                                              "--checkpoint (needs the robustbench extra)"),
    threat_model: str = typer.Option("Linf", help="RobustBench threat model (fairbench evaluates Linf)"),
    model_dir: Optional[str] = typer.Option(None, help="RobustBench model folder "
                                            "(default ~/.cache/fairbench/robustbench)"),
    attacks: str = typer.Option("clean,pgd20,autoattack", help="comma list of clean,pgd20,autoattack"),
    n_per_class: Optional[int] = typer.Option(None, help="evaluate on the first K test images per class"),
    eps: Optional[float] = typer.Option(None, help="L-inf radius (default: 8/255 CIFAR, 0.1 Fashion-MNIST)"),
    seed: int = typer.Option(0, help="seed of the attacks' random starts"),
    batch_size: int = typer.Option(500, help="evaluation batch size"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    data_dir: Optional[str] = typer.Option(None, help="data root (else $FAIRBENCH_DATA, else ~/.cache)"),
    out: str = typer.Option("results", help="results folder"),
    run_id: Optional[str] = typer.Option(None, help="run folder name (default: model, data set, sha256)"),
) -> None:
    """Evaluate any state_dict, or a RobustBench model, per class; writes metrics.json."""
    from fairbench.external_eval import EvalOptions, run_eval

    opts = EvalOptions(dataset=dataset, checkpoint=checkpoint, arch=arch, robustbench=robustbench,
                       threat_model=threat_model, model_dir=model_dir, attacks=parse_attacks(attacks),
                       n_per_class=n_per_class, eps=eps, seed=seed, batch_size=batch_size,
                       device=device, data_dir=data_dir, out=out, run_id=run_id)
    run_eval(opts, echo=typer.echo)


def _check_preset(name: str) -> str:
    if name not in PRESETS:
        raise FairbenchError(f"unknown preset '{name}'; valid presets: {', '.join(PRESETS)}")
    return name


def main(argv: list[str] | None = None) -> None:
    """Console entry point: expected failures print one line and exit with status 2."""
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


def _is_usage_error(exc: Exception) -> bool:
    """click's exceptions, whether from click itself or the copy that newer typer versions vendor."""
    names = {t.__name__ for t in type(exc).__mro__}
    return bool(names & {"ClickException", "TyperException"}) and hasattr(exc, "format_message")
