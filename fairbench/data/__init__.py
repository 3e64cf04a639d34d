"""Data: loading a data set's images onto the training device (`datasets`) and the batched,
device-side augmentation (`augment`). What a data set is, torch-free, is `fairbench.specs.datasets`.

This file imports nothing.
"""
