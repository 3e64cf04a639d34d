"""``fairbench eval``: evaluate weights trained anywhere (a state_dict, or a RobustBench zoo model)
per class with the one evaluator, and write ``<out>/runs/<run-id>/metrics.json``.

Rerunning the same command continues a killed evaluation (outcomes are kept in the run folder's
``eval_state/``; see `fairbench.eval_state`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fairbench.config import MAX_SEED, check_run_id
from fairbench.data import DatasetSpec, get_dataset, load_split, per_class_indices, to_float
from fairbench.distributed import DistInfo, init_distributed, shutdown_distributed
from fairbench.errors import FairbenchError
from fairbench.evaluate import attack_settings, evaluate, format_table, stages
from fairbench.faults import not_finite
from fairbench.models import create_model, load_model_state
from fairbench.registry import MODELS
from fairbench.results import (CHECKPOINT_FILE, CONFIG_FILE, ensure_writable, load_checkpoint, make_run_folder,
                               run_lock, sha256_file)
from fairbench.schema import METRICS_FILE, OUTCOMES_FILE, build_record, make_outcomes, read_metrics, write_run
from fairbench.runner import environment, resolve_device

# A checkpoint may hold the weights this many times over (optimizer state, an averaged model, ...)
# and this much besides (a run's saved epoch plan, RNG states, names); a larger file is refused
# before it is read.
MAX_CHECKPOINT_FACTOR = 16
CHECKPOINT_SLACK = 64 * 2**20


@dataclass
class EvalOptions:
    """What `fairbench eval` was asked to do (the CLI's options, unvalidated)."""

    dataset: str
    checkpoint: str | None = None
    arch: str | None = None
    robustbench: str | None = None
    threat_model: str = "Linf"
    model_dir: str | None = None
    attacks: tuple[str, ...] = ("clean", "pgd20", "autoattack")
    n_per_class: int | None = None
    eps: float | None = None
    seed: int = 0
    batch_size: int = 500
    device: str = "auto"
    data_dir: str | None = None
    out: str = "results"
    run_id: str | None = None

    def validate(self) -> None:
        checks = [
            ((self.checkpoint is None) != (self.robustbench is None),
             "give exactly one of --checkpoint PATH or --robustbench MODEL_NAME"),
            (self.robustbench is not None or self.arch is not None,
             "--checkpoint needs --arch (see `fairbench list`)"),
            (self.robustbench is None or self.arch is None,
             "--arch is for --checkpoint; a RobustBench model brings its own architecture"),
            (self.n_per_class is None or self.n_per_class >= 1,
             f"--n-per-class must be >= 1, got {self.n_per_class}"),
            (self.eps is None or 0 < self.eps <= 1, f"--eps must be in (0, 1], got {self.eps}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (0 <= self.seed <= MAX_SEED, f"--seed must be in [0, {MAX_SEED}], got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise FairbenchError(message)
        if self.run_id is not None:
            check_run_id(self.run_id)
        stages(self.attacks)
        if self.arch is not None and self.robustbench is None:
            MODELS.get(self.arch)


def load_model(opts: EvalOptions, spec: DatasetSpec) -> tuple[nn.Module, dict[str, Any]]:
    """The model to evaluate and what to record about where its weights came from."""
    if opts.robustbench is not None:
        from fairbench.robustbench_zoo import load_zoo_model

        model, files = load_zoo_model(opts.robustbench, dataset=spec.name,
                                      threat_model=opts.threat_model, model_dir=opts.model_dir)
        return model, {"method": f"robustbench:{opts.robustbench}", "arch": type(model).__name__,
                       "params": {"source": "robustbench", "model_name": opts.robustbench,
                                  "threat_model": opts.threat_model},
                       "checkpoint": {"file": files[0].name if files else None,
                                      "sha256": sha256_file(files[0]) if files else None}}
    path = Path(opts.checkpoint)
    model = create_model(opts.arch, spec)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    state = load_checkpoint(path, max_bytes=MAX_CHECKPOINT_FACTOR * weights + CHECKPOINT_SLACK)
    load_model_state(model, state, str(path))
    return model, {"method": "external", "arch": opts.arch, "params": {"source": "checkpoint"},
                   "checkpoint": {"file": "".join(c if c.isprintable() else "?" for c in path.name),
                                  "sha256": sha256_file(path)}}


def run_eval(opts: EvalOptions, echo: Callable[[str], None] = print) -> Path:
    """Evaluate per class and write the metrics.json; returns the run folder."""
    opts.validate()
    spec = get_dataset(opts.dataset)
    device = resolve_device(opts.device)
    dist = init_distributed(device.type)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    try:
        return _run_eval(opts, spec, device, dist, echo if dist.is_main else (lambda _m: None))
    finally:
        shutdown_distributed()


def _run_eval(opts: EvalOptions, spec: DatasetSpec, device: torch.device, dist: DistInfo,
              say: Callable[[str], None]) -> Path:
    model, source = load_model(opts, spec)
    model = model.to(device).eval()
    eps = spec.eps if opts.eps is None else opts.eps
    sha = source["checkpoint"]["sha256"] or "nofile"
    run_id = check_run_id(opts.run_id if opts.run_id is not None else
                          f"{source['method'].replace(':', '-')}_{source['arch']}_{spec.name}_{sha[:8]}")
    run_dir = Path(opts.out) / "runs" / run_id
    test = load_split(spec, "test", opts.data_dir)
    indices = (per_class_indices(test.labels, opts.n_per_class, spec.num_classes)
               if opts.n_per_class else torch.arange(len(test)))
    test = test.subset(indices).to(device)
    # as training does after every epoch: NaN or infinite weights would give chance-level accuracies
    # that look like a result
    what = not_finite(model, to_float(test.images[:opts.batch_size]), dist)
    if what:
        raise FairbenchError(f"{opts.checkpoint or opts.robustbench}: the model's {what}; its "
                             f"accuracies would mean nothing, so it is not evaluated")

    def write() -> None:
        rows = make_outcomes(indices, test.labels.cpu(), {t: o.cpu() for t, o in outcomes.items()})
        record = build_record(
            run_id=run_id, method=source["method"], params=source["params"], arch=source["arch"],
            dataset=spec.name, seed=opts.seed, epochs=None, eps=eps, outcomes=rows,  # not trained here
            training={"epochs": None, "train_per_class": None, "eval_per_class": opts.n_per_class},
            evaluation={"n": len(test), "batch_size": opts.batch_size},
            attack_settings=attack_settings(eps, opts.attacks, opts.seed),
            timing={"eval_s": {k: round(v, 3) for k, v in seconds.items()}, "world_size": dist.world_size},
            env=environment(device), checkpoint=source["checkpoint"])
        write_run(run_dir, record, rows)

    with contextlib.ExitStack() as lock:  # rank 0 holds the run folder until its result is written
        dist.on_main(lambda: claim_folder(run_dir, source, spec.name, lock))
        say(f"evaluating {source['method']} ({source['arch']}) on {len(test)} {spec.name} test images, "
            f"eps {eps:.4f}, attacks {', '.join(stages(opts.attacks))}, device {device}")
        metrics, seconds, outcomes = evaluate(model, test, spec.classes, eps=eps, attacks=opts.attacks,
                                              batch_size=opts.batch_size, dist=dist, progress=say,
                                              seed=opts.seed, state_dir=run_dir / "eval_state",
                                              indices=indices)
        dist.on_main(write)
    say(format_table(metrics, spec.classes))
    say(f"wrote {run_dir / METRICS_FILE}")
    return run_dir


def claim_folder(run_dir: Path, source: dict[str, Any], dataset: str, lock: contextlib.ExitStack) -> None:
    """Make the run folder and hold its lock in ``lock`` (the lock `fairbench run` takes), refuse a
    folder that holds another run, and remove this model's earlier result (another evaluation of
    it, with other eps, attacks or images, may have written here: if this one is killed, that
    result must not look current)."""
    ensure_writable(run_dir.parent)
    make_run_folder(run_dir)
    lock.enter_context(run_lock(run_dir))
    other = other_run(run_dir, source, dataset)
    if other:
        raise FairbenchError(f"{run_dir} {other}; `fairbench eval` never replaces another run: "
                             f"pass another --run-id")
    ensure_writable(run_dir)
    (run_dir / METRICS_FILE).unlink(missing_ok=True)
    (run_dir / OUTCOMES_FILE).unlink(missing_ok=True)


def other_run(run_dir: Path, source: dict[str, Any], dataset: str) -> str | None:
    """What in ``run_dir`` belongs to a run other than this model's evaluation (None: nothing).

    A training run leaves its config.json from its start on and its checkpoint; a result
    (metrics.json) is this model's when it names the same method, architecture, data set and
    checkpoint sha256.
    """
    if (run_dir / CONFIG_FILE).exists():
        return f"holds a run of `fairbench run` (its {CONFIG_FILE})"
    if (run_dir / CHECKPOINT_FILE).exists():
        return f"holds a training checkpoint ({CHECKPOINT_FILE})"
    path = run_dir / METRICS_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        record = read_metrics(path)  # a regular file of bounded size, validated
    except FairbenchError as exc:
        return f"holds a {METRICS_FILE} that is not a readable result ({' '.join(str(exc).split())[:200]})"
    theirs = (record.method, record.arch, record.dataset, record.checkpoint.get("sha256"))
    ours = (source["method"], source["arch"], dataset, source["checkpoint"]["sha256"])
    if theirs != ours:
        return (f"holds the result of another run ({theirs[0]!r:.60} {theirs[1]!r:.40} on "
                f"{theirs[2]!r:.40}, checkpoint sha256 {str(theirs[3])[:8]!r})")
    return None
