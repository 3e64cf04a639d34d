"""AutoAttack's cost per robust image against its limit: the passes it must make, timed alone.

AutoAttack's standard version (pyautoattack: APGD-CE, APGD-T, FAB-T, Square) spends a fixed
number of model passes on every image that survives it. Counted from the library's code (per
image; T = 9 targets, 100 iterations, 5,000 Square queries, one restart each):

  attack      forward+backward              forward (no gradient)
  clean       -                             1 (AutoAttack's first prediction)
  APGD-CE     1 + 100                       1 (perturb's prediction) + 1 (AutoAttack's check)
  APGD-T      T x (1 + 100)                 1 + T x 1 (target choice) + 1 (check)
  FAB-T       T x 100 (one gradient each)   1 + T x (2 + 100 + 1) + 1 (check)
  Square      -                             1 + 1 + 5,000 + 1 + 1 (check)
  fairbench   -                             1 (the returned image, predicted again)

= 1,910 forward+backward and 5,948 forward passes per robust image. An image that falls early
costs only the passes made before it fell, and each AutoAttack call runs 7 extra forwards on its
first batch (its randomness, output-range and dynamic-defence checks).

The bench counts the passes AutoAttack really makes (a forward hook on the model: a forward with
a gradient-requiring input is a forward+backward), times one forward and one forward + input-
gradient backward per image at every batch size and memory format, takes the best, and prints,
all from this one process (pass times measured before and after the AutoAttack run, averaged):

  ratio           AutoAttack's CPU time / (its counted passes x the best time of each pass)
  ratio/budget    AutoAttack's CPU time per robust image / (1,910 + 5,948 passes x best times)
                  (charges the passes spent on images that fell early to the robust ones)

Single-threaded CPU time is the work; the wall clock also counts other jobs on a shared machine.
The model is the CPU testbed network (`testbed-cnn`), in the memory format `fairbench run`
evaluates it in (channels-last unless --no-channels-last), evaluated through the one evaluator
(`fairbench.eval.evaluator.evaluate_outcomes`) exactly as a run does, on the first K test images per class.

    python bench/eval_cost.py --checkpoint /path/to/checkpoint.pt        # a trained testbed-cnn
    python bench/eval_cost.py                     # trains a short one first through `fairbench run`
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import fairbench.eval.threats as threats
import torch
from fairbench.config import PRESETS, RunConfig, default_eval_batch_size
from fairbench.data.datasets import Split, get_dataset, load_split, per_class_indices, to_float
from fairbench.eval.evaluator import CHUNK_SIZE, evaluate_outcomes
from fairbench.models import create_model, load_model_state
from fairbench.runs.folder import CHECKPOINT_FILE, load_checkpoint
from fairbench.train.runner import run
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import timed  # noqa: E402

ARCH = "testbed-cnn"
DATASET = "fashion-mnist"
CPU = torch.device("cpu")
FORMATS = {"nchw": torch.contiguous_format, "channels-last": torch.channels_last}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a testbed-cnn checkpoint (a fairbench run's, or a state dict); "
        "default: train a short one through `fairbench run`",
    )
    p.add_argument("--n-per-class", type=int, default=20, help="test images per class attacked")
    p.add_argument("--epochs", type=int, default=2, help="training without --checkpoint")
    p.add_argument("--train-per-class", type=int, default=300, help="training without --checkpoint")
    p.add_argument(
        "--batch-size", type=int, default=None, help="the evaluator's batch size (default: the run default for the CPU)"
    )
    p.add_argument("--chunk-size", type=int, default=CHUNK_SIZE)
    p.add_argument("--sizes", default="16,32,64,128,256", help="batch sizes the passes are timed at")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the model's memory format, as `fairbench run` leaves it (default on)",
    )
    p.add_argument(
        "--feeding",
        choices=("current", "previous"),
        default="current",
        help="how the evaluator feeds AutoAttack: as now, or as before issue 11 "
        "(item 9) for the before/after comparison",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    return p.parse_args(argv)


def trained_model(args: argparse.Namespace) -> tuple[nn.Module, str]:
    """The testbed network from ``--checkpoint``, else briefly PGD-AT-trained by `fairbench run`."""
    spec = get_dataset(DATASET)
    model = create_model(ARCH, spec)
    if args.checkpoint is not None:
        load_model_state(model, load_checkpoint(args.checkpoint), str(args.checkpoint))
        return model.eval(), f"checkpoint {args.checkpoint}"
    recipe = PRESETS["fmnist-standard"] | dict(  # its training, shortened; no selection
        epochs=args.epochs,
        train_per_class=args.train_per_class,
        val_per_class=None,
        select="last",
        eval_per_class=1,
        attacks=("clean",),
    )
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(
            method="pgd-at", out=tmp, run_id="bench", seed=0, data_dir=args.data_dir, preset="fmnist-standard", **recipe
        )
        t0 = time.perf_counter()
        run_dir = run(cfg, progress=False, echo=lambda _m: None)
        load_model_state(model, load_checkpoint(run_dir / CHECKPOINT_FILE), "bench checkpoint")
    return model.eval(), (
        f"PGD-AT, fmnist-standard's recipe for {args.epochs} epoch(s) on "
        f"{args.train_per_class}/class through fairbench run "
        f"({time.perf_counter() - t0:.0f}s)"
    )


class PassCounter:
    """Counts the images in each forward of a model: with a gradient-requiring input (AutoAttack
    then takes an input gradient: a forward+backward pass) or without (a forward pass)."""

    def __init__(self, model: nn.Module) -> None:
        self.forward = self.forward_backward = 0
        self.handle = model.register_forward_pre_hook(self.hook)

    def hook(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        if torch.is_grad_enabled() and x.requires_grad:
            self.forward_backward += len(x)
        else:
            self.forward += len(x)


def previous_autoattack_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    seed: int,
    batch_size: int,
    progress: threats.Progress,
) -> torch.Tensor:
    """`fairbench.eval.threats.autoattack_correct` before issue 11 (item 9): the same attack, fed the
    whole chunk at the evaluator's batch size (a short last batch), the model as it came
    (trainable weights, so FAB-T's ``.backward()`` also computed weight gradients; its own
    memory format)."""
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", device=x.device, seed=seed)
    with threats.aa_logging(progress), torch.autocast(x.device.type, enabled=False):
        x_adv, y_adv = adversary.run_standard_evaluation(x.float(), y, batch_size=batch_size)
    again = torch.cat(
        [
            threats.clean_correct(model, x_adv[i : i + batch_size], y[i : i + batch_size])
            for i in range(0, len(y), batch_size)
        ]
    )
    return (y_adv == y) & again


def budget(n_classes: int) -> tuple[int, int]:
    """(forward+backward, forward) passes of the standard version on an image that survives it,
    read from pyautoattack's own settings (see the module docstring for where each comes from)."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(nn.Linear(1, n_classes), norm="Linf", eps=0.1, version="standard")
    ce, tgt, fab, sq = aa.apgd, aa.apgd_targeted, aa.fab, aa.square
    t_apgd, t_fab = tgt.n_target_classes * tgt.n_restarts, fab.n_target_classes * fab.n_restarts
    fb = ce.n_restarts * (ce.n_iter + 1) + t_apgd * (tgt.n_iter + 1) + t_fab * fab.n_iter
    fwd = (
        1  # AutoAttack's clean prediction
        + 1
        + 1  # APGD-CE: perturb's prediction, AA's check
        + 1
        + t_apgd
        + 1  # APGD-T: prediction, a target choice each, check
        + 1
        + t_fab * (2 + fab.n_iter + 1)
        + 1  # FAB-T: 2 + one check per step + 1, per target
        + 1
        + sq.n_restarts * (1 + sq.n_queries + 1)
        + 1  # Square
        + 1
    )  # fairbench's own check of the returned image
    return fb, fwd


