"""Per-class evaluation: clean, PGD-20 and AutoAttack, one pass over the data per threat.

What one example's outcome means (every number in metrics.json is grouped from these):

- ``clean``: the prediction on the unperturbed image is right.
- ``pgd20``: clean-correct AND still right after PGD-20 (random start, step eps/4, CE loss),
  fairbench's one PGD (`fairbench.attacks.pgd`).
- ``autoattack``: clean-correct AND AutoAttack (pyautoattack, standard version: APGD-CE, APGD-T,
  FAB-T, Square) found no adversarial example: the label it returns (``y_adv``) is right and its
  returned image, predicted again, is still right. This is AutoAttack's *own* outcome, not combined
  with PGD-20: AutoAttack is stronger in aggregate but not per example, so an example may survive
  AutoAttack and fall to PGD-20 (``autoattack <= pgd20`` holds per class in practice, not by
  construction).
- ``union``: right under every threat that was run (the AND of the above), reported whenever an
  attack ran. An attacker picks the attack per example, so this is the robust number to rank by.

Hence, per example and per class: pgd20 <= clean, autoattack <= clean, union <= each.
Per-class numbers come from grouping by label (`summarize`); no attack is rerun per class.

The evaluation runs with cuDNN autotuning and TF32 off (`exact_fp32`; recorded in metrics.json's
``env.eval_backend``): AutoAttack's batch shapes change all the time, so autotuning would re-time
its kernels for every new shape, and with TF32 an "fp32" evaluation would run its convolutions
with 10-bit mantissas.

Every chunk of examples runs inside ``torch.random.fork_rng`` with a seed derived from ``seed``
(pyautoattack reseeds the global RNG), so evaluations are reproducible, the caller's RNG is left
alone, and a killed evaluation resumed from ``state_dir`` (see `fairbench.eval_state`) gives the
same numbers as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from fairbench.attacks import eval_mode, pgd
from fairbench.config import THREATS
from fairbench.data import Split, map_sharded
from fairbench.distributed import DistInfo
from fairbench.errors import FairbenchError
from fairbench.eval_state import EvalState, StageProgress, fingerprint

PGD_EVAL_STEPS = 20
AA_VERSION = "standard"
AA_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")  # what pyautoattack's standard version runs
CHUNK_SIZE = 1000  # examples per saved chunk: the most work a killed evaluation loses per threat
BOUND_TOL = 1e-5
EVAL_BACKEND = {"cudnn_benchmark": False, "tf32": False}  # what `exact_fp32` sets; kept in env

Progress = Callable[[str], None]
BatchFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ChunkFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (x, y, seed) -> correct


def per_class_accuracy(correct: torch.Tensor, labels: torch.Tensor, num_classes: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy of each class (float64, NaN for a class with no examples) and the class counts."""
    correct, labels = correct.cpu(), labels.cpu()
    n = torch.bincount(labels, minlength=num_classes)
    hits = torch.bincount(labels, weights=correct.double(), minlength=num_classes)
    acc = torch.where(n > 0, hits / n.clamp(min=1), torch.full_like(hits, float("nan")))
    return acc, n


