"""Built-in training methods, one file each; importing a module registers its method.

Installed as ``fairbench.methods``. The method registry lives here, beside the methods:
``METHODS`` (name -> `fairbench.methods.base.Method` subclass) and ``@register_method(name)``; it loads
every built-in module, then every ``fairbench.methods`` entry point, on first use. See
CONTRIBUTING.md to add one.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, Mapping

from fairbench.errors import FairbenchError
from fairbench.files import canonical_json
from fairbench.registry import Registry, load_plugins


def _load_methods() -> None:
    """Import every built-in method module, then every `fairbench.methods` entry point."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    load_plugins("fairbench.methods", "method")


def _check_method(name: str, obj: Any) -> None:
    """A method is a `fairbench.methods.base.Method` subclass; the registry sets its ``name``.

    A class that also declares ``name`` must declare the name it is registered under.
    """
    from fairbench.methods.base import Method  # on registration: the interface imports torch

    if not (inspect.isclass(obj) and issubclass(obj, Method)):
        raise FairbenchError(
            f"method '{name}': {getattr(obj, '__qualname__', obj)!r} is not a subclass of fairbench.methods.base.Method"
        )
    declared = obj.__dict__.get("name")
    if declared not in (None, "", name):
        raise FairbenchError(
            f"method '{name}': the class declares name = '{declared}'; drop the line (the registry sets the name)"
        )
    obj.name = name


METHODS: Registry[Any] = Registry("method", _load_methods, _check_method)
register_method = METHODS.register


def label_params(name: str, params: Mapping[str, Any]) -> list[str] | None:
    """The parameters a report row of method ``name`` run with ``params`` names in its label, in name
    order: those that differ from the paper defaults, less those this configuration leaves unused
    (``Params.unused()``, e.g. TRADES' beta with base=pgd-at); None for a method not installed here."""
    try:
        entry = METHODS.entry(name)
    except FairbenchError:
        return None
    defaults = entry.params
    try:
        unused = entry.obj.Params(**params).unused() if hasattr(entry.obj.Params, "unused") else frozenset()
    except TypeError:  # a parameter this version does not know: every difference is shown
        unused = frozenset()
    return [
        k
        for k in sorted(params)
        if k not in unused and not (k in defaults and canonical_json(params[k]) == canonical_json(defaults[k]))
    ]
