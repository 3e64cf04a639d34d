"""Shared by the sweep tests: tiny run options, the CLI in-process, reading a sweep's files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cli_helpers import exit_code


def tiny_args(data: Path, out: Path, epochs: int = 1, attacks: str = "clean") -> list[str]:
    """`fairbench run` options of a run that takes a second or two (process start excluded)."""
    return [
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        str(epochs),
        "--batch-size",
        "25",
        "--train-per-class",
        "5",
        "--eval-per-class",
        "2",
        "--attack-steps",
        "1",
        "--attacks",
        attacks,
        "--device",
        "cpu",
        "--data-dir",
        str(data),
        "--no-download",
        "--out",
        str(out),
    ]


cli = exit_code  # the console entry point in this process; returns the exit status


def sweep_process(args: list[str]) -> subprocess.Popen:
    """`fairbench sweep ...` in a process of its own (for signals)."""
    return subprocess.Popen(
        [sys.executable, "-m", "fairbench", "sweep", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_dirs(out: Path) -> list[Path]:
    return sorted((out / "runs").iterdir()) if (out / "runs").exists() else []


def finished(out: Path) -> list[str]:
    return sorted(p.parent.name for p in (out / "runs").glob("*/metrics.json"))


def attempts(out: Path, run_id: str) -> int:
    """How many times a sweep started the run (one header line per attempt in its sweep log)."""
    path = out / "sweep" / "logs" / f"{run_id}.log"
    return sum(line.startswith("=== ") for line in path.read_text().splitlines()) if path.exists() else 0


def status(out: Path, run_id: str) -> dict:
    return json.loads((out / "sweep" / "status" / f"{run_id}.json").read_text())


def epoch_lines(run_dir: Path) -> int:
    try:
        return len((run_dir / "log.jsonl").read_text().splitlines())
    except OSError:
        return 0
