"""Running the `fairbench` CLI inside the test process."""

from __future__ import annotations

import pytest

from fairbench.cli import main


def cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run the CLI in this process; returns (exit code, stderr)."""
    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else int(exc.code)
    return code, capsys.readouterr().err
