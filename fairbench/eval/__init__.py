"""Evaluation: how each threat decides per example (`threats`; its torch-free metadata is
`fairbench.specs.threats`), the one PGD (`attacks`), the per-class evaluator (`evaluator`) and its
resumable state (`state`), ``fairbench eval`` on weights trained anywhere (`external`) and the
RobustBench zoo (`zoo`).

Evaluation never imports training (tests/test_layers.py). This file imports nothing.
"""
