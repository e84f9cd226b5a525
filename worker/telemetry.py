"""Logs, Prometheus metrics, and the /metrics, /healthz and /readyz endpoints.

Metrics (all prefixed ``tagstream_``; each instance has its own registry, so tests can run
several workers in one process):

| metric | type | labels | what |
|---|---|---|---|
| events_in_total | counter | topic | input records read |
| events_out_total | counter | topic | results acknowledged by the broker (by input topic) |
| dead_letters_total | counter | reason | dead letters acknowledged by the broker, by Failure label |
| records_skipped_total | counter | reason | inputs whose every output was refused, even bounded: skipped past |
| inputs_deleted_unread_total | counter | topic | input records the broker deleted (retention, DeleteRecords) before they were read (worker/retention.py) |
| failures_total | counter | kind | every failure by kind (dead letters, retries, refusals, fatal) |
| batches_total | counter | reason | batches run, by the limit that closed them (size, tokens, wait, flush) |
| batch_size | histogram | | inputs per batch |
| batch_padded_tokens | histogram | | longest x count per batch (what the model computes on) |
| batch_padding_ratio | histogram | | padding tokens / padded tokens per batch |
| inference_seconds | histogram | | model call per batch (padding and copies included) |
| end_to_end_latency_seconds | histogram | | input record timestamp -> result acknowledged |
| consumer_lag | gauge | topic, partition | records behind the partition's high watermark |
| consumer_lag_seconds | gauge | topic, partition | age of the records read while there is lag (0 when caught up or not reading) |
| in_flight_events | gauge | | read and not yet acknowledged |
| consumer_paused | gauge | | 1 while backpressure pauses fetching |
| commits_total | counter | result | offset commits (ok, failed) |
| transactions_total | counter | result | exactly-once transactions (committed, aborted) |
| model_info | gauge | name, version | 1 for the bundle serving now |
| stage_cpu_seconds_total, stage_events_total | counter | stage | CPU time and inputs per pipeline stage, with TAGSTREAM_STAGE_TIMING |
| bundle_reloads_total | counter | result | swapped, refused |
| ready | gauge | | 1 while /readyz answers 200 (read from Health at scrape time) |

``/healthz`` answers 200 while every stage thread is alive, the consumer loop has turned within
``LOOP_STALL_S``, the broker has not been unreachable for longer than
``TAGSTREAM_BROKER_OUTAGE_S`` and no model call has run longer than ``TAGSTREAM_MODEL_STALL_S``; ``/readyz`` answers 200 once the bundle is warmed up, the worker
holds at least one partition, the broker answers and offset commits succeed. Both answer JSON
saying why (see ``Health``).
"""

from __future__ import annotations

import atexit
import bisect
import collections
import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from worker.errors import DEAD_LETTER_REASONS, SKIP_REASONS, Failure
from worker.log_repeats import REPEAT_FIELDS, RepeatFilter

log = structlog.get_logger("tagstream.worker.health")

# An outage is logged once it has lasted this long: a consumer finding its group coordinator at
# start (or after a rebalance) has none for a tenth of a second, which logged an outage each start.
OUTAGE_LOG_AFTER_S = 2.0
# A consumer loop that has not turned for this long is stuck (it polls every 100 ms, and
# the longest blocking step, a synchronous commit, is bounded well below this).
LOOP_STALL_S = 30.0


