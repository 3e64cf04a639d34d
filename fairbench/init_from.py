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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fairbench.checkpoint import REQUIRED_KEYS
from fairbench.config import RunConfig, results_relative
from fairbench.errors import FairbenchError
from fairbench.models import has_average, unwrap_state_dict
from fairbench.results import CHECKPOINT_FILE, CONFIG_FILE, load_checkpoint, sha256_file


def read_init_source(cfg: RunConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The source run's evaluated weights and the record kept of it; one error line if unusable."""
    assert cfg.init_from is not None
    folder = Path(cfg.init_from)
    where = f"--init-from {cfg.init_from}"
    if folder.is_file():
        return _read_file(folder, where, cfg.out)
    if not folder.is_dir():
        raise FairbenchError(f"{where}: no such folder or file (give a run folder, RESULTS/runs/<run-id>, "
                             f"or a checkpoint file)")
    source = _source_config(folder, where)
    differ = [f"{key} '{source.get(key)}' (this run: '{getattr(cfg, key)}')"
              for key in ("arch", "dataset") if source.get(key) != getattr(cfg, key)]
    if differ:
        raise FairbenchError(f"{where} was trained with another {' and '.join(differ)}")
    ckpt = folder / CHECKPOINT_FILE
    if not ckpt.is_file():
        raise FairbenchError(f"{where}: no {CHECKPOINT_FILE}; --init-from needs the source run's "
                             f"checkpoint, which committed results do not carry (rerun the source "
                             f"run, or use its folder on the machine that trained it)")
    state = load_checkpoint(ckpt)
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise FairbenchError(f"{where}: {ckpt} is not a fairbench training checkpoint "
                             f"(no {', '.join(missing)})")
    epochs = source.get("epochs")
    if "mid_epoch" in state or not isinstance(epochs, int) or state["epoch"] != epochs:
        raise FairbenchError(f"{where} is not a finished run: its checkpoint is after epoch "
                             f"{state['epoch']} of {epochs}; finish it first (fairbench resume "
                             f"{cfg.init_from})")
    weights = unwrap_state_dict(state, f"{where}: {ckpt}")  # its average, when it kept one
    averaged = has_average(state)
    prior = source.get("init_source") or {}
    before = prior.get("budget_epochs", 0)
    record = {"run_dir": results_relative(folder, cfg.out), "run_id": source.get("run_id", folder.name),
              "method": source.get("method"), "epochs": epochs,
              "budget_epochs": epochs + before if isinstance(before, int) else None,
              "weights": "averaged" if averaged else "last",
              "checkpoint_sha256": sha256_file(ckpt),
              # its own source is named, not nested: a chain of runs stays a flat record
              "config": {k: v for k, v in source.items() if k != "init_source"}
              | {"init_source": prior.get("run_id") or prior.get("file")}}
    return weights, record


def _read_file(path: Path, where: str, out: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint made elsewhere: its weights (``{'state_dict': ...}`` / ``{'model': ...}``
    wrappers and DDP prefixes accepted); the architecture is checked when they are loaded."""
    weights = unwrap_state_dict(load_checkpoint(path), where)
    record = {"file": results_relative(path, out), "run_id": None, "method": None, "epochs": None,
              "budget_epochs": None, "weights": "file", "checkpoint_sha256": sha256_file(path), "config": None}
    return weights, record


def _source_config(folder: Path, where: str) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FairbenchError(f"{where} is not a run folder (no {CONFIG_FILE})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FairbenchError(f"{where}: {path} is unreadable ({str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise FairbenchError(f"{where}: {path} is not a JSON object")
    return data
