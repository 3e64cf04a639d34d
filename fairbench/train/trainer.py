"""The one training loop of fairbench, shared by every method (single process or DDP)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from fairbench.config import RunConfig, milestones
from fairbench.data.datasets import DatasetSpec, Split, standard_augment, to_float
from fairbench.distributed import DistInfo
from fairbench.errors import FairbenchError
from fairbench.methods.base import MAX_PLAN_FACTOR, BatchContext, EpochContext, EpochPlan, Method
from fairbench.runs.folder import LOG_FILE, append_jsonl
from fairbench.runs.signals import Preempted, StopSignals
from fairbench.train.averaging import WeightAverage
from fairbench.train.checkpoint import Checkpointer
from fairbench.train.faults import Diverged, LossWatch, agreed_stop, check_weights
from fairbench.train.selection import BestValSelector, ValidationScorer, log_record

LOG_EVERY = 20  # steps between progress-bar refreshes (the only host syncs in an epoch)
PIECEWISE_FACTORS = (1.0, 0.1, 0.01, 0.001, 0.0001)  # written out: 0.1 ** 2 is not 0.01


def lr_factor(epoch: int, epochs: int, schedule: str) -> float:
    """Piecewise (x0.1 at each milestone: 50% and 75% of the epochs by default, as in the FairAT/FRL
    protocol; ``piecewise:0.75,0.9`` sets others), cosine, or constant (fine-tuning, as FRL's
    authors do at lr 1e-3; then an E-epoch run is exactly the first E epochs of a longer one)."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    passed = sum(epoch >= m * epochs for m in milestones(schedule) or ())
    return PIECEWISE_FACTORS[passed]


def default_amp(device: torch.device) -> bool:
    """bf16 autocast by default only on a GPU that computes bf16 natively (Ampere and later); an
    older one emulates it, slower than fp32."""
    if device.type != "cuda":
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no including_emulation (and never counted emulation)
        return bool(torch.cuda.is_bf16_supported())


