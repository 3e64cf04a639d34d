"""Sweeps: a grid of runs (`grid`), what is planned and done (`plan`), launched on this machine
(`local`) or as a Slurm job array (`slurm`) by `launch`, and shown by `view`.

Each run of a sweep is one ``fairbench run`` process; the CLI passes the entry point down. This
file imports nothing.
"""
