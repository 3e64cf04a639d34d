"""glibc's malloc told to keep freed memory, so a training step does not fault its pages in again.

Each PGD step allocates and frees the same activations and gradients, step after step. With
glibc's defaults, blocks above the (dynamic) mmap threshold are mapped and unmapped on every
allocation, and a free top of the heap above the trim threshold is handed back to the kernel: the
next step then touches fresh pages and the kernel zero-fills each one. On the 2-core VM, a
single-threaded `testbed-cnn` trial took about 39,000 page faults a second and about 15% of its CPU
time in the kernel; with freed memory kept, a handful (bench/allocator.py, bench/README.md).

`keep_freed_memory` sets, through ``mallopt``, the mmap threshold to 1 GiB (tensors come from the
heap), the trim threshold to 2 GiB (a free heap top is kept until it exceeds that) and a top pad of
64 MiB (the heap grows in steps of at least that). What the process keeps is what it used at its
peak, which it was going to use again. Nothing computed changes: PyTorch aligns every CPU tensor
itself (64 bytes), whichever way glibc found the memory (tests/test_memory.py trains the same run
both ways and compares weights, momentum and per-example outcomes).

It runs first thing in `fairbench.cli.main` (every command, and so every run that a local sweep,
Slurm or torchrun starts; setting it again changes nothing). It leaves the allocator alone when
the user set glibc's own knobs (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
``MALLOC_MMAP_THRESHOLD_``, or ``glibc.malloc`` in ``GLIBC_TUNABLES``), when
``FAIRBENCH_MALLOC=default``, and where the C library is not glibc (macOS, musl): there it does
nothing. Torch-free.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

SETTINGS = ((M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, (1 << 31) - 1), (M_TOP_PAD, 64 << 20))
USER_KNOBS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")
OPT_OUT = "FAIRBENCH_MALLOC"


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether fairbench should set the allocator in a process with this environment."""
    if environ.get(OPT_OUT, "").strip().lower() == "default":
        return False
    if any(name in environ for name in USER_KNOBS) or "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return False
    return glibc()


def glibc() -> bool:
    """Whether this process runs on glibc (asked of the running C library, not of the file)."""
    try:
        return str(os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr (Windows), or not a GNU libc
        return False


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory (see the module's doc); True if it was set."""
    if not wanted():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all([mallopt(param, value) == 1 for param, value in SETTINGS])
