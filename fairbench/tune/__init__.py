"""`fairbench tune`: the same hyperparameter budget for every method, selected on validation only.

- `study`: seeded draws per method from the space it declares beside its ``Params``
  (`fairbench.methods.space`), Optuna ask/tell, one study per method, a journal file that Slurm
  tasks can share; trials launched through the sweep's launchers, each scored on the validation
  split only; the selection rule; ``trials.csv``.

This ``__init__`` imports nothing.
"""
