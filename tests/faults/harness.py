"""The fault suite's tools: a stream of events, worker processes to kill, outcome accounting, rows.

Every input is identified by where it landed (partition, offset), known from the producer's
acknowledgement; every outcome (a result, a dead letter) names its input by the same pair (results
in ``source``, dead letters in ``tagstream.source.*`` headers). So hostile inputs without an id are
accounted for exactly like valid ones, and "missing" and "duplicates" are counts over inputs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from full_size import FULL  # `make faults` runs the full sizes
from kafka import KafkaConsumer, KafkaProducer
from worker_support import READER_METADATA_MAX_AGE_MS, fixture_texts, http_status

START_TIMEOUT_S = 90


@dataclass(frozen=True)
class Sizes:
    """Full sizes (``make faults``) and the reduced ones CI runs inside ``make test``."""

    kill_events: int = 50_000 if FULL else 6_000
    kill_partitions: int = 6
    kills: int = 10 if FULL else 3
    kill_rate: float = 1_500.0  # events/s: the stream lasts ~33 s full, ~4 s reduced
    scale_events: int = 30_000 if FULL else 4_000
    hostile_examples: int = 5 if FULL else 1
    hostile_records: int = 120 if FULL else 40  # per example, beside as many valid ones
    restart_events: int = 20_000 if FULL else 3_000
    outage_s: float = 20.0 if FULL else 10.0  # TAGSTREAM_BROKER_OUTAGE_S for "broker gone"


SIZES = Sizes()

KAFKA_CLIENTS = ("kafka-python", "confluent")


def clients(reduced: str) -> list[str]:
    """The Kafka clients a scenario runs with: both at full size (``make faults``); at the reduced size
    of ``make test`` only ``reduced``, so each scenario runs once and the clients share the scenarios.
    ``TAGSTREAM_TEST_KAFKA_CLIENTS`` (as for the other tests) narrows the full size to those named."""
    if not FULL:
        return [reduced]
    wanted = [c.strip() for c in os.environ.get("TAGSTREAM_TEST_KAFKA_CLIENTS", "").split(",") if c.strip()]
    return [c for c in KAFKA_CLIENTS if not wanted or c in wanted]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stream:
    """Sends events from a thread at ``rate`` per second; ``sent`` maps (partition, offset) -> id."""

    def __init__(self, bootstrap: str, topic: str, n: int, rate: float, prefix: str = "e", seed: int = 7) -> None:
        self.sent: dict[tuple[int, int], str] = {}
        self._lock = threading.Lock()
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
        self._topic, self._n, self._rate, self._prefix, self._seed = topic, n, rate, prefix, seed
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.done = threading.Event()

    def start(self) -> Stream:
        self._thread.start()
        return self

    def _run(self) -> None:
        texts = fixture_texts(self._n, seed=self._seed)
        began = time.monotonic()
        for i, text in enumerate(texts):
            event_id = f"{self._prefix}{i}"
            value = json.dumps({"id": event_id, "text": text}).encode()
            future = self._producer.send(self._topic, value=value, key=event_id.encode())
            future.add_callback(self._landed, event_id)
            ahead = began + (i + 1) / self._rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        self._producer.flush(60)
        self._producer.close()
        self.done.set()

    def _landed(self, event_id: str, metadata: Any) -> None:
        with self._lock:
            self.sent[(metadata.partition, metadata.offset)] = event_id

    def join(self, timeout: float = 300) -> dict[tuple[int, int], str]:
        self._thread.join(timeout)
        assert self.done.is_set(), "the event stream did not finish"
        return dict(self.sent)


def send_records(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None, list]]) -> list[tuple[int, int]]:
    """Send (value, key, headers) records as they are; returns where each landed, in order."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=6 * 1024 * 1024, linger_ms=5)
    futures = [producer.send(topic, value=v, key=k, headers=h) for v, k, h in records]
    producer.flush(60)
    landed = [(f.get(30).partition, f.get(30).offset) for f in futures]
    producer.close()
    return landed


