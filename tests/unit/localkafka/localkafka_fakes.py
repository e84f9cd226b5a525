"""Helpers for the local broker's unit tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import stat
import sys
import textwrap
from pathlib import Path


def write_script(path: Path, body: str) -> Path:
    """An executable Python script at ``path`` running ``body``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def read_pids(run_dir: Path) -> list[int]:
    """The pids of the fake brokers launched in ``run_dir``, in launch order."""
    path = run_dir / "launches.txt"
    return [int(line) for line in path.read_text().split()] if path.exists() else []
