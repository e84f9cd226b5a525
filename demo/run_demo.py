"""``make demo``: the whole tagstream story on this machine, end to end, in a minute or two.

    1. data    DATA=path when given, else ../shared/datasets/sms_spam, else a sample set written here
    2. broker  a real local Kafka broker (or KAFKA_BOOTSTRAP_SERVERS when set)
    3. model   `tagstream-train train --preset small`, reused while the data stays the same
    4. worker  `tagstream-worker run` as its own process, waited on until /readyz answers
    5. stream  events at a steady rate, plus a few malformed ones, with a live view of the results
    6. stop    SIGTERM: the worker drains, flushes, commits and exits 0; every event is accounted
               for (a result or a dead letter) before the broker is stopped

Knobs (environment or make variables): DATA, DEMO_EVENTS (default 3000), DEMO_RATE (events per
second, default 200), KAFKA_BOOTSTRAP_SERVERS.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STATE = ROOT / ".demo"  # git-ignored: models, logs, sample data
SHARED_SMS = ROOT.parent / "shared" / "datasets" / "sms_spam"
sys.path.insert(0, str(HERE))

from live_view import View  # noqa: E402
from sample_data import write_sample  # noqa: E402
from stream_events import ensure_topic, read_rows, stream  # noqa: E402

READY_TIMEOUT_S = 180  # bundle load + warm-up at the largest batch, on a slow machine
DRAIN_TIMEOUT_S = 20  # what the worker is given after SIGTERM (TAGSTREAM_DRAIN_TIMEOUT_S)
SETTLE_TIMEOUT_S = 120  # how long to wait for the last results after the stream ends
# Malformed events the worker must dead-letter (never drop, never crash on): key -> value.
MALFORMED = {
    b"bad-utf8": b"\xff\xfe not utf-8 \xc3\x28",
    b"bad-json": b'{"id": "bad-json", "text": "unterminated',
    b"bad-empty": b'{"id": "bad-empty", "text": "   "}',
    b"bad-missing": b'{"id": "bad-missing", "body": "no text field here"}',
    b"bad-type": b'{"id": "bad-type", "text": 42}',
}


def step(n: int, text: str) -> None:
    print(f"\n[{n}/6] {text}", flush=True)


def pick_data(given: str | None) -> tuple[Path, Path | None, str]:
    """(train file, test file or None, how it was chosen)."""
    if given:
        path = Path(given).expanduser().resolve()
        if path.is_dir():
            train, test = path / "train.jsonl", path / "test.jsonl"
            if not train.is_file():
                raise SystemExit(f"demo: DATA={given}: expected {train} (and optionally test.jsonl)")
            return train, test if test.is_file() else None, f"DATA={given}"
        if path.is_file():
            return path, None, f"DATA={given}"
        raise SystemExit(f"demo: DATA={given} does not exist: give a JSONL file or a folder with train.jsonl")
    if (SHARED_SMS / "train.jsonl").is_file():
        return SHARED_SMS / "train.jsonl", SHARED_SMS / "test.jsonl", f"the SMS Spam Collection in {SHARED_SMS}"
    folder = write_sample(STATE / "sample")
    return folder / "train.jsonl", folder / "test.jsonl", f"a small sample set written to {folder} (no ../shared/datasets here)"


def train_or_reuse(train: Path, test: Path | None) -> Path:
    """A bundle trained on ``train``; reused when one was trained on the same files before."""
    digest = hashlib.sha256()
    for f in (train, test):
        if f is not None:
            digest.update(f.read_bytes())
    out = STATE / "models" / f"{train.parent.name}-small-{digest.hexdigest()[:10]}"
    bundle = out / "bundle"
    if (bundle / "manifest.json").is_file():
        print(f"reusing the model trained earlier on the same data: {bundle}")
        return bundle
    cmd = [sys.executable, "-m", "model.cli", "--log-level", "warning", "train", "--init", "scratch",
           "--preset", "small", "--train", str(train), "--out", str(out), "--name", "demo-small"]
    if test is not None:
        cmd += ["--test", str(test)]
    print("$ tagstream-train " + " ".join(cmd[5:]), flush=True)
    started = time.monotonic()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"trained and exported in {time.monotonic() - started:.0f} s: {bundle}")
    return bundle


@contextlib.contextmanager
def broker() -> Iterator[str]:
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        print(f"using the broker at {given} (KAFKA_BOOTSTRAP_SERVERS)")
        yield given
        return
    from localkafka import LocalKafka, LocalKafkaError

    kafka = LocalKafka()
    try:
        kafka.start()
    except LocalKafkaError as exc:
        raise SystemExit(f"demo: {exc}") from None
    print(f"local Kafka broker at {kafka.bootstrap_servers}, ready in {kafka.startup_s:.1f} s")
    try:
        yield kafka.bootstrap_servers
    finally:
        kafka.stop()
        print("local Kafka broker stopped")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_worker(bootstrap: str, topic: str, bundle: Path, log_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(
        os.environ,
        TAGSTREAM_BOOTSTRAP_SERVERS=bootstrap,
        TAGSTREAM_INPUT_TOPICS=topic,
        TAGSTREAM_GROUP_ID=f"{topic}-workers",
        TAGSTREAM_OUTPUT_TOPIC="{topic}.labels",
        TAGSTREAM_DLQ_TOPIC="{topic}.dlq",
        TAGSTREAM_BUNDLE_PATH=str(bundle),
        TAGSTREAM_METRICS_PORT=str(port),
        TAGSTREAM_DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S),
        TAGSTREAM_LOG_FORMAT="json",
    )
    log = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"$ tagstream-worker run   (pid {proc.pid}, log {log_path})")
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT_S:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise SystemExit("demo: the worker exited during start-up:\n  " + "\n  ".join(tail))
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            if r.status == 200:
                print(f"worker ready in {time.monotonic() - started:.1f} s"
                      f" (metrics: http://127.0.0.1:{port}/metrics)")
                return proc, port
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"demo: the worker was not ready after {READY_TIMEOUT_S} s; see {log_path}")


def send_malformed(bootstrap: str, topic: str) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, metrics_enabled=False)
    for key, value in MALFORMED.items():
        producer.send(topic, key=key, value=value)
    producer.flush(30)
    producer.close()


def read_everything(bootstrap: str, topics: list[str], idle_s: float = 3.0) -> dict[str, list]:
    """Every record of ``topics`` from the beginning, until none arrives for ``idle_s``."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", metrics_enabled=False)
    records: dict[str, list] = {t: [] for t in topics}
    last = time.monotonic()
    while time.monotonic() - last < idle_s:
        for tp, batch in consumer.poll(timeout_ms=300).items():
            records[tp.topic].extend(batch)
            last = time.monotonic()
    consumer.close()
    return records


