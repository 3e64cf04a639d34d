"""How much a local `fairbench sweep` gains over running the same runs one after another.

Three ways to run the same N tiny runs (pgd-at, seeds 0..N-1, small-cnn on Fashion-MNIST, CPU),
each into a fresh results folder:

  one after another   N `python -m fairbench run ...` processes in a loop (what scripts/benchmark.sh did)
  sweep --workers 1   `fairbench sweep` running them one at a time (the sweep's own cost shows here)
  sweep --workers 2   `fairbench sweep` running two at a time, each with cores / 2 threads

It prints each wall time, the ratio sweep(2 workers) / one-after-another (goal on a 2-core machine:
<= 0.6), and the launcher's overhead per run: process start and imports of `fairbench run` (the
median of 3 bare `python -c 'import fairbench.cli, fairbench.train.runner'`), and what the sweep adds on
top of that ((sweep --workers 1 - one after another) / N; negative when the sweep's runs, forked
from a server that imported torch once, start faster than fresh processes).

    python bench/sweep_speed.py --runs 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_args(args: argparse.Namespace, out: Path) -> list[str]:
    extra = ["--data-dir", args.data_dir] if args.data_dir else []
    return [
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        str(args.epochs),
        "--train-per-class",
        str(args.train_per_class),
        "--eval-per-class",
        str(args.eval_per_class),
        "--attacks",
        "clean,pgd20",
        "--device",
        "cpu",
        "--no-download",
        "--out",
        str(out),
        *extra,
    ]


def timed(command: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6, help="N: runs in the grid")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--eval-per-class", type=int, default=10)
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: fairbench's search)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    py = [sys.executable, "-m", "fairbench"]
    seeds = list(range(args.runs))

    imports = statistics.median(
        timed([sys.executable, "-c", "import fairbench.cli, fairbench.train.runner"], env) for _ in range(3)
    )
    with tempfile.TemporaryDirectory() as tmp:
        loop_out = Path(tmp) / "loop"
        t_loop = sum(
            timed([*py, "run", "--method", "pgd-at", "--seed", str(s), "--no-progress", *run_args(args, loop_out)], env)
            for s in seeds
        )
        grid = ["sweep", "--methods", "pgd-at", "--seeds", f"0-{args.runs - 1}"]
        t_one = timed([*py, *grid, *run_args(args, Path(tmp) / "one"), "--workers", "1"], env)
        t_two = timed([*py, *grid, *run_args(args, Path(tmp) / "two"), "--workers", "2"], env)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"{args.runs} runs: pgd-at, small-cnn, fashion-mnist, {args.epochs} epoch(s), "
        f"{args.train_per_class} train / {args.eval_per_class} test images per class, clean + PGD-20; "
        f"{cores} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    print(f"one after another   {t_loop:7.1f} s   ({t_loop / args.runs:.1f} s per run)")
    print(f"sweep --workers 1   {t_one:7.1f} s")
    print(f"sweep --workers 2   {t_two:7.1f} s")
    print(f"sweep(2 workers) / one after another   {t_two / t_loop:.3f}   (goal <= 0.6)")
    print(
        f"per run: process start + imports {imports:.2f} s; the sweep adds "
        f"{(t_one - t_loop) / args.runs:+.2f} s (sweep --workers 1 vs the loop)"
    )


if __name__ == "__main__":
    main()
