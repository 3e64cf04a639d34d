"""Time of `fairbench report` on a leaderboard of many runs with per-example outcomes.

Writes synthetic runs with the schema's own builder and writer (by default 40 runs: 8 methods x
5 seeds, each with 10,000 test images under clean and PGD-20 and AutoAttack on 100 per class, as
the `fmnist-standard` protocol evaluates), then times the report's phases in this process: reading
and validating the files, the bootstrap (intervals, comparisons, ranks), rendering tables and
figures, writing. Prints each phase's wall clock and CPU seconds, and the load average, since on a
shared machine the wall clock also counts time other jobs held the cores.

    python bench/report_time.py                  # 40 runs x 10,000 outcomes (issue 11: < 30 s)
    python bench/report_time.py --methods 4 --seeds 3 --per-class 200
    python bench/report_time.py --keep /tmp/r && time python -m fairbench report --results /tmp/r/results
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from fairbench.report.command import write_report
from fairbench.report.intervals import add_intervals
from fairbench.report.model import build_leaderboard
from fairbench.schema import build_record, make_outcomes, write_run


def write_runs(root: Path, methods: int, seeds: int, per_class: int, aa_per_class: int) -> int:
    labels = np.repeat(np.arange(10), per_class)
    subset = np.arange(labels.size) % per_class < aa_per_class
    names = ["pgd-at"] + [f"method-{i}" for i in range(1, methods)]
    for m, method in enumerate(names):
        for seed in range(seeds):
            rng = np.random.default_rng([m, seed])
            level = rng.uniform(0.6, 0.8, size=10)[labels]
            clean = rng.random(labels.size) < level + 0.15
            pgd = clean & (rng.random(labels.size) < level)
            aa = pgd & (rng.random(labels.size) < 0.95)
            outcomes = make_outcomes(
                np.arange(labels.size), labels, {"clean": clean, "pgd20": pgd, "autoattack": np.where(subset, aa, -1)}
            )
            record = build_record(
                run_id=f"{method}-{seed}",
                method=method,
                params={},
                arch="testbed-cnn",
                dataset="fashion-mnist",
                seed=seed,
                epochs=8,
                eps=0.1,
                training={"epochs": 8, "train_per_class": None, "eval_per_class": None},
                outcomes=outcomes,
            )
            folder = root / "runs" / f"{method}-{seed}"
            folder.mkdir(parents=True)
            write_run(folder, record, outcomes)
    return len(names) * seeds


def timed(label: str, fn, times: list) -> object:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    times.append((label, time.perf_counter() - t0, time.process_time() - c0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=1000, help="test images per class (10 classes)")
    parser.add_argument("--aa-per-class", type=int, default=100)
    parser.add_argument(
        "--keep",
        type=Path,
        help="write the runs into KEEP/results and keep them (to time the command line, imports included)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.keep or Path(tmp)) / "results"
        n = write_runs(root, args.methods, args.seeds, args.per_class, args.aa_per_class)
        print(
            f"{n} runs x {10 * args.per_class} outcomes (AutoAttack on {args.aa_per_class}/class); "
            f"load average before: {os.getloadavg()[0]:.1f}"
        )
        times: list = []
        board = timed("read + validate", lambda: build_leaderboard(root), times)
        board = timed("bootstrap", lambda: add_intervals(board), times)
        timed("render + write", lambda: write_report(root, board), times)
        for label, wall, cpu in times:
            print(f"{label:16s} wall {wall:6.2f} s   cpu {cpu:6.2f} s")
        total = [sum(t[i] for t in times) for i in (1, 2)]
        print(
            f"{'whole report':16s} wall {total[0]:6.2f} s   cpu {total[1]:6.2f} s   "
            f"(load average after: {os.getloadavg()[0]:.1f}; 2 cores)"
        )


if __name__ == "__main__":
    main()
