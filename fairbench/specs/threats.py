"""What each threat is, torch-free: its name, the label people read, its column order, whether it is
an attack, the settings it records in metrics.json, and the key its subset size is recorded under.

A threat is one class registered with ``@register_threat(name)`` (the registry, ``THREATS``, lives
here). How a threat decides whether a model is right on an example is torch code, in
`fairbench.eval.threats`: a threat added by a plugin subclasses `fairbench.eval.threats.Threat` (these
metadata plus its ``decider``) in the same one registration; the built-in threats' deciders are
`fairbench.eval.threats`' classes of the same names. The results schema and the report read only this
module. ``union`` is not registered: it is derived per example (right under every threat that ran
on it, `fairbench.schema.derive_union`).

What one example's outcome means:

- ``clean``: the prediction on the unperturbed image is right.
- ``pgd20``: clean-correct AND still right after PGD-20 (random start, step eps/4, CE loss),
  fairbench's one PGD (`fairbench.eval.attacks.pgd`).
- ``autoattack``: clean-correct AND AutoAttack (pyautoattack, standard version: APGD-CE, APGD-T,
  FAB-T, Square) found no adversarial example: the label it returns (``y_adv``) is right and its
  returned image, predicted again, is still right. This is AutoAttack's *own* outcome, not combined
  with PGD-20: AutoAttack is stronger in aggregate but not per example.

A threat may run on a class-balanced subset of the evaluated images (``--subset NAME=K``: the
first K evaluated images of each class); the size is recorded in metrics.json's ``training`` under
the threat's `ThreatSpec.subset_key`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar

from fairbench.errors import FairbenchError
from fairbench.registry import Registry, did_you_mean

CLEAN = "clean"  # the threat that is no attack: every attack's outcome counts only where it is right
UNION = "union"
UNION_LABEL = "union"
PGD_EVAL_STEPS = 20
AA_VERSION = "standard"
AA_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")  # what pyautoattack's standard version runs


class ThreatSpec:
    """One threat's metadata: ``name`` (the registry's), ``label`` for tables, ``order`` of its
    column, ``attack`` (False only for clean: an attack's outcome counts only on clean-correct
    examples), ``subset_key`` (where metrics.json's ``training`` records the images per class it
    ran on, when it ran on a subset; ``<name>_per_class`` unless the threat says otherwise)."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    order: ClassVar[int] = 100
    attack: ClassVar[bool] = True
    subset_key: ClassVar[str] = ""

    def settings(self, eps: float, seed: int) -> dict[str, Any]:
        """What this threat runs with: stored in metrics.json and part of the evaluation's resume key."""
        return {}


THREATS: Registry[Any] = Registry("threat")
register_threat = THREATS.register


def threat_names() -> list[str]:
    """Every registered threat, in column order."""
    return sorted(THREATS.names(), key=lambda n: (THREATS.get(n).order, n))


def threat_spec(name: str) -> ThreatSpec:
    return THREATS.get(name)()


def threat_label(name: str) -> str:
    """The label people read (``PGD-20``); ``union`` for the derived one."""
    return UNION_LABEL if name == UNION else THREATS.get(name).label


def subset_key(name: str) -> str:
    """Where metrics.json's ``training`` records threat ``name``'s images per class."""
    return THREATS.get(name).subset_key or f"{name.replace('-', '_')}_per_class"


def subset_flag(key: str) -> str:
    """The command-line alias of a subset key (``aa_per_class`` -> ``--aa-per-class``)."""
    return "--" + key.replace("_", "-")


def subset_keys_of() -> dict[str, str]:
    """Every threat's subset key -> the threat."""
    return {subset_key(name): name for name in threat_names()}


def subset_aliases() -> dict[str, str]:
    """The subset keys a threat declares itself (``aa_per_class``), each also an option of its own
    (``--aa-per-class K``: ``--subset autoattack=K``, as it was before ``--subset``) -> the threat."""
    return {THREATS.get(name).subset_key: name for name in threat_names() if THREATS.get(name).subset_key}


