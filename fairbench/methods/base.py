"""The method interface: what a training method may decide, and what the core gives it.

A method is one class in ``fairbench/methods/``, registered with ``@register_method(name)``. It declares its
hyperparameters in a nested ``Params`` dataclass (the paper's defaults), plans each epoch
(`EpochPlan`), computes the batch loss from the shared attack and base losses, and updates its own
state at the end of each epoch. Everything else (data, loop, attack, checkpoints) is the core's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fairbench.data.datasets import map_sharded
from fairbench.distributed import DistInfo
from fairbench.errors import FairbenchError
from fairbench.eval.attacks import eval_mode
from fairbench.methods.class_stats import ClassStats

if TYPE_CHECKING:
    from fairbench.config import RunConfig
    from fairbench.data.datasets import DatasetSpec, Split


@dataclass
class EpochPlan:
    """This epoch's training set: entries index the training split (repeats allowed).

    ``augment`` marks entries that get the method's extra augmentation (`Method.augment`) on top
    of the standard one; ``eps`` and ``weight`` are per-entry attack radius and loss weight.
    """

    indices: torch.Tensor
    augment: torch.Tensor | None = None
    eps: torch.Tensor | None = None
    weight: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def take(self, positions: torch.Tensor) -> "EpochPlan":
        """The plan restricted to (and reordered by) ``positions``."""
        pick = lambda t: None if t is None else t[positions]  # noqa: E731
        return EpochPlan(self.indices[positions], pick(self.augment), pick(self.eps), pick(self.weight))


@dataclass(kw_only=True)
class EpochContext:
    """What a method sees at the start and end of an epoch (built with keyword arguments only)."""

    epoch: int  # 0-based
    epochs: int
    model: nn.Module  # the bare model (never DDP-wrapped)
    spec: "DatasetSpec"
    train: "Split"  # uint8 images and labels on the device
    val: "Split | None"
    config: "RunConfig"
    device: torch.device
    dist: "DistInfo"
    log: dict[str, Any] = field(default_factory=dict)  # merged into this epoch's log.jsonl record

    def map_batches(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        split: "Split | None" = None,
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply ``fn(x_float, y) -> per-example tensor`` over a split in large batches.

        Each rank computes a contiguous shard and the shards are gathered, so every rank gets the
        full result in the order of ``indices`` (default: the whole split).
        """
        assert self.config.eval_batch_size is not None  # filled in by RunConfig.resolve
        return map_sharded(fn, self.train if split is None else split, self.dist, self.config.eval_batch_size, indices)

    def per_example_loss(
        self, model: nn.Module | None = None, split: "Split | None" = None, indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cross-entropy of each (un-augmented) example under ``model`` in eval mode, no grad."""
        model = self.model if model is None else model

        def ce(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(model(x).float(), y, reduction="none")

        with torch.no_grad(), eval_mode(model):
            return self.map_batches(ce, split, indices)


@dataclass(kw_only=True)
class BatchContext:
    """One training batch: inputs already augmented, float in [0, 1] (keyword arguments only)."""

    model: nn.Module  # the training model (DDP-wrapped under torchrun): use it for the loss forward
    attack_model: nn.Module  # the bare model: use it for attacks
    x: torch.Tensor
    y: torch.Tensor
    eps: torch.Tensor  # per example
    step_size: torch.Tensor  # per example
    steps: int  # PGD steps for training
    weight: torch.Tensor  # per example
    epoch: int
    spec: "DatasetSpec"
    dist: DistInfo = field(default_factory=DistInfo)  # for a statistic of the whole (global) batch


MAX_PLAN_FACTOR = 16  # an epoch's plan holds at most this many times the training set's examples


@dataclass
class NoParams:
    """A method without hyperparameters."""


class Method:
    """Base class: the default plan is every training example once, standard augmentation.

    ``name`` is set by ``@register_method(name)``. ``requires_init``: the method fine-tunes a
    finished run, so a run of it needs ``--init-from RUN_DIR`` (FAAL).
    """

    Params: ClassVar[type] = NoParams
    # `fairbench tune`'s search space: {hyperparameter: distribution} (`fairbench.methods.space`), on
    # top of the shared training space; None: the method cannot be tuned (`tune` says so)
    space: ClassVar[dict[str, Any] | None] = None
    name: ClassVar[str] = ""
    requires_init: ClassVar[bool] = False

    def __init__(self, params: Any, config: "RunConfig") -> None:
        self.params = params
        self.config = config

    @classmethod
    def plan_factor(cls, params: Any) -> float:
        """The largest epoch plan ``params`` can make, as a multiple of the training set, for a
        training set of any size (the default plan: 1).

        A method whose parameters repeat examples says so here: `parse_params` refuses parameters
        over `MAX_PLAN_FACTOR` before anything runs, and the trainer refuses a larger plan.
        """
        return 1.0

    def plan_epoch(self, ctx: EpochContext) -> EpochPlan:
        return EpochPlan(torch.arange(len(ctx.train), device=ctx.device))

    def augment(self, ctx: BatchContext, mask: torch.Tensor) -> torch.Tensor:
        """Extra augmentation of the entries in ``mask`` (called only when the plan sets one)."""
        return ctx.x

    def loss(self, ctx: BatchContext) -> torch.Tensor:
        raise NotImplementedError

    def end_epoch(self, ctx: EpochContext) -> None:
        pass

    def weight_averaging(self) -> float | None:
        """The decay of a weight average the method keeps itself (CFA's FAWA), or None.

        The trainer then keeps the average (`fairbench.train.averaging`), asks `accept_average` after
        every epoch, and evaluates and checkpoints the average; ``--ema`` is refused alongside.
        """
        return None

    def accept_average(self, ctx: EpochContext) -> bool:
        """Whether this epoch's weights enter the average (called after `end_epoch`, on every rank)."""
        return True

    def class_stats(self) -> list[ClassStats]:
        """The method's per-class training statistics (its `ClassStats` attributes), which the
        trainer keeps exact under DDP across checkpoints."""
        return [v for v in vars(self).values() if isinstance(v, ClassStats)]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def require_validation_split(config: "RunConfig", method: str, usage: str) -> None:
    """Refuse, in one line, a run of a method that needs ``--val-per-class`` without it."""
    if config.val_per_class is None:
        raise FairbenchError(f"{method} {usage}: pass --val-per-class K")


def parse_params(method_cls: type[Method], raw: dict[str, Any]) -> Any:
    """Build the method's Params from ``name=value`` strings (or typed values), with clear errors."""
    params_cls = method_cls.Params
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    values = {}
    for name, value in raw.items():
        if name not in fields:
            valid = ", ".join(fields) or "none"
            raise FairbenchError(f"unknown parameter '{name}' for method '{method_cls.name}'; its parameters: {valid}")
        values[name] = coerce(value, fields[name], method_cls.name)
    params = params_cls(**values)
    validate = getattr(params, "validate", None)
    if callable(validate):
        validate()
    factor = method_cls.plan_factor(params)
    if not factor <= MAX_PLAN_FACTOR:  # NaN too
        given = ", ".join(f"{k}={v}" for k, v in raw.items())
        raise FairbenchError(
            f"{method_cls.name}: these parameters ({given}) plan up to {factor:.4g}x the "
            f"training set per epoch; at most {MAX_PLAN_FACTOR}x is allowed"
        )
    return params


def coerce(value: Any, f: dataclasses.Field, method: str) -> Any:
    """Convert a CLI string (or a value read back from config.json) to the field's declared type.

    bool, int, float and str are understood; a float must be finite. Anything else is a clear error.
    """
    default = f.default if f.default is not dataclasses.MISSING else None
    kind: type[Any] = type(default) if default is not None else str
    problem = f"parameter '{f.name}' of method '{method}' must be a"
    if not isinstance(value, str):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind and not (kind not in (bool, int, float, str) and isinstance(value, kind)):
            raise FairbenchError(f"{problem} {kind.__name__}, got {value!r:.60}")
        if kind is float and not math.isfinite(value):
            raise FairbenchError(f"{problem} finite number, got {value!r}")
        return value
    try:
        if kind is bool:
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        out = kind(value)
    except (ValueError, TypeError, OverflowError):
        raise FairbenchError(f"{problem} {kind.__name__}, got {value[:60]!r}") from None
    if kind is float and not math.isfinite(out):
        raise FairbenchError(f"{problem} finite number, got {value[:60]!r}")
    return out
