"""bench/gpu_bench.sh, the prepared GPU run, keeps working: its reduced --smoke mode on this CPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_bench_smoke_run_prints_both_tables(kafka_bootstrap, tmp_path):
    """--smoke builds a bundle, sweeps batch sizes and budgets, and runs a pod of 1 and of 2 feeders end to end
    with the GPU overlay's Kafka client."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSTREAM_")}
    env["OUT"] = str(tmp_path)  # the figures go here, not into bench/results
    done = subprocess.run(
        [str(REPO / "bench" / "gpu_bench.sh"), "--smoke", "--bootstrap", kafka_bootstrap], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "### 1. model only" in done.stdout and "### 2. worker end to end" in done.stdout
    figures = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert len(figures["model_only"]) == 4 and all(r["texts_per_s"] > 0 for r in figures["model_only"])
    assert [r["processes"] for r in figures["end_to_end"]] == [1, 2]
    assert all(r["events_per_s"] > 0 for r in figures["end_to_end"])
    assert figures["end_to_end"][1]["feeder_batches_per_call"] >= 1
    assert figures["kafka_client"] == "confluent"  # the GPU overlay's client (make install has it)
