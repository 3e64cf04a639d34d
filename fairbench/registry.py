"""The generic registry: name -> object, filled by decorators (timm-style), knowing none of its kinds.

Each kind's registry lives beside its interface: methods in `fairbench.methods` (``METHODS``,
``register_method``), architectures in `fairbench.models` (``MODELS``, ``register_model``), data
sets in `fairbench.specs.datasets` (``DATASETS``), threats in `fairbench.specs.threats` (``THREATS``).
Third-party packages add methods through the entry-point group ``fairbench.methods`` and
architectures through ``fairbench.models`` (CONTRIBUTING.md; `load_plugins`). An unknown name is
one error that lists the valid ones and the closest (`did_you_mean`).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
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
            if p.default is not inspect.Parameter.empty
            and p.kind == p.KEYWORD_ONLY
            and p.name not in ("num_classes", "in_channels")
        }
    return {}


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


class Registry(Generic[T]):
    """Name -> object, with a clear error listing the valid names for an unknown one."""

    def __init__(
        self, kind: str, loader: Callable[[], None] | None = None, check: Callable[[str, Any], None] | None = None
    ) -> None:
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


def load_plugins(group: str, kind: str) -> None:
    """Import every module of the entry-point group ``group``; its decorators register what it adds."""
    for ep in entry_points(group=group):
        try:
            ep.load()
        except Exception as exc:  # say which installed package is broken, in one line
            raise FairbenchError(f"{kind} plugin '{ep.name}' ({ep.value}) failed to load: {exc}") from exc