class Metrics:
    """The worker's Prometheus metrics (see the table in the module docstring)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_in = Counter("tagstream_events_in", "Input records read.", ["topic"], registry=r)
        self.events_out = Counter(
            "tagstream_events_out", "Results acknowledged by the broker, by input topic.", ["topic"], registry=r
        )
        self.dead_letters = Counter(
            "tagstream_dead_letters", "Dead letters acknowledged by the broker, by reason.", ["reason"], registry=r
        )
        self.records_skipped = Counter(
            "tagstream_records_skipped",
            "Inputs skipped past because even a bounded dead letter of them was refused, by reason.",
            ["reason"], registry=r,
        )
        self.inputs_deleted_unread = Counter(
            "tagstream_inputs_deleted_unread",
            "Input records the broker deleted (retention, DeleteRecords) before this worker read them.",
            ["topic"], registry=r,
        )
        self.failures = Counter("tagstream_failures", "Failures by kind (see worker/errors.py).", ["kind"], registry=r)
        self.batches = Counter("tagstream_batches", "Batches run, by the limit that closed them.", ["reason"], registry=r)
        self.batch_size = Histogram(
            "tagstream_batch_size", "Inputs per batch.",
            buckets=(1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 256, 512, 1024), registry=r,
        )
        self.batch_padded_tokens = Histogram(
            "tagstream_batch_padded_tokens", "Padded tokens (longest x count) per batch.",
            buckets=(64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536), registry=r,
        )
        self.batch_padding_ratio = Histogram(
            "tagstream_batch_padding_ratio", "Share of a batch's tokens that are padding.",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0), registry=r,
        )
        self.inference_seconds = Histogram(
            "tagstream_inference_seconds", "Model call per batch, seconds.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r,
        )
        self.end_to_end_latency = Histogram(
            "tagstream_end_to_end_latency_seconds",
            "Input record timestamp to result acknowledged by the broker, seconds.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r,
        )
        self.consumer_lag = Gauge(
            "tagstream_consumer_lag", "Records behind the high watermark.", ["topic", "partition"], registry=r
        )
        self.consumer_lag_seconds = Gauge(
            "tagstream_consumer_lag_seconds",
            "Age of the input records this worker reads, while it has lag (0 when caught up or not reading).",
            ["topic", "partition"], registry=r,
        )
        self.in_flight = Gauge("tagstream_in_flight_events", "Inputs read and not yet acknowledged.", registry=r)
        self.paused = Gauge("tagstream_consumer_paused", "1 while backpressure pauses fetching.", registry=r)
        self.commits = Counter("tagstream_commits", "Offset commits by result.", ["result"], registry=r)
        self.transactions = Counter(
            "tagstream_transactions", "Exactly-once transactions by result (committed, aborted).", ["result"],
            registry=r,
        )
        self.stage_cpu = Counter(
            "tagstream_stage_cpu_seconds", "CPU seconds per pipeline stage (TAGSTREAM_STAGE_TIMING; see worker/stages.py).",
            ["stage"], registry=r,
        )
        self.stage_events = Counter(
            "tagstream_stage_events", "Inputs through each pipeline stage (TAGSTREAM_STAGE_TIMING).", ["stage"], registry=r
        )
        self.model_info = Gauge("tagstream_model_info", "1 for the bundle serving now.", ["name", "version"], registry=r)
        self.bundle_reloads = Counter("tagstream_bundle_reloads", "Bundle reloads by result.", ["result"], registry=r)
        # Follows Health.readiness() once the telemetry server serves it (see TelemetryServer).
        self.ready = Gauge("tagstream_ready", "1 while /readyz would answer 200.", registry=r)
        # Every label exists from the start (at 0), so dashboards and alerts see them all.
        for failure in Failure:
            self.failures.labels(kind=failure.label)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason=reason.label)
        for reason in SKIP_REASONS:
            self.records_skipped.labels(reason=reason.label)
        for result in ("ok", "failed"):
            self.commits.labels(result=result)
        for result in ("committed", "aborted"):
            self.transactions.labels(result=result)
        for result in ("swapped", "refused"):
            self.bundle_reloads.labels(result=result)
        self._model_labels: tuple[str, str] | None = None

    def count_failure(self, failure: Failure, n: int = 1) -> None:
        """A failure happened (dead letters are counted again, per reason, once delivered)."""
        self.failures.labels(kind=failure.label).inc(n)

    def set_model(self, name: str, version: str) -> None:
        if self._model_labels is not None:
            self.model_info.remove(*self._model_labels)
        self._model_labels = (name, version)
        self.model_info.labels(name=name, version=version).set(1)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when absent): for tests and the check command."""
        got = self.registry.get_sample_value(name, labels or {})
        return 0.0 if got is None else got


def observe_many(histogram: Any, values: list[float]) -> None:
    """``histogram.observe(v)`` for each of ``values``, with one increment per bucket touched
    instead of a locked increment and a bucket search per value (per-record delivery reports made
    that a measurable share of the worker's CPU). It updates the child's buckets and sum as
    prometheus_client's own ``observe`` does (0.26, pinned; the unit tests compare the two)."""
    if not values:
        return
    bounds = histogram._upper_bounds
    for i, n in collections.Counter(bisect.bisect_left(bounds, v) for v in values).items():
        histogram._buckets[i].inc(n)
    histogram._sum.inc(sum(values))


