"""fairbench: train and evaluate robust-fairness methods under one protocol.

The Python API (`fairbench.api`) loads on first use, so ``import fairbench`` does not import torch
(PEP 562)::

    fairbench.evaluate(model, "fashion-mnist", eps=0.1, attacks="clean,pgd20", n_per_class=100)
    fairbench.load_model(run_dir), fairbench.create_model(arch, dataset), fairbench.list_methods()
    fairbench.leaderboard("results")  # the leaderboard as a pandas DataFrame

The evaluator module behind ``fairbench.evaluate`` is `fairbench.eval.evaluator`.
"""

from fairbench._version import __version__
from fairbench.errors import FairbenchError

_API = ("evaluate", "load_model", "create_model", "list_methods", "leaderboard")
__all__ = ["FairbenchError", "__version__", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        from fairbench import api  # torch, on first use only

        for api_name in _API:
            globals()[api_name] = getattr(api, api_name)
        return globals()[name]
    raise AttributeError(f"module 'fairbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
