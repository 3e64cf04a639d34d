"""A run's training checkpoint: what it holds (every state, with every RNG stream of `fairbench.train.rng`),
its format and checks, and the `Checkpointer` that writes it after each epoch (or at a signal) and
resumes from it exactly.

The `Trainer` hands its pieces (model, optimizer, scheduler, method, ...) to a `Checkpointer` and
calls it, so the loop itself stays about training. Nothing here imports the trainer.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fairbench.config import RunConfig
from fairbench.errors import FairbenchError
from fairbench.models import load_model_state
from fairbench.runs.folder import (
    CHECKPOINT_FILE,
    LOG_FILE,
    atomic_torch_save,
    atomic_write_text,
    load_checkpoint,
    read_jsonl,
)
from fairbench.train.resume_check import check_resume_state
from fairbench.train.rng import rng_state, seed_everything, set_rng_state  # runner and tests import them from here

if TYPE_CHECKING:
    from fairbench.distributed import DistInfo
    from fairbench.methods.base import Method
    from fairbench.train.averaging import WeightAverage
    from fairbench.train.selection import BestValSelector

# 2: optional "mid_epoch" (a checkpoint taken at a step boundary on a signal); 3: optional "averaged"
# (the weight average) and "init_source" (the run it started from)
CHECKPOINT_FORMAT = 3
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "method", "rng", "epoch")


def check_resumable(state: dict[str, Any], path: Path, cfg: RunConfig) -> None:
    """Refuse a checkpoint of an unknown format, a foreign file, or one made with another config."""
    if state.get("format_version") not in (1, 2, CHECKPOINT_FORMAT):
        raise FairbenchError(f"{path}: unknown checkpoint format {state.get('format_version')!r}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise FairbenchError(f"{path}: not a fairbench checkpoint (no {', '.join(missing)})")
    if state.get("config_hash") != cfg.training_hash():
        theirs, ours = state.get("config"), cfg.training_dict()
        theirs = theirs if isinstance(theirs, dict) else {}
        diff = [f"{k} ({theirs.get(k)!r} in the checkpoint, {ours[k]!r} now)" for k in ours if theirs.get(k) != ours[k]]
        raise FairbenchError(f"--resume: {path} was made with a different config: {'; '.join(diff)}")


def checkpoint_position(epochs_done: int, mid_epoch: dict[str, Any] | None) -> str:
    """Where a checkpoint stands, for people: "after epoch 3" or "epoch 4, step 17"."""
    return f"epoch {epochs_done + 1}, step {mid_epoch['step']}" if mid_epoch else f"after epoch {epochs_done}"


@dataclass(kw_only=True)
class Resumed:
    """Where a resumed run stands, for the trainer to continue from."""

    cfg: RunConfig  # with the record of the run it started from (``init_source``), if any
    start_epoch: int  # epochs done
    train_seconds: float
    images_seen: int
    mid_epoch: dict[str, Any] | None  # where a preempted epoch stopped


class Checkpointer:
    """Writes and resumes the run folder's checkpoint of a trainer's pieces (single process or DDP).

    ``kept`` says, for error messages, which checkpoint a failure leaves behind.
    """

    def __init__(
        self,
        *,
        run_dir: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        method: "Method",
        selector: "BestValSelector | None",
        averaging: "WeightAverage | None",
        dist: "DistInfo",
        device: torch.device,
    ) -> None:
        self.run_dir, self.model, self.optimizer, self.scheduler = Path(run_dir), model, optimizer, scheduler
        self.method, self.selector, self.averaging = method, selector, averaging
        self.dist, self.device = dist, device
        self.kept = "no checkpoint has been written yet"

    @property
    def path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE

    def save(
        self,
        cfg: RunConfig,
        epochs_done: int,
        *,
        train_seconds: float,
        images_seen: int,
        mid_epoch: dict[str, Any] | None = None,
    ) -> None:
        """Write the checkpoint atomically; ``mid_epoch`` marks one taken inside epoch ``epochs_done``.

        Every rank calls it (it gathers every rank's RNG streams); rank 0 writes.
        """
        where = checkpoint_position(epochs_done, mid_epoch)
        rngs = self.dist.all_gather_object(rng_state(self.device))  # every rank's, for exact DDP resume
        for stats in self.method.class_stats():  # the saved method state is rank 0's: give it the run's sums
            stats.fold_into_main(self.dist, self.device)
        if mid_epoch is not None and self.dist.enabled:  # inside an epoch each rank's batch-norm
            # statistics are its own (DDP syncs them at the next forward, after the next attack)
            own = {k: v.detach().cpu().clone() for k, v in self.model.named_buffers()}
            mid_epoch = dict(mid_epoch, buffer_ranks=self.dist.all_gather_object(own))
        path = self.path
        progress = {"epoch": epochs_done, "train_seconds": train_seconds, "images_seen": images_seen}
        self.dist.on_main(lambda: self._write(cfg, path, where, progress, rngs, mid_epoch))
        self.kept = f"the last good checkpoint {path} ({where}) is kept"

    def _write(
        self,
        cfg: RunConfig,
        path: Path,
        where: str,
        progress: dict[str, Any],
        rngs: list[dict[str, Any]],
        mid_epoch: dict[str, Any] | None,
    ) -> None:
        """Rank 0's part of `save` (every rank holds the same model and optimizer)."""
        state = {
            "format_version": CHECKPOINT_FORMAT,
            "config": cfg.training_dict(),
            "config_hash": cfg.training_hash(),
            "arch": cfg.arch,
            "epoch": progress["epoch"],
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "method": self.method.state_dict(),
            "selection": self.selector.state_dict() if self.selector is not None else None,
            "rng": rngs[0],
            "rng_ranks": rngs,
            "train_seconds": progress["train_seconds"],
            "images_seen": progress["images_seen"],
        }
        if mid_epoch is not None:
            state["mid_epoch"] = mid_epoch
        if self.averaging is not None:
            state["averaged"] = self.averaging.state_dict()
        if cfg.init_source is not None:
            state["init_source"] = cfg.init_source
        try:
            atomic_torch_save(path, state)
        except FairbenchError as exc:  # disk full, quota, ...: the previous file is untouched
            raise FairbenchError(f"checkpoint ({where}) not saved: {exc}; {self.kept}") from None

    def resume(self, cfg: RunConfig, *, n_train: int) -> Resumed:
        """Load the run folder's checkpoint into the pieces; refuses one made with another config, or
        one whose states do not fit this run's (`fairbench.train.resume_check`; ``n_train`` training examples)."""
        path = self.path
        if not path.is_file():
            raise FairbenchError(f"--resume: no checkpoint in {self.run_dir}")
        state = load_checkpoint(path, map_location=self.device)
        check_resumable(state, path, cfg)
        check_resume_state(
            state,
            path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            method=self.method,
            epochs=cfg.epochs,
            n_train=n_train,
            device=self.device,
        )
        load_model_state(self.model, state["model"], str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self._match_parameter_layout()
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])
        for stats in self.method.class_stats():  # rank 0 saved the run's sums: the others start at 0
            stats.zero_unless_main(self.dist)
        if self.averaging is not None:
            self.averaging.load_state_dict(state["averaged"], str(path))
        if isinstance(state.get("init_source"), dict):  # what the run started from, for its records
            cfg = dataclasses.replace(cfg, init_source=state["init_source"])
        self._restore_buffers(state)
        if self.selector is not None:
            if not isinstance(state.get("selection"), dict):
                raise FairbenchError(f"{path} holds no --select best-val state; it was not made by this config")
            self.selector.load_state_dict(state["selection"])
        self._restore_rng(state, cfg.seed)
        resumed = Resumed(
            cfg=cfg,
            start_epoch=int(state["epoch"]),
            train_seconds=float(state.get("train_seconds", 0.0)),
            images_seen=int(state.get("images_seen", 0)),
            mid_epoch=state.get("mid_epoch"),
        )
        self.kept = (
            f"the last good checkpoint {path} ({checkpoint_position(resumed.start_epoch, resumed.mid_epoch)}) is kept"
        )
        self.dist.on_main(lambda: self._drop_later_log_lines(resumed.start_epoch))
        return resumed

    def _match_parameter_layout(self) -> None:
        """Give each optimizer buffer its parameter's memory layout (strides).

        ``--channels-last`` is not a training field, so a run may resume under the other setting:
        the checkpoint's momentum buffers are then NCHW for channels-last weights (or the reverse),
        and the fused SGD used on CUDA, which assumes matching strides, applies a wrong update.
        """
        for param, state in self.optimizer.state.items():
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param).copy_(value)

    def _drop_later_log_lines(self, epochs_done: int) -> None:
        """Epochs logged after the checkpoint was written are redone: their lines go."""
        kept = [
            r
            for r in read_jsonl(self.run_dir / LOG_FILE)
            if isinstance(r.get("epoch", 0), int) and r.get("epoch", 0) <= epochs_done
        ]
        atomic_write_text(self.run_dir / LOG_FILE, "".join(_json_line(r) for r in kept))

    def _restore_buffers(self, state: dict[str, Any]) -> None:
        """Inside an epoch, with the same number of processes: each rank's own batch-norm statistics."""
        ranks = (state.get("mid_epoch") or {}).get("buffer_ranks")
        if isinstance(ranks, list) and len(ranks) == self.dist.world_size:
            buffers = dict(self.model.named_buffers())
            for name, value in ranks[self.dist.rank].items():
                buffers[name].copy_(value)

    def _restore_rng(self, state: dict[str, Any], seed: int) -> None:
        """Same number of processes: each rank continues its own RNG streams exactly.

        Another number: rank 0 continues its stream and every other rank starts fresh streams
        seeded from (seed, epoch, rank); the epoch's plan is split differently anyway.
        """
        ranks = state.get("rng_ranks") or [state["rng"]]
        if len(ranks) == self.dist.world_size or self.dist.is_main:
            set_rng_state(ranks[self.dist.rank], self.device)
        else:
            seed_everything(seed + 1_000_003 * int(state["epoch"]) + self.dist.rank)


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record) + "\n"