class Health:
    """What /healthz and /readyz report; stages update it, the HTTP thread reads it.

    Ready: the model is warmed up, the worker holds partitions, the broker answers and the last
    offset commit succeeded. Live: every stage thread runs, the consumer loop turned within
    LOOP_STALL_S, the broker has not been unreachable for longer than ``broker_outage_s``, and no
    model call has run longer than ``model_stall_s`` (when set).
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, broker_outage_s: float = 180.0, model_stall_s: float = 0.0
    ) -> None:
        self._clock = clock
        self.model_stall_s = model_stall_s  # 0: no limit
        self._model_calls: dict[int, float] = {}  # thread ident -> when its running model call began
        self._loop_at = clock()
        self._threads: list[threading.Thread] = []
        self.model_ready = False
        self.assigned = 0
        self.broker_outage_s = broker_outage_s
        self._broker_down_since: float | None = None
        self._broker_back_at: float | None = None  # when the last outage ended
        self._outage_logged = False
        self.commit_failing = False

    def loop_turned(self) -> None:
        self._loop_at = self._clock()

    def watch(self, thread: threading.Thread) -> None:
        self._threads.append(thread)

    @contextlib.contextmanager
    def model_call(self) -> Iterator[None]:
        """Brackets one model call of the calling thread (per batch): how long it runs is watched."""
        ident = threading.get_ident()
        self._model_calls[ident] = self._clock()
        try:
            yield
        finally:
            self._model_calls.pop(ident, None)

    def model_busy_for(self) -> float:
        """Seconds the longest-running model call has run so far (0 when none runs)."""
        started = list(self._model_calls.values())
        return self._clock() - min(started) if started else 0.0

    def model_call_age(self, ident: int | None) -> float:
        """Seconds the model call of thread ``ident`` has run so far (0 when it is in none)."""
        started = self._model_calls.get(ident) if ident is not None else None
        return 0.0 if started is None else self._clock() - started

    def model_stalled(self) -> bool:
        """Whether a model call has run past ``model_stall_s``: the device or model process hangs."""
        return self.model_stall_s > 0 and self.model_busy_for() > self.model_stall_s

    def broker_seen(self, reachable: bool, silent_s: float = 0.0) -> None:
        """The latest sign of the broker: reachable (coordinator known, a commit went through) or not.
        ``silent_s``: the brokers have answered nothing for that long (a frozen broker is told only
        after SILENT_BROKER_S): the outage is dated from their last answer, so that the outage limit
        means what it says, no broker answered for that long, and not 10-13 s more."""
        now = self._clock()
        if reachable:
            if self._broker_down_since is not None:
                self._broker_back_at = now
                if self._outage_logged:
                    log.info("broker_reachable", down_s=round(now - self._broker_down_since, 1))
            self._broker_down_since = None
            self._outage_logged = False
            return
        began = now - max(0.0, silent_s)
        if self._broker_down_since is None or began < self._broker_down_since:
            self._broker_down_since = began
        if not self._outage_logged and now - self._broker_down_since >= OUTAGE_LOG_AFTER_S:
            # Said once per outage: /readyz fails meanwhile, /healthz once it outlasts broker_outage_s
            self._outage_logged = True
            log.warning("broker_unreachable", down_s=round(now - self._broker_down_since, 1),
                        outage_limit_s=self.broker_outage_s)

    def broker_down_for(self) -> float:
        """Seconds the broker has been unreachable without a break (0 while it answers)."""
        since = self._broker_down_since
        return 0.0 if since is None else self._clock() - since

    def in_outage(self) -> bool:
        """Whether the broker has been unreachable for OUTAGE_LOG_AFTER_S or more: an outage as the log
        reports it (``broker_unreachable``), not a flap while a consumer finds its coordinator."""
        return self.broker_down_for() >= OUTAGE_LOG_AFTER_S

    def broker_away_within(self, seconds: float) -> bool:
        """Whether the broker is unreachable now or was within the last ``seconds``: a call that
        waited that long for it may have failed because of the outage, even if it is back."""
        back = self._broker_back_at
        return self._broker_down_since is not None or (back is not None and self._clock() - back <= seconds)

    def commit_result(self, ok: bool, broker_unreachable: bool = False) -> None:
        self.commit_failing = not ok
        if ok or broker_unreachable:
            self.broker_seen(ok)

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        dead = [t.name for t in self._threads if not t.is_alive()]
        stalled_s = self._clock() - self._loop_at
        down_s = self.broker_down_for()
        model_s = self.model_busy_for()
        model_ok = not self.model_stall_s or model_s <= self.model_stall_s
        ok = not dead and stalled_s < LOOP_STALL_S and down_s <= self.broker_outage_s and model_ok
        return ok, {
            "ok": ok, "dead_threads": dead, "loop_idle_s": round(stalled_s, 3), "broker_down_s": round(down_s, 1),
            "broker_outage_limit_s": self.broker_outage_s, "model_call_s": round(model_s, 3),
            "model_stall_limit_s": self.model_stall_s,
        }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        broker_ok = self._broker_down_since is None
        ok = self.model_ready and self.assigned > 0 and broker_ok and not self.commit_failing
        return ok, {
            "ok": ok, "model_ready": self.model_ready, "assigned_partitions": self.assigned,
            "broker_reachable": broker_ok, "commits_failing": self.commit_failing,
        }


@dataclass(frozen=True)
class Endpoints:
    """What the three paths answer: a worker's own Metrics and Health, or a pod's aggregate of its
    processes (worker/procs/podview.py)."""

    metrics: Callable[[], bytes]  # the Prometheus text exposition
    liveness: Callable[[], tuple[bool, dict[str, Any]]]  # /healthz: (ok, JSON body)
    readiness: Callable[[], tuple[bool, dict[str, Any]]]  # /readyz: (ok, JSON body)


class TelemetryServer:
    """Serves /metrics, /healthz and /readyz on one port from a daemon thread."""

    def __init__(self, metrics: Metrics, health: Health, port: int, host: str = "0.0.0.0") -> None:
        # tagstream_ready is read from the same Health object as /readyz, at scrape time.
        metrics.ready.set_function(lambda: float(health.readiness()[0]))
        self._serve(
            Endpoints(lambda: generate_latest(metrics.registry), health.liveness, health.readiness), port, host
        )

    @classmethod
    def serving(cls, endpoints: Endpoints, port: int, host: str = "0.0.0.0") -> TelemetryServer:
        """A server of any ``Endpoints`` (binds at once; OSError when the port is taken)."""
        server = cls.__new__(cls)
        server._serve(endpoints, port, host)
        return server

    def _serve(self, endpoints: Endpoints, port: int, host: str) -> None:
        self._server = ThreadingHTTPServer((host, port), _make_handler(endpoints))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="telemetry-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _make_handler(endpoints: Endpoints) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, endpoints.metrics(), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, body = endpoints.liveness() if path == "/healthz" else endpoints.readiness()
                self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
            else:
                self._send(404, b'{"error": "try /metrics, /healthz or /readyz"}', "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
            return

    return Handler


def configure_logging(level: str = "INFO", fmt: str = "json", context: dict[str, Any] | None = None) -> None:
    """structlog for our events, stdlib logging (kafka-python, librdkafka) routed through the same
    renderer; above DEBUG, a Kafka client's repeated lines become one line with a count per
    window (worker/log_repeats.py).

    ``context``: keys added to every line of this process, every thread's (e.g. which process of
    a pod wrote it: ``{"process": "feeder-1"}``)."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    fixed = dict(context or {})

    def add_context(_logger: Any, _name: str, event: Any) -> Any:
        for key, value in fixed.items():
            event.setdefault(key, value)
        return event

    shared: list[Any] = [
        *([add_context] if fixed else []),
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        # A Kafka client's count line (worker/log_repeats.py) carries its count as fields.
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(allow=REPEAT_FIELDS)],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    if logging.getLevelName(str(level).upper()) != logging.DEBUG:  # at DEBUG, every line of the clients too
        repeats = RepeatFilter(handler.handle)
        handler.addFilter(repeats)
        atexit.register(repeats.flush)  # runs before logging's own shutdown (atexit is LIFO)
    root = logging.getLogger()
    for old in root.handlers:  # configured again (tests): what a replaced handler held goes with it
        for f in old.filters:
            if isinstance(f, RepeatFilter):
                atexit.unregister(f.flush)
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs every reconnect and rebalance step at INFO: keep its warnings only.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def get_logger(name: str = "tagstream.worker") -> Any:
    return structlog.get_logger(name)