def pass_time(model: nn.Module, x: torch.Tensor, grad: bool, min_seconds: float = 0.25) -> tuple[float, float]:
    """CPU and wall seconds per image of one forward (``grad``: + input-gradient backward)."""

    def once() -> None:
        if grad:
            xg = x.detach().requires_grad_()
            with torch.enable_grad():
                loss = model(xg).sum()
            torch.autograd.grad(loss, [xg])
        else:
            with torch.no_grad():
                model(x)

    once()  # warm-up (oneDNN primitives for this shape)
    reps, cpu, wall = 0, 0.0, 0.0
    while cpu < min_seconds:
        w, c = timed(once, x.device)
        reps, cpu, wall = reps + 1, cpu + c, wall + w
    return cpu / reps / len(x), wall / reps / len(x)


def pass_table(
    model: nn.Module, images: torch.Tensor, sizes: list[int]
) -> dict[tuple[str, int], dict[str, tuple[float, float]]]:
    """Per-image (cpu, wall) seconds of each pass, for every memory format and batch size."""
    table = {}
    for name, fmt in FORMATS.items():
        m = copy.deepcopy(model).to(memory_format=fmt).eval()
        for bs in sizes:
            x = images[torch.arange(bs) % len(images)].contiguous(memory_format=fmt)
            table[(name, bs)] = {"forward": pass_time(m, x, False), "forward_backward": pass_time(m, x, True)}
    return table


