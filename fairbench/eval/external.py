"""``fairbench eval``: evaluate weights trained anywhere (a state_dict, any importable model, or a
RobustBench zoo model) per class with the one evaluator, and write ``<out>/runs/<run-id>/metrics.json``.
`evaluate_model` is that evaluation; the Python API (`fairbench.evaluate`, fairbench/api.py) calls it
too, so both give the same record (`fairbench.schema.RunRecord`).

Rerunning the same command continues a killed evaluation (outcomes are kept in the run folder's
``eval_state/``; see `fairbench.eval.state`).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from fairbench.config import check_run_id, default_eval_batch_size, evaluation_checks
from fairbench.data.datasets import DatasetSpec, get_dataset, load_split, per_class_indices, to_float
from fairbench.distributed import DistInfo, process_group, resolve_device
from fairbench.errors import FairbenchError, check_all
from fairbench.eval.evaluator import (
    attack_settings,
    environment,
    evaluate_and_write,
    not_finite,
    stages,
    subset_indices,
)
from fairbench.eval.state import fingerprint, foreign_state
from fairbench.models import MODELS, create_model, load_model_state
from fairbench.runs.folder import (
    CHECKPOINT_FILE,
    CHECKPOINT_SLACK,
    CONFIG_FILE,
    MAX_CHECKPOINT_FACTOR,
    claim_run_folder,
    clear_results,
    ensure_writable,
    load_checkpoint,
    sha256_file,
)
from fairbench.schema import (
    METRICS_FILE,
    OUTCOMES_FILE,
    Outcomes,
    RunRecord,
    build_record,
    read_metrics,
)
from fairbench.specs.threats import check_subsets, subset_keys, used_subsets


@dataclass
class EvalOptions:
    """What `fairbench eval` was asked to do (the CLI's options, unvalidated)."""

    dataset: str
    checkpoint: str | None = None
    arch: str | None = None
    model: str | None = None  # package.module:factory
    robustbench: str | None = None
    threat_model: str = "Linf"
    model_dir: str | None = None
    attacks: tuple[str, ...] = ("clean", "pgd20", "autoattack")
    n_per_class: int | None = None  # --eval-per-class
    subsets: dict[str, int] = field(default_factory=dict)  # --subset NAME=K (--aa-per-class K)
    eps: float | None = None
    seed: int = 0
    batch_size: int | None = None  # --eval-batch-size; None: 500 on CUDA, 128 on the CPU
    device: str = "auto"
    data_dir: str | None = None
    download: bool = True
    out: str = "results"
    run_id: str | None = None

    def validate(self) -> None:
        """Every option: where the model comes from, then `validate_values`."""
        checks = [
            (
                self.model is not None or (self.checkpoint is None) != (self.robustbench is None),
                "give exactly one of --checkpoint PATH or --robustbench MODEL_NAME",
            ),
            (
                self.robustbench is not None or self.arch is not None or self.model is not None,
                "--checkpoint needs --arch (see `fairbench list`) or --model package.module:factory",
            ),
            (
                self.robustbench is None or (self.arch is None and self.model is None),
                "--arch and --model are for --checkpoint; a RobustBench model brings its own architecture",
            ),
            (self.arch is None or self.model is None, "give --arch NAME or --model package.module:factory, not both"),
            (
                self.model is None or FACTORY.fullmatch(self.model) is not None,
                f"--model must be package.module:factory (Python names), got {self.model!r:.80}",
            ),
        ]
        check_all(checks)
        self.validate_values()
        if self.arch is not None and self.robustbench is None:
            MODELS.get(self.arch)

    def validate_values(self) -> None:
        """What is evaluated and where it is written (the Python API's checks too)."""
        check_all(
            evaluation_checks(
                seed=self.seed,
                eps=self.eps,
                eval_batch_size=self.batch_size,
                eval_per_class=self.n_per_class,
                device=self.device,
            )
        )
        if not isinstance(self.subsets, dict):
            raise FairbenchError(f"subsets must be a dict of threat -> images per class, got {self.subsets!r:.60}")
        check_subsets(self.subsets, self.attacks, self.n_per_class)
        if self.run_id is not None:
            check_run_id(self.run_id)
        stages(self.attacks)


# package.module:factory, the factory possibly an attribute path (module:Class.build)
FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def model_from_factory(target: str, spec: DatasetSpec) -> nn.Module:
    """The model ``package.module:factory`` returns, for inputs in [0, 1] (fairbench adds no
    normalization): the factory is called with ``num_classes`` and ``in_channels`` when its
    signature names them, else with no argument. The current folder is searched for the module
    too, as ``python -m`` does."""
    if FACTORY.fullmatch(target) is None:
        raise FairbenchError(f"--model must be package.module:factory (Python names), got {target!r:.80}")
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise FairbenchError(
            f"--model {target}: cannot import {module_name} ({exc}); is it installed, or in the current folder?"
        ) from None
    except AttributeError:
        raise FairbenchError(f"--model {target}: {module_name} has no {attr}") from None
    if not callable(obj):
        raise FairbenchError(f"--model {target}: {attr} is not callable (a factory that returns the model)")
    takes: Mapping[str, inspect.Parameter]
    try:
        takes = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        takes = {}
    wanted = {"num_classes": spec.num_classes, "in_channels": spec.shape[0]}
    try:
        model = obj(**{k: v for k, v in wanted.items() if k in takes})
    except Exception as exc:  # someone else's code: say whose, in one line
        raise FairbenchError(f"--model {target}: the factory failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise FairbenchError(f"--model {target}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_model(opts: EvalOptions, spec: DatasetSpec) -> tuple[nn.Module, dict[str, Any]]:
    """The model to evaluate and what to record about where its weights came from."""
    if opts.robustbench is not None:
        from fairbench.eval.zoo import load_zoo_model

        model, files = load_zoo_model(
            opts.robustbench, dataset=spec.name, threat_model=opts.threat_model, model_dir=opts.model_dir
        )
        return model, {
            "method": f"robustbench:{opts.robustbench}",
            "arch": type(model).__name__,
            "params": {"source": "robustbench", "model_name": opts.robustbench, "threat_model": opts.threat_model},
            "checkpoint": {
                "file": files[0].name if files else None,
                "sha256": sha256_file(files[0]) if files else None,
            },
        }
    if opts.model is not None:
        model = model_from_factory(opts.model, spec)
        params = {"source": "factory", "factory": opts.model}
    else:
        assert opts.arch is not None  # validate(): --checkpoint needs --arch or --model
        model = create_model(opts.arch, spec)
        params = {"source": "checkpoint"}
    if opts.checkpoint is None:  # a factory's own weights: named by their hash
        weights_sha = fingerprint(model, *(torch.zeros(0),) * 3)
        return model, {
            "method": "external",
            "arch": opts.model,
            "params": params | {"weights_sha256": weights_sha},
            "checkpoint": {"file": None, "sha256": None},
        }
    path = Path(opts.checkpoint)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    state = load_checkpoint(path, max_bytes=MAX_CHECKPOINT_FACTOR * weights + CHECKPOINT_SLACK)
    load_model_state(model, state, str(path))
    return model, {
        "method": "external",
        "arch": opts.arch or opts.model,
        "params": params,
        "checkpoint": {"file": "".join(c if c.isprintable() else "?" for c in path.name), "sha256": sha256_file(path)},
    }


def run_eval(opts: EvalOptions, echo: Callable[[str], None] = print) -> Path:
    """Evaluate per class and write the metrics.json; returns the run folder."""
    opts.validate()
    spec = get_dataset(opts.dataset)
    with process_group(resolve_device(opts.device)) as (device, dist):  # run's GPU mapping, one rule
        return _run_eval(opts, spec, device, dist, echo if dist.is_main else (lambda _m: None))


def _run_eval(
    opts: EvalOptions, spec: DatasetSpec, device: torch.device, dist: DistInfo, say: Callable[[str], None]
) -> Path:
    model, source = load_model(opts, spec)
    run_dir, _ = evaluate_model(model, source, opts, spec, device, dist, say, write=True)
    assert run_dir is not None
    return run_dir


def default_run_id(source: dict[str, Any], dataset: str) -> str:
    """``<method>_<arch>_<dataset>_<sha256 of the weights' file, or of the weights>``, as a folder name."""
    sha = source["checkpoint"]["sha256"] or source["params"].get("weights_sha256") or "nofile"
    name = f"{source['method']}_{str(source['arch'])[:80]}_{dataset}_{sha[:8]}"
    return re.sub(r"[^\w.+=-]", "-", name)


def evaluate_model(
    model: nn.Module,
    source: dict[str, Any],
    opts: EvalOptions,
    spec: DatasetSpec,
    device: torch.device,
    dist: DistInfo,
    say: Callable[[str], None],
    *,
    write: bool,
) -> tuple[Path | None, RunRecord]:
    """The evaluation of `fairbench eval` and of `fairbench.evaluate`: ``model`` (with ``source``,
    what `load_model` records of its weights) on ``opts``' test images, per class, as the schema's
    record. With ``write``, the record and its outcomes go to ``<out>/runs/<run-id>/`` (and a
    killed evaluation continues from its ``eval_state/``); without, nothing is written anywhere."""
    model = model.to(device).eval()
    eps = spec.eps if opts.eps is None else opts.eps
    batch_size = opts.batch_size if opts.batch_size is not None else default_eval_batch_size(device.type)
    run_id = check_run_id(opts.run_id if opts.run_id is not None else default_run_id(source, spec.name))
    run_dir = Path(opts.out) / "runs" / run_id
    test = load_split(spec, "test", opts.data_dir, download=opts.download)
    indices = (
        per_class_indices(test.labels, opts.n_per_class, spec.num_classes)
        if opts.n_per_class
        else torch.arange(len(test))
    )
    test = test.subset(indices).to(device)
    used = used_subsets(opts.subsets, opts.attacks)
    subsets = subset_indices(test.labels, used, spec.num_classes)
    # as training does after every epoch: NaN or infinite weights would give chance-level accuracies
    # that look like a result
    what = not_finite(model, to_float(test.images[:batch_size]), dist)
    if what:
        raise FairbenchError(
            f"{opts.checkpoint or opts.robustbench or opts.model or 'the model'}: the model's "
            f"{what}; its accuracies would mean nothing, so it is not evaluated"
        )

    def make_record(rows: Outcomes, seconds: dict[str, float]) -> RunRecord:
        return build_record(
            run_id=run_id,
            method=source["method"],
            params=source["params"],
            arch=source["arch"],
            dataset=spec.name,
            seed=opts.seed,
            epochs=None,
            eps=eps,
            outcomes=rows,  # not trained here
            training={"epochs": None, "train_per_class": None, "eval_per_class": opts.n_per_class} | subset_keys(used),
            evaluation={"n": len(test), "batch_size": batch_size},
            attack_settings=attack_settings(eps, opts.attacks, opts.seed, used or None),
            timing={"eval_s": {k: round(v, 3) for k, v in seconds.items()}, "world_size": dist.world_size},
            env=environment(device),
            checkpoint=source["checkpoint"],
        )

    with contextlib.ExitStack() as lock:  # rank 0 holds the run folder until its result is written
        if write:
            dist.on_main(lambda: claim_folder(run_dir, source, spec.name, lock))
        say(
            f"evaluating {source['method']} ({source['arch']}) on {len(test)} {spec.name} test images, "
            f"eps {eps:.6g}, attacks {', '.join(stages(opts.attacks))}, device {device}"
        )
        record = evaluate_and_write(
            model,
            test,
            spec.classes,
            indices=indices,
            run_dir=run_dir if write else None,
            record=make_record,
            dist=dist,
            say=say,
            eps=eps,
            attacks=opts.attacks,
            batch_size=batch_size,
            seed=opts.seed,
            subsets=subsets,
        )
    return (run_dir if write else None), record  # type: ignore[return-value]


def claim_folder(run_dir: Path, source: dict[str, Any], dataset: str, lock: contextlib.ExitStack) -> None:
    """Claim the run folder as `fairbench run` does (`claim_run_folder`), refuse one that holds
    another run, and remove this model's earlier result (another evaluation of it, with other eps,
    attacks or images, may have written here: if this one is killed, that result must not look
    current)."""

    def ours(run_dir: Path) -> None:
        other = other_run(run_dir, source, dataset)
        if other:
            raise FairbenchError(
                f"{run_dir} {other}; `fairbench eval` never replaces another run: pass another --run-id"
            )
        ensure_writable(run_dir)

    claim_run_folder(run_dir, lock, ours)
    clear_results(run_dir, METRICS_FILE, OUTCOMES_FILE)


def other_run(run_dir: Path, source: dict[str, Any], dataset: str) -> str | None:
    """What in ``run_dir`` belongs to a run other than this model's evaluation (None: nothing).

    A training run leaves its config.json from its start on and its checkpoint; a result
    (metrics.json) is this model's when it names the same method, architecture, data set and
    checkpoint sha256. Saved evaluation state (``eval_state/``) is this machine's when each file
    carries its tag (`fairbench.eval.state.foreign_state`); any other is another's.
    """
    if (run_dir / CONFIG_FILE).exists():
        return f"holds a run of `fairbench run` (its {CONFIG_FILE})"
    if (run_dir / CHECKPOINT_FILE).exists():
        return f"holds a training checkpoint ({CHECKPOINT_FILE})"
    foreign = foreign_state(run_dir / "eval_state")  # a planted one would make up the result
    if foreign:
        return f"holds evaluation state that is not this machine's evaluation's: {foreign}"
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
        return (
            f"holds the result of another run ({theirs[0]!r:.60} {theirs[1]!r:.40} on "
            f"{theirs[2]!r:.40}, checkpoint sha256 {str(theirs[3])[:8]!r})"
        )
    return None
