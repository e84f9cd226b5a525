"""Health that tells the truth (issue 10, finding 2): without a broker the worker is not ready, then
not live, then it exits non-zero; a drain whose final commit fails exits non-zero too."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from worker_support import (
    START_TIMEOUT_S,
    committed_total,
    fixture_texts,
    http_status,
    log_events,
    make_topic,
    produce_events,
    read_records,
    spawn,
    wait_until,
    worker_env,
)

from worker.kafka.base import SILENT_BROKER_S

pytestmark = pytest.mark.integration

OUTAGE_S = 8  # TAGSTREAM_BROKER_OUTAGE_S of the frozen-exit test: below SILENT_BROKER_S, so told already past it


def readiness_body(port: int) -> dict:
    """What /readyz says, whatever its status."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def test_readiness_drops_while_the_broker_is_down_and_returns_with_it(
    restartable_kafka, start_worker, tiny_bundle
):
    """Broker halted: /readyz 503 (broker unreachable), /healthz still 200; broker back: ready, and work goes on."""
    broker = restartable_kafka()
    topic = make_topic("health-down", bootstrap_servers=broker.bootstrap_servers)
    produce_events(broker.bootstrap_servers, topic, fixture_texts(20, seed=1), prefix="a")
    worker = start_worker(topic, tiny_bundle, bootstrap_servers=broker.bootstrap_servers)
    port = worker.metrics_port
    wait_until(lambda: http_status(port, "/readyz") == 200, 60, "the worker to be ready")

    broker.halt()
    wait_until(lambda: http_status(port, "/readyz") == 503, 60, "/readyz to turn 503 without a broker")
    assert readiness_body(port)["broker_reachable"] is False
    assert http_status(port, "/healthz") == 200  # within TAGSTREAM_BROKER_OUTAGE_S: waited out, not restarted

    broker.start()
    wait_until(lambda: http_status(port, "/readyz") == 200, 120, "/readyz to recover with the broker")
    produce_events(broker.bootstrap_servers, topic, fixture_texts(20, seed=2), prefix="b")
    # The work goes on: results for the inputs sent after the restart are acknowledged.
    wait_until(lambda: worker.metrics.value("tagstream_events_out_total", {"topic": topic}) >= 40, 120,
               "results for the inputs sent after the restart")
    assert worker.fatal is None


@pytest.mark.full_size_only("confluent")  # make test: kafka-python, whose check reads the client's connections
def test_readiness_drops_while_the_broker_is_frozen_and_returns_when_it_answers(
    restartable_kafka, start_worker, tiny_bundle
):
    """Broker frozen (SIGSTOP: its connections stay open, nothing comes back): /readyz turns 503 once the
    brokers have been silent SILENT_BROKER_S, long before any request times out and drops a connection
    (kafka-python 30 s, librdkafka 60 s); thawed, the worker is ready again and the work goes on."""
    broker = restartable_kafka()
    topic = make_topic("health-frozen", bootstrap_servers=broker.bootstrap_servers)
    produce_events(broker.bootstrap_servers, topic, fixture_texts(20, seed=3), prefix="a")
    worker = start_worker(topic, tiny_bundle, bootstrap_servers=broker.bootstrap_servers)
    port = worker.metrics_port
    wait_until(lambda: worker.metrics.value("tagstream_events_out_total", {"topic": topic}) >= 20, 60,
               "results for the inputs sent first")
    wait_until(lambda: http_status(port, "/readyz") == 200, 30, "the worker to be ready")

    with broker.frozen():
        wait_until(lambda: http_status(port, "/readyz") == 503, SILENT_BROKER_S + 8, "/readyz to turn 503 with the broker silent")
        assert readiness_body(port)["broker_reachable"] is False
        assert http_status(port, "/healthz") == 200

    wait_until(lambda: http_status(port, "/readyz") == 200, 60, "/readyz to recover once the broker answers")
    produce_events(broker.bootstrap_servers, topic, fixture_texts(20, seed=4), prefix="b")
    wait_until(lambda: worker.metrics.value("tagstream_events_out_total", {"topic": topic}) >= 40, 120,
               "results for the inputs sent after the thaw")
    assert worker.fatal is None


