"""What a tuned row's run records of its study (``RunConfig.tuning``), checked in one place."""

from __future__ import annotations

import json
from typing import Any

from fairbench.errors import FairbenchError

TUNING_KEYS = {"study": str, "trials": int, "trial": int, "rule": str}


def check_tuning(value: Any) -> dict[str, Any]:
    """``value`` if it is a tuning record (study name, trial count, the selected trial, the rule)."""
    if not isinstance(value, dict) or set(value) != set(TUNING_KEYS):
        raise FairbenchError(f"--tuning must be an object with the keys {', '.join(TUNING_KEYS)}")
    for key, kind in TUNING_KEYS.items():
        v = value[key]
        if not isinstance(v, kind) or isinstance(v, bool):
            raise FairbenchError(f"--tuning: '{key}' must be {kind.__name__}")
        if kind is str and not (0 < len(v) <= 200 and v.isprintable()):
            raise FairbenchError(f"--tuning: '{key}' must be printable text of at most 200 characters")
        if kind is int and not 0 <= v <= 100_000:
            raise FairbenchError(f"--tuning: '{key}' must be in [0, 100000]")
    if value["trial"] >= value["trials"]:
        raise FairbenchError("--tuning: 'trial' must be less than 'trials'")
    return dict(value)


def parse_tuning(text: str) -> dict[str, Any]:
    """`fairbench run --tuning JSON` (set by `fairbench tune --confirm`)."""
    if len(text) > 2000:
        raise FairbenchError("--tuning: more than 2000 characters")
    try:
        value = json.loads(text)
    except ValueError:
        raise FairbenchError(f"--tuning must be a JSON object, got {text[:60]!r}") from None
    return check_tuning(value)
