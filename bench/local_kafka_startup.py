"""How long the local Kafka broker takes from `start()` to ready, cold and warm.

    .venv/bin/python bench/local_kafka_startup.py            # 3 warm starts (jars cached)
    .venv/bin/python bench/local_kafka_startup.py --cold     # plus one start with empty caches

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

from localkafka import LocalKafka

TARGET_WARM_S = 20.0


def timed_start(**kwargs: object) -> tuple[float, float, float]:
    """(total seconds from start(), JVM launch to ready, stop seconds) for one broker."""
    began = time.monotonic()
    broker = LocalKafka(**kwargs).start()  # type: ignore[arg-type]
    total = time.monotonic() - began
    stop_began = time.monotonic()
    broker.stop()
    return total, broker.startup_s or 0.0, time.monotonic() - stop_began


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
    warm = [timed_start() for _ in range(args.runs)]
    for i, (total, jvm, stop) in enumerate(warm, 1):
        rows.append((f"warm #{i}", total, jvm, stop))

    print(f"{'run':32} {'start() to ready':>17} {'JVM to ready':>13} {'stop':>7}")
    for name, total, jvm, stop in rows:
        print(f"{name:32} {total:16.1f}s {jvm:12.1f}s {stop:6.1f}s")
    median = statistics.median(t for t, _, _ in warm)
    verdict = "meets" if median < TARGET_WARM_S else "MISSES"
    print(f"warm median {median:.1f} s vs target < {TARGET_WARM_S:.0f} s: {verdict} the target")


if __name__ == "__main__":
    main()
