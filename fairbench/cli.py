"""The command line: ``fairbench list | run | eval | report`` (typer)."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from fairbench.config import PRESETS, RunConfig
from fairbench.errors import FairbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train and evaluate robust-fairness methods; per-class leaderboards.")


def parse_param_options(options: list[str]) -> dict[str, str]:
    """``--param name=value`` options as a dict; a malformed one is a clear error."""
    params: dict[str, str] = {}
    for item in options:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise FairbenchError(f"--param expects name=value, got '{item}'")
        if name in params:
            raise FairbenchError(f"--param {name} is given twice")
        params[name] = value.strip()
    return params


def parse_attacks(text: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in text.split(",") if a.strip())


@app.command("list")
def list_cmd() -> None:
    """List the registered methods, architectures and data sets with their parameters."""
    from fairbench.registry import DATASETS, METHODS, MODELS

    for title, registry in (("methods", METHODS), ("architectures", MODELS), ("datasets", DATASETS)):
        typer.echo(f"{title}:")
        for entry in registry.entries():
            typer.echo(f"  {entry.name:<12} {entry.summary}")
            if entry.params:
                typer.echo("  " + " " * 13 + ", ".join(f"{k}={v!r}" for k, v in entry.params.items()))
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
    schedule: Optional[str] = typer.Option(None, help="piecewise (default) or cosine"),
    param: List[str] = typer.Option([], help="method parameter name=value (repeatable)"),
    train_per_class: Optional[int] = typer.Option(None, help="train on the first K images per class"),
    val_per_class: Optional[int] = typer.Option(None, help="hold out K training images per class"),
    eval_per_class: Optional[int] = typer.Option(None, help="evaluate on the first K test images per class"),
    attacks: Optional[str] = typer.Option(None, help="comma list of clean,pgd20,autoattack"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
    data_dir: Optional[str] = typer.Option(None, help="data root (else $FAIRBENCH_DATA, else ~/.cache)"),
    out: str = typer.Option("results", help="results folder"),
    run_id: Optional[str] = typer.Option(None, help="run folder name (default from the config)"),
    resume: bool = typer.Option(False, help="continue the run from its last checkpoint"),
    amp: Optional[bool] = typer.Option(None, help="bf16 autocast (default on for CUDA)"),
    channels_last: Optional[bool] = typer.Option(None, help="channels-last memory format (default on)"),
    compile: bool = typer.Option(False, help="torch.compile the model"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Train one method on one architecture and data set, then evaluate it per class."""
    from fairbench.runner import run

    values = dict(PRESETS[_check_preset(preset)]) if preset else {}
    cli = dict(arch=arch, dataset=dataset, epochs=epochs, batch_size=batch_size, eps=eps,
               step_size=step_size, attack_steps=attack_steps, lr=lr, schedule=schedule,
               train_per_class=train_per_class, val_per_class=val_per_class,
               eval_per_class=eval_per_class, device=device, data_dir=data_dir, amp=amp,
               channels_last=channels_last, run_id=run_id,
               attacks=parse_attacks(attacks) if attacks is not None else None)
    values.update({k: v for k, v in cli.items() if v is not None})
    values.setdefault("dataset", "cifar10")
    values.setdefault("arch", "preact18")
    cfg = RunConfig(method=method, seed=seed, params=parse_param_options(param), out=out,
                    compile=compile, **values)
    run(cfg, resume=resume, progress=progress, echo=typer.echo)


def _check_preset(name: str) -> str:
    if name not in PRESETS:
        raise FairbenchError(f"unknown preset '{name}'; valid presets: {', '.join(PRESETS)}")
    return name


def main(argv: list[str] | None = None) -> None:
    """Console entry point: expected failures print one line and exit with status 2."""
    try:
        app(args=argv, standalone_mode=False)
    except FairbenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # click's usage errors carry their own message and exit code
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise
