"""What `fairbench run --resume` checks in a checkpoint before it loads the states beside the weights.

A run folder may hold a checkpoint that this run did not write (a folder copied from someone, a
file put there on purpose). ``torch.load(weights_only=True)`` runs no code, and the weights are
checked by `fairbench.models.load_model_state`; but the optimizer's, the scheduler's and the
method's states, the RNG states and a preempted epoch's plan were loaded as they were: an RNG
state of ints, a momentum buffer of the wrong shape or a plan that indexes past the training set
failed epochs later with a traceback (on a GPU, a device-side assert). `check_resume_state`
compares each part with what this run builds itself, its types, shapes, lengths and ranges, and
refuses a checkpoint that does not fit with one `FairbenchError` naming the part.

What it cannot know: where a fresh method state holds ``None`` (a state the method fills in
later), any dense real tensor is accepted there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from fairbench.errors import FairbenchError
from fairbench.methods.base import MAX_PLAN_FACTOR
from fairbench.train.rng import rng_state

# the fields of an epoch's log.jsonl record that the trainer writes itself (a preempted epoch's
# saved log is merged into the record: it must not overwrite them)
LOG_FIELDS = ("epoch", "lr", "loss", "examples", "seconds", "images_per_s")
MAX_RANKS = 1 << 16


class _Bad(Exception):
    """A part of the checkpoint that does not fit; `check_resume_state` names the part."""


def check_resume_state(
    state: dict[str, Any],
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    method: Any,
    epochs: int,
    n_train: int,
    device: torch.device | None = None,
) -> None:
    """Refuse (FairbenchError, one line) a checkpoint whose non-weight parts this run cannot
    continue from: see the module's docstring. ``state`` passed `check_resumable` already."""
    parts = {
        "epoch": lambda v: _need(_is_int(v) and 0 <= v <= epochs, f"is not an epoch in [0, {epochs}]"),
        "train_seconds": lambda v: _need(
            v is None or (_is_number(v) and 0 <= v < math.inf), "is not a number of seconds"
        ),
        "images_seen": lambda v: _need(v is None or (_is_int(v) and v >= 0), "is not a count"),
        "optimizer": lambda v: _check_optimizer(v, optimizer),
        "scheduler": lambda v: _check_scheduler(v, scheduler.state_dict()),
        "method": lambda v: _like(v, method.state_dict(), none_is_tensor=True),
        "rng": lambda v: _check_rng(v, device),
        "rng_ranks": lambda v: _check_rng_ranks(v, device),
        "mid_epoch": lambda v: _check_mid_epoch(v, model, n_train),
        "selection": lambda v: _check_selection(v, model, epochs),
        "averaged": lambda v: _check_averaged(v),
    }
    for part, check in parts.items():
        try:
            check(state.get(part))
        except _Bad as exc:
            raise FairbenchError(f"{path}: cannot resume from this checkpoint: its {part} {exc}") from None


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise _Bad(what)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def _is_dense(v: Any) -> bool:
    """A real tensor with data: strided, not on the meta device, not complex."""
    return isinstance(v, torch.Tensor) and v.layout == torch.strided and v.device.type != "meta" and not v.is_complex()


def _like(loaded: Any, fresh: Any, none_is_tensor: bool, where: str = "") -> None:
    """``loaded`` has ``fresh``'s structure: the same keys and lengths, tensors of the same shape
    and kind, numbers where numbers are; ``None`` in ``fresh`` also admits a tensor when
    ``none_is_tensor`` (a state a method fills in later)."""
    at = f" at {where}" if where else ""
    if isinstance(fresh, dict):
        _need(
            isinstance(loaded, dict) and set(loaded) == set(fresh),
            f"does not have the keys this run has{at} ({sorted(map(str, fresh))[:8]})",
        )
        for key in fresh:
            _like(loaded[key], fresh[key], none_is_tensor, f"{where}.{key}" if where else str(key))
    elif isinstance(fresh, (list, tuple)):
        _need(isinstance(loaded, (list, tuple)) and len(loaded) == len(fresh), f"is not a list of {len(fresh)}{at}")
        for i, (a, b) in enumerate(zip(loaded, fresh)):
            _like(a, b, none_is_tensor, f"{where}[{i}]")
    elif isinstance(fresh, torch.Tensor):
        _need(
            _is_dense(loaded)
            and loaded.shape == fresh.shape
            and loaded.is_floating_point() == fresh.is_floating_point()
            and (loaded.dtype == torch.bool) == (fresh.dtype == torch.bool),
            f"is not a {fresh.dtype} tensor of shape {tuple(fresh.shape)}{at}",
        )
    elif fresh is None:
        _need(
            loaded is None or (none_is_tensor and _is_dense(loaded)),
            f"is not {'None or a tensor' if none_is_tensor else 'None'}{at}",
        )
    elif isinstance(fresh, bool):
        _need(isinstance(loaded, bool), f"is not true or false{at}")
    elif isinstance(fresh, (int, float)):
        _need(_is_number(loaded) and (isinstance(fresh, float) or _is_int(loaded)), f"is not a number{at}")
    elif isinstance(fresh, str):
        _need(isinstance(loaded, str), f"is not text{at}")
    else:
        _need(type(loaded) is type(fresh), f"is not a {type(fresh).__name__}{at}")


def _check_optimizer(loaded: Any, optimizer: torch.optim.Optimizer) -> None:
    """The same parameter groups over the same parameters, and a state per parameter whose tensors
    have the parameter's shape (momentum) or hold one number (a step count)."""
    fresh = optimizer.state_dict()
    _need(
        isinstance(loaded, dict)
        and isinstance(loaded.get("state"), dict)
        and isinstance(loaded.get("param_groups"), list),
        "is not an optimizer's state",
    )
    _need(
        len(loaded["param_groups"]) == len(fresh["param_groups"]),
        f"has not {len(fresh['param_groups'])} parameter group(s)",
    )
    params: dict[int, torch.Tensor] = {}  # the saved state's parameter ids -> this run's parameters
    for i, (group, mine, live) in enumerate(zip(loaded["param_groups"], fresh["param_groups"], optimizer.param_groups)):
        _need(
            isinstance(group, dict) and group.get("params") == mine["params"],
            f"group {i} is not over this model's parameters",
        )
        for key, value in group.items():  # numbers where this run has numbers; flags and names
            # (``fused`` differs between a CUDA and a CPU run) as they are
            if key != "params" and _is_number(mine.get(key)):
                _need(_is_number(value), f"group {i} has a {key} that is not a number")
            elif key != "params":
                _need(value is None or isinstance(value, (bool, str)), f"group {i} has a {key} that is not a flag")
        params.update(zip(mine["params"], live["params"]))
    for pid, entry in loaded["state"].items():
        _need(pid in params and isinstance(entry, dict), f"has a state for an unknown parameter {pid!r}")
        shape = params[pid].shape
        for key, value in entry.items():
            _need(
                value is None
                or _is_number(value)
                or (
                    _is_dense(value)
                    and value.is_floating_point()
                    and (value.shape == shape or (key != "momentum_buffer" and value.numel() == 1))
                ),
                f"state of parameter {pid} has a {key} that is not a tensor of shape {tuple(shape)}",
            )


def _check_scheduler(loaded: Any, fresh: dict[str, Any]) -> None:
    """The learning-rate schedule's counters: no field this run's scheduler lacks (loading one
    sets it as an attribute), each of the type and length this run's has."""
    _need(isinstance(loaded, dict) and set(loaded) <= set(fresh), "is not this run's schedule")
    for key, value in loaded.items():
        _like(value, fresh[key], none_is_tensor=False, where=key)


def _check_rng(loaded: Any, device: torch.device | None) -> None:
    fresh = rng_state(device)
    _need(
        isinstance(loaded, dict) and set(fresh) - {"cuda"} <= set(loaded) <= set(fresh) | {"cuda"},
        "is not an RNG state",
    )
    py = loaded["python"]
    _need(
        isinstance(py, list)
        and len(py) == len(fresh["python"])
        and all(_is_int(v) for v in py)
        and all(0 <= v < 2**32 for v in py[:-1])
        and 0 <= py[-1] <= 624,
        "python is not an RNG state",
    )
    _like(loaded["numpy"], fresh["numpy"], none_is_tensor=False, where="numpy")
    n = loaded["numpy"]
    _need(
        0 <= n["pos"] <= 624
        and n["has_gauss"] in (0, 1)
        and n["keys"].dtype == torch.int64
        and bool(((n["keys"] >= 0) & (n["keys"] < 2**32)).all()),
        "numpy is not an RNG state",
    )
    _need(
        _is_dense(loaded["torch"])
        and loaded["torch"].dtype == torch.uint8
        and loaded["torch"].shape == fresh["torch"].shape,
        "torch is not an RNG state",
    )
    if "cuda" in loaded and "cuda" in fresh:
        _need(
            _is_dense(loaded["cuda"])
            and loaded["cuda"].dtype == torch.uint8
            and loaded["cuda"].shape == fresh["cuda"].shape,
            "cuda is not an RNG state",
        )


def _check_rng_ranks(loaded: Any, device: torch.device | None) -> None:
    if loaded is None:
        return
    _need(isinstance(loaded, list) and 0 < len(loaded) <= MAX_RANKS, "is not a list of RNG states")
    for rank in loaded:
        _check_rng(rank, device)


def _check_mid_epoch(loaded: Any, model: torch.nn.Module, n_train: int) -> None:
    """A preempted epoch: its step, its plan (indices into the training set), its loss and log."""
    if loaded is None:
        return
    _need(
        isinstance(loaded, dict)
        and {"step", "plan", "log", "loss_sum", "seconds"}
        <= set(loaded)
        <= {"step", "plan", "log", "loss_sum", "seconds", "buffer_ranks"},
        "is not a preempted epoch's state",
    )
    _need(_is_int(loaded["step"]) and loaded["step"] >= 0, "step is not a step")
    _need(_is_number(loaded["seconds"]) and 0 <= loaded["seconds"] < math.inf, "seconds is not a duration")
    loss = loaded["loss_sum"]
    _need(_is_dense(loss) and loss.is_floating_point() and loss.numel() == 1, "loss_sum is not one number")
    log = loaded["log"]
    try:
        json.dumps(log, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        raise _Bad("log is not a JSON record") from None
    _need(
        isinstance(log, dict) and all(isinstance(k, str) and k not in LOG_FIELDS for k in log),
        "log is not a record of the method's own fields",
    )
    plan = loaded["plan"]
    _need(
        isinstance(plan, dict) and "indices" in plan and set(plan) <= {"indices", "augment", "eps", "weight"},
        "plan is not an epoch's plan",
    )
    idx = plan["indices"]
    _need(
        _is_dense(idx)
        and idx.dtype == torch.int64
        and idx.dim() == 1
        and 0 < len(idx) <= MAX_PLAN_FACTOR * n_train
        and bool(((idx >= 0) & (idx < n_train)).all()),
        f"plan's indices are not 1 to {MAX_PLAN_FACTOR}x{n_train} positions in the training set",
    )
    augment = plan.get("augment")
    _need(
        augment is None or (_is_dense(augment) and augment.shape == idx.shape and augment.dtype == torch.bool),
        "plan's augment is not one flag per entry",
    )
    for key in ("eps", "weight"):  # a saved plan is complete: the trainer filled in the defaults
        v = plan.get(key)
        _need(
            _is_dense(v) and v.shape == idx.shape and v.is_floating_point() and bool(v.isfinite().all()),
            f"plan's {key} is not one finite number per entry",
        )
    ranks = loaded.get("buffer_ranks")
    if ranks is not None:
        buffers = {k: v for k, v in model.named_buffers()}
        _need(isinstance(ranks, list) and 0 < len(ranks) <= MAX_RANKS, "buffer_ranks is not a list")
        for i, rank in enumerate(ranks):
            _need(isinstance(rank, dict) and set(rank) <= set(buffers), f"buffer_ranks[{i}] names unknown buffers")
            for name, value in rank.items():
                _like(value, buffers[name], none_is_tensor=False, where=f"buffer_ranks[{i}].{name}")


def _check_selection(loaded: Any, model: torch.nn.Module, epochs: int) -> None:
    """--select best-val: the best score, its epoch and its weights (or none yet)."""
    if loaded is None:
        return
    _need(
        isinstance(loaded, dict) and set(loaded) == {"best_score", "best_epoch", "best_model"},
        "is not a best-val selection's state",
    )
    _need(_is_number(loaded["best_score"]), "best_score is not a number")
    _need(_is_int(loaded["best_epoch"]) and 0 <= loaded["best_epoch"] <= epochs, "best_epoch is not an epoch")
    if loaded["best_model"] is not None:
        _like(loaded["best_model"], model.state_dict(), none_is_tensor=False, where="best_model")


def _check_averaged(loaded: Any) -> None:
    """The weight average: its weights are checked when loaded; here its count and decay."""
    if loaded is None:
        return
    _need(isinstance(loaded, dict) and isinstance(loaded.get("weights"), dict), "is not a weight average")
    n = loaded.get("n_averaged")
    _need(
        _is_int(n) or (_is_dense(n) and n.numel() == 1 and not n.is_floating_point() and n.dtype != torch.bool),
        "n_averaged is not a count",
    )
