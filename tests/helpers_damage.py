"""Damaging workspace files for real, and running the installed `marginlens` on them (tests/test_damaged_files.py,
tests/test_doctor.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from marginlens.core.workspace import Workspace

MARGINLENS = shutil.which("marginlens", path=str(Path(sys.executable).parent)) or "marginlens"
# A part after every batch, so a killed scoring leaves several parts behind.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MARGINLENS_SCORE_FLUSH_SECONDS": "0"}


def cli(ws: Workspace, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([MARGINLENS, *args, "--workspace", str(ws.root)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def assert_names_damage(proc: subprocess.CompletedProcess, ws: Workspace, path: Path) -> None:
    """One error line naming the file and the repair command; no traceback."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert f"error: {path}: damaged: " in proc.stderr, proc.stderr
    assert f"repair: marginlens doctor --repair --workspace {ws.root}" in proc.stderr, proc.stderr


def cut_in_half(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def shown(element) -> str:
    """An st.error's text with md_escape's backslashes taken out."""
    return str(element.value).replace("\\", "")


