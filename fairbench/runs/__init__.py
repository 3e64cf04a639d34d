"""A run's folder and process, shared by training, evaluation and sweeps: run folders, their lock
and the checkpoint files in them (`folder`), the machine key that tells this machine's files from
others' (`machine_key`, torch-free), preemption signals (`signals`, torch-free) and the allocator
setting of fairbench's processes (`memory`, torch-free).

This file imports nothing, so the torch-free modules here stay torch-free.
"""
