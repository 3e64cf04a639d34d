"""Running the `fairbench` CLI inside the test process: one way, for every test file."""

from __future__ import annotations

import pytest
from fairbench.cli import main


def exit_code(args: list[str]) -> int:
    """Run the console entry point in this process; returns its exit status (output not captured)."""
    try:
        main(args)
    except SystemExit as exc:
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    return 0


def run_ok(args: list[str]) -> None:
    """Run the CLI in this process; the command must succeed."""
    code = exit_code(args)
    assert code == 0, f"exit {code}"


def cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run the CLI in this process; returns (exit code, stderr)."""
    code, _, err = cli_out(args, capsys)
    return code, err


def cli_out(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run the CLI in this process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = exit_code(args)
    out = capsys.readouterr()
    return code, out.out, out.err
