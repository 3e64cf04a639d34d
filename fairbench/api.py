"""The Python API, loaded on first use (``import fairbench`` stays free of torch):

    import fairbench

    model = fairbench.load_model("results/runs/<run-id>")        # a finished run's evaluated weights
    model = fairbench.create_model("testbed-cnn", "fashion-mnist")  # or any torch.nn.Module
    record = fairbench.evaluate(model, "fashion-mnist", eps=0.1, attacks="clean,pgd20", n_per_class=100)
    record.metrics["pgd20"].worst_class, 1 - record.metrics["pgd20"].worst  # accuracies, as stored
    fairbench.list_methods()
    board = fairbench.leaderboard("results")  # pandas.DataFrame: `fairbench report`'s leaderboard.csv

`evaluate` is `fairbench eval`'s evaluation (`fairbench.eval.external.evaluate_model`: the one
evaluator, `fairbench.eval.evaluator.evaluate`) and returns the same record a run's metrics.json holds
(`fairbench.schema.RunRecord`), which `fairbench report` reads: one result type for the API, the
CLI and the report. It writes nothing unless ``out`` is given; then it writes
``<out>/runs/<run-id>/`` exactly as `fairbench eval --out` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
from torch import nn

from fairbench.data.datasets import DatasetSpec, get_dataset
from fairbench.distributed import DistInfo, resolve_device
from fairbench.errors import FairbenchError
from fairbench.eval.external import CHECKPOINT_SLACK, MAX_CHECKPOINT_FACTOR, EvalOptions, evaluate_model
from fairbench.eval.state import fingerprint
from fairbench.methods import METHODS, label_params
from fairbench.models import create_model as _create_model
from fairbench.models import load_model_state, unwrap_state_dict
from fairbench.runs.folder import CHECKPOINT_FILE, load_checkpoint
from fairbench.schema import RunRecord
from fairbench.specs.threats import subsets_from_keys
from fairbench.train.runner import config_from_run_dir

__all__ = ["create_model", "evaluate", "leaderboard", "list_methods", "load_model"]


def evaluate(
    model: nn.Module,
    dataset: str,
    *,
    eps: float | None = None,
    attacks: str | Sequence[str] = ("clean", "pgd20", "autoattack"),
    n_per_class: int | None = None,
    subsets: dict[str, int] | None = None,
    aa_per_class: int | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    download: bool = True,
    out: str | Path | None = None,
    run_id: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> RunRecord:
    """Evaluate ``model`` per class on ``dataset``'s test images; returns the run's record.

    ``model`` takes images in [0, 1] (fairbench adds no normalization; `create_model` and
    `load_model` give such models). The options are `fairbench eval`'s: ``eps`` (default: the data
    set's), ``attacks`` (a comma list or a sequence of clean, pgd20, autoattack), ``n_per_class``
    (the first K test images per class; `--eval-per-class`), ``subsets`` ({threat: K}: that threat on
    the first K of those; `--subset`; ``aa_per_class=K`` is ``subsets={"autoattack": K}``),
    ``batch_size`` (`--eval-batch-size`), ``seed`` of the attacks' random
    starts. The model is moved to ``device`` and its train/eval mode is restored afterwards.
    Nothing is written unless ``out`` names a results folder. ``progress`` receives the lines
    `fairbench eval` prints (default: silent).

    The record's ``metrics[threat]`` holds per-class accuracies as metrics.json stores them
    (``per_class``, ``worst``, ``worst_class``, ...); tables print error = 1 - accuracy in %.
    """
    if not isinstance(model, nn.Module):
        raise FairbenchError(f"evaluate: model must be a torch.nn.Module, got {type(model).__name__}")
    for name, value in (
        ("n_per_class", n_per_class),
        ("aa_per_class", aa_per_class),
        ("batch_size", batch_size),
        ("seed", seed),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise FairbenchError(f"evaluate: {name} must be a whole number, got {value!r:.40}")
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float))):
        raise FairbenchError(f"evaluate: eps must be a number (8/255, not '8/255'), got {eps!r:.40}")
    names = tuple(a.strip() for a in attacks.split(",") if a.strip()) if isinstance(attacks, str) else tuple(attacks)
    if subsets is not None and not isinstance(subsets, dict):
        raise FairbenchError(f"evaluate: subsets must be a dict of threat -> images per class, got {subsets!r:.40}")
    subsets = {**subsets_from_keys({"aa_per_class": aa_per_class}), **(subsets or {})}  # the older name
    opts = EvalOptions(
        dataset=dataset,
        attacks=names,
        n_per_class=n_per_class,
        subsets=subsets,
        eps=None if eps is None else float(eps),
        seed=seed,
        batch_size=batch_size,
        device=device,
        data_dir=data_dir,
        download=download,
        out=str(out) if out is not None else "results",
        run_id=run_id,
    )
    opts.validate_values()
    spec = get_dataset(dataset)
    source = {
        "method": "external",
        "arch": type(model).__name__[:200] or "model",
        "params": {"source": "python", "weights_sha256": fingerprint(model, *(torch.zeros(0),) * 3)},
        "checkpoint": {"file": None, "sha256": None},
    }
    was_training = model.training
    try:
        _, record = evaluate_model(
            model,
            source,
            opts,
            spec,
            resolve_device(device),
            DistInfo(),
            progress or (lambda _line: None),
            write=out is not None,
        )
    finally:
        model.train(was_training)
    return record


def load_model(run_dir: str | Path, *, device: str = "cpu") -> nn.Module:
    """The model a finished `fairbench run` evaluated, from its folder (``RESULTS/runs/<run-id>``):
    its architecture and data set from config.json, the weights from checkpoint.pt (loaded with
    ``weights_only=True``): the weight average when the run kept one, the best validation epoch's
    weights under ``--select best-val``, else the last. Committed results carry no checkpoint."""
    run_dir = Path(run_dir)
    cfg = config_from_run_dir(run_dir)
    spec = get_dataset(cfg.dataset)
    model = _create_model(cfg.arch, spec)
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise FairbenchError(
            f"{run_dir}: no {CHECKPOINT_FILE}; committed results carry none (rerun the run, "
            f"or use its folder on the machine that trained it)"
        )
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    state = load_checkpoint(path, max_bytes=MAX_CHECKPOINT_FACTOR * weights + CHECKPOINT_SLACK)
    epoch = state.get("epoch")
    if "mid_epoch" in state or epoch != cfg.epochs:
        raise FairbenchError(
            f"{run_dir} is not a finished run: its checkpoint is after epoch {epoch!r:.20} "
            f"of {cfg.epochs}; finish it first (fairbench resume {run_dir})"
        )
    selection = state.get("selection")
    if cfg.select == "best-val":
        if not isinstance(selection, dict) or not isinstance(selection.get("best_model"), dict):
            raise FairbenchError(f"{path} holds no --select best-val weights")
        evaluated = selection["best_model"]
    else:
        evaluated = unwrap_state_dict(state, str(path))  # its weight average, when it kept one
    load_model_state(model, evaluated, str(path))
    return model.to(resolve_device(device)).eval()


def create_model(arch: str, dataset: str | DatasetSpec) -> nn.Module:
    """A new (untrained) registered architecture for ``dataset``, taking images in [0, 1]."""
    return _create_model(arch, dataset if isinstance(dataset, DatasetSpec) else get_dataset(dataset))


def list_methods() -> list[str]:
    """The registered training methods (built-in and from the ``fairbench.methods`` entry points)."""
    return METHODS.names()


def leaderboard(
    results: str | Path = "results", *, baseline: str | None = None, rank_by: str | None = None
) -> pd.DataFrame:
    """The leaderboard of a results folder as `fairbench report` builds it (the same ``--baseline``
    and ``--rank-by``), as the table `fairbench report` writes to leaderboard.csv: one line per row
    of every group, errors as fractions with their 95% intervals, differences from the baseline,
    ranks, the masking check and, for tuned rows, the ``tuning_*`` columns. Reads only; writes nothing."""
    from fairbench.report.command import build_report  # matplotlib: only when a leaderboard is asked for
    from fairbench.report.tables import leaderboard_frame

    return leaderboard_frame(build_report(Path(results), baseline, rank_by, label_params))
