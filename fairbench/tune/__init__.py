"""`fairbench tune`: the same hyperparameter budget for every method, selected on validation only.

- `space`: the distributions a method declares beside its ``Params`` (torch-free; methods import it).
- `study`: seeded draws per method (Optuna ask/tell, one study per method, a journal file that
  Slurm tasks can share), trials launched through the sweep's launchers, each scored on the
  validation split only, the selection rule, ``trials.csv``.

This ``__init__`` imports nothing, so a method file can import `fairbench.tune.space` cheaply.
"""
