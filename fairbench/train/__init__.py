"""Training: one run (`runner`) and the one training loop every method shares (`trainer`), with
what they keep — checkpoints and resume checks, RNG streams, model selection, weight averaging,
``--init-from``.

Imports point down: train uses methods, models, data, eval and runs; nothing below imports train.
This file imports nothing.
"""
