"""The checkpoint (fairbench/train/checkpoint.py): what `Checkpointer` saves and resumes, without a trainer.

The trainer's exact resume is proven end to end in tests/test_trainer.py, tests/test_reliability.py
and tests/test_distributed.py; these tests pin the checkpointer's own contract.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from fairbench.config import RunConfig
from fairbench.distributed import DistInfo
from fairbench.methods.base import Method
from fairbench.runs.folder import LOG_FILE, read_jsonl
from fairbench.train.checkpoint import Checkpointer
from torch import nn

CFG = RunConfig(method="pgd-at", arch="small-cnn", dataset="fashion-mnist", device="cpu", seed=5)


class Counting(Method):
    """A method whose state is one number."""

    def __init__(self) -> None:
        super().__init__(None, CFG)
        self.count = 0

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


def pieces(run_dir: Path, seed: int) -> Checkpointer:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5**e)
    return Checkpointer(
        run_dir=run_dir,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        method=Counting(),
        selector=None,
        averaging=None,
        dist=DistInfo(),
        device=torch.device("cpu"),
    )


def test_resume_restores_every_piece_and_drops_later_log_lines(tmp_path: Path) -> None:
    saved = pieces(tmp_path, seed=0)
    saved.model(torch.randn(8, 4)).sum().backward()  # momentum buffers and batch-norm statistics
    saved.optimizer.step()
    saved.scheduler.step()
    saved.method.count = 3
    (tmp_path / LOG_FILE).write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2, 3)))
    saved.save(CFG, 2, train_seconds=1.5, images_seen=64)
    continued = torch.rand(5)  # the stream the resumed run must draw next

    resumed_pieces = pieces(tmp_path, seed=1)
    torch.manual_seed(99)
    resumed = resumed_pieces.resume(CFG, n_train=100)

    assert (resumed.start_epoch, resumed.train_seconds, resumed.images_seen) == (2, 1.5, 64)
    assert resumed.mid_epoch is None and resumed.cfg == CFG
    for name, value in saved.model.state_dict().items():
        assert torch.equal(resumed_pieces.model.state_dict()[name], value), name
    momentum = [s["momentum_buffer"] for s in resumed_pieces.optimizer.state.values()]
    assert len(momentum) == 4 and all(m.abs().sum() > 0 for m in momentum)
    assert resumed_pieces.scheduler.last_epoch == saved.scheduler.last_epoch == 1
    assert resumed_pieces.method.count == 3
    assert torch.equal(torch.rand(5), continued)
    assert [r["epoch"] for r in read_jsonl(tmp_path / LOG_FILE)] == [1, 2]  # epoch 3 is redone
    assert "(after epoch 2) is kept" in resumed_pieces.kept


def test_checkpoint_module_does_not_import_the_trainer() -> None:
    """Imports point down: the trainer uses the checkpoint, never the reverse (no import circle)."""
    probe = (
        "import sys, fairbench.train.checkpoint; "
        "print(sorted(m for m in ('fairbench.train.trainer', 'fairbench.train.runner') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    assert out.strip() == "[]"
