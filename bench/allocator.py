"""What keeping freed memory (`fairbench.runs.memory`) saves a CPU training run.

The same short `fairbench run` (fmnist-standard's PGD-AT on testbed-cnn, one thread, one epoch on
a class-balanced subset of the real Fashion-MNIST, clean and PGD-20 on a few test images per class)
runs as a child process, alternately with glibc's default allocator (``FAIRBENCH_MALLOC=default``)
and with fairbench's setting, for ``--rounds`` rounds each. Each child's CPU time (user and kernel)
and minor page faults come from the kernel's accounting of that child (``os.wait4``), so another
job on the machine adds little to them; the wall clock is printed too. The runs must end with the
same weights and optimizer state (a SHA-256 over the checkpoint's tensors; the checkpoint file
itself also records the training's wall time): the setting changes no number.

    python bench/allocator.py --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from fairbench.runs.memory import OPT_OUT, USER_KNOBS

sys.path.insert(0, str(Path(__file__).parent))
from common import median_line  # noqa: E402

SETTINGS = {"glibc default": {"FAIRBENCH_MALLOC": "default"}, "fairbench": {}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="runs per setting, alternating")
    p.add_argument("--method", default="pgd-at")
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: fairbench's search)")
    return p.parse_args(argv)


def state_hash(checkpoint: Path) -> str:
    """SHA-256 over every tensor of the checkpoint's model and optimizer state, in key order."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    digest = hashlib.sha256()

    def walk(x: object) -> None:
        if isinstance(x, torch.Tensor):
            digest.update(x.detach().contiguous().view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                digest.update(str(k).encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        else:
            digest.update(repr(x).encode())

    walk({"model": state["model"], "optimizer": state["optimizer"]})
    return digest.hexdigest()


def child(args: argparse.Namespace, out: Path, run_id: str, extra_env: dict[str, str]) -> dict[str, float | str]:
    """One run in a child process: its CPU seconds, kernel seconds, minor faults, wall seconds and
    the hash of its final weights and optimizer state."""
    cmd = [sys.executable, "-m", "fairbench", "run", "--preset", "fmnist-standard", "--method", args.method]
    cmd += ["--epochs", "1", "--train-per-class", str(args.train_per_class), "--eval-per-class", "5"]
    cmd += ["--attacks", "clean,pgd20", "--device", "cpu", "--no-progress", "--out", str(out), "--run-id", run_id]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    env = {k: v for k, v in os.environ.items() if k not in (*USER_KNOBS, OPT_OUT, "GLIBC_TUNABLES")}
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} | extra_env
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the run failed:\n{stderr[-2000:]}")
    return {
        "cpu": usage.ru_utime + usage.ru_stime,
        "sys": usage.ru_stime,
        "faults": float(usage.ru_minflt),
        "wall": wall,
        "sha256": state_hash(out / "runs" / run_id / "checkpoint.pt"),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows: dict[str, list[dict[str, float | str]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="fairbench-alloc-") as tmp:
        for r in range(args.rounds):
            order = list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))  # alternate who goes first
            for name in order:
                run_id = f"{'default' if SETTINGS[name] else 'fairbench'}_{r}"
                rows[name].append(child(args, Path(tmp), run_id, SETTINGS[name]))
    print(
        f"fairbench run --preset fmnist-standard --method {args.method} --epochs 1 "
        f"--train-per-class {args.train_per_class} (testbed-cnn, 1 thread), {args.rounds} round(s) per setting, "
        "alternating; median (each round)"
    )

    for key, label, fmt in (
        ("cpu", "CPU s", ".1f"),
        ("sys", "kernel s", ".1f"),
        ("faults", "minor faults", ".0f"),
        ("wall", "wall s", ".1f"),
    ):
        for name in SETTINGS:
            print(f"{label:<13} {name:<14} {median_line([float(x[key]) for x in rows[name]], fmt)}")
    cpu = {name: statistics.median(float(x["cpu"]) for x in rows[name]) for name in SETTINGS}
    print(f"CPU time, glibc default / fairbench: {cpu['glibc default'] / cpu['fairbench']:.3f}")
    hashes = {str(x["sha256"]) for name in SETTINGS for x in rows[name]}
    same = "yes" if len(hashes) == 1 else "NO: " + ", ".join(sorted(hashes))
    print(f"same weights and optimizer state in every run: {same}")


if __name__ == "__main__":
    main()
