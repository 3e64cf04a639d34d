"""Built-in training methods, one file each; importing a module registers its method.

Installed as ``fairbench.methods``. See CONTRIBUTING.md to add one.
"""