def summarize(correct: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class accuracy/error, count-weighted average, worst/best class and spread."""
    correct = correct.cpu().bool()
    acc, n = per_class_accuracy(correct, labels, len(classes))
    present = n > 0
    acc_p = acc[present]
    worst_i = int(torch.nonzero(present).flatten()[acc_p.argmin()])
    best_i = int(torch.nonzero(present).flatten()[acc_p.argmax()])
    return {
        "per_class": [round(float(a), 6) for a in acc],
        "per_class_error": [round(1 - float(a), 6) for a in acc],
        "n_per_class": [int(c) for c in n],
        "avg": round(float(correct.double().mean()), 6),
        "worst": round(float(acc[worst_i]), 6),
        "worst_class": classes[worst_i],
        "best": round(float(acc[best_i]), 6),
        "best_class": classes[best_i],
        "std": round(float(acc_p.std(unbiased=False)), 6),
    }


def stages(attacks: Sequence[str]) -> list[str]:
    """The threats to run, in order: clean always first (every robust outcome needs it)."""
    bad = [a for a in attacks if a not in THREATS]
    if bad:
        raise FairbenchError(f"unknown attack(s) {', '.join(bad)}; valid: {', '.join(THREATS)}")
    return ["clean"] + [t for t in THREATS if t != "clean" and t in attacks]


def attack_settings(eps: float, attacks: Sequence[str], seed: int = 0,
                    per_class: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """What each threat ran with; stored in metrics.json and part of the resume key.

    ``per_class`` names the threats run on a class-balanced subset (the first K test images of
    each class) and their K."""
    settings: dict[str, dict[str, Any]] = {"clean": {}}
    for threat in stages(attacks)[1:]:
        if threat == "pgd20":
            settings[threat] = {"norm": "Linf", "eps": eps, "steps": PGD_EVAL_STEPS,
                                "step_size": eps / 4, "random_start": True, "loss": "ce", "seed": seed}
        else:
            import pyautoattack

            settings[threat] = {"norm": "Linf", "eps": eps, "version": AA_VERSION,
                                "attacks": list(AA_ATTACKS), "seed": seed,
                                "library": f"pyautoattack {pyautoattack.__version__}"}
    for threat, k in (per_class or {}).items():
        if threat in settings and threat != "clean":
            settings[threat]["per_class"] = k
    if len(settings) > 1:
        settings["union"] = {"of": list(settings)}
    return settings


# ---------------------------------------------------------------- one batch / chunk per threat

def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Whether the model's prediction on each (unperturbed) input is right."""
    with torch.no_grad():
        return model(x).argmax(1) == y


def pgd_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """PGD-20, random start, step eps/4, CE: the standard evaluation of AT papers."""
    x_adv = pgd(model, x, y, eps=eps, step_size=eps / 4, steps=PGD_EVAL_STEPS)
    return clean_correct(model, x_adv, y)


def autoattack_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                       seed: int, batch_size: int, progress: Progress) -> torch.Tensor:
    """Standard L-inf AutoAttack on ``x`` (fp32, eval mode); True where it found no adversarial.

    The attack is pyautoattack's, unchanged; only how it is fed is chosen for speed
    (bench/README.md): the model runs channels-last with frozen weights (`attack_ready`), and
    AutoAttack's batches are even. It attacks the images the model gets right in batches of
    the size it is given, last one short; a remainder of a few images would spend each robust
    image's 7,858 passes at a batch size where the per-call overhead dominates, so the size
    passed is the one that splits those images into as many batches, evenly.
    """
    from pyautoattack import AutoAttack

    if len(y) == 0:
        return torch.zeros(0, dtype=torch.bool, device=y.device)
    odd = {p.dtype for p in model.parameters() if p.dtype != torch.float32}
    if odd:
        raise FairbenchError(f"AutoAttack runs in fp32; the model has {sorted(map(str, odd))} weights")
    adversary = AutoAttack(model, norm="Linf", eps=eps, version=AA_VERSION, device=x.device, seed=seed)
    predict = _in_batches(lambda a, b: clean_correct(model, a, b), batch_size)
    with attack_ready(model), aa_logging(progress), torch.autocast(x.device.type, enabled=False):
        right = int(predict(x, y).sum())  # what AutoAttack will attack, in ceil(right / batch_size) batches
        even = math.ceil(right / math.ceil(right / batch_size)) if right else batch_size
        x_adv, y_adv = adversary.run_standard_evaluation(x.float(), y, batch_size=even)
        again = predict(x_adv, y)
    if (x_adv - x).abs().amax() > eps + BOUND_TOL or x_adv.min() < 0 or x_adv.max() > 1:
        raise RuntimeError("AutoAttack returned images outside the eps-ball or [0, 1]")
    return (y_adv == y) & again


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
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        model.to(memory_format=torch.channels_last)
        yield
    finally:
        for t, data in saved:
            t.data = data
        for p in frozen:
            p.requires_grad_(True)


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


# ---------------------------------------------------------------- the evaluator