def live_view(bootstrap: str, results: str, dlq: str, expected: list[int], sending: threading.Event) -> View:
    """Redraw the running totals once a second until every sent event is accounted for."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(results, dlq, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", metrics_enabled=False)
    view = View()
    tty = sys.stdout.isatty()
    deadline = None
    next_draw = 0.0
    try:
        while True:
            for tp, batch in consumer.poll(timeout_ms=200).items():
                for record in batch:
                    (view.add_dead if tp.topic == dlq else view.add_result)(record)
            now = time.monotonic()
            if now >= next_draw:
                next_draw = now + (1.0 if tty else 2.0)
                screen = view.render(now)
                # On a terminal, redraw in place; in a log, one line every 2 s.
                print("\033[2J\033[H" + screen if tty else screen.splitlines()[0], flush=True)
            done = view.total + sum(view.dead.values())
            if not sending.is_set():
                deadline = deadline or now + SETTLE_TIMEOUT_S
                if done >= expected[0] or now > deadline:
                    break
    finally:
        consumer.close()
    print(("\033[2J\033[H" if tty else "\n") + view.render(time.monotonic()), flush=True)
    return view


def stop_worker(proc: subprocess.Popen) -> int:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(DRAIN_TIMEOUT_S + 15)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    print(f"SIGTERM -> the worker drained and exited with code {code} in {time.monotonic() - started:.1f} s")
    return code


def account(bootstrap: str, topic: str, sent_ids: set[str]) -> bool:
    """Every sent event has a result or a dead letter: print the books and return whether they balance."""
    records = read_everything(bootstrap, [f"{topic}.labels", f"{topic}.dlq"])
    result_ids = [json.loads(r.value)["id"] for r in records[f"{topic}.labels"]]
    dead = records[f"{topic}.dlq"]
    dead_ids = [r.key.decode(errors="replace") for r in dead if r.key is not None]
    reasons = Counter(dict(r.headers or []).get("tagstream.reason", b"?").decode() for r in dead)
    seen = set(result_ids) | set(dead_ids)
    missing = sent_ids - seen
    duplicates = len(result_ids) + len(dead_ids) - len(seen)
    print(f"events sent        {len(sent_ids)}  ({len(sent_ids) - len(MALFORMED)} good, {len(MALFORMED)} malformed)")
    print(f"results            {len(result_ids)}  on {topic}.labels")
    print(f"dead letters       {len(dead_ids)}  on {topic}.dlq  " + "  ".join(f"{k}: {v}" for k, v in reasons.items()))
    print(f"missing            {len(missing)}" + (f"  e.g. {sorted(missing)[:5]}" if missing else ""))
    print(f"duplicates         {duplicates}  (at-least-once: only after a crash or rebalance)")
    return not missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("DATA") or None, help="JSONL file or folder with train.jsonl/test.jsonl")
    parser.add_argument("--events", type=int, default=int(os.environ.get("DEMO_EVENTS") or 3000), help="events to stream (default %(default)s)")
    parser.add_argument("--rate", type=float, default=float(os.environ.get("DEMO_RATE") or 200), help="events per second (default %(default)s)")
    args = parser.parse_args(argv)
    STATE.mkdir(exist_ok=True)

    step(1, "data")
    train, test, why = pick_data(args.data)
    print(f"using {why}")
    stream_rows = read_rows([test or train], "text", "label")

    step(2, "broker")
    with broker() as bootstrap:
        step(3, "model")
        bundle = train_or_reuse(train, test)

        step(4, "worker")
        topic = f"tagstream-demo-{time.strftime('%H%M%S')}"
        for name in (topic, f"{topic}.labels", f"{topic}.dlq"):
            ensure_topic(bootstrap, name, partitions=3)
        proc, _ = start_worker(bootstrap, topic, bundle, STATE / "worker.log")
        try:
            step(5, f"streaming {args.events} events at {args.rate:g}/s into {topic} (3 partitions),"
                    f" plus {len(MALFORMED)} malformed ones; results from {topic}.labels:")
            sending = threading.Event()
            sending.set()
            expected = [args.events + len(MALFORMED)]

            def produce() -> None:
                try:
                    send_malformed(bootstrap, topic)
                    stream(bootstrap, topic, stream_rows, rate=args.rate, count=args.events, prefix="e", quiet=True)
                finally:
                    sending.clear()

            threading.Thread(target=produce, name="demo-producer", daemon=True).start()
            started = time.monotonic()
            view = live_view(bootstrap, f"{topic}.labels", f"{topic}.dlq", expected, sending)
            elapsed = time.monotonic() - started
            print(f"\n{view.total} results in {elapsed:.1f} s ({view.total / elapsed:.0f}/s, paced by the"
                  f" {args.rate:g}/s stream)")
        finally:
            step(6, "stop")
            code = stop_worker(proc)

        sent_ids = {f"e{n}" for n in range(args.events)} | {k.decode() for k in MALFORMED}
        balanced = account(bootstrap, topic, sent_ids)

    print(f"\nbundle: {bundle}\nworker log: {STATE / 'worker.log'}")
    print("next: .venv/bin/tagstream-train predict " + str(bundle.relative_to(ROOT)) + ' "WIN a free cruise, call now"')
    print("      .venv/bin/tagstream-train explain " + str(bundle.relative_to(ROOT)) + ' "WIN a free cruise, call now" --png why.png')
    if code != 0 or not balanced:
        print("demo: FAILED (see above)", file=sys.stderr)
        return 1
    print("demo: done, nothing lost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