# confluent: its librdkafka logs a refused connection every ~50 ms, the flood worker/log_repeats.py holds
# back (kafka-python's worker process meets a broker gone for good in tests/faults/test_broker_faults.py).
@pytest.mark.parametrize("kafka_client", ["confluent"], indirect=True)
def test_a_broker_gone_for_good_fails_readiness_then_liveness_then_exits_4(
    restartable_kafka, new_group, tiny_bundle, tmp_path, kafka_client
):
    """Broker stopped for good: /readyz goes 503, then /healthz past TAGSTREAM_BROKER_OUTAGE_S, then exit 4 with the
    reason; the client's repeated complaints meanwhile are one line per kind and a count, not one per attempt."""
    broker = restartable_kafka()
    topic = make_topic("health-gone", bootstrap_servers=broker.bootstrap_servers)
    env = worker_env(broker.bootstrap_servers, topic, tiny_bundle, new_group())
    port = 0
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.update(TAGSTREAM_METRICS_PORT=str(port), TAGSTREAM_BROKER_OUTAGE_S="8")
    log = tmp_path / "worker.log"
    proc = spawn(env, log)
    try:
        wait_until(lambda: http_status(port, "/readyz") == 200, START_TIMEOUT_S, "the worker to be ready")
        broker.halt()
        gone_at = time.monotonic()
        wait_until(lambda: http_status(port, "/readyz") == 503, 60, "/readyz to turn 503")
        not_ready_s = time.monotonic() - gone_at
        assert http_status(port, "/healthz") == 200  # not yet past the outage limit
        wait_until(lambda: http_status(port, "/healthz") in (503, None), 60, "/healthz to turn 503")
        not_live_s = time.monotonic() - gone_at
        code = proc.wait(90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not_ready_s < not_live_s
    assert code == 4, log.read_text()[-2000:]
    lines = log.read_text().splitlines()
    assert any("TAGSTREAM_BROKER_OUTAGE_S" in line and "no broker has answered" in line for line in lines)
    client_lines = [json.loads(line) for line in lines if line.startswith("{") and '"logger": "kafka' in line]
    kinds = Counter((e["logger"], e["level"], re.sub(r"\d+", "#", e["event"])) for e in client_lines)
    assert kinds and max(kinds.values()) <= 2, kinds.most_common(3)  # the first, then a count (30 s or exit)
    # How often librdkafka retries is its own business (its consumer retried every ~50 ms in one run and
    # a handful of times in 8 s in another): what is asserted is that a kind that came 3 times or more
    # (it would have written 3 lines) wrote at most 2 (above), the second with the count of those held back:
    # a kind's attempts are only known from those counts (a count line repeats the last line it held back).
    attempts: Counter[tuple[str, str, str]] = Counter()
    for e in client_lines:
        attempts[(e["logger"], e["level"], re.sub(r"\d+", "#", e["event"]))] += e.get("repeated", 1)
    flooded = [kind for kind, n in attempts.items() if n >= 3]
    assert flooded, f"no client complaint counted 3 times in {not_live_s:.0f} s without a broker: {attempts}"


# make test: kafka-python with static membership (Kubernetes' default), whose exit waited longest on a frozen broker
@pytest.mark.full_size_only(*(
    f"{client}-{membership}-{guarantee}" for client in ("kafka-python", "confluent") for membership in ("dynamic", "static")
    for guarantee in ("at_least_once", "exactly_once") if (client, membership, guarantee) != ("kafka-python", "static", "at_least_once")
))
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
@pytest.mark.parametrize("membership", ["dynamic", "static"])
@pytest.mark.parametrize("kafka_client", ["kafka-python", "confluent"], indirect=True)
def test_a_worker_whose_broker_stays_frozen_exits_4_without_waiting_out_its_drain_on_requests_nobody_needs(
    restartable_kafka, new_group, tiny_bundle, tmp_path, kafka_client, membership, guarantee
):
    """Broker frozen past TAGSTREAM_BROKER_OUTAGE_S with every result acknowledged: exit 4, and closing the producer
    and the consumer takes a moment each, not the drain's remainder (kafka-python's producer waited for a metadata
    request in flight to the frozen broker: 15 s of a 20 s drain; each client's consumer waited ~5 s for answers
    to its LeaveGroup and heartbeat, and a static member's removal 15 s for an admin client that never connected).
    Exactly-once: the final transaction, empty, had been taken for the broker's answer and ended the outage."""
    broker = restartable_kafka()
    topic = make_topic("health-frozen-exit", bootstrap_servers=broker.bootstrap_servers)
    produce_events(broker.bootstrap_servers, topic, fixture_texts(20, seed=5))
    group = new_group()
    env = worker_env(broker.bootstrap_servers, topic, tiny_bundle, group)
    env.update(TAGSTREAM_BROKER_OUTAGE_S=str(OUTAGE_S), TAGSTREAM_DRAIN_TIMEOUT_S="30", TAGSTREAM_PROCESSING_GUARANTEE=guarantee)
    if membership == "static":
        env["TAGSTREAM_GROUP_INSTANCE_ID"] = f"{group}-0"  # with leave_group_on_stop (default): removed at exit
    log = tmp_path / "worker.log"
    proc = spawn(env, log)
    try:
        read_records(broker.bootstrap_servers, f"{topic}.labels", expected=20, timeout_s=START_TIMEOUT_S, quiet_s=0)
        wait_until(lambda: committed_total(broker.bootstrap_servers, group, topic) == 20, 30,
                   "every input committed")  # then nothing is left for the drain but the clients' own requests
        with broker.frozen():
            frozen_at = time.monotonic()
            code = proc.wait(120)
            exit_s = time.monotonic() - frozen_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 4, log.read_text()[-2000:]
    assert log_events(log, "fatal")[-1]["kind"] == "broker_outage"
    # The outage is dated from the broker's last answer, not from when its silence was told (SILENT_BROKER_S
    # later): the exit came 8 s past the 8 s limit before (bench/outsider/frozen_exit.sh: 28.7 s for 15 s).
    assert log_events(log, "broker_unreachable")[0]["down_s"] >= SILENT_BROKER_S
    assert exit_s < max(OUTAGE_S, SILENT_BROKER_S) + 6, exit_s
    assert log_events(log, "drained")[-1]["unacknowledged_left_for_redelivery"] == 0
    closed = log_events(log, "producer_closed")[-1]
    assert closed["seconds"] < 3, closed
    consumer = log_events(log, "consumer_closed")[-1]
    assert consumer["seconds"] < 3 and consumer.get("broker_unreachable"), consumer
    assert not log_events(log, "consumer_close_failed")  # no answer was expected: not a warning


# make test: kafka-python; confluent in make faults (the same admin client removes its static member)
@pytest.mark.full_size_only("confluent")
@pytest.mark.parametrize("kafka_client", ["kafka-python", "confluent"], indirect=True)
def test_a_static_member_stopped_as_its_broker_stops_exits_without_waiting_to_leave_the_group(
    restartable_kafka, new_group, tiny_bundle, tmp_path, kafka_client
):
    """SIGTERM half a second after the broker stopped (a node drained with the broker and the worker on it), every
    result committed: exit 0 within seconds. The static member's removal had waited 15 s for an admin client to
    bootstrap from the stopped broker (consumer_closed 15.0 s kafka-python, 15.2 s confluent), before any outage
    was counted; now the close gets CLOSE_BROKER_AWAY_S when the last look found the broker away, and the
    removal LEAVE_CONNECT_S to connect in any case."""
    broker = restartable_kafka()
    topic = make_topic("health-stop-away", bootstrap_servers=broker.bootstrap_servers)
    produce_events(broker.bootstrap_servers, topic, fixture_texts(20, seed=6))
    group = new_group()
    env = worker_env(broker.bootstrap_servers, topic, tiny_bundle, group)
    env.update(TAGSTREAM_GROUP_INSTANCE_ID=f"{group}-0", TAGSTREAM_DRAIN_TIMEOUT_S="30")
    log = tmp_path / "worker.log"
    proc = spawn(env, log)
    try:
        read_records(broker.bootstrap_servers, f"{topic}.labels", expected=20, timeout_s=START_TIMEOUT_S, quiet_s=0)
        wait_until(lambda: committed_total(broker.bootstrap_servers, group, topic) == 20, 30, "every input committed")
        broker.halt()
        time.sleep(0.5)
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        stop_s = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, log.read_text()[-2000:]
    closed = log_events(log, "consumer_closed")[-1]
    assert closed["seconds"] < 4, closed
    assert stop_s < 10, stop_s


def test_sigterm_when_the_final_commit_fails_exits_non_zero(restartable_kafka, new_group, tiny_bundle, tmp_path):
    """SIGTERM while the broker is down and results wait to be committed: exit 4 and a line saying why."""
    broker = restartable_kafka()
    topic = make_topic("health-final", bootstrap_servers=broker.bootstrap_servers)
    produce_events(broker.bootstrap_servers, topic, fixture_texts(50, seed=3))
    env = worker_env(broker.bootstrap_servers, topic, tiny_bundle, new_group())
    env.update(TAGSTREAM_COMMIT_INTERVAL_MS="600000", TAGSTREAM_DRAIN_TIMEOUT_S="8")  # results wait uncommitted
    log = tmp_path / "worker.log"
    proc = spawn(env, log)
    try:
        read_records(broker.bootstrap_servers, f"{topic}.labels", expected=50, quiet_s=0.5)
        broker.halt()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 4, text[-2000:]
    assert "final_commit_failed" in text and "duplicates, nothing lost" in text
