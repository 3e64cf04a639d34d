"""Registries for methods, architectures, data sets and threats, filled by decorators (timm-style).

Built-in methods live in ``fairbench/methods/`` (the package ``fairbench.methods``)
and third-party packages can add methods through the entry-point group ``fairbench.methods``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

from fairbench.errors import FairbenchError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """One registered object with what `fairbench list` shows of it."""

    name: str
    obj: Any
    summary: str
    params: dict[str, Any]


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _params(obj: Any) -> dict[str, Any]:
    """Parameters with defaults: a method's ``Params`` dataclass, else the callable's keywords."""
    params_cls = getattr(obj, "Params", None)
    if params_cls is not None and dataclasses.is_dataclass(params_cls):
        return {f.name: _field_default(f) for f in dataclasses.fields(params_cls)}
    if callable(obj) and not inspect.isclass(obj):
        sig = inspect.signature(obj)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.default is not inspect.Parameter.empty and p.kind == p.KEYWORD_ONLY
            and p.name not in ("num_classes", "in_channels")
        }
    return {}


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


class Registry(Generic[T]):
    """Name -> object, with a clear error listing the valid names for an unknown one."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None,
                 check: Callable[[str, Any], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._loader = loader
        self._loaded = loader is None
        self._check = check  # called with (name, obj) before an entry is added

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name].obj is not obj:
                raise FairbenchError(f"{self.kind} '{name}' is registered twice")
            if self._check is not None:
                self._check(name, obj)
            self._entries[name] = Entry(name, obj, _summary(obj), _params(obj))
            return obj

        return decorator

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            assert self._loader is not None
            self._loader()

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry:
        self._ensure_loaded()
        if name not in self._entries:
            valid = ", ".join(sorted(self._entries)) or "(none registered)"
            raise FairbenchError(f"unknown {self.kind} '{name}'; valid {self.kind}s: {valid}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]


def _load_methods() -> None:
    """Import every built-in method module, then every `fairbench.methods` entry point."""
    import fairbench.methods as builtin

    for info in pkgutil.iter_modules(builtin.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{builtin.__name__}.{info.name}")
    for ep in entry_points(group="fairbench.methods"):
        try:
            ep.load()
        except Exception as exc:  # say which installed package is broken, in one line
            raise FairbenchError(f"method plugin '{ep.name}' ({ep.value}) failed to load: {exc}") from exc


def _check_method(name: str, obj: Any) -> None:
    """A method is a `fairbench.method.Method` subclass; the registry sets its ``name``.

    A class that also declares ``name`` must declare the name it is registered under.
    """
    from fairbench.method import Method  # here: fairbench.method imports the data set registry

    if not (inspect.isclass(obj) and issubclass(obj, Method)):
        raise FairbenchError(f"method '{name}': {getattr(obj, '__qualname__', obj)!r} is not a "
                             f"subclass of fairbench.method.Method")
    declared = obj.__dict__.get("name")
    if declared not in (None, "", name):
        raise FairbenchError(f"method '{name}': the class declares name = '{declared}'; drop the "
                             f"line (the registry sets the name)")
    obj.name = name


def _load_models() -> None:
    importlib.import_module("fairbench.models")


def _load_datasets() -> None:
    importlib.import_module("fairbench.data")


def _load_threats() -> None:
    importlib.import_module("fairbench.threats")


METHODS: Registry[Any] = Registry("method", _load_methods, _check_method)
MODELS: Registry[Callable[..., Any]] = Registry("architecture", _load_models)
DATASETS: Registry[Any] = Registry("dataset", _load_datasets)
THREATS: Registry[Any] = Registry("threat", _load_threats)

register_method = METHODS.register
register_model = MODELS.register
register_dataset = DATASETS.register
register_threat = THREATS.register
