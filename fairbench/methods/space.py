"""Search spaces: the distribution of each hyperparameter a tuning trial draws (torch-free).

A method declares its own knobs in a class attribute ``space`` beside its ``Params`` (the paper's
defaults stay in ``Params``, and are what `fairbench run` uses); every method's space also holds
the shared training hyperparameters of `TRAINING_SPACE`, so PGD-AT gets the same budget as
everyone else. A key of a space is either a field of the method's ``Params`` or one of
`RUN_KEYS`, a `fairbench run` option (a method may narrow or widen a shared one, as FAAL does for
its fine-tuning learning rate, or add ``epochs``).

Three kinds of distribution, as DomainBed declares its hyperparameters: `LogUniform`, `Uniform`
(floats, or integers with ``integer=True``) and `Choice` (a finite set, drawn uniformly).
Parameters that another parameter switches off (FairAT's ``threshold`` when ``selection`` is
``fraction``) are drawn anyway and have no effect: random search stays one flat draw per trial.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from fairbench.errors import FairbenchError

# `fairbench run` options a space may hold (values are passed as --lr, --weight-decay, --epochs)
RUN_KEYS = ("lr", "weight_decay", "epochs")


@dataclass(frozen=True)
class _Range:
    """A number between ``low`` and ``high`` (integers with ``integer=True``)."""

    low: float
    high: float
    integer: bool = False
    label: ClassVar[str] = ""
    needs: ClassVar[str] = "low < high"

    def check(self, name: str) -> None:
        if not (_finite(self.low) and _finite(self.high) and self.low < self.high and self._bounds_ok()):
            raise FairbenchError(
                f"space '{name}': {type(self).__name__} needs {self.needs}, got ({self.low!r}, {self.high!r})"
            )
        if self.integer and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise FairbenchError(f"space '{name}': an integer {type(self).__name__} needs integer bounds")

    def _bounds_ok(self) -> bool:
        return True

    def contains(self, value: Any) -> bool:
        return _is_number(value, self.integer) and self.low <= value <= self.high

    def describe(self) -> str:
        return f"{self.label}[{_num(self.low)}, {_num(self.high)}]" + (" (integer)" if self.integer else "")


@dataclass(frozen=True)
class LogUniform(_Range):
    """``exp(uniform(log low, log high))``: scale parameters (learning rates, step sizes)."""

    label: ClassVar[str] = "log-uniform"
    needs: ClassVar[str] = "0 < low < high"

    def _bounds_ok(self) -> bool:
        return self.low > 0


@dataclass(frozen=True)
class Uniform(_Range):
    """``uniform(low, high)`` (integers with ``integer=True``: each of low..high equally likely)."""

    label: ClassVar[str] = "uniform"


@dataclass(frozen=True)
class Choice:
    """One of ``values``, each equally likely (bools, numbers or strings)."""

    values: tuple[Any, ...]

    def __init__(self, *values: Any) -> None:
        object.__setattr__(self, "values", tuple(values))

    def check(self, name: str) -> None:
        if len(self.values) < 2:
            raise FairbenchError(f"space '{name}': Choice needs at least 2 values, got {list(self.values)}")
        if len(set(map(repr, self.values))) != len(self.values):
            raise FairbenchError(f"space '{name}': Choice has a repeated value: {list(self.values)}")
        for v in self.values:
            if not isinstance(v, (bool, int, float, str)) or (isinstance(v, float) and not math.isfinite(v)):
                raise FairbenchError(
                    f"space '{name}': Choice values must be finite numbers, bools or strings, got {v!r:.40}"
                )

    def contains(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values) or (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and any(isinstance(v, (int, float)) and not isinstance(v, bool) and value == v for v in self.values)
        )

    def describe(self) -> str:
        return (
            "one of {"
            + ", ".join(
                _num(v) if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)
                for v in self.values
            )
            + "}"
        )


Distribution = LogUniform | Uniform | Choice

# The shared training hyperparameters, in every method's space. lr around the protocols' 0.05
# (fmnist-standard) and 0.1 (the papers'); weight decay: the fmnist-standard preset's 0 and the
# papers' 2e-4 (WAT, BAT) and 5e-4 (PGD-AT, TRADES, FRL, CFA, DAFA, FairAT).
TRAINING_SPACE: dict[str, Distribution] = {
    "lr": LogUniform(0.01, 0.2),
    "weight_decay": Choice(0.0, 1e-4, 2e-4, 5e-4),
}


def method_space(method_cls: type) -> dict[str, Distribution] | None:
    """The whole space of a method: `TRAINING_SPACE` updated with its own ``space``; None when the
    method declares none (it runs with `fairbench run`, and `fairbench tune` refuses it)."""
    own = getattr(method_cls, "space", None)
    if own is None:
        return None
    return {**TRAINING_SPACE, **own}


def check_space(method: str, space: Mapping[str, Distribution], params: Any, run_defaults: Mapping[str, Any]) -> None:
    """Raise FairbenchError unless every distribution is valid, every key is a parameter of the
    method (``params``: its default ``Params``) or one of `RUN_KEYS`, and every default lies in
    its distribution (``run_defaults`` gives the run keys' defaults of the protocol)."""
    fields = {f.name for f in dataclasses.fields(params)} if dataclasses.is_dataclass(params) else set()
    for name, dist in space.items():
        if not isinstance(dist, (LogUniform, Uniform, Choice)):
            raise FairbenchError(f"{method}: space '{name}' is not a LogUniform, Uniform or Choice: {dist!r:.60}")
        dist.check(f"{method}.{name}")
        if name in RUN_KEYS:
            default = run_defaults.get(name)
        elif name in fields:
            default = getattr(params, name)
        else:
            raise FairbenchError(
                f"{method}: space '{name}' is neither a parameter of the method "
                f"({', '.join(sorted(fields)) or 'none'}) nor one of {', '.join(RUN_KEYS)}"
            )
        if default is not None and not dist.contains(default):
            raise FairbenchError(f"{method}: the default {name}={default!r} lies outside its space {dist.describe()}")


def describe_space(space: Mapping[str, Distribution]) -> dict[str, str]:
    """``{name: "log-uniform[0.01, 0.2]", ...}``: what `fairbench list` prints and a study records."""
    return {name: dist.describe() for name, dist in space.items()}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return float(value).is_integer() if integer else True


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)
