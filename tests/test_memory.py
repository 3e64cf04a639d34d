"""`fairbench.runs.memory`: glibc's malloc keeps freed memory in fairbench's processes, only where the
user has not set it, and nothing computed changes. The allocator is process-wide, so each check runs
in a fresh Python process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from fairbench.runs.memory import OPT_OUT, USER_KNOBS, glibc, wanted

GLIBC = glibc()

# Allocate and free a 40 MB tensor (above glibc's largest dynamic mmap threshold, 32 MiB) 12 times
# and print the fewest minor page faults one of the last 6 took: with glibc's defaults each one is
# mapped afresh and its ~9,800 pages fault in; kept, it comes back from the heap without a fault.
# (The fewest, not the sum: on the 2-core VM a kept block still faulted in again in 2 or 3 of the
# 6 iterations of some processes, never in all of them.)
FAULTS = """
import resource, sys, torch
from fairbench.runs.memory import keep_freed_memory
set_it = keep_freed_memory() if sys.argv[1] == "set" else False
faults = []
for i in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(10_000_000)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(set_it, min(faults[6:]))
"""


def python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def clean_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in (*USER_KNOBS, OPT_OUT, "GLIBC_TUNABLES")} | extra


def test_the_user_s_own_settings_win() -> None:
    assert wanted({}) == GLIBC
    for env in (
        {"FAIRBENCH_MALLOC": "default"},
        {"FAIRBENCH_MALLOC": " Default "},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"MALLOC_TOP_PAD_": "0"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
    ):
        assert not wanted(env), env
    assert wanted({"FAIRBENCH_MALLOC": "", "GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=1"}) == GLIBC


def test_freed_memory_is_kept_and_page_faults_stop() -> None:
    kept, kept_faults = python(FAULTS, "set", env=clean_env()).split()
    assert kept == str(GLIBC)  # set exactly where the C library is glibc
    if not GLIBC:
        return
    _, default_faults = python(FAULTS, "default", env=clean_env()).split()
    assert int(default_faults) > 5_000  # glibc's defaults: each 40 MB tensor faults in anew
    assert int(kept_faults) < 500


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    return {f"model.{k}": v for k, v in state["model"].items()} | {
        f"momentum.{k}": v["momentum_buffer"] for k, v in state["optimizer"]["state"].items()
    }


def test_a_run_trains_the_same_bits_with_and_without_it(fmnist_dir: Path, tmp_path: Path) -> None:
    runs = {}
    for name, env in (("kept", clean_env()), ("default", clean_env(FAIRBENCH_MALLOC="default"))):
        done = subprocess.run(
            [sys.executable, "-m", "fairbench", "run", "--method", "pgd-at", "--arch", "small-cnn"]
            + ["--dataset", "fashion-mnist", "--epochs", "2", "--batch-size", "50", "--attack-steps", "2"]
            + ["--eval-per-class", "2", "--attacks", "clean,pgd20", "--data-dir", str(fmnist_dir)]
            + ["--out", str(tmp_path), "--run-id", name, "--no-progress", "--device", "cpu"],
            capture_output=True,
            text=True,
            env=env | {"OMP_NUM_THREADS": "1"},
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = weights(tmp_path / "runs" / name)
    assert runs["kept"].keys() == runs["default"].keys()
    for key, value in runs["kept"].items():
        assert torch.equal(value, runs["default"][key]), key
    outcomes = [(tmp_path / "runs" / name / "outcomes.csv.gz").read_bytes() for name in runs]
    assert outcomes[0] == outcomes[1]
