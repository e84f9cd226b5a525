"""The metrics, /healthz and /readyz endpoints."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from structlog.testing import capture_logs

from worker.telemetry import Health, Metrics, TelemetryServer, observe_many


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_endpoints_report_metrics_health_and_readiness():
    """/metrics serves Prometheus text; /healthz and /readyz answer 200 or 503 with the reason."""
    now = [0.0]
    metrics, health = Metrics(), Health(clock=lambda: now[0])
    metrics.events_in.labels(topic="sms").inc(3)
    metrics.set_model("m", "v1")
    server = TelemetryServer(metrics, health, port=0, host="127.0.0.1")
    server.start()
    try:
        status, body = get(server.port, "/metrics")
        assert status == 200
        assert b'tagstream_events_in_total{topic="sms"} 3.0' in body
        assert b'tagstream_model_info{name="m",version="v1"} 1.0' in body
        assert b"tagstream_consumer_lag" in body

        status, body = get(server.port, "/readyz")
        assert status == 503 and json.loads(body)["model_ready"] is False
        health.model_ready, health.assigned = True, 3
        status, body = get(server.port, "/readyz")
        assert status == 200 and json.loads(body)["assigned_partitions"] == 3

        worker_thread = threading.Thread(target=lambda: None)
        worker_thread.start()
        worker_thread.join()
        assert get(server.port, "/healthz")[0] == 200
        now[0] = 31.0  # the consumer loop has not turned for 31 s
        status, body = get(server.port, "/healthz")
        assert status == 503 and json.loads(body)["loop_idle_s"] == 31.0
        health.loop_turned()
        health.watch(worker_thread)  # a stage thread that has died
        status, body = get(server.port, "/healthz")
        assert status == 503 and json.loads(body)["dead_threads"] == [worker_thread.name]
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.stop()


def test_model_info_follows_swaps():
    """model_info shows only the serving version after a swap."""
    metrics = Metrics()
    metrics.set_model("m", "v1")
    metrics.set_model("m", "v2")
    assert metrics.value("tagstream_model_info", {"name": "m", "version": "v2"}) == 1
    assert metrics.registry.get_sample_value("tagstream_model_info", {"name": "m", "version": "v1"}) is None


def test_readiness_drops_while_the_broker_is_away_or_commits_fail():
    """/readyz turns false while the broker is unreachable or the last commit failed, and back once it succeeds."""
    health = Health(clock=lambda: 0.0)
    health.model_ready, health.assigned = True, 2
    assert health.readiness()[0]
    health.broker_seen(False)
    ok, body = health.readiness()
    assert not ok and body["broker_reachable"] is False
    health.broker_seen(True)
    health.commit_result(ok=False)
    ok, body = health.readiness()
    assert not ok and body["commits_failing"] is True and body["broker_reachable"] is True
    health.commit_result(ok=True)
    assert health.readiness()[0]


def test_liveness_fails_once_the_outage_outlasts_its_limit():
    """A broker away for longer than broker_outage_s fails /healthz; a reconnect before that does not."""
    now = [0.0]
    health = Health(clock=lambda: now[0], broker_outage_s=60)
    health.broker_seen(False)
    now[0] = 59.0
    health.loop_turned()
    assert health.liveness()[0] and health.broker_down_for() == 59.0
    health.broker_seen(False)  # still away: the outage is counted from its start
    now[0] = 61.0
    health.loop_turned()
    ok, body = health.liveness()
    assert not ok and body["broker_down_s"] == 61.0
    health.broker_seen(True)
    assert health.liveness()[0] and health.broker_down_for() == 0.0


def test_an_outage_is_logged_once_it_lasts_and_once_when_it_ends_with_its_length():
    """Readiness follows the broker silently each loop turn; the log says when an outage has lasted
    OUTAGE_LOG_AFTER_S and, then, how long it was away. A coordinator found a moment late is no outage."""
    now = [0.0]
    health = Health(clock=lambda: now[0], broker_outage_s=60)
    with capture_logs() as logs:
        health.broker_seen(False)  # a consumer at start, its coordinator not found yet
        now[0] = 0.1
        health.broker_seen(True)
        assert logs == []
        for now[0] in (1.0, 2.0, 13.5):
            health.broker_seen(False)
        now[0] = 14.0
        health.broker_seen(True)
        health.broker_seen(True)
    assert [(e["event"], e["log_level"]) for e in logs] == [("broker_unreachable", "warning"), ("broker_reachable", "info")]
    assert logs[0]["outage_limit_s"] == 60 and logs[0]["down_s"] == 12.5 and logs[1]["down_s"] == 13.0


def test_an_outage_is_on_once_the_broker_has_been_away_as_long_as_the_log_waits():
    """in_outage (what a stop asks before waiting on the broker) holds from OUTAGE_LOG_AFTER_S on, not in a flap."""
    now = [0.0]
    health = Health(clock=lambda: now[0], broker_outage_s=60)
    health.broker_seen(False)
    now[0] = 1.9
    assert not health.in_outage()
    now[0] = 2.0
    assert health.in_outage()
    health.broker_seen(True)
    assert not health.in_outage()


def test_a_stop_gives_the_consumers_close_the_drains_remainder_only_while_the_broker_answered_at_the_last_look():
    """The close's budget and whether it may leave the group: the drain's remainder while the broker answers;
    CLOSE_BROKER_AWAY_S (and leaving) when the last look found it away, not yet an outage (a broker that
    has just stopped, or a moving coordinator); CLOSE_UNREACHABLE_S and no leaving in an outage."""
    from worker.app import CLOSE_BROKER_AWAY_S, CLOSE_UNREACHABLE_S, consumer_close_budget

    now = [0.0]
    health = Health(clock=lambda: now[0], broker_outage_s=60)
    assert consumer_close_budget(health, 12.0) == (12.0, True)
    assert consumer_close_budget(health, 0.1) == (0.5, True)
    health.broker_seen(False)
    now[0] = 0.5
    assert consumer_close_budget(health, 12.0) == (CLOSE_BROKER_AWAY_S, True)
    assert consumer_close_budget(health, 1.0) == (1.0, True)
    now[0] = 2.0
    assert consumer_close_budget(health, 12.0) == (CLOSE_UNREACHABLE_S, False)
    health.broker_seen(True)
    assert consumer_close_budget(health, 12.0) == (12.0, True)


def test_a_commit_of_nothing_says_nothing_of_the_broker_and_one_of_offsets_ends_an_outage():
    """An exactly-once worker's final transaction is empty when every input was committed before: its commit asks
    no broker. Taken for an answer, it ended the outage an exit 4 was stopping for (broker_reachable, down_s
    15.1, in bench/outsider/frozen_exit.sh), and the consumer's close then waited to leave the group."""
    from worker.app import Worker
    from worker.kafka.base import TopicPartition

    now = [100.0]
    worker = Worker.__new__(Worker)  # only what _on_commit uses
    worker.metrics, worker.health = Metrics(), Health(clock=lambda: now[0], broker_outage_s=15)
    worker.health.broker_seen(False, silent_s=15.1)
    worker._on_commit({}, None)
    assert worker.health.in_outage() and worker.health.broker_down_for() == pytest.approx(15.1)
    assert worker.metrics.value("tagstream_commits_total", {"result": "ok"}) == 1
    worker._on_commit({TopicPartition("in", 0): 42}, None)
    assert worker.health.broker_down_for() == 0.0


