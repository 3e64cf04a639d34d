"""Cost of a full per-class evaluation (clean + PGD-20 + AutoAttack) relative to one clean pass.

Trains a small CNN on real Fashion-MNIST with fairbench's own PGD-AT for a short while (so that
AutoAttack has robust points to work on, as it would on a leaderboard model), then evaluates the
first K test images per class with the one evaluator and prints, from this one run: each
threat's seconds, its ratio to a clean pass over the same images, and its share of the total.

    python bench/eval_cost.py                      # 20 per class, 3 epochs of PGD-AT on 500 per class
    python bench/eval_cost.py --n-per-class 50 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fairbench.config import RunConfig
from fairbench.data import get_dataset, load_split, per_class_indices
from fairbench.evaluate import evaluate
from fairbench.models import create_model, load_model_state
from fairbench.results import CHECKPOINT_FILE, load_checkpoint
from fairbench.runner import run


def train_model(args: argparse.Namespace, folder: Path) -> torch.nn.Module:
    """A briefly PGD-AT-trained small CNN, through `fairbench run` (no evaluation attacks)."""
    cfg = RunConfig(method="pgd-at", arch="small-cnn", dataset="fashion-mnist", epochs=args.epochs,
                    train_per_class=args.train_per_class, eval_per_class=1, attacks=("clean",),
                    device="cpu", out=str(folder), run_id="bench", seed=0)
    run_dir = run(cfg, progress=False, echo=lambda _m: None)
    model = create_model("small-cnn", get_dataset("fashion-mnist"))
    load_model_state(model, load_checkpoint(run_dir / CHECKPOINT_FILE), "bench checkpoint")
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-class", type=int, default=20)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clean-repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = get_dataset("fashion-mnist")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = train_model(args, Path(tmp))
        train_s = time.perf_counter() - t0
    test = load_split(spec, "test")
    test = test.subset(per_class_indices(test.labels, args.n_per_class, spec.num_classes))
    quiet = dict(progress=lambda _m: None, batch_size=500)
    clean_s = statistics.median(
        evaluate(model, test, spec.classes, eps=spec.eps, attacks=["clean"], **quiet)[1]["clean"]
        for _ in range(args.clean_repeats))
    metrics, seconds = evaluate(model, test, spec.classes, eps=spec.eps,
                                attacks=["clean", "pgd20", "autoattack"], **quiet)
    total = sum(seconds.values())
    print(f"small-cnn, {args.epochs} epoch(s) PGD-AT on {args.train_per_class}/class "
          f"({train_s:.0f}s); Fashion-MNIST test, {args.n_per_class}/class = {len(test)} images; "
          f"eps {spec.eps}; CPU, {args.threads} thread(s), torch {torch.__version__}")
    print(f"accuracy: clean {metrics['clean']['avg']:.3f}, pgd20 {metrics['pgd20']['avg']:.3f}, "
          f"autoattack {metrics['autoattack']['avg']:.3f}, union {metrics['union']['avg']:.3f}")
    print(f"one clean pass: {clean_s * 1000:.1f} ms (median of {args.clean_repeats})")
    print(f"{'threat':<12}{'seconds':>10}{'x clean pass':>14}{'share':>8}")
    for threat, s in seconds.items():
        print(f"{threat:<12}{s:>10.2f}{s / clean_s:>14.0f}{s / total:>8.1%}")
    print(f"{'full eval':<12}{total:>10.2f}{total / clean_s:>14.0f}{1:>8.0%}")


if __name__ == "__main__":
    main()
