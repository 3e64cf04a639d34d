"""One run: resolve the config, load data and model, train with the one Trainer, evaluate, write."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch

from fairbench.config import RunConfig
from fairbench.data.datasets import DatasetSpec, Split, get_dataset, load_splits, per_class_indices, train_val_split
from fairbench.distributed import DistInfo, process_group, resolve_device
from fairbench.errors import FairbenchError
from fairbench.eval.evaluator import attack_settings, environment, evaluate_and_write, subset_indices
from fairbench.methods import METHODS
from fairbench.methods.base import Method, parse_params
from fairbench.models import MODELS, create_model, load_model_state
from fairbench.runs.folder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LOG_FILE,
    atomic_write_json,
    atomic_write_text,
    claim_run_folder,
    clear_results,
    read_run_config,
    remove_stale_temps,
    sha256_file,
)
from fairbench.runs.signals import StopSignals
from fairbench.schema import METRICS_FILE, OUTCOMES_FILE, Outcomes, RunRecord, build_record
from fairbench.schema.validation import VALIDATION_FILE, TrialIdentity, build_diverged, build_validation
from fairbench.specs.threats import subset_keys, used_subsets
from fairbench.train.checkpoint import seed_everything
from fairbench.train.faults import Diverged
from fairbench.train.init_from import read_init_source
from fairbench.train.trainer import Trainer


def config_from_run_dir(run_dir: Path) -> RunConfig:
    """The config a run folder was started with (its config.json), for `fairbench resume`."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FairbenchError(f"{run_dir} is not a run folder (no {CONFIG_FILE})")
    if run_dir.resolve().parent.name != "runs":
        raise FairbenchError(f"{run_dir}: a run folder lives in RESULTS/runs/<run-id>")
    cfg = RunConfig.from_dict(read_run_config(run_dir))  # bounded, a regular file: it may not be ours
    out = run_dir.resolve().parent.parent
    init_from = cfg.init_from
    if init_from is not None and not Path(init_from).is_absolute():  # recorded relative to the results folder
        init_from = str(out / init_from)
    return dataclasses.replace(cfg, out=str(out), run_id=run_dir.resolve().name, init_from=init_from)


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """A generous estimate of one checkpoint: weights, momentum buffers and some slack."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 2 * weights + (1 << 20)


def prepare(cfg: RunConfig) -> tuple[RunConfig, DatasetSpec, type[Method], Any]:
    """Look up every registered name and validate every value before any work starts."""
    spec = get_dataset(cfg.dataset)
    method_cls = METHODS.get(cfg.method)
    MODELS.get(cfg.arch)
    params = parse_params(method_cls, cfg.params)
    if method_cls.requires_init and cfg.init_from is None:
        raise FairbenchError(
            f"{cfg.method} fine-tunes a finished run: pass --init-from RUN_DIR "
            f"(e.g. a pgd-at run of the same architecture and data set)"
        )
    cfg = dataclasses.replace(cfg, params=dataclasses.asdict(params))
    return cfg.resolve(spec.eps, spec.step_size, cuda=torch.cuda.is_available()), spec, method_cls, params


def load_data(
    cfg: RunConfig, spec: DatasetSpec, device: torch.device, dist: DistInfo | None = None
) -> tuple[Split, Split | None, Split | None, torch.Tensor | None]:
    """Train (minus a class-balanced validation split) and test, as uint8 tensors on ``device``,
    and the test images' positions in the full test set (kept with the evaluation's outcomes).
    A tuning trial (``score_on="validation"``) never loads the test set: (train, val, None, None).
    Under torchrun the processes download in turn (`load_splits`)."""
    if cfg.score_on == "validation":
        (train_full,) = load_splits(spec, ("train",), cfg.data_dir, cfg.download, dist or DistInfo())
        train, val = train_val_split(train_full, spec.num_classes, cfg.train_per_class, cfg.val_per_class)
        return train.to(device), (val.to(device) if val is not None else None), None, None
    train_full, test = load_splits(spec, ("train", "test"), cfg.data_dir, cfg.download, dist or DistInfo())
    train, val = train_val_split(train_full, spec.num_classes, cfg.train_per_class, cfg.val_per_class)
    test_indices = (
        per_class_indices(test.labels, cfg.eval_per_class, spec.num_classes)
        if cfg.eval_per_class
        else torch.arange(len(test))
    )
    test = test.subset(test_indices)
    return (train.to(device), (val.to(device) if val is not None else None), test.to(device), test_indices)


def run(
    cfg: RunConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    stop_after_epoch: int | None = None,
) -> Path:
    """Train and evaluate one run; returns its folder ``<out>/runs/<run-id>``.

    ``stop_after_epoch`` ends the call after that many epochs with a checkpoint and no
    evaluation (a time-limited job); ``resume=True`` continues it. It is not part of the config.
    SIGTERM/SIGINT raise `fairbench.runs.signals.Preempted` once the last finished step is checkpointed.
    """
    if stop_after_epoch is not None and stop_after_epoch < 1:
        raise FairbenchError(f"--stop-after-epoch must be >= 1, got {stop_after_epoch}")
    cfg, spec, method_cls, params = prepare(cfg)
    device = resolve_device(cfg.device)
    with StopSignals() as stop, process_group(device) as (device, dist):
        stop.announce = dist.is_main
        return _run(
            cfg,
            spec=spec,
            method_cls=method_cls,
            params=params,
            device=device,
            dist=dist,
            resume=resume,
            progress=progress,
            echo=echo,
            stop=stop,
            stop_after_epoch=stop_after_epoch,
        )


def _run(
    cfg: RunConfig,
    *,
    spec: DatasetSpec,
    method_cls: type[Method],
    params: Any,
    device: torch.device,
    dist: DistInfo,
    resume: bool,
    progress: bool,
    echo: Callable[[str], None],
    stop: StopSignals,
    stop_after_epoch: int | None,
) -> Path:
    run_dir = Path(cfg.out) / "runs" / str(cfg.run_id)
    say = echo if dist.is_main else (lambda _msg: None)
    has_checkpoint = folder_state(run_dir, resume)  # early, before loading data; again under the lock
    seed_everything(cfg.seed + dist.rank)
    train, val, test, test_indices = load_data(cfg, spec, device, dist)
    model = create_model(cfg.arch, spec).to(device)
    if cfg.init_from is not None and not (resume and has_checkpoint):  # a resume has it in its checkpoint
        weights, source = read_init_source(cfg)
        load_model_state(model, weights, f"--init-from {cfg.init_from}")
        cfg = dataclasses.replace(cfg, init_source=source)
    method = method_cls(params, cfg)
    trainer = Trainer(
        cfg,
        spec=spec,
        model=model,
        method=method,
        train=train,
        val=val,
        run_dir=run_dir,
        dist=dist,
        device=device,
        progress=progress,
    )
    with contextlib.ExitStack() as lock:  # every input is valid: only now is anything written
        dist.on_main(lambda: _claim_folder(run_dir, 2 * checkpoint_bytes(model), lock, resume, has_checkpoint))
        if resume and has_checkpoint:  # before any write: a refused checkpoint changes nothing
            trainer.resume()
            cfg = trainer.cfg  # with the record of the run it started from, if any
            say(f"resuming {cfg.run_id} from its checkpoint ({trainer.start_epoch} of {cfg.epochs} epochs done)")
        elif resume:  # the run was started but stopped before its first checkpoint
            say(f"no checkpoint in {run_dir} yet: starting {cfg.run_id} from the beginning")
        dist.on_main(lambda: _start_folder(cfg, run_dir, resume and has_checkpoint))
        say(
            f"training {cfg.method} on {cfg.dataset} with {cfg.arch}: {len(train)} examples, "
            f"{cfg.epochs} epochs, eps {cfg.eps:.4f}, device {device}"
        )
        with stop.deferred():  # a signal lets the current step finish and is checkpointed
            try:
                finished = trainer.fit(stop_after_epoch, stop)
            except Diverged as exc:
                if cfg.score_on != "validation":
                    raise
                _record_divergence(cfg, exc, device=device, dist=dist, run_dir=run_dir)
                raise Diverged(f"{exc} (a tuning trial: recorded in {VALIDATION_FILE} as diverged, no score)") from None
        if not finished:
            say(f"stopped after epoch {stop_after_epoch} of {cfg.epochs}; continue with --resume")
            return run_dir
        if cfg.score_on == "validation":
            _score_validation_and_write(
                cfg, spec=spec, trainer=trainer, device=device, dist=dist, run_dir=run_dir, say=say
            )
            return run_dir
        assert test is not None and test_indices is not None
        _evaluate_and_write(
            cfg,
            spec=spec,
            model=trainer.eval_model(),
            test=test,
            test_indices=test_indices,
            trainer=trainer,
            device=device,
            dist=dist,
            run_dir=run_dir,
            say=say,
        )
    return run_dir


def folder_state(run_dir: Path, resume: bool) -> bool:
    """Whether ``run_dir`` holds a checkpoint to continue; refuses a folder this command must not
    touch (a run without --resume, a finished run without its checkpoint, --resume of nothing)."""
    has_checkpoint = (run_dir / CHECKPOINT_FILE).exists()
    if not resume and has_checkpoint:
        raise FairbenchError(
            f"{run_dir} already holds a run; pass --resume to continue it or --run-id to start another"
        )
    done = next((f for f in (METRICS_FILE, VALIDATION_FILE) if (run_dir / f).exists()), None)
    if not has_checkpoint and done:  # e.g. committed results (no .pt)
        raise FairbenchError(
            f"{run_dir} holds a finished run (its {done}) and no checkpoint "
            f"to continue from; pass --run-id to start another, or delete the folder "
            f"to redo it"
        )
    if resume and not has_checkpoint and not (run_dir / CONFIG_FILE).exists():
        raise FairbenchError(f"--resume: no checkpoint in {run_dir}, and no run was started there")
    return has_checkpoint


def _claim_folder(
    run_dir: Path, need_bytes: int, lock: contextlib.ExitStack, resume: bool, had_checkpoint: bool
) -> None:
    """Claim the run folder (`claim_run_folder`, rank 0), with room for ``need_bytes``; under the
    lock, the folder must still hold what `folder_state` saw before the data was loaded."""

    def unchanged(run_dir: Path) -> None:
        if folder_state(run_dir, resume) != had_checkpoint:
            raise FairbenchError(
                f"{run_dir} changed while this run was starting (another process wrote "
                f"a checkpoint there, or removed it); run the command again"
            )

    claim_run_folder(run_dir, lock, unchanged, need_bytes=need_bytes)


def _start_folder(cfg: RunConfig, run_dir: Path, resuming: bool) -> None:
    """Clear what a crash may have left, record the config, and make sure no old result looks current."""
    remove_stale_temps(run_dir)
    atomic_write_json(run_dir / CONFIG_FILE, cfg.portable_dict())
    clear_results(run_dir, METRICS_FILE, OUTCOMES_FILE, VALIDATION_FILE)
    if not resuming:  # a fresh start: no epoch records from an earlier attempt
        atomic_write_text(run_dir / LOG_FILE, "")


def _evaluate_and_write(
    cfg: RunConfig,
    *,
    spec: DatasetSpec,
    model: torch.nn.Module,
    test: Split,
    test_indices: torch.Tensor,
    trainer: Trainer,
    device: torch.device,
    dist: DistInfo,
    run_dir: Path,
    say: Callable[[str], None],
) -> None:
    # Seeded here so the attacks' random starts do not depend on whether (or where) the
    # run was resumed: a resumed run reports the same metrics as an uninterrupted one.
    seed_everything(cfg.seed + dist.rank)
    selected = trainer.select_weights()
    if cfg.select != "last":
        say(f"--select {cfg.select}: evaluating the weights of epoch {selected}")
    evaluate_and_write(
        model,
        test,
        spec.classes,
        indices=test_indices,
        run_dir=run_dir,
        dist=dist,
        say=say,
        record=lambda rows, seconds: metrics_record(
            cfg,
            spec=spec,
            outcomes=rows,
            seconds=seconds,
            trainer=trainer,
            device=device,
            run_dir=run_dir,
            selected=selected,
        ),
        eps=cfg.eps,
        attacks=cfg.attacks,
        batch_size=cfg.eval_batch_size,
        seed=cfg.seed,
        subsets=threat_subsets(cfg, spec, test),
    )


def _score_validation_and_write(
    cfg: RunConfig,
    *,
    spec: DatasetSpec,
    trainer: Trainer,
    device: torch.device,
    dist: DistInfo,
    run_dir: Path,
    say: Callable[[str], None],
) -> None:
    """A tuning trial's end: score the kept weights on the validation split only (the `RULE` of
    `fairbench.schema.validation`) and write validation.json; no test image is ever touched."""
    selected = trainer.select_weights()
    scorer = trainer.val_scorer or (trainer.selector.scorer if trainer.selector is not None else None)
    if scorer is None:
        raise FairbenchError("--score-on validation needs a validation split: pass --val-per-class K")
    acc = scorer.robust_per_class(trainer.eval_model(), selected - 1)
    counts = torch.bincount(scorer.val.labels.cpu(), minlength=spec.num_classes).tolist()
    record = build_validation(
        _trial_identity(cfg),
        selected_epoch=selected,
        classes=list(spec.classes),
        n_per_class=counts,
        per_class=[float(a) for a in acc],
        attack={
            "name": "pgd",
            "eps": cfg.eps,
            "step_size": cfg.step_size,
            "steps": cfg.attack_steps,
            "init": "uniform",
            "seed_rule": "seed * 1000003 + 7919 * epoch",
        },
        timing={
            "train_s": round(trainer.train_seconds, 3),
            "train_images_per_s": round(trainer.images_seen / max(trainer.train_seconds, 1e-9), 1),
        },
        env=environment(device),
    )
    dist.on_main(lambda: atomic_write_json(run_dir / VALIDATION_FILE, record))
    say(
        f"validation, PGD-{cfg.attack_steps} robust error of epoch {selected}'s weights: average "
        f"{100 * (1 - record['avg']):.1f}%, worst class {100 * (1 - record['worst']):.1f}% "
        f"({record['worst_class']}); selection criterion (average + worst-class accuracy) "
        f"{record['criterion']:.4f}"
    )
    say(f"wrote {run_dir / VALIDATION_FILE}")


def _trial_identity(cfg: RunConfig) -> TrialIdentity:
    """The fields of a trial record (`fairbench.schema.validation`) that name the trial: scored or diverged."""
    return TrialIdentity(
        run_id=str(cfg.run_id),
        method=cfg.method,
        params=cfg.params,
        seed=cfg.seed,
        epochs=cfg.epochs,
        training=cfg.training_dict(),
    )


def _record_divergence(cfg: RunConfig, exc: Diverged, *, device: torch.device, dist: DistInfo, run_dir: Path) -> None:
    """A tuning trial that diverged is a finished trial with no score: its validation.json says
    where (`fairbench.schema.validation.build_diverged`), so its study counts it and never selects it."""
    record = build_diverged(_trial_identity(cfg), reason=str(exc), env=environment(device))
    dist.on_main(lambda: atomic_write_json(run_dir / VALIDATION_FILE, record))


def threat_subsets(cfg: RunConfig, spec: DatasetSpec, test: Split) -> dict[str, torch.Tensor]:
    """Each threat of ``--subset NAME=K`` on the first K evaluated images of each class (a fixed,
    class-balanced subset); every other threat on all of them."""
    return subset_indices(test.labels, used_subsets(cfg.subsets, cfg.attacks), spec.num_classes)


def metrics_record(
    cfg: RunConfig,
    *,
    spec: DatasetSpec,
    outcomes: Outcomes,
    seconds: dict[str, float],
    trainer: Trainer,
    device: torch.device,
    run_dir: Path,
    selected: int,
) -> RunRecord:
    """The run's metrics.json record (`fairbench.schema`): its numbers come from ``outcomes``."""
    ckpt = run_dir / CHECKPOINT_FILE
    used = used_subsets(cfg.subsets, cfg.attacks)  # recorded under each threat's subset key
    assert cfg.run_id is not None and cfg.eps is not None  # filled in by RunConfig.resolve
    return build_record(
        run_id=cfg.run_id,
        method=cfg.method,
        params=cfg.params,
        arch=cfg.arch,
        dataset=cfg.dataset,
        seed=cfg.seed,
        epochs=cfg.epochs,
        eps=cfg.eps,
        outcomes=outcomes,
        preset=cfg.preset,
        select=cfg.select,
        selected_epoch=selected,
        training=cfg.training_dict()
        | {
            "eval_per_class": cfg.eval_per_class,
            **subset_keys(used),
            "sync_bn": cfg.sync_bn,
            "world_size": trainer.dist.world_size,
            "bn_batch": trainer.bn_batch,
            "amp": trainer.amp,
        }
        | {f"tuning_{k}": v for k, v in (cfg.tuning or {}).items()},  # flat: the schema keeps scalars
        attack_settings=attack_settings(cfg.eps, cfg.attacks, cfg.seed, used or None),
        timing={
            "train_s": round(trainer.train_seconds, 3),
            "eval_s": {k: round(v, 3) for k, v in seconds.items()},
            "train_images_per_s": round(trainer.images_seen / max(trainer.train_seconds, 1e-9), 1),
            "world_size": trainer.dist.world_size,
        },
        env=environment(device),
        checkpoint={"file": CHECKPOINT_FILE, "sha256": sha256_file(ckpt) if ckpt.exists() else None},
        ema=trainer.averaging.decay if trainer.averaging is not None else None,
        averaging=trainer.averaging.record() if trainer.averaging is not None else None,
        init_from=cfg.init_source,
    )
