"""Preemption: SIGTERM/SIGINT end a run cleanly with a distinct exit code, so it can be requeued.

`StopSignals` turns the signals into a request that the trainer honours at a step boundary (it
saves a checkpoint, then raises `Preempted`); the CLI prints one line and exits with
`EXIT_PREEMPTED`. This module imports no torch, so the CLI can install it first thing.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Any, Callable, Iterable, Iterator

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): "try again later"; the checkpoint is complete
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run stopped on a signal after saving a checkpoint; `--resume` continues it."""

    exit_code = EXIT_PREEMPTED


@contextmanager
def handling(signals: Iterable[int], handler: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    """``handler`` for each of ``signals`` for the block, the previous handlers restored after; the
    one way fairbench installs a signal handler (a run's `StopSignals`, a sweep's pool). Outside
    the main thread Python cannot install one, and the block runs with the handlers as they are."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class StopSignals:
    """Context manager: SIGTERM/SIGINT end the run cleanly, with exit code `EXIT_PREEMPTED`.

    Outside `deferred()` (setting up, evaluating: nothing would be lost) a signal raises
    `Preempted` at once. Inside it (training) the signal only sets `requested`; the trainer
    finishes the step, saves a checkpoint and raises `Preempted` itself. A second SIGINT raises
    KeyboardInterrupt, so a person can still stop a run right away with Ctrl-C twice.
    """

    def __init__(self, announce: bool = True) -> None:
        self.requested: str | None = None  # the signal's name once one arrived
        self.announce = announce
        self._defer = False

    def __enter__(self) -> "StopSignals":
        self._handling = handling(STOP_SIGNALS, self._handle)
        self._handling.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._handling.__exit__(None, None, None)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested == "SIGINT" and name == "SIGINT":
            raise KeyboardInterrupt
        self.requested = name
        if not self._defer:
            raise Preempted(
                f"stopped by {name} outside training; every finished epoch is "
                f"checkpointed: rerun with --resume to continue"
            )
        if self.announce:
            sys.stderr.write(f"\n{name}: finishing this step, then saving a checkpoint (exit code {EXIT_PREEMPTED})\n")

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Signals inside the block only set `requested` (the trainer stops at a step boundary)."""
        self._defer = True
        try:
            yield
        finally:
            self._defer = False
        if self.requested:  # arrived too late for the trainer to act on: stop now
            raise Preempted(
                f"stopped by {self.requested}; every finished epoch is checkpointed: rerun with --resume to continue"
            )