def test_an_outage_told_by_the_brokers_silence_is_dated_from_their_last_answer():
    """A frozen broker is told only once it has answered nothing for SILENT_BROKER_S: the outage (its log
    line, in_outage, the outage limit of /healthz and exit 4) counts from that last answer, not from when
    it was told, and a later, shorter silence does not move its start."""
    now = [100.0]
    health = Health(clock=lambda: now[0], broker_outage_s=15)
    with capture_logs() as logs:
        health.broker_seen(False, silent_s=10.5)  # told at 100 s: nothing heard since 89.5 s
    assert health.broker_down_for() == 10.5 and health.in_outage()
    assert logs[0]["event"] == "broker_unreachable" and logs[0]["down_s"] == 10.5
    now[0] = 104.0
    health.broker_seen(False, silent_s=3.0)
    health.loop_turned()
    assert health.broker_down_for() == 14.5 and health.liveness()[0]
    now[0] = 105.0
    health.broker_seen(False)
    health.loop_turned()
    ok, body = health.liveness()
    assert not ok and body["broker_down_s"] == 15.5  # 15 s after the last answer, not 25 s
    health.broker_seen(True)
    health.broker_seen(False)  # a new outage, told without a silence: dated now
    assert health.broker_down_for() == 0.0


def test_liveness_fails_while_a_model_call_runs_past_its_limit_and_recovers_when_it_returns():
    """A model call running longer than model_stall_s fails /healthz and says how long; the longest of
    several threads' calls counts; once it returns the worker is live again; 0 means no limit."""
    now = [0.0]
    health = Health(clock=lambda: now[0], model_stall_s=30)
    other_started = threading.Event()
    other_may_end = threading.Event()

    def other_call():
        with health.model_call():
            other_started.set()
            other_may_end.wait(10)

    with health.model_call():
        now[0] = 10.0
        other = threading.Thread(target=other_call)
        other.start()
        other_started.wait(10)
        now[0] = 30.0
        health.loop_turned()
        assert health.liveness()[0] and health.model_busy_for() == 30.0 and not health.model_stalled()
        now[0] = 31.0
        health.loop_turned()
        ok, body = health.liveness()
        assert not ok and health.model_stalled()
        assert body["model_call_s"] == 31.0 and body["model_stall_limit_s"] == 30
    assert health.model_busy_for() == 21.0 and health.liveness()[0]  # the other call began at 10
    other_may_end.set()
    other.join(10)
    assert health.model_busy_for() == 0.0

    unlimited = Health(clock=lambda: now[0])
    with unlimited.model_call():
        now[0] = 10_000.0
        unlimited.loop_turned()
        assert unlimited.liveness()[0] and not unlimited.model_stalled()


