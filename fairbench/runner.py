"""One run: resolve the config, load data and model, train with the one Trainer, evaluate, write."""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import torch

from fairbench import __version__
from fairbench.config import RunConfig
from fairbench.data import DatasetSpec, Split, get_dataset, load_split, per_class_indices, train_val_split
from fairbench.distributed import DistInfo, init_distributed, shutdown_distributed
from fairbench.errors import FairbenchError
from fairbench.evaluate import attack_settings, evaluate, format_table
from fairbench.method import Method, parse_params
from fairbench.models import create_model
from fairbench.registry import METHODS, MODELS
from fairbench.results import (CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, SCHEMA_VERSION,
                               atomic_write_json, ensure_writable, sha256_file)
from fairbench.trainer import Trainer, seed_everything


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FairbenchError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


def prepare(cfg: RunConfig) -> tuple[RunConfig, DatasetSpec, type[Method], Any]:
    """Look up every registered name and validate every value before any work starts."""
    spec = get_dataset(cfg.dataset)
    method_cls = METHODS.get(cfg.method)
    MODELS.get(cfg.arch)
    params = parse_params(method_cls, cfg.params)
    cfg = dataclasses.replace(cfg, params=dataclasses.asdict(params))
    return cfg.resolve(spec.eps, spec.step_size), spec, method_cls, params


def load_data(cfg: RunConfig, spec: DatasetSpec, device: torch.device) -> tuple[Split, Split | None, Split]:
    """Train (minus a class-balanced validation split) and test, as uint8 tensors on ``device``."""
    train_full = load_split(spec, "train", cfg.data_dir, cfg.download)
    test = load_split(spec, "test", cfg.data_dir, cfg.download)
    train, val = train_val_split(train_full, spec.num_classes, cfg.train_per_class, cfg.val_per_class)
    if cfg.eval_per_class:
        test = test.subset(per_class_indices(test.labels, cfg.eval_per_class, spec.num_classes))
    return train.to(device), (val.to(device) if val is not None else None), test.to(device)


def environment(device: torch.device) -> dict[str, Any]:
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        git = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"fairbench": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": f"{device.type}: {name}", "git": git}


def run(cfg: RunConfig, *, resume: bool = False, progress: bool = True,
        echo: Callable[[str], None] = print) -> Path:
    """Train and evaluate one run; returns its folder ``<out>/runs/<run-id>``."""
    cfg, spec, method_cls, params = prepare(cfg)
    device = resolve_device(cfg.device)
    dist = init_distributed(device.type)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    try:
        return _run(cfg, spec, method_cls, params, device, dist, resume, progress, echo)
    finally:
        shutdown_distributed()


def _run(cfg: RunConfig, spec: DatasetSpec, method_cls: type[Method], params: Any,
         device: torch.device, dist: DistInfo, resume: bool, progress: bool,
         echo: Callable[[str], None]) -> Path:
    run_dir = Path(cfg.out) / "runs" / str(cfg.run_id)
    say = echo if dist.is_main else (lambda _msg: None)
    if dist.is_main:
        ensure_writable(run_dir.parent)
        if not resume and (run_dir / CHECKPOINT_FILE).exists():
            raise FairbenchError(f"{run_dir} already holds a run; pass --resume to continue it "
                                 f"or --run-id to start another")
        if resume and not (run_dir / CHECKPOINT_FILE).exists():
            raise FairbenchError(f"--resume: no checkpoint in {run_dir}")
    seed_everything(cfg.seed + dist.rank)
    train, val, test = load_data(cfg, spec, device)
    model = create_model(cfg.arch, spec).to(device)
    method = method_cls(params, cfg)
    trainer = Trainer(cfg, spec, model, method, train, val, run_dir, dist, device, progress)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / CONFIG_FILE, cfg.to_dict())
        (run_dir / METRICS_FILE).unlink(missing_ok=True)  # a stale result must never look current
    dist.barrier()
    if resume:
        trainer.resume()
        say(f"resuming {cfg.run_id} after epoch {trainer.start_epoch}")
    say(f"training {cfg.method} on {cfg.dataset} with {cfg.arch}: {len(train)} examples, "
        f"{cfg.epochs} epochs, eps {cfg.eps:.4f}, device {device}")
    trainer.fit()
    t0 = time.perf_counter()
    metrics, seconds = evaluate(model, test, spec.classes, eps=cfg.eps, attacks=cfg.attacks,
                                batch_size=cfg.eval_batch_size, dist=dist, progress=say, seed=cfg.seed,
                                state_dir=run_dir / "eval_state")
    if dist.is_main:
        record = metrics_record(cfg, spec, metrics, seconds, trainer, device, run_dir)
        atomic_write_json(run_dir / METRICS_FILE, record)
        say(format_table(metrics, spec.classes))
        say(f"wrote {run_dir / METRICS_FILE} (evaluation {time.perf_counter() - t0:.1f}s)")
    return run_dir


def metrics_record(cfg: RunConfig, spec: DatasetSpec, metrics: dict[str, Any],
                   seconds: dict[str, float], trainer: Trainer, device: torch.device,
                   run_dir: Path) -> dict[str, Any]:
    """The metrics.json document (schema in DESIGN.md); everything the leaderboard needs."""
    ckpt = run_dir / CHECKPOINT_FILE
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": cfg.run_id, "method": cfg.method, "params": cfg.params,
        "arch": cfg.arch, "dataset": cfg.dataset, "seed": cfg.seed, "epochs": cfg.epochs,
        "threat": {"norm": "Linf", "eps": cfg.eps},
        "training": cfg.training_dict() | {"eval_per_class": cfg.eval_per_class},
        "classes": list(spec.classes),
        "metrics": metrics,
        "attack_settings": attack_settings(cfg.eps, cfg.attacks, cfg.seed),
        "timing": {"train_s": round(trainer.train_seconds, 3),
                   "eval_s": {k: round(v, 3) for k, v in seconds.items()},
                   "train_images_per_s": round(trainer.images_seen / max(trainer.train_seconds, 1e-9), 1),
                   "world_size": trainer.dist.world_size},
        "env": environment(device),
        "checkpoint": {"file": CHECKPOINT_FILE, "sha256": sha256_file(ckpt) if ckpt.exists() else None},
    }
