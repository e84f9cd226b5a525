"""bench/worker_bench.py's steady window for a pod of feeders: figures are read only once every
feeder holds partitions (before that, the first feeder works alone for about a heartbeat)."""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench" / "worker_bench.py"


def _worker_bench():
    spec = importlib.util.spec_from_file_location("worker_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("worker_bench", module)
    spec.loader.exec_module(module)
    return module


wb = _worker_bench()


def _line(event: str, when: datetime, **fields) -> str:
    return json.dumps({"event": event, "timestamp": when.isoformat().replace("+00:00", "Z"), **fields})


def test_the_window_starts_at_the_last_feeder_to_get_partitions(tmp_path):
    first = datetime(2026, 12, 2, 2, 19, 5, 197000, tzinfo=UTC)
    last = datetime(2026, 12, 2, 2, 19, 8, 278000, tzinfo=UTC)
    log = tmp_path / "pod.log"
    log.write_text("\n".join([
        _line("partitions_assigned", first, partitions=["t[0]", "t[1]"], process="feeder-0"),
        "not json: a line from a native library",
        _line("partitions_assigned", last, partitions=["t[1]"], process="feeder-1"),
        _line("partitions_assigned", datetime(2026, 12, 2, 2, 19, 9, tzinfo=UTC), partitions=[], process="feeder-2"),
        _line("drained", datetime(2026, 12, 2, 2, 19, 20, tzinfo=UTC), process="feeder-0"),
    ]))
    assert wb.last_assignment_ms(log) == last.timestamp() * 1000


def test_no_assignment_in_the_log_leaves_the_whole_run(tmp_path):
    log = tmp_path / "pod.log"
    log.write_text(_line("drained", datetime(2026, 12, 2, tzinfo=UTC)) + "\n")
    assert wb.last_assignment_ms(log) == 0.0


def test_steady_window_is_the_middle_80_percent_of_what_came_after_the_join():
    # 1,000 results a second for 3 s with one feeder, then 2,000 a second for 5 s with both.
    alone = [i for i in range(0, 3000)]
    both = [3000 + i // 2 for i in range(10_000)]
    start, end, count = wb.steady_window(alone + both, since_ms=3000)
    assert (start, end, count) == (3500, 7500, 8000)
    assert count / ((end - start) / 1000) == 2000  # the two-feeder rate, not a mix of both
    whole = wb.steady_window(alone + both)
    assert whole[2] / ((whole[1] - whole[0]) / 1000) < 2000


def test_steady_window_with_too_few_results_reads_nothing():
    assert wb.steady_window([1, 2, 3], since_ms=0) == (0.0, 0.0, 0)
