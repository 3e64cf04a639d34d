"""Per-class evaluation: one pass over the test set per threat, grouped by label afterwards.

Robustness per example is "clean-correct and still correct under the attack", so that
robust <= clean holds per example; the attack is never rerun per class.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from torch import nn

from fairbench.attacks import eval_mode, pgd
from fairbench.data import Split
from fairbench.distributed import DistInfo

PGD_EVAL_STEPS = 20


def summarize(correct: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class accuracy/error, count-weighted average, worst/best class and spread."""
    correct, labels = correct.cpu().bool(), labels.cpu()
    k = len(classes)
    n = torch.bincount(labels, minlength=k)
    hits = torch.bincount(labels, weights=correct.double(), minlength=k)
    present = n > 0
    acc = torch.where(present, hits / n.clamp(min=1), torch.full_like(hits, float("nan")))
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


def _batched(model: nn.Module, split: Split, batch_size: int, dist: DistInfo, fn) -> torch.Tensor:
    """Run ``fn(x, y) -> bool per example`` over this rank's shard and gather every rank's."""
    shard = dist.shard_range(len(split))
    outs = []
    for start in range(shard.start, shard.stop, batch_size):
        stop = min(start + batch_size, shard.stop)
        x = split.images[start:stop].float().div_(255.0)
        outs.append(fn(x, split.labels[start:stop]))
    local = torch.cat(outs) if outs else torch.empty(0, dtype=torch.bool, device=split.labels.device)
    return dist.gather_shards(local, len(split))


def clean_correct(model: nn.Module, split: Split, batch_size: int, dist: DistInfo) -> torch.Tensor:
    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x).argmax(1) == y

    with eval_mode(model):
        return _batched(model, split, batch_size, dist, fn)


def pgd_correct(model: nn.Module, split: Split, eps: float, batch_size: int, dist: DistInfo,
                steps: int = PGD_EVAL_STEPS) -> torch.Tensor:
    """PGD-20, random start, step eps/4, CE (the standard evaluation of AT papers)."""
    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = pgd(model, x, y, eps=eps, step_size=eps / 4, steps=steps)
        with torch.no_grad():
            return model(x_adv).argmax(1) == y

    with eval_mode(model):
        return _batched(model, split, batch_size, dist, fn)


def evaluate(model: nn.Module, split: Split, classes: Sequence[str], *, eps: float,
             attacks: Sequence[str], batch_size: int = 500, dist: DistInfo | None = None,
             progress=print) -> tuple[dict[str, Any], dict[str, float]]:
    """Evaluate ``model`` on ``split`` under each threat in ``attacks``.

    Returns ``(metrics, seconds)``: per-threat summaries (see `summarize`) and wall time per threat.
    """
    dist = dist or DistInfo()
    correct: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    correct["clean"] = clean_correct(model, split, batch_size, dist)
    seconds["clean"] = time.perf_counter() - t0
    for threat in attacks:
        if threat == "clean":
            continue
        t0 = time.perf_counter()
        if threat == "pgd20":
            robust = pgd_correct(model, split, eps, batch_size, dist)
        else:
            raise NotImplementedError(f"threat '{threat}' is not implemented by this evaluator yet")
        correct[threat] = robust & correct["clean"]
        seconds[threat] = time.perf_counter() - t0
        progress(f"{threat}: {float(correct[threat].float().mean()):.4f} robust accuracy "
                 f"({seconds[threat]:.1f}s)")
    metrics = {t: summarize(c, split.labels, classes) for t, c in correct.items()
               if t in attacks or t == "clean"}
    return metrics, seconds


def format_table(metrics: dict[str, Any], classes: Sequence[str]) -> str:
    """A per-class accuracy table for the terminal."""
    threats = list(metrics)
    width = max(12, max(len(c) for c in classes) + 2)
    lines = [f"{'class':<{width}}" + "".join(f"{t:>12}" for t in threats)]
    for i, name in enumerate(classes):
        lines.append(f"{name:<{width}}" + "".join(f"{metrics[t]['per_class'][i]:>12.4f}" for t in threats))
    lines.append(f"{'average':<{width}}" + "".join(f"{metrics[t]['avg']:>12.4f}" for t in threats))
    lines.append(f"{'worst':<{width}}" + "".join(f"{metrics[t]['worst']:>12.4f}" for t in threats))
    lines.append(f"{'worst class':<{width}}" + "".join(f"{metrics[t]['worst_class']:>12}" for t in threats))
    return "\n".join(lines)