def subsets_from_keys(values: dict[str, Any]) -> dict[str, Any]:
    """{threat: images per class} from the keys `subset_key` names, as a training record has them;
    keys that are no threat's subset key, and null values, are left out."""
    return {name: values[key] for key, name in subset_keys_of().items() if values.get(key) is not None}


def subset_keys(subsets: dict[str, int]) -> dict[str, int]:
    """The inverse of `subsets_from_keys`: what a training record stores for ``subsets``."""
    return {subset_key(name): k for name, k in subsets.items()}


def used_subsets(subsets: dict[str, int], attacks: Any) -> dict[str, int]:
    """The subsets of the threats that run (``attacks``): a subset of a threat left out is unused."""
    return {name: k for name, k in subsets.items() if name in attacks}


def parse_subset(text: str) -> tuple[str, int]:
    """``NAME=K`` (``--subset autoattack=50``) as (threat, images per class)."""
    name, sep, count = text.partition("=")
    name = name.strip()
    if not sep or not (count.strip().isascii() and count.strip().isdigit()):
        raise FairbenchError(f"--subset must be THREAT=K (K images per class, e.g. autoattack=50), got {text!r:.80}")
    names = threat_names()
    if name not in names:
        raise FairbenchError(
            f"--subset: unknown threat '{name[:80]}'{did_you_mean(name, names)}; valid: {', '.join(names)}"
        )
    return name, int(count)


def parse_subsets(items: list[str]) -> dict[str, int]:
    """``--subset NAME=K`` options (`parse_subset`) as {threat: K}; a threat given twice is an error."""
    subsets: dict[str, int] = {}
    for item in items:
        name, k = parse_subset(item)
        if name in subsets:
            raise FairbenchError(f"--subset {name} is given twice")
        subsets[name] = k
    return subsets


def check_subsets(subsets: dict[str, int], attacks: Any, eval_per_class: int | None) -> None:
    """Each subset names a registered threat, holds at least one image per class, and no more than
    the evaluated ones (``--eval-per-class``) when that threat runs; else FairbenchError."""
    names = threat_names()
    for name, k in subsets.items():
        flag = f"--subset {name}={k}"
        if name not in names:
            raise FairbenchError(
                f"--subset: unknown threat '{str(name)[:80]}'{did_you_mean(name, names)}; valid: {', '.join(names)}"
            )
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise FairbenchError(f"{flag}: K must be >= 1")
        if not THREATS.get(name).attack:
            raise FairbenchError(f"{flag}: {name} runs on every evaluated image (--eval-per-class sets how many)")
        if eval_per_class is not None and name in attacks and k > eval_per_class:
            raise FairbenchError(
                f"{flag} is more than the {eval_per_class} evaluated images per class (--eval-per-class)"
            )


@register_threat("clean")
class Clean(ThreatSpec):
    """The unperturbed test image."""

    name, label, order, attack = "clean", "clean", 0, False


@register_threat("pgd20")
class PGD20(ThreatSpec):
    """PGD-20 (L-inf, random start, step eps/4, CE loss): the standard evaluation of AT papers."""

    name, label, order = "pgd20", "PGD-20", 10

    def settings(self, eps: float, seed: int) -> dict[str, Any]:
        return {
            "norm": "Linf",
            "eps": eps,
            "steps": PGD_EVAL_STEPS,
            "step_size": eps / 4,
            "random_start": True,
            "loss": "ce",
            "seed": seed,
        }


@register_threat("autoattack")
class AutoAttack(ThreatSpec):
    """AutoAttack, standard version (pyautoattack: APGD-CE, APGD-T, FAB-T, Square), L-inf."""

    name, label, order = "autoattack", "AutoAttack", 20
    subset_key = "aa_per_class"  # what runs recorded before --subset; `--aa-per-class` is its alias

    def settings(self, eps: float, seed: int) -> dict[str, Any]:
        try:
            library = f"pyautoattack {version('pyautoattack')}"
        except PackageNotFoundError:
            raise FairbenchError("AutoAttack needs the pyautoattack package (pip install pyautoattack)") from None
        return {
            "norm": "Linf",
            "eps": eps,
            "version": AA_VERSION,
            "attacks": list(AA_ATTACKS),
            "seed": seed,
            "library": library,
        }
