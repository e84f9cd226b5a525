"""CPU time per pipeline stage, for finding where the worker's time goes (``TAGSTREAM_STAGE_TIMING``).

Each stage thread brackets its steps with ``StageClock.start()`` / ``stop(stage, started)``, which
read the calling thread's CPU clock (``time.thread_time``: user + system time of this thread
only), so a stage's figure is what it cost, not how long it waited. The totals are exported as
``tagstream_stage_cpu_seconds_total{stage}`` and ``tagstream_stage_events_total{stage}``;
``bench/kafka_path_bench.py`` divides one by the other. The brackets are per poll or per batch,
never per record, and cost nothing when timing is off.

Stages: ``fetch`` (the consumer's poll, record decoding included), ``parse``, ``tokenize``,
``track`` (offset bookkeeping and hand-over), ``commit``, ``batch`` (batch forming), ``inference``
(padding, the model call, top-k), ``result_build`` and ``produce`` (handing records to the
client). The Kafka client's own background threads (network I/O, delivery callbacks) are not
bracketed; the benchmark reads them from /proc.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from worker.telemetry import Metrics

STAGES = ("fetch", "parse", "tokenize", "track", "commit", "batch", "inference", "result_build", "produce")


class StageClock:
    """Accumulates per-stage CPU seconds and event counts (Prometheus counters are thread-safe)."""

    def __init__(self, metrics: Metrics, enabled: bool) -> None:
        self.enabled = enabled
        self._cpu = {stage: metrics.stage_cpu.labels(stage=stage) for stage in STAGES} if enabled else {}
        self._events = {stage: metrics.stage_events.labels(stage=stage) for stage in STAGES} if enabled else {}

    def start(self) -> float:
        return time.thread_time() if self.enabled else 0.0

    def stop(self, stage: str, started: float, events: int = 0) -> float:
        """Add the CPU time since ``started`` to ``stage``; returns a new start for the next stage."""
        if not self.enabled:
            return 0.0
        now = time.thread_time()
        self._cpu[stage].inc(now - started)
        if events:
            self._events[stage].inc(events)
        return now


def name_native_threads() -> int:
    """Give every Python thread of this process its Python name at the OS level (Linux ``comm``,
    15 characters), so /proc, top and profilers can tell the stages and the client's threads
    apart; returns how many were named."""
    named = 0
    for thread in threading.enumerate():
        tid = getattr(thread, "native_id", None)
        if tid is None:
            continue
        try:
            Path(f"/proc/self/task/{tid}/comm").write_text(thread.name.removeprefix("tagstream-")[:15])
            named += 1
        except OSError:
            pass  # not Linux, or the thread is gone
    return named


def name_process(name: str) -> None:
    """Name this process at the OS level (Linux ``comm``, 15 characters): ``ps``, ``top`` and a
    bench then tell a pod's model process and feeders apart. Threads started later inherit it."""
    with contextlib.suppress(OSError):  # not Linux
        Path("/proc/self/comm").write_text(name[:15])
