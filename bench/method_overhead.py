"""Per-epoch cost of the methods' scoring passes, as a fraction of one PGD-AT training epoch.

FairAT scores every training example (clean cross-entropy) before each epoch; FRL runs clean +
PGD-20 over a validation split after each epoch. Timed in interleaved rounds, on the same model:

  pgd-at epoch     `Trainer.train_epoch` of pgd-at over the training subset (the unit)
  score pass       `EpochContext.per_example_loss()` over that training set (FairAT's primitive)
  val pass         clean + PGD-20 over the validation split through `EpochContext.map_batches`,
                   the one PGD (FRL's primitive)
  <method> hooks   `plan_epoch` + `end_epoch` of each method named in --methods that is registered

The bar (issue #6): each method's scoring stays under 0.15 of a PGD-AT epoch for small-cnn on
Fashion-MNIST. The validation pass scales with --val-per-class / --train-per-class; the default
keeps FRL's CIFAR-10 proportion (300 held out per class of 5,000).

    python bench/method_overhead.py --methods fairat,frl-rwrm
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
from fairbench.config import RunConfig
from fairbench.data.datasets import load_split, train_val_split
from fairbench.distributed import DistInfo, resolve_device
from fairbench.errors import FairbenchError
from fairbench.methods import METHODS
from fairbench.methods.base import EpochContext
from fairbench.models import create_model
from fairbench.train.runner import prepare
from fairbench.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, median_line, timed  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="fairat,frl-rwrm", help="comma list of registered methods")
    p.add_argument("--arch", default="small-cnn")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--val-per-class", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--epochs",
        type=int,
        default=10,
        help="run length the methods plan for; their hooks are timed at the last epoch",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def val_pass(ctx: EpochContext) -> Callable[[], object]:
    """FRL's validation primitive itself (fairbench/methods/frl.py): clean and PGD-20 errors per class."""
    from fairbench.methods.frl import validation_errors

    return lambda: validation_errors(ctx, ctx.config.eps, ctx.config.step_size)


def method_hooks(name: str, base: RunConfig, ctx: EpochContext) -> Callable[[], None] | str:
    """plan_epoch + end_epoch of a registered method at the run's last epoch, or why not."""
    if name not in METHODS.names():
        return "not registered on this checkout"
    try:
        cfg, _, method_cls, params = prepare(
            RunConfig(**{**base.to_dict(), "method": name, "params": {}, "run_id": None})
        )
    except FairbenchError as exc:
        return str(exc)
    method = method_cls(params, cfg)
    method_ctx = EpochContext(
        epoch=ctx.epoch,
        epochs=ctx.epochs,
        model=ctx.model,
        spec=ctx.spec,
        train=ctx.train,
        val=ctx.val,
        config=cfg,
        device=ctx.device,
        dist=ctx.dist,
    )

    def run() -> None:
        method.plan_epoch(method_ctx)
        method.end_epoch(method_ctx)

    return run


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, spec, method_cls, params = prepare(
            RunConfig(
                method="pgd-at",
                arch=args.arch,
                dataset=args.dataset,
                epochs=args.epochs,
                batch_size=args.batch_size,
                device=args.device,
                out=tmp,
                run_id="bench",
                train_per_class=args.train_per_class,
                val_per_class=args.val_per_class,
                data_dir=args.data_dir,
                download=False,
            )
        )
        device = resolve_device(cfg.device)
        full = load_split(spec, "train", cfg.data_dir, download=False)
        train, val = train_val_split(full, spec.num_classes, cfg.train_per_class, cfg.val_per_class)
        train, val = train.to(device), val.to(device)
        model = create_model(cfg.arch, spec).to(device)
        trainer = Trainer(
            cfg,
            spec=spec,
            model=model,
            method=method_cls(params, cfg),
            train=train,
            val=val,
            run_dir=Path(tmp),
            dist=DistInfo(),
            device=device,
            progress=False,
        )
        ctx = trainer.epoch_context(cfg.epochs - 1)
        jobs: dict[str, Callable[[], object]] = {
            "pgd-at epoch": lambda: trainer.train_epoch(0),
            "score pass": lambda: ctx.per_example_loss(),
            "val pass": val_pass(ctx),
        }
        skipped = {}
        for name in filter(None, args.methods.split(",")):
            hooks = method_hooks(name.strip(), cfg, ctx)
            if isinstance(hooks, str):
                skipped[name] = hooks
            else:
                jobs[f"{name} hooks"] = hooks
        seconds = measure(jobs, args.rounds, device)
    print(
        f"{cfg.arch} on {cfg.dataset}: {len(train)} training and {len(val)} validation images, "
        f"batch {cfg.batch_size}, eval batch {cfg.eval_batch_size}, {args.rounds} rounds; "
        f"device {device} ({device_name(device)}), torch {torch.__version__}"
    )
    report(seconds)
    for name, why in skipped.items():
        print(f"{name} hooks: skipped ({why})")


def measure(
    jobs: dict[str, Callable[[], object]], rounds: int, device: torch.device
) -> dict[str, list[tuple[float, float]]]:
    """Seconds (wall, CPU) of each job per round, after one warm-up round; order rotates."""
    names = list(jobs)
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for round_ in range(rounds + 1):
        k = round_ % len(names)
        for name in names[k:] + names[:k]:
            took = timed(jobs[name], device)
            if round_ > 0:
                seconds[name].append(took)
    return seconds


def report(seconds: dict[str, list[tuple[float, float]]]) -> None:
    unit = seconds["pgd-at epoch"]
    for clock, i in (("wall clock", 0), ("process CPU time", 1)):
        print(f"-- by {clock}: seconds, and the fraction of a pgd-at epoch (median of rounds)")
        for name, values in seconds.items():
            print(f"{name:<18} {median_line([v[i] for v in values], '.3f')} s")
        for name, values in seconds.items():
            if name != "pgd-at epoch":
                print(f"{name + ' / epoch':<26} {median_line([v[i] / u[i] for v, u in zip(values, unit)])}")


if __name__ == "__main__":
    main(sys.argv[1:])