def _in_batches(fn: BatchFn, batch_size: int) -> BatchFn:
    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        outs = [fn(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
        return torch.cat(outs) if outs else torch.zeros(0, dtype=torch.bool, device=y.device)

    return run


def _threat_fn(threat: str, model: nn.Module, eps: float, batch_size: int,
               progress: Progress) -> ChunkFn:
    """``fn(x, y, seed) -> correct`` for one chunk of examples."""
    if threat == "clean":
        return lambda x, y, seed: _in_batches(lambda a, b: clean_correct(model, a, b), batch_size)(x, y)
    if threat == "pgd20":
        return lambda x, y, seed: _in_batches(lambda a, b: pgd_correct(model, a, b, eps), batch_size)(x, y)
    return lambda x, y, seed: autoattack_correct(model, x, y, eps=eps, seed=seed,
                                                 batch_size=batch_size, progress=progress)


@contextmanager
def exact_fp32() -> Iterator[None]:
    """cuDNN autotuning off and fp32 convolutions and matmuls in full precision (no TF32) for the
    block; the previous settings are restored after. The flags do nothing on a CPU."""
    backends = torch.backends
    if hasattr(backends.cudnn, "conv"):  # torch >= 2.9: the legacy allow_tf32 flags must not be mixed in
        flags = [(backends.cudnn.conv, "fp32_precision", "ieee"), (backends.cuda.matmul, "fp32_precision", "ieee")]
    else:
        flags = [(backends.cudnn, "allow_tf32", False), (backends.cuda.matmul, "allow_tf32", False)]
    flags.append((backends.cudnn, "benchmark", False))
    saved = [getattr(owner, name) for owner, name, _ in flags]
    try:
        for owner, name, value in flags:
            setattr(owner, name, value)
        yield
    finally:
        for (owner, name, _), value in zip(flags, saved):
            setattr(owner, name, value)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block from ``seed`` and restore the caller's RNG (CPU and ``device``) after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _run_threat(threat: str, fn: ChunkFn, split: Split, state: EvalState, settings: dict[str, Any],
                chunk_size: int, seed: int, dist: DistInfo, progress: Progress) -> StageProgress:
    """Evaluate every chunk not yet done; save the outcomes after each one."""
    stage = state.load(threat, settings, len(split))
    n = len(split)
    for c, start in enumerate(range(0, n, chunk_size)):
        stop = min(start + chunk_size, n)
        if stop <= stage.done:
            continue
        t0 = time.perf_counter()
        chunk_seed, device = seed * 1_000_003 + c, split.labels.device
        with seeded(chunk_seed, device):  # the whole chunk in one call of fn, sharded over the ranks
            stage.correct[start:stop] = map_sharded(lambda x, y: fn(x, y, chunk_seed), split, dist,
                                                    stop - start, torch.arange(start, stop, device=device))
        stage.done, stage.seconds = stop, stage.seconds + time.perf_counter() - t0
        state.save(threat, settings, stage)
        if n > chunk_size:
            progress(f"{threat}: {stop}/{n} examples ({stage.seconds:.1f}s)")
    return stage


def evaluate_outcomes(model: nn.Module, split: Split, *, eps: float, attacks: Sequence[str],
                      batch_size: int = 500, dist: DistInfo | None = None,
                      progress: Progress = print, seed: int = 0, state_dir: str | Path | None = None,
                      indices: torch.Tensor | None = None, chunk_size: int = CHUNK_SIZE,
                      subsets: dict[str, torch.Tensor] | None = None
                      ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Per-example outcomes for each threat, and wall times.

    An outcome is an int8 per example of ``split``: 1 (right under the threat), 0 (wrong), or
    -1 (the threat was not run on it). ``subsets`` maps a threat to the positions in ``split`` it
    runs on (e.g. AutoAttack on a class-balanced subset while clean and PGD-20 see every image);
    a threat not named there runs on all of them. ``clean`` is always included and runs on all;
    ``union`` (right under every threat run) is added when an attack ran, defined where every
    threat ran. With ``state_dir``, outcomes are saved per chunk and a rerun continues where a
    killed one stopped. ``indices`` are ``split``'s positions in the full test set.
    """
    dist = dist or DistInfo()
    subsets = subsets or {}
    if "clean" in subsets:
        raise FairbenchError("clean accuracy runs on every evaluated image; it takes no subset")
    settings = attack_settings(eps, attacks, seed)
    device = split.labels.device
    indices = torch.arange(len(split)) if indices is None else indices.cpu()
    key = {"chunk_size": chunk_size, "batch_size": batch_size, "world_size": dist.world_size}
    if state_dir is not None and dist.is_main:
        key["fingerprint"] = fingerprint(model, split.images, split.labels, indices)
    state = EvalState(state_dir, key, indices, dist, device, progress)
    outcomes: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    with eval_mode(model), exact_fp32():
        for threat in stages(attacks):
            pos = subsets.get(threat)
            pos = torch.arange(len(split), device=device) if pos is None else pos.to(device)
            part = split.subset(pos)
            part_settings = settings[threat] | ({"positions": _positions_hash(pos)}
                                                if threat in subsets else {})
            fn = _threat_fn(threat, model, eps, batch_size, progress)
            stage = _run_threat(threat, fn, part, state, part_settings, chunk_size, seed, dist, progress)
            out = torch.full((len(split),), -1, dtype=torch.int8, device=device)
            ok = stage.correct if threat == "clean" else stage.correct & (outcomes["clean"][pos] == 1)
            out[pos] = ok.to(torch.int8)
            outcomes[threat], seconds[threat] = out, stage.seconds
            progress(f"{threat}: {float(ok.float().mean()):.4f} accuracy on {len(pos)} images "
                     f"({seconds[threat]:.1f}s)")
    if len(outcomes) > 1:
        outcomes["union"] = union_of(list(outcomes.values()))
    return outcomes, seconds


def union_of(outcomes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Right under every threat (1), wrong under one (0), or -1 where a threat was not run."""
    stacked = torch.stack(list(outcomes))
    return torch.where((stacked >= 0).all(0), (stacked == 1).all(0).to(torch.int8),
                       torch.full_like(stacked[0], -1))


def _positions_hash(pos: torch.Tensor) -> str:
    return hashlib.sha256(pos.cpu().to(torch.int64).numpy().tobytes()).hexdigest()[:16]


def summarize_outcomes(outcomes: dict[str, torch.Tensor], labels: torch.Tensor,
                       classes: Sequence[str]) -> dict[str, Any]:
    """`summarize` of each threat over the images it was run on."""
    return {t: summarize(o[o >= 0] == 1, labels[o >= 0], classes) for t, o in outcomes.items()}


def evaluate(model: nn.Module, split: Split, classes: Sequence[str], *, eps: float,
             attacks: Sequence[str], batch_size: int = 500, dist: DistInfo | None = None,
             progress: Progress = print, seed: int = 0, state_dir: str | Path | None = None,
             indices: torch.Tensor | None = None, chunk_size: int = CHUNK_SIZE,
             subsets: dict[str, torch.Tensor] | None = None
             ) -> tuple[dict[str, Any], dict[str, float], dict[str, torch.Tensor]]:
    """Evaluate ``model`` on ``split`` under each threat in ``attacks``, per class.

    Returns ``(metrics, seconds, outcomes)``: a `summarize` per threat (``clean`` always,
    ``union`` when an attack ran), each threat's wall time (summed over resumed runs), and the
    per-example outcomes they were computed from. The options are `evaluate_outcomes`'s.
    """
    outcomes, seconds = evaluate_outcomes(model, split, eps=eps, attacks=attacks,
                                          batch_size=batch_size, dist=dist, progress=progress,
                                          seed=seed, state_dir=state_dir, indices=indices,
                                          chunk_size=chunk_size, subsets=subsets)
    return summarize_outcomes(outcomes, split.labels, classes), seconds, outcomes


def format_table(metrics: dict[str, Any], classes: Sequence[str]) -> str:
    """A per-class accuracy table for the terminal (one column per threat, union included)."""
    threats = list(metrics)
    width = max(12, max(len(c) for c in classes) + 2)
    col = max([12] + [len(str(metrics[t]["worst_class"])) + 2 for t in threats]
              + [len(str(metrics[t]["best_class"])) + 2 for t in threats])
    lines = [f"{'class':<{width}}" + "".join(f"{t:>{col}}" for t in threats)]
    for i, name in enumerate(classes):
        lines.append(f"{name:<{width}}" + "".join(f"{metrics[t]['per_class'][i]:>{col}.4f}" for t in threats))
    for label, key, fmt in (("average", "avg", ".4f"), ("worst", "worst", ".4f"),
                            ("worst class", "worst_class", ""), ("best", "best", ".4f"),
                            ("best class", "best_class", ""), ("std", "std", ".4f")):
        lines.append(f"{label:<{width}}" + "".join(f"{metrics[t][key]:>{col}{fmt}}" for t in threats))
    return "\n".join(lines)
