"""Headless Chromium for the report's page tests: one way to start it, and one probe page that
loads a report's index.html in an iframe and prints what a script finds in it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROBE = (
    '<!DOCTYPE html><html><body style="margin:0"><iframe id="f" src="index.html" '
    'style="width:{width}px;height:{height}px;border:0"></iframe><pre id="out"></pre><script>'
    'window.addEventListener("load", function () {{'
    ' var doc = document.getElementById("f").contentDocument, out = [];'
    " {script}"
    ' document.getElementById("out").textContent = out.join("\\n"); }});</script></body></html>'
)


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium with its own profile folder; fails the test when it is missing."""
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        pytest.fail("chromium is not installed: `apt-get install chromium` (scripts/setup.sh does it as root)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120, check=True)


def probe(
    index_html: Path, tmp_path: Path, script: str, *, width: int = 1280, height: int = 900, window: str | None = None
) -> str:
    """The DOM Chromium dumps after ``script`` ran on a copy of ``index_html`` shown in an iframe
    of ``width`` x ``height`` pixels: the script reads ``doc`` (the report) and pushes lines to
    ``out``, which end up in the dumped page."""
    shutil.copyfile(index_html, tmp_path / "index.html")
    page = tmp_path / "probe.html"
    page.write_text(PROBE.format(width=width, height=height, script=script))
    extra = [f"--window-size={window}"] if window else []
    return chromium(
        tmp_path / "profile",
        "--allow-file-access-from-files",
        "--virtual-time-budget=5000",
        *extra,
        "--dump-dom",
        page.as_uri(),
    ).stdout