class Trainer:
    """SGD with momentum over each epoch's `EpochPlan`; checkpoints after every epoch."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        spec: DatasetSpec,
        model: nn.Module,
        method: Method,
        train: Split,
        val: Split | None,
        run_dir: Path,
        dist: DistInfo,
        device: torch.device,
        progress: bool = True,
    ) -> None:
        if cfg.batch_size % dist.world_size:
            raise FairbenchError(f"--batch-size {cfg.batch_size} must be divisible by the {dist.world_size} processes")
        if cfg.batch_size > len(train):
            raise FairbenchError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} training examples")
        self.cfg, self.spec, self.method, self.dist = cfg, spec, method, dist
        self.train, self.val, self.run_dir, self.device = train, val, Path(run_dir), device
        self.progress = progress and dist.is_main
        self.amp = cfg.amp if cfg.amp is not None else default_amp(device)
        # Channels-last by default on every device: on the CPU (oneDNN) it is as fast as NCHW for
        # the ResNets and 1.3x faster for small-cnn, whose NCHW max-pool is slow (bench/README.md).
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else True
        if cfg.sync_bn and dist.enabled:
            if device.type != "cuda":
                raise FairbenchError("--sync-bn: SyncBatchNorm runs on GPUs only; drop it on the CPU")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the same root, parameters kept
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its conv algorithms
        self.model = model
        self.train_model, self.attack_model = self._wrap(model)
        self.averaging = self._weight_average(model)
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            **({"fused": True} if device.type == "cuda" else {}),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda e: lr_factor(e, cfg.epochs, cfg.schedule)
        )
        self.start_epoch = 0
        self.train_seconds = 0.0
        self.images_seen = 0
        self.stop: StopSignals | None = None
        self.watch = LossWatch(device, dist)
        self._mid_epoch: dict[str, Any] | None = None  # where a preempted epoch stopped
        self.selector = (
            BestValSelector(cfg, val, spec.num_classes, dist, device)
            if cfg.select == "best-val" and val is not None
            else None
        )
        # a tuning trial logs every epoch's validation score (the selector logs it under best-val)
        self.val_scorer = (
            ValidationScorer(cfg, val, spec.num_classes, dist, device)
            if cfg.score_on == "validation" and val is not None
            else None
        )
        self.checkpoints = Checkpointer(
            run_dir=self.run_dir,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            method=method,
            selector=self.selector,
            averaging=self.averaging,
            dist=dist,
            device=device,
        )

    def _wrap(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(training model: DDP under torchrun, attack model: the bare one), compiled if asked.

        The attack does 10 of the 11 passes and needs no gradient sync, so it runs on the bare
        module; only the loss's forward passes go through DDP (TRADES makes two, clean and
        adversarial, before one backward: each parameter still gets one summed gradient to sync).
        """
        wrapped, attack = model, model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
        if self.cfg.compile:  # static shapes: a last, smaller batch compiles once more
            # a compiled module is a module (OptimizedModule); torch's stubs say a callable
            wrapped = cast(nn.Module, torch.compile(wrapped, dynamic=False))
            attack = cast(nn.Module, torch.compile(model, dynamic=False))
        return wrapped, attack

    @property
    def bn_batch(self) -> int:
        """Images per batch-norm batch in training: each process's share under DDP, unless --sync-bn."""
        return self.cfg.batch_size if self.cfg.sync_bn else self.cfg.batch_size // self.dist.world_size

    def _weight_average(self, model: nn.Module) -> WeightAverage | None:
        """The method's own average (CFA's FAWA), else ``--ema``'s, else none."""
        own = self.method.weight_averaging()
        if own is not None and self.cfg.ema is not None:
            raise FairbenchError(
                f"--ema: method '{self.cfg.method}' keeps its own weight average "
                f"(decay {own}); drop --ema, or turn the method's averaging off"
            )
        if own is not None:
            return WeightAverage(model, own, source=self.cfg.method)
        return WeightAverage(model, self.cfg.ema, source="--ema") if self.cfg.ema is not None else None

    def eval_model(self) -> nn.Module:
        """The model to evaluate, select and ship: the weight average when averaging is on (once an
        epoch entered it), else the trained model."""
        return self.model if self.averaging is None else self.averaging.eval_model(self.model)

    def _update_average(self, ctx: EpochContext) -> None:
        if self.averaging is not None:
            accepted = self.method.accept_average(ctx)
            if accepted:
                self.averaging.update(self.model)
            ctx.log["averaged"] = {"accepted": bool(accepted), "updates": self.averaging.updates}

    # ------------------------------------------------------------------ epochs

    def epoch_context(self, epoch: int) -> EpochContext:
        return EpochContext(
            epoch=epoch,
            epochs=self.cfg.epochs,
            model=self.model,
            spec=self.spec,
            train=self.train,
            val=self.val,
            config=self.cfg,
            device=self.device,
            dist=self.dist,
        )

    def fit(self, stop_after_epoch: int | None = None, stop: StopSignals | None = None) -> bool:
        """Train to the configured epoch count, or stop once ``stop_after_epoch`` epochs are done.

        Stopping early is not part of the training config (a later ``--resume`` continues the
        same run exactly). On a stop signal, checkpoint and raise `Preempted`. Returns True when
        all configured epochs are done.
        """
        self.stop = stop
        last = self.cfg.epochs if stop_after_epoch is None else min(stop_after_epoch, self.cfg.epochs)
        for epoch in range(self.start_epoch, last):
            record = self.train_epoch(epoch)
            if self.selector is not None:
                record.update(self.selector.after_epoch(self.eval_model(), epoch))  # the average, if any
            elif self.val_scorer is not None:
                scorer = self.val_scorer
                record.update(log_record(scorer.robust_per_class(self.eval_model(), epoch)))
            # log first: a crash before the checkpoint leaves a line that `resume` drops and redoes;
            # the other order could lose the line of an epoch the checkpoint says is done
            self.dist.on_main(lambda: append_jsonl(self.run_dir / LOG_FILE, record))
            self.save_checkpoint(epoch + 1)
            if agreed_stop(self.stop, self.dist, self.device):
                raise Preempted(
                    f"stopped by {self._signal()} after epoch {epoch + 1}; "
                    f"{self._kept}; rerun with --resume to continue"
                )
        return max(self.start_epoch, last) >= self.cfg.epochs

    def select_weights(self) -> int:
        """Load the weights the `--select` rule keeps into the model to evaluate (`eval_model`:
        the weight average when averaging is on, which is also what the rule scored); returns
        their epoch."""
        return self.selector.apply(self.eval_model()) if self.selector is not None else self.cfg.epochs

    def _complete_plan(self, plan: EpochPlan) -> EpochPlan:
        plan = self._plan_from_main(plan)
        n = len(plan)
        ones = torch.ones(n, device=self.device)
        assert self.cfg.eps is not None  # filled in by RunConfig.resolve
        return EpochPlan(
            plan.indices.to(self.device),
            None if plan.augment is None else plan.augment.to(self.device),
            ones * self.cfg.eps if plan.eps is None else plan.eps.to(self.device).float(),
            ones if plan.weight is None else plan.weight.to(self.device).float(),
        )

    def _epoch_order(self, epoch: int, n: int) -> torch.Tensor:
        """The same shuffled order on every rank (seeded by run seed and epoch), then this rank's share."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen)
        per_rank = n // self.dist.world_size
        return order[self.dist.rank :: self.dist.world_size][:per_rank].to(self.device)

    def _begin_epoch(self, ctx: EpochContext) -> tuple[EpochPlan, EpochPlan, int, torch.Tensor, float]:
        """The epoch's full plan, this rank's ordered share, first step, loss sum and seconds so far.

        A resumed epoch reuses the plan saved at the signal (the method is not asked again) and the
        loss summed over every rank up to then (kept by rank 0 only, so the all-reduce adds it once).
        """
        mid, self._mid_epoch = self._mid_epoch, None
        loss_sum, step, seconds = torch.zeros((), device=self.device), 0, 0.0
        if mid is not None:
            ctx.log.update(mid["log"])
            saved: dict[str, Any] = {k: None if v is None else v.to(self.device) for k, v in mid["plan"].items()}
            full = EpochPlan(**saved)
            step, seconds = int(mid["step"]), float(mid["seconds"])
            if self.dist.is_main:
                loss_sum = mid["loss_sum"].to(self.device)
        else:
            full = self._complete_plan(self.method.plan_epoch(ctx))
            if len(full) > MAX_PLAN_FACTOR * len(ctx.train):  # what `Method.plan_factor` bounds
                raise FairbenchError(
                    f"epoch {ctx.epoch + 1}: the method planned {len(full)} examples, "
                    f"more than {MAX_PLAN_FACTOR}x the {len(ctx.train)} training "
                    f"examples (its plan_factor must bound its parameters)"
                )
            if len(full) < self.cfg.batch_size:
                raise FairbenchError(
                    f"epoch {ctx.epoch + 1}: the method planned {len(full)} examples, "
                    f"fewer than one batch of {self.cfg.batch_size}"
                )
        return full, full.take(self._epoch_order(ctx.epoch, len(full))), step, loss_sum, seconds

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        ctx = self.epoch_context(epoch)
        full, plan, first_step, loss_sum, seconds_before = self._begin_epoch(ctx)
        self.train_model.train()
        self.watch.reset()
        local_bs = self.cfg.batch_size // self.dist.world_size
        starts = range(0, len(plan), local_bs)
        bar = self._progress_bar(epoch, len(starts))
        t0 = time.perf_counter()
        for step in range(first_step, len(starts)):
            start = starts[step]
            batch = plan.take(torch.arange(start, min(start + local_bs, len(plan)), device=self.device))
            loss = self.train_step(batch, epoch)
            loss_sum += loss.detach().float() * len(batch)
            self.watch.record(step, loss)
            if (step + 1) % LOG_EVERY == 0:
                self.watch.check(epoch, len(starts), self._kept)  # this interval's one host sync
                if bar is not None:
                    self._update_bar(bar, loss_sum, start + len(batch), t0, LOG_EVERY)
            if step + 1 < len(starts) and self._stop_requested(step):
                self._preempt(ctx, full, step + 1, len(starts), loss_sum, seconds_before + time.perf_counter() - t0)
        self.watch.check(epoch, len(starts), self._kept)
        seen = torch.tensor(float(len(plan)), device=self.device)
        mean_loss = float(self.dist.all_reduce_sum(loss_sum) / self.dist.all_reduce_sum(seen))
        seconds = seconds_before + time.perf_counter() - t0
        if not math.isfinite(mean_loss):
            raise Diverged(f"training diverged in epoch {epoch + 1}: the mean loss is {mean_loss}; {self._kept}")
        if bar is not None:
            self._update_bar(bar, loss_sum, len(plan), t0, len(starts) % LOG_EVERY)
            bar.close()
        self.dist.broadcast_buffers(self.model)  # scoring, evaluation and the checkpoint: rank 0's
        self._check_replicas(epoch)
        check_weights(
            self.model, to_float(self.train.images[plan.indices[-local_bs:]]), self.dist, epoch, self._kept
        )  # the last update: no loss of this epoch saw it
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.method.end_epoch(ctx)
        self._update_average(ctx)
        images = len(plan) * self.dist.world_size
        self.train_seconds += seconds
        self.images_seen += images
        return {
            "epoch": epoch + 1,
            "lr": lr,
            "loss": mean_loss,
            "examples": images,
            "seconds": round(seconds, 3),
            "images_per_s": round(images / seconds, 1),
            **ctx.log,
        }

    def train_step(self, batch: EpochPlan, epoch: int) -> torch.Tensor:
        images = self.train.images[batch.indices]
        x = standard_augment(self.spec, images) if self.cfg.augment == "standard" else to_float(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        assert batch.eps is not None and batch.weight is not None  # _complete_plan fills them
        assert self.cfg.eps is not None and self.cfg.step_size is not None  # filled in by RunConfig.resolve
        ctx = BatchContext(
            model=self.train_model,
            attack_model=self.attack_model,
            x=x,
            y=self.train.labels[batch.indices],
            eps=batch.eps,
            step_size=batch.eps * (self.cfg.step_size / self.cfg.eps),
            steps=self.cfg.attack_steps,
            weight=batch.weight,
            epoch=epoch,
            spec=self.spec,
            dist=self.dist,
        )
        if batch.augment is not None:
            ctx.x = self.method.augment(ctx, batch.augment)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self.method.loss(ctx)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def _plan_from_main(self, plan: EpochPlan) -> EpochPlan:
        """Rank 0's plan on every rank: a plan the method drew at random stays one plan under DDP."""
        if not self.dist.enabled:
            return plan
        cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
        fields = self.dist.broadcast_object((cpu(plan.indices), cpu(plan.augment), cpu(plan.eps), cpu(plan.weight)))
        moved: list[Any] = [None if t is None else t.to(self.device) for t in fields]
        return EpochPlan(*moved)

    def _check_replicas(self, epoch: int) -> None:
        """Under DDP every rank must hold the same weights; a loss that bypasses ctx.model would not."""
        if not self.dist.enabled:
            return
        checksum = float(sum(p.detach().double().sum() for p in self.model.parameters()))
        if len({repr(c) for c in self.dist.all_gather_object(checksum)}) > 1:  # repr: nan == nan
            raise FairbenchError(
                f"epoch {epoch + 1}: the processes' weights differ; the method "
                f"'{self.cfg.method}' must compute its loss forward with ctx.model "
                f"(the DDP-wrapped model), not ctx.attack_model"
            )

    def _progress_bar(self, epoch: int, steps: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False, dynamic_ncols=True)

    def _update_bar(self, bar, loss_sum: torch.Tensor, seen: int, t0: float, steps: int) -> None:
        rate = seen * self.dist.world_size / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{float(loss_sum) / max(seen, 1):.4f}", img_s=f"{rate:.0f}")
        bar.update(steps)

    # ------------------------------------------------------------------ stopping on a signal

    def _stop_requested(self, step: int) -> bool:
        """Checked after every step; under DDP only at log intervals, where ranks agree (one collective)."""
        if not self.dist.enabled:
            return bool(self.stop and self.stop.requested)
        return (step + 1) % LOG_EVERY == 0 and agreed_stop(self.stop, self.dist, self.device)

    def _signal(self) -> str:
        return (self.stop.requested if self.stop else None) or "a signal on another rank"

    def _preempt(
        self, ctx: EpochContext, plan: EpochPlan, step: int, steps: int, loss_sum: torch.Tensor, seconds: float
    ) -> None:
        """Checkpoint at this step boundary (never a diverged model), then raise `Preempted`."""
        self.watch.check(ctx.epoch, steps, self._kept)
        plan_state = {"indices": plan.indices, "augment": plan.augment, "eps": plan.eps, "weight": plan.weight}
        total = self.dist.all_reduce_sum(loss_sum.clone())
        self.save_checkpoint(
            ctx.epoch,
            mid_epoch={"step": step, "plan": plan_state, "log": ctx.log, "loss_sum": total, "seconds": seconds},
        )
        raise Preempted(
            f"stopped by {self._signal()} in epoch {ctx.epoch + 1} after step {step} "
            f"of {steps}; {self._kept}; rerun with --resume to continue"
        )

    # ------------------------------------------------------------------ checkpoints (fairbench.train.checkpoint)

    @property
    def _kept(self) -> str:
        """Which checkpoint a failure now leaves behind, for its message."""
        return self.checkpoints.kept

    def save_checkpoint(self, epochs_done: int, mid_epoch: dict[str, Any] | None = None) -> None:
        """Write the checkpoint atomically; ``mid_epoch`` marks one taken inside epoch ``epochs_done``."""
        self.checkpoints.save(
            self.cfg, epochs_done, train_seconds=self.train_seconds, images_seen=self.images_seen, mid_epoch=mid_epoch
        )

    def resume(self) -> None:
        """Continue from the run folder's checkpoint; refuses one made with another config."""
        resumed = self.checkpoints.resume(self.cfg, n_train=len(self.train))
        self.cfg, self.start_epoch, self._mid_epoch = resumed.cfg, resumed.start_epoch, resumed.mid_epoch
        self.train_seconds, self.images_seen = resumed.train_seconds, resumed.images_seen
