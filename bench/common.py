"""Helpers shared by the benchmarks: timing by wall clock and by CPU time, device names."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Seconds ``fn()`` takes by the wall clock and by this process's CPU time.

    On a shared CPU the wall clock also counts time other jobs held the cores; the CPU time of a
    single-threaded run does not, so both are reported. On a GPU only the wall clock means much.
    """
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"


def median_line(values: list[float], fmt: str = ".3f") -> str:
    """``median   (each, round, ...)``"""
    return f"{statistics.median(values):{fmt}}   ({', '.join(f'{v:{fmt}}' for v in values)})"