class Outcomes:
    """Reads the result and dead-letter topics from a thread, counting outcomes per input."""

    def __init__(self, bootstrap: str, topic: str, read_committed: bool = False) -> None:
        self.results: Counter[tuple[int, int]] = Counter()
        self.letters: Counter[tuple[int, int]] = Counter()
        self.reasons: dict[tuple[int, int], str] = {}
        self._consumer = KafkaConsumer(
            f"{topic}.labels", f"{topic}.dlq", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
            group_id=None, metadata_max_age_ms=READER_METADATA_MAX_AGE_MS, enable_auto_commit=False, max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            isolation_level="read_committed" if read_committed else "read_uncommitted",
        )
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for batch in self._consumer.poll(timeout_ms=200).values():
                for record in batch:
                    self._count(record)

    def _count(self, record: Any) -> None:
        with self._lock:
            if record.topic.endswith(".labels"):
                source = json.loads(record.value)["source"]
                self.results[(source["partition"], source["offset"])] += 1
            else:
                headers = dict(record.headers)
                key = (int(headers["tagstream.source.partition"]), int(headers["tagstream.source.offset"]))
                self.letters[key] += 1
                self.reasons[key] = headers["tagstream.reason"].decode()

    def covered(self, inputs: Iterable[tuple[int, int]]) -> bool:
        with self._lock:
            return all(key in self.results or key in self.letters for key in inputs)

    def wait_for(self, inputs: Iterable[tuple[int, int]], timeout_s: float, quiet_s: float = 3.0) -> None:
        """Until every input has an outcome (or the time is up), then ``quiet_s`` more for stragglers."""
        wanted = list(inputs)
        deadline = time.monotonic() + timeout_s
        while not self.covered(wanted) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(quiet_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def account(self, inputs: Iterable[tuple[int, int]]) -> dict[str, int]:
        """results, dead letters, missing and duplicate outcomes over ``inputs``."""
        wanted = set(inputs)
        with self._lock:
            outcomes = {k: self.results.get(k, 0) + self.letters.get(k, 0) for k in wanted}
            return {
                "results": sum(self.results[k] for k in wanted if k in self.results),
                "dead_letters": sum(self.letters[k] for k in wanted if k in self.letters),
                "missing": sum(1 for n in outcomes.values() if n == 0),
                "duplicates": sum(n - 1 for n in outcomes.values() if n > 1),
            }


LIVE_WORKERS: list[WorkerProcess] = []  # started and not yet reaped: conftest kills leftovers after each test


class WorkerProcess:
    """``tagstream-worker run`` as a child process, with its metrics port known."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.env = {**env, "TAGSTREAM_METRICS_PORT": str(self.port)}
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> WorkerProcess:
        self.started_at = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "run"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        LIVE_WORKERS.append(self)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 40) -> int | None:
        """SIGTERM and wait: the exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.proc.returncode

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def probe(self, path: str) -> int | None:
        """HTTP status of /healthz or /readyz (None when nothing answers)."""
        return http_status(self.port, path)

    def events(self, name: str) -> list[dict]:
        """This worker's log events called ``name`` (JSON log lines)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                event = json.loads(line)
                if event.get("event") == name:
                    out.append(event)
        return out


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.1) -> float:
    """Seconds until ``condition`` held; AssertionError naming ``what`` after ``timeout_s``."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(step_s)
    return time.monotonic() - began


@dataclass
class Row:
    scenario: str
    guarantee: str
    client: str
    sent: int
    results: int
    dead_letters: int
    missing: int
    duplicates: int
    wall_s: float
    skipped: int = 0
    notes: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def markdown(self, title: str) -> str:
        lines = [
            f"# {title}",
            "",
            "| scenario | guarantee | client | events sent | results | dead letters | skipped | missing | duplicates | wall s | notes |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.scenario} | {r.guarantee} | {r.client} | {r.sent:,} | {r.results:,} | {r.dead_letters:,} | {r.skipped:,}"
                f" | {r.missing:,} | {r.duplicates:,} | {r.wall_s:.0f} | {r.notes} |"
            )
        return "\n".join(lines) + "\n"
