"""Registries for methods, architectures, data sets and threats, filled by decorators (timm-style).

Built-in methods live in ``fairbench/methods/`` (the package ``fairbench.methods``), built-in
architectures in ``fairbench/models/``; third-party packages add methods through the entry-point
group ``fairbench.methods`` and architectures through ``fairbench.models`` (CONTRIBUTING.md).
An unknown name is one error that lists the valid ones and the closest (`did_you_mean`).
"""

from __future__ import annotations

import dataclasses
import difflib
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
    """The docstring's first paragraph as one line: whole sentences, never cut at a line break."""
    doc = (inspect.getdoc(obj) or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def did_you_mean(name: object, choices: Any) -> str:
    """`` (did you mean 'x'?)`` naming the closest of ``choices`` to ``name``, or ``""``: the one
    hint every unknown name gets (methods, architectures, data sets, threats, presets)."""
    close = difflib.get_close_matches(str(name).lower(), [str(c) for c in choices], n=1, cutoff=0.6)
    if not close:  # a name written without its hyphen (pgdat for pgd-at) or with another case
        squeezed = {str(c).replace("-", "").replace("_", "").lower(): str(c) for c in choices}
        hit = squeezed.get(str(name).replace("-", "").replace("_", "").lower())
        close = [hit] if hit else []
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name(kind: str, name: object, choices: Any) -> str:
    """The message for an unknown name: the closest valid one, then every valid one."""
    valid = ", ".join(sorted(str(c) for c in choices)) or "(none registered)"
    return f"unknown {kind} '{str(name)[:80]}'{did_you_mean(name, choices)}; valid {kind}s: {valid}"


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
            raise FairbenchError(unknown_name(self.kind, name, self._entries))
        return self._entries[name]

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]


def _load_plugins(group: str, kind: str) -> None:
    """Import every module of the entry-point group ``group``; its decorators register what it adds."""
    for ep in entry_points(group=group):
        try:
            ep.load()
        except Exception as exc:  # say which installed package is broken, in one line
            raise FairbenchError(f"{kind} plugin '{ep.name}' ({ep.value}) failed to load: {exc}") from exc


def _load_methods() -> None:
    """Import every built-in method module, then every `fairbench.methods` entry point."""
    import fairbench.methods as builtin

    for info in pkgutil.iter_modules(builtin.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{builtin.__name__}.{info.name}")
    _load_plugins("fairbench.methods", "method")


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
    """The built-in architectures, then every `fairbench.models` entry point."""
    importlib.import_module("fairbench.models")
    _load_plugins("fairbench.models", "architecture")


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
