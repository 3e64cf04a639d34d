"""Per-class evaluation over the registered threats (`fairbench.eval.threats`), one pass per threat.

Each threat decides each example (what that means: `fairbench.eval.threats`); an attack's outcome
counts only on clean-correct examples, and ``union`` (right under every threat that ran on the
example) is derived (`fairbench.schema.derive_union`). Hence, per example and per class:
pgd20 <= clean, autoattack <= clean, union <= each. Per-class numbers come from grouping the
per-example outcomes by label (`fairbench.schema.metrics_from_outcomes`); no attack is rerun per
class.

The evaluation runs with cuDNN autotuning and TF32 off (`exact_fp32`; recorded in metrics.json's
``env.eval_backend``): AutoAttack's batch shapes change all the time, so autotuning would re-time
its kernels for every new shape, and with TF32 an "fp32" evaluation would run its convolutions
with 10-bit mantissas.

Every chunk of examples runs inside ``torch.random.fork_rng`` with a seed derived from ``seed``
(pyautoattack reseeds the global RNG), so evaluations are reproducible, the caller's RNG is left
alone, and a killed evaluation resumed from ``state_dir`` (see `fairbench.eval.state`) gives the
same numbers as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from fairbench._version import __version__
from fairbench.data.datasets import Split, map_sharded, per_class_indices
from fairbench.distributed import DistInfo
from fairbench.errors import FairbenchError
from fairbench.eval.attacks import eval_mode
from fairbench.eval.state import EvalState, StageProgress, fingerprint
from fairbench.eval.threats import CLEAN, ChunkFn, Progress, clean_correct, get_threat, threat_names
from fairbench.registry import did_you_mean
from fairbench.schema import (
    METRICS_FILE,
    UNION,
    Outcomes,
    RunRecord,
    derive_union,
    make_outcomes,
    metrics_from_outcomes,
    write_run,
)

__all__ = ["clean_correct", "evaluate", "evaluate_and_write", "evaluate_outcomes", "per_class_accuracy", "stages"]
CHUNK_SIZE = 1000  # examples per saved chunk: the most work a killed evaluation loses per threat
EVAL_BACKEND = {"cudnn_benchmark": False, "tf32": False}  # what `exact_fp32` sets; kept in env


def environment(device: torch.device) -> dict[str, Any]:
    """What a run or an evaluation ran on, for its metrics.json's ``env``."""
    try:
        git = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        git = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "fairbench": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": f"{device.type}: {name}",
        "threads": torch.get_num_threads(),
        "git": git,
        "eval_backend": dict(EVAL_BACKEND),
    }


