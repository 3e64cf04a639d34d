"""``--init-from RUN_DIR``: start a run from the weights of a finished fairbench run (FAAL fine-tunes
a robust model; FRL's authors warm-start from one). ``--init-from FILE`` takes a checkpoint made
elsewhere instead (FRL's ``hot_start.pt``): any state_dict, checked against the architecture only.

The source folder must hold the run's ``config.json`` and ``checkpoint.pt`` with training finished.
Committed results carry no checkpoint (results/README.md), so a committed run can be a source only
on the machine that trained it, or after rerunning it. The checkpoint is loaded with
``weights_only=True``; its architecture and data set must be this run's. The weights taken are the
ones the source run evaluated (its weight average, when it kept one). What this run records of its
source (``init_source`` in config.json, ``init_from`` in metrics.json): the source's run id, method,
whole config, checkpoint sha256, the training budget behind the weights (its epochs, plus those of
the run it started from, if any), and its folder, relative to this run's results folder when it lies
there (``runs/<run-id>``: no path of the machine that made it; `RunConfig.portable_dict`).

A source may come from anyone, so it is checked before anything is trained, as `fairbench eval`
checks a checkpoint: its config.json is a bounded regular file of the right types, and the record
this run will keep of it passes the one validator of result files (`fairbench.schema
.check_init_from`: nesting, string lengths, printable text, key counts), else the run would train
and then fail writing its metrics.json; the checkpoint is at most `MAX_CHECKPOINT_FACTOR` times the
architecture's weights plus `CHECKPOINT_SLACK`; the weights fit the architecture and are finite
(`fairbench.eval.evaluator.not_finite`, on a fixed batch of random images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeGuard

import torch

from fairbench.config import RunConfig, results_relative
from fairbench.data.datasets import get_dataset
from fairbench.distributed import DistInfo
from fairbench.errors import FairbenchError
from fairbench.eval.evaluator import not_finite
from fairbench.models import create_model, has_average, load_model_state, unwrap_state_dict
from fairbench.runs.folder import (  # noqa: F401
    CHECKPOINT_FILE,
    CHECKPOINT_SLACK,
    CONFIG_FILE,
    MAX_CHECKPOINT_FACTOR,
    load_checkpoint,
    read_run_config,
    sha256_file,
)
from fairbench.schema import check_init_from
from fairbench.train.checkpoint import REQUIRED_KEYS

MAX_SOURCE_EPOCHS = 100_000


def read_init_source(cfg: RunConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The source run's evaluated weights and the record kept of it; one error line if unusable."""
    assert cfg.init_from is not None
    folder = Path(cfg.init_from)
    where = f"--init-from {cfg.init_from}"
    if folder.is_file():
        return _read_file(folder, where, cfg)
    if not folder.is_dir():
        raise FairbenchError(
            f"{where}: no such folder or file (give a run folder, RESULTS/runs/<run-id>, or a checkpoint file)"
        )
    source = _source_config(folder, where)
    differ = [
        f"{key} '{source.get(key)!s:.60}' (this run: '{getattr(cfg, key)}')"
        for key in ("arch", "dataset")
        if source.get(key) != getattr(cfg, key)
    ]
    if differ:
        raise FairbenchError(f"{where} was trained with another {' and '.join(differ)}")
    ckpt = folder / CHECKPOINT_FILE
    if not ckpt.is_file():
        raise FairbenchError(
            f"{where}: no {CHECKPOINT_FILE}; --init-from needs the source run's "
            f"checkpoint, which committed results do not carry (rerun the source "
            f"run, or use its folder on the machine that trained it)"
        )
    model = _fresh_model(cfg)
    state = _load(ckpt, model, where)
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise FairbenchError(f"{where}: {ckpt} is not a fairbench training checkpoint (no {', '.join(missing)})")
    epochs, epoch = source.get("epochs"), state["epoch"]
    if not _is_int(epochs) or not 1 <= epochs <= MAX_SOURCE_EPOCHS:
        raise FairbenchError(
            f"{where}: its {CONFIG_FILE} has epochs {epochs!r:.40}, not a whole number in [1, {MAX_SOURCE_EPOCHS}]"
        )
    if not _is_int(epoch):
        raise FairbenchError(
            f"{where}: {ckpt} records its epoch as a {type(epoch).__name__}, not a whole "
            f"number: not a checkpoint fairbench wrote"
        )
    if "mid_epoch" in state or epoch != epochs:
        raise FairbenchError(
            f"{where} is not a finished run: its checkpoint is after epoch "
            f"{epoch} of {epochs}; finish it first (fairbench resume "
            f"{cfg.init_from})"
        )
    weights = unwrap_state_dict(state, f"{where}: {ckpt}")  # its average, when it kept one
    _check_weights(model, weights, where, cfg)
    averaged = has_average(state)
    prior = source.get("init_source") or {}
    if not isinstance(prior, dict):
        raise FairbenchError(
            f"{where}: its {CONFIG_FILE} has an init_source that is a "
            f"{type(prior).__name__}, not the record of the run it started from"
        )
    before = prior.get("budget_epochs", 0)
    record = {
        "run_dir": results_relative(folder, cfg.out),
        "run_id": source.get("run_id", folder.name),
        "method": source.get("method"),
        "epochs": epochs,
        "budget_epochs": epochs + before if _is_int(before) else None,
        "weights": "averaged" if averaged else "last",
        "checkpoint_sha256": sha256_file(ckpt),
        # its own source is named, not nested: a chain of runs stays a flat record
        "config": {k: v for k, v in source.items() if k != "init_source"}
        | {"init_source": prior.get("run_id") or prior.get("file")},
    }
    check_init_from(record, f"{where}: its {CONFIG_FILE} (kept in this run's metrics.json as init_from)")
    return weights, record


