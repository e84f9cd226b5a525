"""The OS-level names that let ps, top and the benches tell a pod's processes apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(not Path("/proc/self/comm").exists(), reason="Linux /proc only")
def test_name_process_sets_the_name_ps_shows_truncated_to_15_characters() -> None:
    code = (
        "from pathlib import Path; from worker.stages import name_process; "
        "name_process('tagstream-fdr12-and-more'); print(Path('/proc/self/comm').read_text().strip())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "tagstream-fdr12"
