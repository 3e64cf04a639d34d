"""Shared fixtures: tiny data sets written in their real on-disk formats."""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

# One intra-op thread: on a small shared CPU, OpenMP threads spin against other processes and a
# tiny conv net runs ~50x slower with 2 threads than with 1 (measured on the 2-core dev machine).
torch.set_num_threads(1)

# fairbench's per-user state (the machine key that tags saved evaluation state, the report's
# manifests) goes to a folder of this test session, never to the home of whoever runs the tests;
# processes the tests start inherit it.
os.environ.setdefault("FAIRBENCH_STATE_DIR", tempfile.mkdtemp(prefix="fairbench-test-state-"))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an unsigned-byte IDX file (the MNIST / Fashion-MNIST format), gzipped if *.gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_fashion_mnist(folder: Path, n_train_per_class: int = 30, n_test_per_class: int = 10, seed: int = 0) -> Path:
    """A tiny, learnable Fashion-MNIST look-alike: class c is a bright bar at row 2c."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train_per_class), ("t10k", n_test_per_class)):
        labels = np.repeat(np.arange(10), n)
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(len(labels), 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 4 : 2 * c + 7, 4:24] = 230
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture
def fmnist_dir(tmp_path: Path) -> Path:
    return make_fashion_mnist(tmp_path / "fmnist")