def max_checkpoint_bytes(model: torch.nn.Module) -> int:
    """The largest checkpoint file of ``model``'s architecture that is read at all."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return MAX_CHECKPOINT_FACTOR * weights + CHECKPOINT_SLACK


def _load(path: Path, model: torch.nn.Module, where: str) -> dict[str, Any]:
    try:
        return load_checkpoint(path, max_bytes=max_checkpoint_bytes(model))
    except FairbenchError as exc:
        raise FairbenchError(f"{where}: {exc}") from None


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _fresh_model(cfg: RunConfig) -> torch.nn.Module:
    """A model of this run's architecture on the CPU, made without touching the global RNG (the
    run's own model was made from it already, and its training must not depend on this check)."""
    with torch.random.fork_rng(devices=[]):
        return create_model(cfg.arch, get_dataset(cfg.dataset))


def _check_weights(model: torch.nn.Module, weights: dict[str, Any], where: str, cfg: RunConfig) -> None:
    """The weights fit ``model`` and are finite, as are its outputs on a fixed batch of random
    images (`not_finite`, the check `fairbench eval` and the trainer make): NaN or 1e36 weights
    would start a run that dies later with "the loss is nan ... lower --lr"."""
    load_model_state(model, weights, where)
    images = torch.rand((8, *get_dataset(cfg.dataset).shape), generator=torch.Generator().manual_seed(0))
    what = not_finite(model, images, DistInfo())
    if what:
        raise FairbenchError(f"{where}: the model's {what}; a run cannot start from these weights")


def _read_file(path: Path, where: str, cfg: RunConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint made elsewhere: its weights (``{'state_dict': ...}`` / ``{'model': ...}``
    wrappers and DDP prefixes accepted), bounded in size, fitting the architecture and finite."""
    model = _fresh_model(cfg)
    weights = unwrap_state_dict(_load(path, model, where), where)
    _check_weights(model, weights, where, cfg)
    record = {
        "file": results_relative(path, cfg.out),
        "run_id": None,
        "method": None,
        "epochs": None,
        "budget_epochs": None,
        "weights": "file",
        "checkpoint_sha256": sha256_file(path),
        "config": None,
    }
    check_init_from(record, where)
    return weights, record


def _source_config(folder: Path, where: str) -> dict[str, Any]:
    return read_run_config(folder, where)
