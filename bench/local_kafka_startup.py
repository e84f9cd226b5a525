"""How long the local Kafka broker takes from `start()` to ready: cold, warm, with TLS, and
coming back from a clean restart and from kill -9 (the fault-test controls).

    .venv/bin/python bench/local_kafka_startup.py            # 3 warm starts (jars cached), each
                                                             # with a TLS start and two restarts
    .venv/bin/python bench/local_kafka_startup.py --cold     # plus one start with empty caches

The plain warm start is the baseline: every other row is measured in the same run, interleaved
with it, so machine load shifts them alike.

"Cold" starts with an empty jar cache *and* an empty Maven repository (both in a temporary
folder), so it includes downloading Maven's plugins and the Kafka jars from Maven Central.
"Ready" means the broker logged "Kafka Server started" and answered a metadata request.
The target (issue 2) is under 20 s warm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from localkafka import LocalKafka, ScramUser

TARGET_WARM_S = 20.0


def timed_start(**kwargs: object) -> tuple[float, float, float]:
    """(total seconds from start(), JVM launch to ready, stop seconds) for one broker."""
    began = time.monotonic()
    broker = LocalKafka(**kwargs).start()  # type: ignore[arg-type]
    total = time.monotonic() - began
    stop_began = time.monotonic()
    broker.stop()
    return total, broker.startup_s or 0.0, time.monotonic() - stop_began


def timed_controls() -> list[tuple[str, float, float, float]]:
    """A TLS+SCRAM broker: its start, then halt + start, then kill -9 + start (same data)."""
    rows = []
    began = time.monotonic()
    broker = LocalKafka(scram_users=[ScramUser("bench", "bench-secret")], tls=True).start()
    rows.append(("TLS + SCRAM (certificates made)", time.monotonic() - began, broker.startup_s or 0.0, 0.0))
    try:
        halt_began = time.monotonic()
        broker.halt()
        halted = time.monotonic() - halt_began
        began = time.monotonic()
        broker.start()
        rows.append(("restart: halt, then start", time.monotonic() - began, broker.startup_s or 0.0, halted))
        broker.kill()
        began = time.monotonic()
        broker.start()
        rows.append(("restart: kill -9, then start", time.monotonic() - began, broker.startup_s or 0.0, 0.0))
    finally:
        broker.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="warm starts to time (default: 3)")
    parser.add_argument("--cold", action="store_true", help="also time one start with empty caches")
    args = parser.parse_args()

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    rows: list[tuple[str, float, float, float]] = []
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="tagstream-cold-") as tmp:
            total, jvm, stop = timed_start(
                cache_root=Path(tmp) / "cache",
                maven_args=[f"-Dmaven.repo.local={Path(tmp) / 'm2'}"],
            )
            rows.append(("cold (fetch + format + start)", total, jvm, stop))
    warm = []
    for i in range(1, args.runs + 1):
        warm.append(timed_start())
        rows.append((f"warm #{i} (baseline)", *warm[-1]))
        rows += [(f"{name} #{i}", *times) for name, *times in timed_controls()]

    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"{'run':36} {'start() to ready':>17} {'JVM to ready':>13} {'stop':>7}")
    for name, total, jvm, stop in rows:
        print(f"{name:36} {total:16.1f}s {jvm:12.1f}s {stop:6.1f}s")
    median = statistics.median(t for t, _, _ in warm)
    verdict = "meets" if median < TARGET_WARM_S else "MISSES"
    print(f"warm median {median:.1f} s vs target < {TARGET_WARM_S:.0f} s: {verdict} the target")


if __name__ == "__main__":
    main()
