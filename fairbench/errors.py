"""The project's one error type for expected failures (bad input, missing data, ...), and the one
way a list of checks becomes that error."""

from __future__ import annotations

from typing import Iterable


class FairbenchError(Exception):
    """An expected failure with a message that says what to do; the CLI prints it in one line."""


def check_all(checks: Iterable[tuple[bool, str]], prefix: str = "") -> None:
    """Raise `FairbenchError` with the message of the first check that failed (after ``prefix``,
    e.g. a method's name): each check is ``(ok, message)``, in the order a person fixes them."""
    for ok, message in checks:
        if not ok:
            raise FairbenchError(f"{prefix}{message}")