def per_class_accuracy(
    correct: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy of each class (float64, NaN for a class with no examples) and the class counts."""
    correct, labels = correct.cpu(), labels.cpu()
    n = torch.bincount(labels, minlength=num_classes)
    hits = torch.bincount(labels, weights=correct.double(), minlength=num_classes)
    acc = torch.where(n > 0, hits / n.clamp(min=1), torch.full_like(hits, float("nan")))
    return acc, n


def stages(attacks: Sequence[str]) -> list[str]:
    """The threats to run, in order: those that are no attack (clean) always first, since every
    robust outcome needs them; then the registered attacks asked for."""
    names = threat_names()
    bad = [a for a in attacks if a not in names]
    if bad:
        raise FairbenchError(
            f"unknown attack(s) {', '.join(bad)}{did_you_mean(bad[0], names)}; valid: {', '.join(names)}"
        )
    return [t for t in names if not get_threat(t).attack or t in attacks]


def attack_settings(
    eps: float, attacks: Sequence[str], seed: int = 0, per_class: dict[str, int] | None = None
) -> dict[str, dict[str, Any]]:
    """What each threat ran with; stored in metrics.json and part of the resume key.

    ``per_class`` names the threats run on a class-balanced subset (the first K test images of
    each class) and their K."""
    settings = {t: get_threat(t).settings(eps, seed) for t in stages(attacks)}
    for threat, k in (per_class or {}).items():
        if threat in settings and get_threat(threat).attack:
            settings[threat]["per_class"] = k
    if len(settings) > 1:
        settings[UNION] = {"of": list(settings)}
    return settings


def subset_indices(labels: torch.Tensor, subsets: dict[str, int], num_classes: int) -> dict[str, torch.Tensor]:
    """Each threat of ``subsets`` ({threat: K}, `fairbench.specs.threats.used_subsets`) on the first K
    evaluated images of each class (a fixed, class-balanced subset), as positions in ``labels``:
    `evaluate_outcomes`' ``subsets``. Every other threat runs on all of them."""
    return {threat: per_class_indices(labels, k, num_classes) for threat, k in subsets.items()}


@contextmanager
def exact_fp32() -> Iterator[None]:
    """cuDNN autotuning off and fp32 convolutions and matmuls in full precision (no TF32) for the
    block; the previous settings are restored after. The flags do nothing on a CPU."""
    backends = torch.backends
    flags: list[tuple[Any, str, str | bool]]  # (owner, flag, value in the block)
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


def _run_threat(
    threat: str,
    fn: ChunkFn,
    split: Split,
    state: EvalState,
    settings: dict[str, Any],
    chunk_size: int,
    seed: int,
    dist: DistInfo,
    progress: Progress,
) -> StageProgress:
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
            stage.correct[start:stop] = map_sharded(
                lambda x, y: fn(x, y, chunk_seed), split, dist, stop - start, torch.arange(start, stop, device=device)
            )
        stage.done, stage.seconds = stop, stage.seconds + time.perf_counter() - t0
        state.save(threat, settings, stage)
        if n > chunk_size:
            progress(f"{threat}: {stop}/{n} examples ({stage.seconds:.1f}s)")
    return stage


def evaluate_outcomes(
    model: nn.Module,
    split: Split,
    *,
    eps: float,
    attacks: Sequence[str],
    batch_size: int = 500,
    dist: DistInfo | None = None,
    progress: Progress = print,
    seed: int = 0,
    state_dir: str | Path | None = None,
    indices: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
    subsets: dict[str, torch.Tensor] | None = None,
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
    if CLEAN in subsets:
        raise FairbenchError("clean accuracy runs on every evaluated image; it takes no subset")
    settings = attack_settings(eps, attacks, seed)
    device = split.labels.device
    indices = torch.arange(len(split)) if indices is None else indices.cpu()
    key: dict[str, Any] = {"chunk_size": chunk_size, "batch_size": batch_size, "world_size": dist.world_size}
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
            part_settings = settings[threat] | ({"positions": _positions_hash(pos)} if threat in subsets else {})
            fn = get_threat(threat).decider(model, eps=eps, batch_size=batch_size, progress=progress)
            stage = _run_threat(threat, fn, part, state, part_settings, chunk_size, seed, dist, progress)
            out = torch.full((len(split),), -1, dtype=torch.int8, device=device)
            ok = stage.correct
            if get_threat(threat).attack:  # an attack's outcome counts only where clean is right
                ok = ok & (outcomes[CLEAN][pos] == 1)
            out[pos] = ok.to(torch.int8)
            outcomes[threat], seconds[threat] = out, stage.seconds
            progress(
                f"{threat}: {100 * (1 - float(ok.float().mean())):.1f}% error on {len(pos)} images "
                f"({seconds[threat]:.1f}s)"
            )
    if len(outcomes) > 1:
        union = derive_union({t: o.cpu().numpy() for t, o in outcomes.items()})
        outcomes[UNION] = torch.from_numpy(union).to(device)
    return outcomes, seconds


def _positions_hash(pos: torch.Tensor) -> str:
    return hashlib.sha256(pos.cpu().to(torch.int64).numpy().tobytes()).hexdigest()[:16]


def evaluate(
    model: nn.Module,
    split: Split,
    classes: Sequence[str],
    *,
    eps: float,
    attacks: Sequence[str],
    batch_size: int = 500,
    dist: DistInfo | None = None,
    progress: Progress = print,
    seed: int = 0,
    state_dir: str | Path | None = None,
    indices: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
    subsets: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, Any], dict[str, float], dict[str, torch.Tensor]]:
    """Evaluate ``model`` on ``split`` under each threat in ``attacks``, per class.

    Returns ``(metrics, seconds, outcomes)``: per threat (``clean`` always, ``union`` when an
    attack ran) its per-class metrics as metrics.json holds them, its wall time (summed over
    resumed runs), and the per-example outcomes (int8: 1, 0, -1 where not run) the metrics are
    computed from. The options are `evaluate_outcomes`'s.
    """
    outcomes, seconds = evaluate_outcomes(
        model,
        split,
        eps=eps,
        attacks=attacks,
        batch_size=batch_size,
        dist=dist,
        progress=progress,
        seed=seed,
        state_dir=state_dir,
        indices=indices,
        chunk_size=chunk_size,
        subsets=subsets,
    )
    rows = make_outcomes(torch.arange(len(split)), split.labels.cpu(), {t: o.cpu() for t, o in outcomes.items()})
    return {t: m.to_json() for t, m in metrics_from_outcomes(rows, classes).items()}, seconds, outcomes


def evaluate_and_write(
    model: nn.Module,
    test: Split,
    classes: Sequence[str],
    *,
    indices: torch.Tensor,
    run_dir: Path | None,
    record: Callable[[Outcomes, dict[str, float]], RunRecord],
    dist: DistInfo,
    say: Progress,
    **options: Any,
) -> RunRecord | None:
    """The end of `fairbench run`, `fairbench eval` and `fairbench.evaluate`: evaluate ``model`` on
    ``test`` (the images at ``indices`` of the test set) under `evaluate`'s ``options``, make the
    schema's record from the outcomes (``record(outcomes, seconds)``, on rank 0), write it with its
    outcomes to ``run_dir`` (None: nowhere; with a run folder a killed evaluation continues from
    its ``eval_state/``), and show the per-class table. Returns the record on rank 0, else None."""
    t0 = time.perf_counter()
    metrics, seconds, outcomes = evaluate(
        model,
        test,
        classes,
        dist=dist,
        progress=say,
        indices=indices,
        state_dir=run_dir / "eval_state" if run_dir is not None else None,
        **options,
    )
    records: list[RunRecord] = []

    def write() -> None:
        rows = make_outcomes(indices, test.labels.cpu(), {t: o.cpu() for t, o in outcomes.items()})
        records.append(record(rows, seconds))
        if run_dir is not None:
            write_run(run_dir, records[0], rows)

    dist.on_main(write)
    say(format_table(metrics, classes))
    if run_dir is not None:
        say(f"wrote {run_dir / METRICS_FILE} (evaluation {time.perf_counter() - t0:.1f}s)")
    return records[0] if records else None


def format_table(metrics: dict[str, Any], classes: Sequence[str]) -> str:
    """The per-class table the console shows after an evaluation, in the report's unit: error in %
    (100 - accuracy; lower is better), one column per threat, union included. ``worst`` is the
    highest class error, ``best`` the lowest; ``std`` is the spread of the class errors in points."""
    threats = list(metrics)
    width = max(12, max(len(c) for c in classes) + 2)
    col = max(
        [12]
        + [len(str(metrics[t]["worst_class"])) + 2 for t in threats]
        + [len(str(metrics[t]["best_class"])) + 2 for t in threats]
    )

    def error(accuracy: float) -> str:
        return f"{100 * (1 - accuracy):>{col}.1f}"

    lines = [f"{'error (%)':<{width}}" + "".join(f"{t:>{col}}" for t in threats)]
    for i, name in enumerate(classes):
        lines.append(f"{name:<{width}}" + "".join(error(metrics[t]["per_class"][i]) for t in threats))
    for label, key in (
        ("average", "avg"),
        ("worst", "worst"),
        ("worst class", "worst_class"),
        ("best", "best"),
        ("best class", "best_class"),
        ("std", "std"),
    ):
        cells = [
            f"{metrics[t][key]:>{col}}"
            if key.endswith("_class")
            else f"{100 * metrics[t][key]:>{col}.1f}"
            if key == "std"
            else error(metrics[t][key])
            for t in threats
        ]
        lines.append(f"{label:<{width}}" + "".join(cells))
    return "\n".join(lines)


def not_finite(model: nn.Module, x: torch.Tensor, dist: DistInfo) -> str | None:
    """What of ``model`` is not finite: "weights are not finite", "outputs are not finite (...)" on
    ``x``, or None when all is finite. The trainer's check after each epoch,
    `fairbench eval`'s check of weights from elsewhere and ``--init-from``'s.

    Every parameter and buffer, one forward pass in eval mode (as evaluation sees the model) and
    one host sync; the ranks agree on the verdict, so they all stop or none does.
    """
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point() and t.numel()]
    with torch.no_grad(), eval_mode(model):
        largest = torch.stack([t.abs().max() for t in tensors]).max()  # NaN or inf if any weight is
        bad = torch.stack([~torch.isfinite(largest), ~torch.isfinite(model(x)).all()]).float()
    bad_weights, bad_outputs = dist.all_reduce_sum(bad).tolist()
    if bad_weights:
        return "weights are not finite"
    if bad_outputs:
        return f"outputs are not finite (its largest weight is {float(largest):.3g})"
    return None
