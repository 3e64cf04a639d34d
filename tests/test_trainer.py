"""The one training loop: LR schedules, checkpoints, exact resume, seeds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairbench.config import PRESETS, RunConfig
from fairbench.data.datasets import Split, get_dataset
from fairbench.distributed import DistInfo
from fairbench.errors import FairbenchError
from fairbench.methods.base import BatchContext, Method
from fairbench.models import create_model
from fairbench.runs.folder import load_checkpoint, read_jsonl
from fairbench.train.checkpoint import rng_state, seed_everything, set_rng_state
from fairbench.train.runner import run
from fairbench.train.trainer import Trainer, lr_factor

SPEC = get_dataset("fashion-mnist")


# ---------------------------------------------------------------- learning-rate schedules


def test_piecewise_schedule_divides_by_ten_at_half_and_three_quarters() -> None:
    lrs = [0.1 * lr_factor(e, 100, "piecewise") for e in range(100)]
    assert lrs[:50] == [0.1] * 50
    assert lrs[50:75] == pytest.approx([0.01] * 25)
    assert lrs[75:] == pytest.approx([0.001] * 25)


def code_lr_factor(epoch: int, drops: tuple[int, ...]) -> float:
    """The official codes' rule: epochs counted from 1 (WAT's loop calls its adjust_learning_rate
    with epoch + 1; BAT's and DAFA's count from 1), /10 once the epoch reaches each drop."""
    return 0.1 ** sum(epoch + 1 >= d for d in drops)


@pytest.mark.parametrize(
    "preset, drops", [("wat-cifar10", (75, 90)), ("bat-cifar10", (75, 90, 100)), ("dafa-cifar10", (100, 105))]
)
def test_paper_presets_drop_the_lr_at_the_same_epochs_as_their_codes(preset: str, drops: tuple) -> None:
    """WAT: /10 at its epochs 75 and 90 (of 100); BAT: 75, 90 and 100 (the first 100 of its 200);
    DAFA: 100 and 105 (of 110), i.e. at 0-based epochs 74 and 89, ..., not one epoch later."""
    epochs, schedule = PRESETS[preset]["epochs"], PRESETS[preset]["schedule"]
    ours = [lr_factor(e, epochs, schedule) for e in range(epochs)]
    assert ours == pytest.approx([code_lr_factor(e, drops) for e in range(epochs)], rel=1e-12)
    assert ours[drops[0] - 2] == 1.0 and ours[drops[0] - 1] == 0.1  # the first drop: 0-based epoch 74 / 99


def test_piecewise_milestones_are_exact() -> None:
    """The lr drops at the first 0-based epoch >= M * epochs; the default is exact (0.01, not
    0.1 ** 2, so that runs made before milestones existed are unchanged)."""
    wat = [0.1 * lr_factor(e, 100, "piecewise:0.75,0.9") for e in (74, 75, 89, 90, 99)]
    assert wat == pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001])
    assert lr_factor(99, 100, "piecewise") == 0.01 and lr_factor(50, 100, "piecewise") == 0.1


@pytest.mark.parametrize(
    "schedule",
    [
        "piecewise:",
        "piecewise:0.9,0.5",
        "piecewise:0.5,0.5",
        "piecewise:1",
        "piecewise:0",
        "piecewise:a",
        "step",
        "piecewise:0.1,0.2,0.3,0.4,0.5",
    ],
)
def test_bad_schedules_are_one_clear_error(schedule: str) -> None:
    with pytest.raises(FairbenchError, match="--schedule must be piecewise"):
        RunConfig(method="pgd-at", arch="small-cnn", dataset="fashion-mnist", schedule=schedule).validate()


def test_cosine_schedule() -> None:
    factors = [lr_factor(e, 10, "cosine") for e in range(10)]
    assert factors[0] == 1.0 and factors[5] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(factors, factors[1:])) and factors[-1] > 0


class CleanCE(Method):
    """Plain cross-entropy (no attack): fast, for testing the loop itself."""

    name = "clean-ce"

    def loss(self, ctx: BatchContext) -> torch.Tensor:
        return F.cross_entropy(ctx.model(ctx.x), ctx.y)


def tiny_trainer(tmp_path: Path, **overrides) -> Trainer:
    values = dict(method="clean-ce", arch="small-cnn", dataset="fashion-mnist", epochs=4, batch_size=10)
    cfg = RunConfig(**(values | overrides)).resolve(SPEC.eps, SPEC.step_size)
    g = torch.Generator().manual_seed(0)
    train = Split(torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8, generator=g), torch.arange(30) % 10)
    torch.manual_seed(0)
    model = create_model("small-cnn", SPEC)
    return Trainer(
        cfg,
        spec=SPEC,
        model=model,
        method=CleanCE(None, cfg),
        train=train,
        val=None,
        run_dir=tmp_path,
        dist=DistInfo(),
        device=torch.device("cpu"),
        progress=False,
    )


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("piecewise", [0.1, 0.1, 0.01, 0.001]),
        ("constant", [0.1, 0.1, 0.1, 0.1]),
        ("cosine", [0.1, 0.1 * (0.5 + 0.5**1.5), 0.05, 0.1 * (0.5 - 0.5**1.5)]),
        ("piecewise:0.25,0.5,0.75", [0.1, 0.01, 0.001, 0.0001]),
        ("piecewise:0.9", [0.1, 0.1, 0.1, 0.1]),
    ],
)
def test_trainer_applies_the_schedule(tmp_path: Path, schedule: str, expected: list[float]) -> None:
    trainer = tiny_trainer(tmp_path, schedule=schedule)
    assert trainer.fit() is True
    log = read_jsonl(tmp_path / "log.jsonl")
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert [r["lr"] for r in log] == pytest.approx(expected)
    assert all(r["examples"] == 30 and np.isfinite(r["loss"]) for r in log)


def test_sgd_settings_and_cpu_defaults(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path)
    group = trainer.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 5e-4)
    assert trainer.amp is False and trainer.channels_last is True  # bf16 on CUDA only; channels-last everywhere


def test_bf16_autocast_trains_on_cpu(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, epochs=1, amp=True, channels_last=True)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    assert np.isfinite(read_jsonl(tmp_path / "log.jsonl")[0]["loss"])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_stop_after_epoch_checkpoints_and_returns(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path)
    assert trainer.fit(stop_after_epoch=1) is False
    state = load_checkpoint(tmp_path / "checkpoint.pt")  # weights_only=True
    assert state["epoch"] == 1 and state["config"]["epochs"] == 4
    assert {"model", "optimizer", "scheduler", "method", "rng", "config_hash"} <= set(state)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "log.jsonl")] == [1]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes


def test_batch_larger_than_the_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FairbenchError, match="larger than the 30 training examples"):
        tiny_trainer(tmp_path, batch_size=64)


# ---------------------------------------------------------------- seeds and RNG state


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seed_everything_seeds_python_numpy_and_torch() -> None:
    seed_everything(7)
    a = _draws()
    seed_everything(7)
    assert _draws() == a
    seed_everything(8)
    b = _draws()
    assert all(x != y for x, y in zip(a, b))


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    seed_everything(3)
    _draws()
    np.random.randn()  # numpy's cached Gaussian is part of its state
    torch.save({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = _draws()
    seed_everything(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draws() == expected


def _tiny_run(fmnist_dir: Path, out: Path, **overrides) -> RunConfig:
    values = dict(
        method="pgd-at",
        arch="small-cnn",
        dataset="fashion-mnist",
        epochs=2,
        batch_size=25,
        train_per_class=10,
        eval_per_class=3,
        attack_steps=2,
        attacks=("clean", "pgd20"),
        device="cpu",
        data_dir=str(fmnist_dir),
        out=str(out),
        run_id="r",
        download=False,
    )
    values.update(overrides)
    return RunConfig(**values)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoint.pt")["model"]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights_other_seed_other_weights(fmnist_dir: Path, tmp_path: Path) -> None:
    quiet = dict(progress=False, echo=lambda _m: None)
    fast = dict(epochs=1, attacks=("clean",), train_per_class=5)
    a = run(_tiny_run(fmnist_dir, tmp_path / "a", seed=3, **fast), **quiet)
    b = run(_tiny_run(fmnist_dir, tmp_path / "b", seed=3, **fast), **quiet)
    c = run(_tiny_run(fmnist_dir, tmp_path / "c", seed=4, **fast), **quiet)
    assert _equal(_weights(a), _weights(b))
    assert not _equal(_weights(a), _weights(c))


# ---------------------------------------------------------------- resume


def test_resume_gives_the_uninterrupted_weights(fmnist_dir: Path, tmp_path: Path) -> None:
    quiet = dict(progress=False, echo=lambda _m: None)
    whole = run(_tiny_run(fmnist_dir, tmp_path / "whole"), **quiet)

    parts = run(_tiny_run(fmnist_dir, tmp_path / "parts"), stop_after_epoch=1, **quiet)
    assert load_checkpoint(parts / "checkpoint.pt")["epoch"] == 1
    assert not (parts / "metrics.json").exists()  # stopped runs are not evaluated
    assert not _equal(_weights(parts), _weights(whole))
    # a line logged for epoch 2 just before a crash, with no checkpoint after it, is redone
    with open(parts / "log.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "loss": -1.0}) + "\n")

    seed_everything(12345)  # the resumed process starts from other RNG states
    resumed = run(_tiny_run(fmnist_dir, tmp_path / "parts"), resume=True, **quiet)
    assert resumed == parts
    assert _equal(_weights(parts), _weights(whole))
    ck_whole, ck_parts = load_checkpoint(whole / "checkpoint.pt"), load_checkpoint(parts / "checkpoint.pt")
    assert ck_parts["epoch"] == 2
    assert ck_parts["scheduler"]["last_epoch"] == ck_whole["scheduler"]["last_epoch"] == 2
    momentum = [s["momentum_buffer"] for s in ck_parts["optimizer"]["state"].values()]
    assert all(torch.equal(m, n["momentum_buffer"]) for m, n in zip(momentum, ck_whole["optimizer"]["state"].values()))

    log_whole, log_parts = read_jsonl(whole / "log.jsonl"), read_jsonl(parts / "log.jsonl")
    assert [r["epoch"] for r in log_parts] == [1, 2]
    assert [r["loss"] for r in log_parts] == [r["loss"] for r in log_whole]
    assert [r["lr"] for r in log_parts] == pytest.approx([0.1, 0.01])
    m_whole = json.loads((whole / "metrics.json").read_text())["metrics"]
    m_parts = json.loads((parts / "metrics.json").read_text())["metrics"]
    assert m_parts == m_whole


def test_resume_refuses_another_config(fmnist_dir: Path, tmp_path: Path) -> None:
    quiet = dict(progress=False, echo=lambda _m: None)
    run_dir = run(_tiny_run(fmnist_dir, tmp_path), stop_after_epoch=1, **quiet)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with pytest.raises(FairbenchError, match=r"different config: lr \(0.1 in the checkpoint, 0.05 now\)"):
        run(_tiny_run(fmnist_dir, tmp_path, lr=0.05), resume=True, **quiet)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before  # nothing rewritten


def test_per_example_loss_scores_in_index_order_without_touching_the_model(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, eval_batch_size=7)  # several batches, the last one short
    ctx = trainer.epoch_context(0)
    model = trainer.model.train()
    indices = torch.tensor([29, 3, 3, 17, 0, 11, 5, 8, 21, 2, 13, 1, 26, 9, 4, 6])
    losses = ctx.per_example_loss(indices=indices)
    assert model.training  # restored after scoring in eval mode
    model.eval()
    with torch.no_grad():
        x = trainer.train.images[indices].float() / 255
        expected = F.cross_entropy(model(x), trainer.train.labels[indices], reduction="none")
    assert not losses.requires_grad
    assert torch.allclose(losses, expected, atol=1e-6)


# ---------------------------------------------------------------- no host data in the hot loop

HOST_CONSTRUCTORS = ("tensor", "as_tensor", "asarray", "from_numpy", "scalar_tensor")


@pytest.mark.parametrize("dataset", ["cifar10", "fashion-mnist"])  # randaugment / affine-erase
def test_a_fairat_training_step_builds_no_tensor_from_host_data(dataset: str, tmp_path: Path, monkeypatch) -> None:
    """One training step of FairAT on TRADES (standard augmentation, the hard-example policy, the KL
    attack, the loss, the update) makes no tensor from Python or NumPy data: on a GPU each would be
    a host-to-device copy, and a sync, in every step (issue 15: randaugment built one per call)."""
    from fairbench.methods import METHODS
    from fairbench.methods.base import EpochPlan

    spec = get_dataset(dataset)
    cfg = RunConfig(
        method="fairat",
        arch="small-cnn",
        dataset=dataset,
        epochs=1,
        batch_size=8,
        attack_steps=2,
        params={"base": "trades"},
    ).resolve(spec.eps, spec.step_size)
    method_cls = METHODS.get("fairat")
    method = method_cls(method_cls.Params(base="trades"), cfg)
    train = Split(torch.randint(0, 256, (8, *spec.shape), dtype=torch.uint8), torch.arange(8) % 10)
    trainer = Trainer(
        cfg,
        spec=spec,
        model=create_model("small-cnn", spec),
        method=method,
        train=train,
        val=None,
        run_dir=tmp_path,
        dist=DistInfo(),
        device=torch.device("cpu"),
        progress=False,
    )
    plan = EpochPlan(torch.arange(8), torch.arange(8) % 2 == 0, torch.full((8,), cfg.eps), torch.ones(8))
    made = []
    for name in HOST_CONSTRUCTORS:
        real = getattr(torch, name)

        def spy(data, *args, _real=real, _name=name, **kwargs):
            if not isinstance(data, torch.Tensor):
                made.append(_name)
            return _real(data, *args, **kwargs)

        monkeypatch.setattr(torch, name, spy)
    trainer.train_step(plan, 0)
    assert made == []


@pytest.mark.parametrize("before, after", [(False, True), (True, False)])
def test_resume_under_the_other_memory_layout_converts_the_momentum(tmp_path: Path, before: bool, after: bool) -> None:
    """A checkpoint written without channels-last, resumed with it (or the reverse): every momentum
    buffer takes its weight's strides. With NCHW buffers on channels-last weights, the fused SGD
    that CUDA runs gives a wrong update (up to 0.47 off with the CPU fused kernel)."""
    tiny_trainer(tmp_path, channels_last=before).fit(stop_after_epoch=1)
    trainer = tiny_trainer(tmp_path, channels_last=after)
    trainer.resume()
    params = [p for p in trainer.model.parameters() if p.ndim == 4]
    buffers = [trainer.optimizer.state[p]["momentum_buffer"] for p in params]
    assert [b.stride() for b in buffers] == [p.stride() for p in params]

    def one_step(fused: bool) -> list[torch.Tensor]:
        copies = [p.detach().clone().requires_grad_() for p in params]  # clone keeps the layout
        opt = torch.optim.SGD(copies, lr=0.1, momentum=0.9, fused=fused)
        for copy, buf in zip(copies, buffers):
            copy.grad = torch.ones_like(copy)
            opt.state[copy]["momentum_buffer"] = buf.clone()
        opt.step()
        return copies

    for fused, plain in zip(one_step(True), one_step(False)):
        assert torch.allclose(fused, plain, atol=1e-6)


def test_sync_bn_keeps_existing_run_ids_and_needs_gpus_under_ddp(tmp_path: Path) -> None:
    """--sync-bn joins the training hash only when set: every existing run keeps its id and resumes
    (the hash below is main's before the option existed). SyncBatchNorm runs on GPUs only."""
    cfg = RunConfig(method="trades", arch="preact18", dataset="cifar10").resolve(8 / 255, 2 / 255)
    assert cfg.training_hash() == "b76f279c"
    synced = RunConfig(method="trades", arch="preact18", dataset="cifar10", sync_bn=True)
    assert synced.resolve(8 / 255, 2 / 255).training_hash() != "b76f279c"
    values = dict(method="clean-ce", arch="small-cnn", dataset="fashion-mnist", batch_size=10, sync_bn=True)
    cfg = RunConfig(**values).resolve(SPEC.eps, SPEC.step_size)
    train = Split(torch.zeros(30, 1, 28, 28, dtype=torch.uint8), torch.arange(30) % 10)
    with pytest.raises(FairbenchError, match="--sync-bn: SyncBatchNorm runs on GPUs only"):
        Trainer(
            cfg,
            spec=SPEC,
            model=create_model("small-cnn", SPEC),
            method=CleanCE(None, cfg),
            train=train,
            val=None,
            run_dir=tmp_path,
            dist=DistInfo(0, 2),
            device=torch.device("cpu"),
            progress=False,
        )


@pytest.mark.parametrize(
    "device, native, expected", [("cpu", True, False), ("cuda", True, True), ("cuda", False, False)]
)
def test_bf16_autocast_by_default_only_where_bf16_is_native(
    monkeypatch, device: str, native: bool, expected: bool
) -> None:
    """A V100 or T4 emulates bf16 (slower than fp32): no autocast there unless --amp asks."""
    from fairbench.train.trainer import default_amp

    asked = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert default_amp(torch.device(device)) is expected
    assert asked == ([False] if device == "cuda" else [])