def test_a_commit_timeout_counts_as_the_broker_away_but_a_rebalance_does_not():
    """Commit results feed broker health only when they say something about the broker."""
    health = Health(clock=lambda: 0.0)
    health.commit_result(ok=False, broker_unreachable=False)  # rejected by a rebalance
    assert health.broker_down_for() == 0.0 and health.commit_failing
    health.commit_result(ok=False, broker_unreachable=True)
    assert health.readiness()[1]["broker_reachable"] is False


def test_ready_gauge_follows_readiness():
    """tagstream_ready is 1 exactly while /readyz would answer 200 (model warmed up and partitions held)."""
    metrics, health = Metrics(), Health()
    server = TelemetryServer(metrics, health, port=0, host="127.0.0.1")
    server.start()
    try:
        assert metrics.value("tagstream_ready") == 0
        health.model_ready = True
        assert metrics.value("tagstream_ready") == 0  # no partitions yet
        health.assigned = 2
        assert metrics.value("tagstream_ready") == 1
        health.assigned = 0
        assert metrics.value("tagstream_ready") == 0
    finally:
        server.stop()


def test_the_broker_counts_as_away_for_a_while_after_an_outage_ends():
    """broker_away_within: during an outage, and for the given seconds after it ended; never before one."""
    now = [0.0]
    health = Health(clock=lambda: now[0])
    assert not health.broker_away_within(20)
    health.broker_seen(True)
    assert not health.broker_away_within(20)  # reachable all along: no outage ended
    health.broker_seen(False)
    now[0] = 5.0
    assert health.broker_away_within(20)
    health.broker_seen(True)  # back at 5 s
    now[0] = 25.0
    assert health.broker_away_within(20) and health.broker_down_for() == 0.0
    now[0] = 25.5
    assert not health.broker_away_within(20)


def test_observing_many_values_at_once_gives_the_histogram_observe_gives():
    """observe_many leaves every bucket, the count and the sum of a latency histogram where
    observe() called per value leaves them, values on bucket bounds and past the last bound included."""
    one, many = Metrics(), Metrics()
    bounds = one.end_to_end_latency._upper_bounds
    values = [0.0, *bounds[:-1], *(b * 1.5 for b in bounds[:-1]), 1e9, 0.003, 0.003, 2.5]
    for v in values:
        one.end_to_end_latency.observe(v)
    observe_many(many.end_to_end_latency, values)
    observe_many(many.end_to_end_latency, [])

    def samples(metrics: Metrics) -> dict:
        return {(s.name, tuple(s.labels.items())): s.value for m in metrics.end_to_end_latency.collect()
                for s in m.samples if not s.name.endswith("_created")}

    assert samples(many) == pytest.approx(samples(one))  # the sum adds the same values in another order
    assert one.value("tagstream_end_to_end_latency_seconds_count") == len(values)
