"""RunConfig: everything that defines one run, resolved and validated in one place."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from fairbench.errors import FairbenchError

THREATS = ("clean", "pgd20", "autoattack")
SCHEDULES = ("piecewise", "cosine")

# Fields that change what is trained; the run id and the resume check hash them.
TRAINING_FIELDS = ("method", "params", "arch", "dataset", "epochs", "batch_size", "seed", "eps",
                   "step_size", "attack_steps", "lr", "momentum", "weight_decay", "schedule",
                   "train_per_class", "val_per_class")


@dataclass
class RunConfig:
    """One training run. ``None`` means "the data set's default", filled in by `resolve`."""

    method: str
    arch: str
    dataset: str
    epochs: int = 100
    batch_size: int = 128
    seed: int = 0
    eps: float | None = None  # L-inf radius; default per data set (8/255 CIFAR, 0.1 Fashion-MNIST)
    step_size: float | None = None  # PGD training step; default eps / 4
    attack_steps: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "piecewise"  # 0.1, /10 at 50% and 75% of the epochs; or cosine
    params: dict[str, Any] = field(default_factory=dict)
    train_per_class: int | None = None
    val_per_class: int | None = None
    eval_per_class: int | None = None
    attacks: tuple[str, ...] = ("clean", "pgd20")
    eval_batch_size: int | None = None  # None: 500 on CUDA, 128 on the CPU (see `resolve`)
    device: str = "auto"
    data_dir: str | None = None
    out: str = "results"
    run_id: str | None = None
    amp: bool | None = None  # bf16 autocast; default on for CUDA
    channels_last: bool | None = None  # default on for CUDA
    compile: bool = False
    download: bool = True

    def resolve(self, eps_default: float, step_default: float) -> "RunConfig":
        """Fill data-set defaults and validate; returns a new, fully resolved config."""
        cfg = dataclasses.replace(self, params=dict(self.params), attacks=tuple(self.attacks))
        if cfg.eval_batch_size is None:
            cfg.eval_batch_size = default_eval_batch_size(cfg.device)
        if cfg.eps is None:
            cfg.eps = eps_default
        if cfg.step_size is None:
            cfg.step_size = step_default * cfg.eps / eps_default
        cfg.validate()
        if cfg.run_id is None:
            cfg.run_id = cfg.default_run_id()
        return cfg

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.eval_batch_size is None or self.eval_batch_size >= 1,
             f"--eval-batch-size must be >= 1, got {self.eval_batch_size}"),
            (self.eps is None or 0 < self.eps <= 1, f"--eps must be in (0, 1], got {self.eps}"),
            (self.step_size is None or 0 < self.step_size <= 1,
             f"--step-size must be in (0, 1], got {self.step_size}"),
            (self.attack_steps >= 1, f"--attack-steps must be >= 1, got {self.attack_steps}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, "
                                         f"got '{self.schedule}'"),
            (self.device in ("auto", "cpu") or self.device.startswith("cuda"),
             f"--device must be auto, cpu or cuda[:N], got '{self.device}'"),
        ]
        for name in ("train_per_class", "val_per_class", "eval_per_class"):
            value = getattr(self, name)
            checks.append((value is None or value >= 1,
                           f"--{name.replace('_', '-')} must be >= 1, got {value}"))
        bad = [a for a in self.attacks if a not in THREATS]
        checks.append((not bad, f"unknown attack(s) {', '.join(bad)}; valid: {', '.join(THREATS)}"))
        for ok, message in checks:
            if not ok:
                raise FairbenchError(message)

    def training_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in TRAINING_FIELDS}

    def training_hash(self) -> str:
        blob = json.dumps(self.training_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def default_run_id(self) -> str:
        return f"{self.method}_{self.arch}_{self.dataset}_seed{self.seed}_{self.training_hash()}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["attacks"] = list(self.attacks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise FairbenchError(f"config has unknown fields: {', '.join(sorted(unknown))}")
        d = dict(d)
        if "attacks" in d:
            d["attacks"] = tuple(d["attacks"])
        return cls(**d)


def default_eval_batch_size(device: str) -> int:
    """Batch of the no-update passes (evaluation, a method's scoring): big on a GPU; 128 on a CPU,
    where a PGD-20 pass over 500 images at once falls out of cache and costs 1.8x per image
    (bench/README.md)."""
    import torch

    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return 500 if on_gpu else 128


PRESETS: dict[str, dict[str, Any]] = {
    # The FairAT / FRL protocol on CIFAR-10 (100 epochs, piecewise LR, full test set).
    "paper-cifar10": dict(dataset="cifar10", epochs=100, batch_size=128, lr=0.1, schedule="piecewise"),
    # A short Fashion-MNIST run that finishes on a 2-core CPU in minutes.
    "cpu-fmnist": dict(dataset="fashion-mnist", arch="small-cnn", epochs=5, batch_size=128,
                       train_per_class=1000, eval_per_class=200, device="cpu"),
}
