"""What the core knows of a data set and of a threat, torch-free (as RobustBench keeps its threat
models and data sets: tiny types, no tensors): `datasets` (classes, image shape, normalization,
threat defaults; the ``DATASETS`` registry) and `threats` (name, label, settings, subset key; the
``THREATS`` registry). The config, the result schema and the report read them; the images are
loaded by `fairbench.data`, the attacks run in `fairbench.eval`.

This file imports nothing.
"""
