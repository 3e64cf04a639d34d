"""How each threat decides, per example, whether a model is right: the torch half of a threat.

What a threat is (name, label, column order, settings, subset key) is torch-free, in
`fairbench.specs.threats` (re-exported here). A threat's `Threat.decider` says for a chunk of
examples whether the model is right on each under that threat. A new threat is one class: a
`Threat` subclass (its metadata and its decider) registered with ``@register_threat(name)``; the
evaluator, the results schema and the report take their threat names from the registry. The
built-in threats' metadata are `fairbench.specs.threats`' classes, and their deciders the classes of
the same names here (`BUILTIN`).
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

import fairbench.specs.threats as specs
from fairbench.errors import FairbenchError
from fairbench.eval.attacks import input_gradient_only, pgd
from fairbench.specs.threats import (  # noqa: F401
    AA_ATTACKS,
    AA_VERSION,
    CLEAN,
    PGD_EVAL_STEPS,
    THREATS,
    UNION,
    UNION_LABEL,
    ThreatSpec,
    register_threat,
    threat_label,
    threat_names,
)

BOUND_TOL = 1e-5

Progress = Callable[[str], None]
BatchFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ChunkFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (x, y, seed) -> correct


class Threat(ThreatSpec):
    """A threat that runs: `ThreatSpec`'s metadata plus `decider`."""

    def decider(self, model: nn.Module, *, eps: float, batch_size: int, progress: Progress) -> ChunkFn:
        """``fn(x, y, seed) -> bool tensor``: whether ``model`` is right on each example of a chunk."""
        raise NotImplementedError


def get_threat(name: str) -> Threat:
    """Threat ``name``, ready to run: its registered class when that is a `Threat`, else the built-in
    decider of that name."""
    cls = THREATS.get(name)
    runnable = cls if isinstance(cls, type) and issubclass(cls, Threat) else BUILTIN.get(name)
    if runnable is None:
        raise FairbenchError(f"threat '{name}' has no decider (register a fairbench.eval.threats.Threat subclass)")
    return runnable()


def in_batches(fn: BatchFn, batch_size: int) -> BatchFn:
    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        outs = [fn(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]
        return torch.cat(outs) if outs else torch.zeros(0, dtype=torch.bool, device=y.device)

    return run


def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Whether the model's prediction on each (unperturbed) input is right."""
    with torch.no_grad():
        return model(x).argmax(1) == y


class Clean(specs.Clean, Threat):
    def decider(self, model: nn.Module, *, eps: float, batch_size: int, progress: Progress) -> ChunkFn:
        return lambda x, y, seed: in_batches(lambda a, b: clean_correct(model, a, b), batch_size)(x, y)


class PGD20(specs.PGD20, Threat):
    def decider(self, model: nn.Module, *, eps: float, batch_size: int, progress: Progress) -> ChunkFn:
        return lambda x, y, seed: in_batches(lambda a, b: pgd_correct(model, a, b, eps), batch_size)(x, y)


def pgd_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """PGD-20, random start, step eps/4, CE: the standard evaluation of AT papers."""
    x_adv = pgd(model, x, y, eps=eps, step_size=eps / 4, steps=PGD_EVAL_STEPS)
    return clean_correct(model, x_adv, y)


class AutoAttack(specs.AutoAttack, Threat):
    def decider(self, model: nn.Module, *, eps: float, batch_size: int, progress: Progress) -> ChunkFn:
        return lambda x, y, seed: autoattack_correct(
            model, x, y, eps=eps, seed=seed, batch_size=batch_size, progress=progress
        )


def autoattack_correct(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int, batch_size: int, progress: Progress
) -> torch.Tensor:
    """Standard L-inf AutoAttack on ``x`` (fp32, eval mode); True where it found no adversarial.

    The attack is pyautoattack's, unchanged; only how it is fed is chosen for speed
    (bench/README.md): the model runs channels-last with frozen weights (`attack_ready`), and
    AutoAttack's batches are even. It attacks the images the model gets right in batches of
    the size it is given, last one short; a remainder of a few images would spend each robust
    image's 7,858 passes at a batch size where the per-call overhead dominates, so the size
    passed is the one that splits those images into as many batches, evenly.
    """
    from pyautoattack import AutoAttack as Adversary

    if len(y) == 0:
        return torch.zeros(0, dtype=torch.bool, device=y.device)
    odd = {p.dtype for p in model.parameters() if p.dtype != torch.float32}
    if odd:
        raise FairbenchError(f"AutoAttack runs in fp32; the model has {sorted(map(str, odd))} weights")
    adversary = Adversary(model, norm="Linf", eps=eps, version=AA_VERSION, device=x.device, seed=seed)
    predict = in_batches(lambda a, b: clean_correct(model, a, b), batch_size)
    with attack_ready(model), aa_logging(progress), torch.autocast(x.device.type, enabled=False):
        right = int(predict(x, y).sum())  # what AutoAttack will attack, in ceil(right / batch_size) batches
        even = math.ceil(right / math.ceil(right / batch_size)) if right else batch_size
        x_adv, y_adv = adversary.run_standard_evaluation(x.float(), y, batch_size=even)
        again = predict(x_adv, y)
    if (x_adv - x).abs().amax() > eps + BOUND_TOL or x_adv.min() < 0 or x_adv.max() > 1:
        raise RuntimeError("AutoAttack returned images outside the eps-ball or [0, 1]")
    return (y_adv == y) & again


BUILTIN: dict[str, type[Threat]] = {"clean": Clean, "pgd20": PGD20, "autoattack": AutoAttack}


@contextmanager
def attack_ready(model: nn.Module) -> Iterator[None]:
    """Run ``model`` channels-last with frozen weights for the block; restore both after.

    Frozen weights: FAB-T takes its input gradients with ``.backward()``, which would also
    compute (and leave behind in ``.grad``) every weight's gradient, a third more work per
    step. Channels-last: the trainer's default memory format, 2x faster on the CPU for the
    testbed network; a model loaded by ``fairbench eval`` arrives in NCHW. Neither changes a
    value AutoAttack computes beyond floating-point rounding of the convolutions.
    """
    saved = [(t, t.data) for t in [*model.parameters(), *model.buffers()]]
    with input_gradient_only(model):
        try:
            model.to(memory_format=torch.channels_last)
            yield
        finally:
            for t, data in saved:
                t.data = data


class _ProgressHandler(logging.Handler):
    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.DEBUG)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        self.progress(f"  autoattack: {record.getMessage()}")


@contextmanager
def aa_logging(progress: Progress) -> Iterator[None]:
    """Show pyautoattack's ``auto-attack`` logger (it logs at DEBUG) through ``progress``."""
    logger = logging.getLogger("auto-attack")
    handler = _ProgressHandler(progress)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
