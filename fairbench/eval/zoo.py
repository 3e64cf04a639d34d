"""RobustBench zoo models for ``fairbench eval --robustbench NAME`` (optional extra ``[robustbench]``).

The bridge, in this one place: robustbench 1.1.1 depends on ``pyautoattack`` but imports it under
the original package's name, ``autoattack`` (``robustbench/eval.py``; RobustBench issue #211), so
``import robustbench`` fails next to pyautoattack alone. `import_robustbench` registers
``pyautoattack`` and ``pyautoattack.state`` as ``autoattack`` and ``autoattack.state`` in
``sys.modules`` when no ``autoattack`` module is installed, then imports robustbench. fairbench
uses only robustbench's model zoo and loader; its own AutoAttack evaluation (robustbench.eval,
written for the old keyword API) is never called, the one fairbench evaluator is.

Checkpoints live where RobustBench keeps them: ``<model_dir>/<dataset>/<threat_model>/<name>.pt``
(ensembles: ``<name>.pt_m<i>.pt``). fairbench first opens every such file with
``weights_only=True`` and refuses one that would run code; a missing file is downloaded by
robustbench (needs the network).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from fairbench.errors import FairbenchError
from fairbench.runs.folder import load_checkpoint

DATASETS = ("cifar10", "cifar100")  # fairbench data sets that RobustBench has models for
THREAT_MODELS = ("Linf",)  # fairbench's attacks are L-inf


def default_model_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "fairbench" / "robustbench"


def import_robustbench() -> tuple[Any, dict]:
    """``(robustbench.utils, model_dicts)``, with ``autoattack`` bridged to ``pyautoattack``."""
    if "autoattack" not in sys.modules and importlib.util.find_spec("autoattack") is None:
        import pyautoattack
        import pyautoattack.state

        sys.modules["autoattack"] = pyautoattack
        sys.modules["autoattack.state"] = pyautoattack.state
    try:
        with warnings.catch_warnings():  # timm and torch.jit deprecation notes, not ours to fix
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
            import robustbench.utils
            from robustbench.model_zoo import model_dicts
    except ImportError as exc:
        raise FairbenchError(
            f"--robustbench needs robustbench: pip install 'fairbench-robust[robustbench]' ({exc})"
        ) from None
    return robustbench.utils, model_dicts


def zoo_files(model_dir: Path, dataset: str, threat_model: str, name: str, entry: dict) -> list[Path]:
    """The checkpoint file(s) robustbench reads for zoo ``entry``."""
    path = Path(model_dir) / dataset / threat_model / f"{name}.pt"
    ids = entry.get("gdrive_id")
    if isinstance(ids, list):
        return [Path(f"{path}_m{i}.pt") for i in range(len(ids))]
    return [path]


def _entry(model_dicts: dict, name: str, dataset: str, threat_model: str) -> dict:
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    if dataset not in DATASETS:
        raise FairbenchError(f"RobustBench has no {dataset} models here; use --dataset {' or '.join(DATASETS)}")
    if threat_model not in THREAT_MODELS:
        raise FairbenchError(f"--threat-model {threat_model}: fairbench evaluates L-inf only (Linf)")
    models = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]
    if name not in models:
        close = difflib.get_close_matches(name, list(models), n=5, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise FairbenchError(f"unknown RobustBench model '{name}' for {dataset} {threat_model}{hint}")
    return models[name]


def load_zoo_model(
    name: str, *, dataset: str, threat_model: str = "Linf", model_dir: str | os.PathLike | None = None
) -> tuple[nn.Module, list[Path]]:
    """A RobustBench zoo model in eval mode (inputs in [0, 1]) and the checkpoint file(s) it used."""
    utils, model_dicts = import_robustbench()
    model_dir = Path(model_dir) if model_dir else default_model_dir()
    entry = _entry(model_dicts, name, dataset, threat_model)
    files = zoo_files(model_dir, dataset, threat_model, name, entry)
    for path in files:
        if path.is_file():
            load_checkpoint(path)  # refuses a pickle that would run code before robustbench opens it
    try:
        model = utils.load_model(name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
    except Exception as exc:  # a failed download or a file that does not fit the architecture
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        missing = [str(p) for p in files if not p.is_file()]
        where = f"; without network, put the checkpoint at {', '.join(missing)}" if missing else ""
        raise FairbenchError(f"cannot load RobustBench model {name}: {first}{where}") from exc
    return model.eval(), [p for p in files if p.is_file()]
