"""Training throughput: fairbench's Trainer against the hardware limit and a plain research loop.

Three ways to do the same PGD-10 adversarial training epochs, timed in interleaved rounds so that
a noisy (shared) machine slows all three alike:

  limit      exactly the work of one PGD-10 training step (10 attack steps of forward +
             input-gradient, then one forward/backward/optimizer step) on one batch already on
             the device, repeated; same model settings as the trainer (memory format, bf16).
  trainer    fairbench's `Trainer` over full epochs: epoch plan, device-side data and
             augmentation, the method's loss hook, progress bar, checkpoint and log line.
  reference  the usual research-code shape: torchvision `DataLoader` over PIL images with
             per-image transforms, a separate PGD function, fp32 NCHW, `.item()` every step.

Prints images/s for each and the ratios trainer/limit and trainer/reference (medians over rounds).

    python bench/train_throughput.py --arch small-cnn --dataset fashion-mnist
    python bench/train_throughput.py --arch preact18 --dataset cifar10 --batch-size 32 --steps 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from fairbench.config import RunConfig
from fairbench.data.datasets import DatasetSpec, Split, load_split, per_class_indices, standard_augment
from fairbench.distributed import DistInfo, resolve_device
from fairbench.models import create_model
from fairbench.runs.folder import LOG_FILE, append_jsonl
from fairbench.train.runner import prepare
from fairbench.train.trainer import Trainer
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, median_line, timed  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="small-cnn")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--method", default="pgd-at", help="registered method the trainer runs")
    p.add_argument(
        "--data",
        choices=("real", "random"),
        default=None,
        help="real files, or random uint8 images of the data set's shape "
        "(default: real for fashion-mnist, random otherwise)",
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="batches per epoch")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--ref-workers",
        type=int,
        default=0,
        help="DataLoader workers of the reference loop (0: TRADES' setting without CUDA)",
    )
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="trainer bf16 autocast (default: the trainer's, on for CUDA)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="trainer channels-last (default: the trainer's)",
    )
    p.add_argument("--compile", action="store_true", help="trainer torch.compile")
    return p.parse_args(argv)


def bench_split(spec: DatasetSpec, n: int, kind: str, data_dir: str | None) -> Split:
    """``n`` training images, class-balanced from the real files or random uint8 of the right shape."""
    if kind == "random":
        gen = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, *spec.shape), dtype=torch.uint8, generator=gen)
        return Split(images, torch.arange(n) % spec.num_classes)
    full = load_split(spec, "train", data_dir, download=False)
    per_class = -(-n // spec.num_classes)
    return full.subset(per_class_indices(full.labels, per_class, spec.num_classes)[:n])


# ---------------------------------------------------------------- the reference's own PGD


def reference_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int
) -> torch.Tensor:
    """PGD as research repositories write it: uniform start, sign steps, clip to the ball and [0, 1]."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def pgd_train_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cfg: RunConfig
) -> torch.Tensor:
    """One PGD-AT step: attack in eval mode, then CE on the adversarial batch in train mode."""
    model.eval()
    x_adv = reference_pgd(model, x, y, cfg.eps, cfg.step_size, cfg.attack_steps)
    model.train()
    loss = F.cross_entropy(model(x_adv).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def sgd(model: nn.Module, cfg: RunConfig, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        **({"fused": True} if fused else {}),
    )


# ---------------------------------------------------------------- the three contenders


def make_limit(
    cfg: RunConfig, spec: DatasetSpec, train: Split, trainer: Trainer, device: torch.device
) -> Callable[[], int]:
    """Repeat the bare PGD-10 step on one device batch, with the trainer's model settings."""
    model = create_model(cfg.arch, spec).to(device)
    x = standard_augment(spec, train.images[: cfg.batch_size])
    if trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = train.labels[: cfg.batch_size]
    opt = sgd(model, cfg, fused=device.type == "cuda")
    steps = -(-len(train) // cfg.batch_size)

    def epoch() -> int:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.amp):
            for _ in range(steps):
                pgd_train_step(model, opt, x, y, cfg)
        return steps * cfg.batch_size

    return epoch


def make_trainer_epoch(trainer: Trainer) -> Callable[[], int]:
    """One epoch as `Trainer.fit` runs it (train, log line); the checkpoint is timed on its own.

    A checkpoint costs the same after 1,280 images as after 60,000: inside this short epoch it
    would weigh ~50x what it weighs in a real one, so its seconds are reported separately.
    """
    state = {"epoch": 0}

    def epoch() -> int:
        record = trainer.train_epoch(state["epoch"])
        append_jsonl(trainer.run_dir / LOG_FILE, record)
        state["epoch"] += 1
        return record["examples"]

    def checkpoint() -> None:
        trainer.save_checkpoint(state["epoch"])

    epoch.checkpoint = checkpoint  # type: ignore[attr-defined]
    return epoch


class PILImages(torch.utils.data.Dataset):
    """What torchvision's FashionMNIST / CIFAR10 datasets do per item: a PIL image through transforms."""

    def __init__(self, split: Split, transform: Callable) -> None:
        images = split.images.cpu().permute(0, 2, 3, 1).numpy()
        self.images = images[..., 0] if images.shape[-1] == 1 else images
        self.labels = split.labels.cpu().numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def make_reference(
    cfg: RunConfig, spec: DatasetSpec, train: Split, device: torch.device, workers: int
) -> Callable[[], int]:
    """The plain loop: DataLoader + per-image transforms, fp32 NCHW, `.item()` every step."""
    from torchvision import transforms

    size = spec.shape[1]
    steps = [transforms.RandomCrop(size, padding=spec.crop_padding)]
    steps += [transforms.RandomHorizontalFlip()] if spec.hflip else []
    loader = torch.utils.data.DataLoader(
        PILImages(train, transforms.Compose([*steps, transforms.ToTensor()])),
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    model = create_model(cfg.arch, spec).to(device)
    opt = sgd(model, cfg, fused=False)

    def epoch() -> int:
        seen, total = 0, 0.0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            total += pgd_train_step(model, opt, x, y, cfg).item()
            seen += len(y)
        return seen

    return epoch


# ---------------------------------------------------------------- main


def images_per_s(fn: Callable[[], int], device: torch.device) -> tuple[float, float]:
    """Images/s by the wall clock and by CPU time."""
    out: list[int] = []
    wall, cpu = timed(lambda: out.append(fn()), device)
    return out[0] / wall, out[0] / cpu


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kind = args.data or ("real" if args.dataset == "fashion-mnist" else "random")
    with tempfile.TemporaryDirectory() as tmp:
        cfg, spec, method_cls, params = prepare(
            RunConfig(
                method=args.method,
                arch=args.arch,
                dataset=args.dataset,
                epochs=args.rounds + 1,
                batch_size=args.batch_size,
                device=args.device,
                out=tmp,
                run_id="bench",
                amp=args.amp,
                channels_last=args.channels_last,
                compile=args.compile,
            )
        )
        device = resolve_device(cfg.device)
        train = bench_split(spec, args.batch_size * args.steps, kind, args.data_dir).to(device)
        run_dir = Path(tmp) / "runs" / "bench"
        run_dir.mkdir(parents=True)
        model = create_model(cfg.arch, spec).to(device)
        trainer = Trainer(
            cfg,
            spec=spec,
            model=model,
            method=method_cls(params, cfg),
            train=train,
            val=None,
            run_dir=run_dir,
            dist=DistInfo(),
            device=device,
            progress=True,
        )
        trainer_epoch = make_trainer_epoch(trainer)
        contenders = {
            "limit": make_limit(cfg, spec, train, trainer, device),
            "trainer": trainer_epoch,
            "reference": make_reference(cfg, spec, train, device, args.ref_workers),
        }
        rates: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
        checkpoint_s: list[float] = []
        names = list(contenders)
        for round_ in range(args.rounds + 1):
            for name in names[round_ % 3 :] + names[: round_ % 3]:  # rotate: load drifts hit all alike
                rate = images_per_s(contenders[name], device)
                if round_ > 0:  # round 0 warms up caches, allocators and (with --compile) graphs
                    rates[name].append(rate)
            checkpoint_s.append(timed(trainer_epoch.checkpoint, device)[0])
    report(args, kind, cfg, trainer, device, rates)
    print(
        f"checkpoint (model, optimizer, RNG; atomic write with fsync): "
        f"{median_line(checkpoint_s[1:])} s wall each, once per epoch"
    )


def report(
    args: argparse.Namespace,
    kind: str,
    cfg: RunConfig,
    trainer: Trainer,
    device: torch.device,
    rates: dict[str, list[tuple[float, float]]],
) -> None:
    print(
        f"{cfg.arch} on {cfg.dataset} ({kind} data), method {cfg.method}, batch {cfg.batch_size}, "
        f"{args.steps} steps/epoch, {args.rounds} rounds; device {device} ({device_name(device)}), "
        f"torch {torch.__version__}"
    )
    print(
        f"trainer settings: channels_last={trainer.channels_last} amp(bf16)={trainer.amp} "
        f"compile={cfg.compile}; reference: fp32 NCHW, DataLoader workers={args.ref_workers}"
    )
    for clock, i in (("wall clock", 0), ("process CPU time", 1)):
        print(f"-- by {clock} (median of rounds; each round in parentheses)")
        for key, values in rates.items():
            print(f"{key:<10} images/s  {median_line([v[i] for v in values], '.1f')}")
        for other in ("limit", "reference"):
            ratios = [t[i] / o[i] for t, o in zip(rates["trainer"], rates[other])]
            print(f"trainer/{other:<9} {median_line(ratios)}")


if __name__ == "__main__":
    main(sys.argv[1:])
