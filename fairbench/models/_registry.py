"""The architecture registry (``MODELS``, ``@register_model(name)``), apart from `fairbench.models`
so the architecture modules can register themselves without importing the package that imports
them. Built-in architectures register when `fairbench.models` is imported; third-party ones come
from the ``fairbench.models`` entry points on first use."""

from __future__ import annotations

from typing import Any, Callable

from fairbench.registry import Registry, load_plugins


def _load_models() -> None:
    """Every `fairbench.models` entry point (the built-ins registered on import)."""
    load_plugins("fairbench.models", "architecture")


MODELS: Registry[Callable[..., Any]] = Registry("architecture", _load_models)
register_model = MODELS.register
