"""A live view of the worker's results: throughput, labels, latency, accuracy, the latest results.

    python demo/live_view.py --bootstrap 127.0.0.1:9092 --topic sms.labels --dlq sms.dlq

Reads the results topic (from now, or ``--from-beginning``) and redraws once a second:
results per second over the last few seconds, totals per label, end-to-end latency (input
record time to result time, p50/p99 of the last ones), running accuracy when the inputs carried
a ``true_label`` header (``demo/stream_events.py`` adds it), dead letters by reason, and the
last results. Stops after ``--seconds`` or on Ctrl-C, printing a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, deque

WINDOW_S = 5.0  # throughput is averaged over this many seconds
LATENCY_SAMPLES = 2000  # latency percentiles over the last this-many results


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class View:
    def __init__(self) -> None:
        self.total = 0
        self.labels: Counter[str] = Counter()
        self.dead: Counter[str] = Counter()
        self.correct = 0
        self.judged = 0
        self.arrivals: deque[tuple[float, int]] = deque()
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.recent: deque[str] = deque(maxlen=8)
        self.versions: Counter[str] = Counter()

    def add_result(self, record) -> None:
        result = json.loads(record.value)
        self.total += 1
        self.labels[result["label"]] += 1
        self.versions[result.get("model_version", "?")] += 1
        source_ts = result.get("source", {}).get("timestamp_ms", 0)
        if source_ts > 0 and record.timestamp > 0:
            self.latencies.append(max(0.0, (record.timestamp - source_ts) / 1000))
        truth = dict(record.headers or []).get("true_label")
        mark = ""
        if truth is not None:
            self.judged += 1
            ok = truth.decode() == result["label"]
            self.correct += ok
            mark = "  ok" if ok else f"  (true: {truth.decode()})"
        self.recent.append(f"{result['id']:>12}  {result['label']:<10} {result['score']:.3f}{mark}")

    def add_dead(self, record) -> None:
        reason = dict(record.headers or []).get("tagstream.reason", b"?").decode()
        self.dead[reason] += 1

    def rate(self, now: float) -> float:
        self.arrivals.append((now, self.total))
        while self.arrivals and now - self.arrivals[0][0] > WINDOW_S:
            self.arrivals.popleft()
        (t0, n0), (t1, n1) = self.arrivals[0], self.arrivals[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def render(self, now: float) -> str:
        lat = list(self.latencies)
        lines = [
            f"results {self.total}   {self.rate(now):.0f}/s (last {WINDOW_S:.0f} s)   latency p50"
            f" {percentile(lat, 0.5) * 1000:.0f} ms  p99 {percentile(lat, 0.99) * 1000:.0f} ms",
            "labels  " + "  ".join(f"{k}: {v}" for k, v in self.labels.most_common()),
        ]
        if self.judged:
            lines.append(f"accuracy {self.correct / self.judged:.1%} of {self.judged} with a true label")
        if self.dead:
            lines.append("dead letters  " + "  ".join(f"{k}: {v}" for k, v in self.dead.most_common()))
        lines.append("model versions  " + "  ".join(f"{k}: {v}" for k, v in self.versions.most_common()))
        lines.append("latest:")
        lines.extend(f"  {line}" for line in self.recent)
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="broker host:port (default %(default)s)")
    parser.add_argument("--topic", required=True, nargs="+", help="results topic(s), e.g. sms.labels")
    parser.add_argument("--dlq", nargs="*", default=[], help="dead-letter topic(s) to count, e.g. sms.dlq")
    parser.add_argument("--from-beginning", action="store_true", help="read existing results too")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long; 0 = until Ctrl-C")
    args = parser.parse_args(argv)

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        *args.topic, *args.dlq, bootstrap_servers=args.bootstrap, group_id=None, metrics_enabled=False,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
    )
    dlq = set(args.dlq)
    view = View()
    tty = sys.stdout.isatty()
    started = time.monotonic()
    next_draw = started
    try:
        while not args.seconds or time.monotonic() - started < args.seconds:
            for tp, batch in consumer.poll(timeout_ms=200).items():
                for record in batch:
                    (view.add_dead if tp.topic in dlq else view.add_result)(record)
            now = time.monotonic()
            if now >= next_draw:
                next_draw = now + 1.0
                screen = view.render(now)
                print(("\033[2J\033[H" if tty else "\n") + screen, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    print(f"\n{view.total} results, {sum(view.dead.values())} dead letters", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
