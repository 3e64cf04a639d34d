"""What a sweep shows: a live table of its runs on a terminal (rich), else one line per event,
and the plain-text tables of the summary and of `fairbench sweep --status`."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import IO, Callable

from fairbench.sweep.plan import PlannedRun, epochs_done, printable

# states whose log.jsonl is not worth reading (nothing there, or nothing new)
QUIET = ("new", "pending", "submitted", "not started")


@dataclass
class Row:
    """One run's line: its state, how long it has run, a note (exit code, Slurm job)."""

    run: PlannedRun
    state: str
    elapsed: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        epoch = ips = ""
        if self.state == "done":
            epoch = f"{self.run.epochs}/{self.run.epochs}"
        elif self.state not in QUIET:
            done, speed = epochs_done(self.run.run_dir)
            epoch = f"{done}/{self.run.epochs}"
            if self.state == "running" and done >= self.run.epochs:
                epoch += " eval"
            ips = f"{speed:.0f}" if self.state == "running" and isinstance(speed, (int, float)) else ""
        return [self.state, epoch, ips, format_seconds(self.elapsed), self.note]


HEADER = ["state", "epoch", "img/s", "elapsed", "note"]


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def table_lines(rows: list[Row]) -> list[list[str]]:
    """Header and one line of cells per run: #, the grid's axes, state, progress, run id."""
    axes = list(dict.fromkeys(k for r in rows for k, _ in r.run.coords))
    lines = [["#", *axes, *HEADER, "run id"]]
    for i, row in enumerate(rows):
        coords = dict(row.run.coords)
        lines.append([str(i + 1), *[coords.get(a, "-") for a in axes], *row.cells(), row.run.run_id])
    return [[printable(cell) for cell in line] for line in lines]  # cells may come from plan.json


def render_text(rows: list[Row]) -> str:
    lines = table_lines(rows)
    keep = [i for i, col in enumerate(zip(*lines)) if any(col[1:])]  # drop columns empty in every row
    lines = [[line[i] for i in keep] for line in lines]
    widths = [max(len(x) for x in col) for col in zip(*lines)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def count_states(rows: list[Row]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in counts.items())


class Display:
    """A live table (rich, on a terminal) redrawn at most twice a second, or, when the output is
    not a terminal (a log file, CI), one line per event: a run started, ended, was requeued."""

    def __init__(self, rows: Callable[[], list[Row]], stream: IO[str] | None = None, live: bool | None = None) -> None:
        self.rows = rows
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()
        self._last = 0.0
        self._live = None
        if live is None:
            live = self.stream.isatty()
        if live:
            try:
                from rich.console import Console
                from rich.live import Live
            except ImportError:
                return
            self._live = Live(console=Console(file=self.stream), auto_refresh=False, transient=False)
            self._live.start()
            self.refresh(force=True)

    def event(self, run_id: str, text: str) -> None:
        if self._live is None:
            stamp = format_seconds(time.monotonic() - self.t0)
            self.stream.write(f"[{stamp:>7}] {printable(text):<9} {printable(run_id)}\n")
            self.stream.flush()
        else:
            self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        if self._live is None or (not force and time.monotonic() - self._last < 0.5):
            return
        self._last = time.monotonic()
        self._live.update(self._table(), refresh=True)

    def _table(self):
        from rich.table import Table
        from rich.text import Text

        rows = self.rows()
        lines = table_lines(rows)
        table = Table(title=f"fairbench sweep: {count_states(rows)}", title_justify="left")
        for name in lines[0]:
            table.add_column(Text(name), no_wrap=name == "run id")
        styles = {"running": "cyan", "done": "green", "failed": "red", "stopped": "yellow"}
        for row, cells in zip(rows, lines[1:]):
            table.add_row(*map(Text, cells), style=styles.get(row.state))  # text, never rich markup
        return table

    def close(self) -> None:
        if self._live is not None:
            self.refresh(force=True)
            self._live.stop()
            self._live = None