def limit_seconds(times: dict[str, tuple[float, float]], fb: float, fwd: float, which: int) -> float:
    return fb * times["forward_backward"][which] + fwd * times["forward"][which]


def measure(
    model: nn.Module, test: Split, args: argparse.Namespace, batch_size: int
) -> tuple[dict[str, torch.Tensor], PassCounter, tuple[float, float]]:
    """AutoAttack through the evaluator, as a run does: outcomes, passes, (wall, CPU) seconds."""
    quiet = dict(
        eps=get_dataset(DATASET).eps,
        batch_size=batch_size,
        chunk_size=args.chunk_size,
        seed=0,
        progress=lambda _m: None,
    )
    outcomes: dict[str, torch.Tensor] = {}
    counter = PassCounter(model)
    wall, cpu = timed(
        lambda: outcomes.update(evaluate_outcomes(model, test, attacks=("clean", "autoattack"), **quiet)[0]), CPU
    )
    counter.handle.remove()
    counter.forward -= len(test)  # the evaluator's clean pass, timed alone below and taken off
    clean_wall, clean_cpu = timed(lambda: evaluate_outcomes(model, test, attacks=("clean",), **quiet), CPU)
    return outcomes, counter, (wall - clean_wall, cpu - clean_cpu)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = get_dataset(DATASET)
    model, origin = trained_model(args)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch_size = args.batch_size or default_eval_batch_size("cpu")
    test = load_split(spec, "test", args.data_dir)
    test = test.subset(per_class_indices(test.labels, args.n_per_class, spec.num_classes))
    sizes = [int(s) for s in args.sizes.split(",")]
    fb_budget, f_budget = budget(spec.num_classes)
    if args.feeding == "previous":  # the evaluator looks the function up at each call
        threats.autoattack_correct = previous_autoattack_correct

    before = pass_table(model, to_float(test.images), sizes)
    outcomes, counted, (wall, cpu) = measure(model, test, args, batch_size)
    after = pass_table(model, to_float(test.images), sizes)

    times = {
        key: {kind: tuple((b + a) / 2 for b, a in zip(before[key][kind], after[key][kind])) for kind in before[key]}
        for key in before
    }
    best = min(times, key=lambda k: limit_seconds(times[k], fb_budget, f_budget, 0))
    n_clean = int((outcomes["clean"] == 1).sum())
    n_robust = int((outcomes["autoattack"] == 1).sum())
    import pyautoattack

    print(
        f"{ARCH} ({origin}); Fashion-MNIST test, first {args.n_per_class}/class = {len(test)} "
        f"images; eps {spec.eps}; evaluator batch {batch_size}, chunk {args.chunk_size}, model "
        f"{'channels-last' if args.channels_last else 'NCHW'}, {args.feeding} feeding; CPU, "
        f"{args.threads} thread(s), torch {torch.__version__}, pyautoattack {pyautoattack.__version__}"
    )
    print(f"accuracy: clean {n_clean}/{len(test)}, autoattack {n_robust}/{len(test)}")
    print(f"budget per robust image: {fb_budget} forward+backward, {f_budget} forward passes")
    fb, fwd = counted.forward_backward, counted.forward
    print(
        f"passes counted: {fb} forward+backward, {fwd} forward (= {n_robust} robust x budget "
        f"+ {fb - n_robust * fb_budget} and {fwd - n_robust * f_budget} on images that fell early "
        f"and AutoAttack's checks)"
    )
    print("per-image pass times, ms of CPU (before / after the AutoAttack run); limit = budget x times")
    print(f"{'format':<15}{'batch':>6}{'forward':>16}{'fwd+bwd':>16}{'limit/robust':>14}")
    for key in before:
        cells = [f"{before[key][k][0] * 1e3:.3f}/{after[key][k][0] * 1e3:.3f}" for k in ("forward", "forward_backward")]
        print(
            f"{key[0]:<15}{key[1]:>6}{cells[0]:>16}{cells[1]:>16}"
            f"{limit_seconds(times[key], fb_budget, f_budget, 0):>13.3f}s"
            f"{'  <- best' if key == best else ''}"
        )
    for label, which, total in (("CPU", 0, cpu), ("wall", 1, wall)):
        limit = limit_seconds(times[best], fb, fwd, which)
        per_robust = total / n_robust if n_robust else float("nan")
        print(
            f"by {label:<4}: AutoAttack {total:.1f}s = {per_robust:.3f}s per robust image, "
            f"{100 * total / len(test):.1f}s per 100 test images; limit of the counted passes "
            f"{limit:.1f}s; ratio {total / limit:.3f}; ratio/budget "
            f"{per_robust / limit_seconds(times[best], fb_budget, f_budget, which):.3f}"
        )


if __name__ == "__main__":
    main()
