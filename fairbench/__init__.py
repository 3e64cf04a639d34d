"""fairbench: train and evaluate robust-fairness methods under one protocol."""

from fairbench.errors import FairbenchError

__version__ = "0.1.0"
__all__ = ["FairbenchError", "__version__"]
