"""A Kafka client's repeated log lines: one line, then one count line per window (worker/log_repeats.py)."""

from __future__ import annotations

import atexit
import json
import logging

import pytest
from worker_fakes import Clock

from worker.log_repeats import RepeatFilter
from worker.telemetry import configure_logging, get_logger


class Captured:
    """A handler's view: what passed the filter, count lines included, in order."""

    def __init__(self, window_s: float = 30.0) -> None:
        self.clock = Clock()
        self.lines: list[logging.LogRecord] = []
        self.filter = RepeatFilter(self._handle, window_s=window_s, clock=self.clock)

    def _handle(self, record: logging.LogRecord) -> None:
        if self.filter.filter(record):
            self.lines.append(record)

    def log(self, name: str, message: str, *args: object, level: int = logging.ERROR) -> None:
        self._handle(logging.LogRecord(name, level, __file__, 1, message, args, None))

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.lines]


def fail(port: int, after_ms: int, client: str = "consumer-2") -> tuple[str, str, str, str]:
    # librdkafka's logger call: a format string and its arguments
    return ("%s [%s] %s", "FAIL", f"tagstream-vm-41#{client}",
            f"127.0.0.1:{port}/bootstrap: Connect failed: Connection refused (after {after_ms}ms in state CONNECT)")


def test_a_flood_of_alike_client_lines_is_one_line_then_one_count_line_per_window() -> None:
    c = Captured()
    for i in range(100):  # 20 a second for 5 s, as librdkafka's reconnects to an absent broker
        c.log("kafka.librdkafka", *fail(9092, i))
        c.clock.now += 0.05
    assert c.messages() == ["FAIL [tagstream-vm-41#consumer-2] 127.0.0.1:9092/bootstrap: Connect failed:"
                            " Connection refused (after 0ms in state CONNECT)"]  # the first
    assert c.filter.sweep() == 0  # the window is still open

    c.clock.now = 1000.0 + 30.0
    assert c.filter.sweep() == 1
    count = c.lines[-1]
    assert count.repeated == 99  # type: ignore[attr-defined]
    assert count.repeated_over_s == 30.0  # type: ignore[attr-defined]
    assert count.getMessage().endswith("(after 99ms in state CONNECT)")  # the latest held back
    assert count.levelno == logging.ERROR and count.name == "kafka.librdkafka"
    assert c.filter.sweep() == 0  # counted once


def test_lines_that_differ_beyond_their_digits_are_kept_apart() -> None:
    c = Captured()
    c.log("kafka.librdkafka", *fail(9092, 0, "consumer-2"))
    c.log("kafka.librdkafka", *fail(9092, 0, "producer-1"))  # another client
    c.log("kafka.librdkafka", *fail(9092, 0, "consumer-2"), level=logging.WARNING)  # another level
    c.log("kafka.net.connection", *fail(9092, 0, "consumer-2"))  # another logger
    c.log("kafka.librdkafka", *fail(9093, 7, "consumer-2"))  # digits only: alike
    assert len(c.lines) == 4


def test_only_the_kafka_clients_loggers_are_held_back() -> None:
    c = Captured()
    for _ in range(3):
        c.log("tagstream.worker", "broker_unreachable")
        c.log("kafkaesque", "not a client of ours")
        c.log("kafka", "kafka-python's root logger")
    assert [r.name for r in c.lines] == ["tagstream.worker", "kafkaesque", "kafka"] + ["tagstream.worker", "kafkaesque"] * 2


def test_a_kind_that_recurs_after_a_quiet_window_passes_at_once_without_a_count() -> None:
    c = Captured()
    c.log("kafka.cluster", "No node available for metadata refresh - backoff/retry")
    c.clock.now += 31
    c.log("kafka.cluster", "No node available for metadata refresh - backoff/retry")
    assert len(c.lines) == 2
    assert not hasattr(c.lines[1], "repeated")
    assert c.filter.sweep() == 0


def test_the_first_line_after_a_window_comes_right_behind_that_windows_count() -> None:
    c = Captured()
    for i in range(5):
        c.log("kafka.librdkafka", *fail(9092, i))
    c.clock.now += 40  # no sweep ran in between
    c.log("kafka.librdkafka", *fail(9092, 9))
    assert [getattr(r, "repeated", None) for r in c.lines] == [None, 4, None]
    assert c.lines[-1].getMessage().endswith("(after 9ms in state CONNECT)")


def test_at_exit_every_window_still_holding_lines_writes_its_count() -> None:
    c = Captured()
    for i in range(3):
        c.log("kafka.librdkafka", *fail(9092, i))
    c.log("kafka.cluster", "No node available for metadata refresh - backoff/retry")  # held nothing
    c.clock.now += 8  # the worker exits 4 well inside the window
    assert c.filter.sweep() == 0
    assert c.filter.flush() == 1
    assert [getattr(r, "repeated", None) for r in c.lines] == [None, None, 2]
    assert c.lines[-1].repeated_over_s == 8.0  # type: ignore[attr-defined]


@pytest.fixture
def root_logging():
    """configure_logging replaces the root handler: put the test runner's back afterwards."""
    root, kafka = logging.getLogger(), logging.getLogger("kafka")
    saved = (root.handlers[:], root.level, kafka.level)
    yield
    for f in root.handlers[0].filters:  # the captured stream is closed after the test: no count lines at exit
        if isinstance(f, RepeatFilter):
            atexit.unregister(f.flush)
    root.handlers[:], _, _ = saved
    root.setLevel(saved[1])
    kafka.setLevel(saved[2])


@pytest.mark.parametrize(("level", "expected"), [("INFO", 1), ("DEBUG", 50)])
def test_the_worker_logs_a_client_flood_as_one_line_except_at_debug(level, expected, root_logging, capsys) -> None:
    configure_logging(level, "json")
    client = logging.getLogger("kafka.librdkafka")
    for i in range(50):
        client.error(*fail(9092, i))
    get_logger("tagstream.worker").warning("broker_unreachable", down_s=3)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert sum(line["logger"] == "kafka.librdkafka" for line in lines) == expected
    assert lines[-1]["event"] == "broker_unreachable"


def test_a_count_line_carries_its_count_as_json_fields(root_logging, capsys) -> None:
    configure_logging("INFO", "json")
    client = logging.getLogger("kafka.librdkafka")
    for i in range(3):
        client.error(*fail(9092, i))
    (repeat_filter,) = logging.getLogger().handlers[0].filters
    assert isinstance(repeat_filter, RepeatFilter)
    repeat_filter.window_s = 0.0  # the window ends now
    assert repeat_filter.sweep() == 1
    first, count = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert "repeated" not in first
    assert count["repeated"] == 2 and count["repeated_over_s"] >= 0
    assert count["event"].endswith("(after 2ms in state CONNECT)")
