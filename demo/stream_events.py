"""Stream text events into a Kafka topic at a steady rate: for demos and load tests.

    python demo/stream_events.py --bootstrap 127.0.0.1:9092 --topic sms --data ../shared/datasets/sms_spam \\
        --rate 200 --count 5000

Each event is JSON ``{"id": "<prefix><n>", "text": "..."}`` keyed by its id. When the source rows
carry a label, it travels in the ``true_label`` header, which the worker copies onto the result,
so ``demo/live_view.py`` can show running accuracy. Sources: JSONL files (``--text-field``,
``--label-field``), plain text files (one text a line), folders of those, or ``--sample`` (a
few built-in messages). The topic is created (``--partitions``) when it does not exist.
Stops after ``--count`` events (looping over the data as needed) or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

SAMPLE = [
    ("Congratulations! You've won a free cruise. Call now to claim your prize", "spam"),
    ("Are we still on for lunch tomorrow?", "ham"),
    ("URGENT: your account has been suspended, reply with your PIN to restore it", "spam"),
    ("Running 10 minutes late, start without me", "ham"),
    ("FREE entry to win 1000 cash! Text WIN to 80086 now", "spam"),
    ("Can you pick up milk on the way home?", "ham"),
    ("You have been selected for a no-cost mobile upgrade, txt YES", "spam"),
    ("Happy birthday! Hope you have a great day", "ham"),
    ("Claim your guaranteed loan today, no credit check, call 0800", "spam"),
    ("The meeting moved to 3pm in room B", "ham"),
]
TICK_S = 0.01  # pacing granularity: sends are spread over 10 ms slices


def read_rows(paths: list[Path], text_field: str, label_field: str) -> list[tuple[str, str | None]]:
    """(text, label or None) rows from JSONL or plain text files, or folders holding them."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".txt")))
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"stream_events: {path} does not exist")
    rows: list[tuple[str, str | None]] = []
    for file in files:
        with file.open(encoding="utf-8") as handle:
            for n, line in enumerate(handle, 1):
                line = line.strip()
                if not line:
                    continue
                if file.suffix == ".jsonl":
                    try:
                        obj = json.loads(line)
                        text = obj[text_field]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise SystemExit(f"stream_events: {file}:{n}: not a JSON object with {text_field!r}") from None
                    label = obj.get(label_field)
                    rows.append((str(text), None if label is None else str(label)))
                else:
                    rows.append((line, None))
    if not rows:
        raise SystemExit(f"stream_events: no rows in {[str(p) for p in paths]}")
    return rows


def events(rows: list[tuple[str, str | None]], count: int, prefix: str) -> Iterator[tuple[bytes, bytes, list]]:
    """(key, value, headers) for ``count`` events, cycling through ``rows`` (0 = forever)."""
    n = 0
    while count == 0 or n < count:
        text, label = rows[n % len(rows)]
        event_id = f"{prefix}{n}"
        headers = [("true_label", label.encode())] if label is not None else []
        yield event_id.encode(), json.dumps({"id": event_id, "text": text}, ensure_ascii=False).encode(), headers
        n += 1


def ensure_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": -1}})
        admin.wait_for_topics([topic], timeout_ms=30_000)
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def stream(bootstrap: str, topic: str, rows: list, *, rate: float, count: int, prefix: str, quiet: bool) -> int:
    """Send events at ``rate`` per second (0 = as fast as possible); returns how many were sent."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, metrics_enabled=False)
    sent = 0
    started = time.monotonic()
    last_report = started
    try:
        for key, value, headers in events(rows, count, prefix):
            if rate > 0:
                due = started + sent / rate
                delay = due - time.monotonic()
                if delay > TICK_S:
                    time.sleep(delay)
            producer.send(topic, value=value, key=key, headers=headers)
            sent += 1
            now = time.monotonic()
            if not quiet and now - last_report >= 1.0:
                print(f"sent {sent} events ({sent / (now - started):.0f}/s)", file=sys.stderr, flush=True)
                last_report = now
    except KeyboardInterrupt:
        pass
    finally:
        producer.flush(30)
        producer.close()
    if not quiet:
        elapsed = time.monotonic() - started
        print(f"sent {sent} events to {topic} in {elapsed:.1f} s ({sent / max(elapsed, 1e-9):.0f}/s)",
              file=sys.stderr)
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="broker host:port (default %(default)s)")
    parser.add_argument("--topic", required=True, help="topic to write to")
    parser.add_argument("--data", type=Path, nargs="*", default=[], help="JSONL/text files or folders")
    parser.add_argument("--sample", action="store_true", help="use the built-in sample messages")
    parser.add_argument("--text-field", default="text", help="JSONL field holding the text (default %(default)s)")
    parser.add_argument("--label-field", default="label", help="JSONL field holding the true label, if any")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second; 0 = as fast as possible")
    parser.add_argument("--count", type=int, default=0, help="events to send; 0 = until Ctrl-C")
    parser.add_argument("--id-prefix", default="e", help="event ids are <prefix><n> (default %(default)s)")
    parser.add_argument("--partitions", type=int, default=3, help="partitions if the topic is created")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.sample or not args.data:
        rows: list[tuple[str, str | None]] = list(SAMPLE)
    else:
        rows = read_rows(args.data, args.text_field, args.label_field)
    ensure_topic(args.bootstrap, args.topic, args.partitions)
    stream(args.bootstrap, args.topic, rows, rate=args.rate, count=args.count, prefix=args.id_prefix,
           quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
