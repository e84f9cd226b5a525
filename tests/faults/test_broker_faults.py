"""Broker faults while events stream (issue 10, point 7): a restart that keeps the broker's data (and a
worker stopped right after one), and a broker gone for good."""

from __future__ import annotations

import time

import pytest
from harness import SIZES, START_TIMEOUT_S, Outcomes, Row, Stream, WorkerProcess, clients, wait_for
from worker_support import DRAIN_TIMEOUT_S, make_topic, worker_env

RESULTS_TIMEOUT_S = 240


# (guarantee, client): both clients at full size; at the reduced size one each (harness.clients)
RESTART_VARIANTS = [
    *(pytest.param("at_least_once", c, id=f"at_least_once-{c}") for c in clients("kafka-python")),
    *(pytest.param("exactly_once", c, id=f"exactly_once-{c}") for c in clients("confluent")),
]


@pytest.mark.parametrize(("guarantee", "kafka_client"), RESTART_VARIANTS, indirect=["kafka_client"])
def test_broker_restart_mid_stream_keeping_its_data(
    restartable_kafka, new_group, tiny_bundle, tmp_path, fault_report, guarantee, kafka_client
):
    """The broker restarts (data kept) in the middle of a stream: 0 missing, and the worker carries on by itself."""
    began = time.monotonic()
    broker = restartable_kafka()
    bootstrap = broker.bootstrap_servers
    topic = make_topic(f"fault-restart-{guarantee}", 3, bootstrap_servers=bootstrap)
    env = worker_env(bootstrap, topic, tiny_bundle, new_group())
    env.update(TAGSTREAM_PROCESSING_GUARANTEE=guarantee, TAGSTREAM_GROUP_INSTANCE_ID="restart-0")
    exactly_once = guarantee == "exactly_once"
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        wait_for(lambda: any(e["partitions"] for e in worker.events("partitions_assigned")), START_TIMEOUT_S,
                 "the worker to get partitions")
        # The first half of the stream, then the restart, then the rest once the broker is back.
        first = Stream(bootstrap, topic, SIZES.restart_events // 2, rate=1_000.0, prefix="a").start()
        sent = first.join()
        down_at = time.monotonic()
        broker.restart(down_s=3.0)
        back_s = time.monotonic() - down_at
        second = Stream(bootstrap, topic, SIZES.restart_events // 2, rate=1_000.0, prefix="b").start()
        sent.update(second.join())
        outcomes = Outcomes(bootstrap, topic, read_committed=exactly_once)
        try:
            outcomes.wait_for(sent, RESULTS_TIMEOUT_S)
        finally:
            outcomes.close()
        still_running = worker.exit_code() is None
    finally:
        code = worker.stop()
    counts = outcomes.account(sent)
    fault_report.add(Row(
        "broker restart mid-stream, data kept (3 s down)", guarantee, kafka_client, len(sent), counts["results"],
        counts["dead_letters"], counts["missing"], counts["duplicates"], time.monotonic() - began,
        notes=f"broker back in {back_s:.0f} s; the worker reconnected by itself",
    ))
    assert still_running, "the worker exited during the broker restart"
    assert counts["missing"] == 0
    if exactly_once:
        assert counts["duplicates"] == 0
    assert code == 0


@pytest.mark.parametrize("kafka_client", clients("confluent"), indirect=True)
def test_worker_stopped_right_after_a_broker_restart_exits_and_a_successor_finishes_exactly_once(
    restartable_kafka, new_group, tiny_bundle, tmp_path, fault_report, kafka_client
):
    """SIGTERM right after a broker restart, while a transactional call may still be waiting on the old
    coordinator: the worker exits within its drain timeout, and a successor with the same instance id
    finishes the stream with 0 missing and 0 duplicates for a read_committed reader."""
    began = time.monotonic()
    broker = restartable_kafka()
    bootstrap = broker.bootstrap_servers
    topic = make_topic("fault-restart-stop", 3, bootstrap_servers=bootstrap)
    env = worker_env(bootstrap, topic, tiny_bundle, new_group())
    env.update(TAGSTREAM_PROCESSING_GUARANTEE="exactly_once", TAGSTREAM_GROUP_INSTANCE_ID="stop-0")
    first = WorkerProcess(env, tmp_path / "first.log").start()
    successor: WorkerProcess | None = None
    try:
        wait_for(lambda: any(e["partitions"] for e in first.events("partitions_assigned")), START_TIMEOUT_S,
                 "the worker to get partitions")
        sent = Stream(bootstrap, topic, SIZES.restart_events // 2, rate=1_000.0, prefix="a").start().join()
        broker.restart(down_s=3.0)
        sent.update(Stream(bootstrap, topic, SIZES.restart_events // 2, rate=1_000.0, prefix="b").start().join())
        stopping = time.monotonic()
        first_code = first.stop(timeout_s=DRAIN_TIMEOUT_S + 20)
        stop_s = time.monotonic() - stopping
        successor = WorkerProcess(env, tmp_path / "successor.log").start()
        outcomes = Outcomes(bootstrap, topic, read_committed=True)
        try:
            outcomes.wait_for(sent, RESULTS_TIMEOUT_S)
        finally:
            outcomes.close()
    finally:
        first.kill()
        code = successor.stop() if successor is not None else None
    counts = outcomes.account(sent)
    fault_report.add(Row(
        "SIGTERM right after a broker restart, then a successor", "exactly_once", kafka_client, len(sent),
        counts["results"], counts["dead_letters"], counts["missing"], counts["duplicates"], time.monotonic() - began,
        notes=f"the first worker exited {first_code} after {stop_s:.1f} s (drain timeout {DRAIN_TIMEOUT_S} s)",
    ))
    assert first_code is not None, f"the worker did not exit within {DRAIN_TIMEOUT_S + 20} s of SIGTERM"
    assert counts["missing"] == 0
    assert counts["duplicates"] == 0
    assert code == 0


@pytest.mark.parametrize("kafka_client", clients("kafka-python"), indirect=True)
def test_broker_gone_for_good(restartable_kafka, new_group, tiny_bundle, tmp_path, fault_report, kafka_client):
    """The broker never comes back: readiness drops, then liveness (TAGSTREAM_BROKER_OUTAGE_S), then exit 4."""
    began = time.monotonic()
    broker = restartable_kafka()
    bootstrap = broker.bootstrap_servers
    topic = make_topic("fault-gone", 2, bootstrap_servers=bootstrap)
    env = worker_env(bootstrap, topic, tiny_bundle, new_group())
    env["TAGSTREAM_BROKER_OUTAGE_S"] = str(SIZES.outage_s)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        wait_for(lambda: worker.probe("/readyz") == 200, START_TIMEOUT_S, "the worker to be ready")
        stream = Stream(bootstrap, topic, 1_000, rate=1_000.0).start()
        sent = stream.join()
        broker.stop()
        gone = time.monotonic()
        not_ready_s = wait_for(lambda: worker.probe("/readyz") != 200, 60, "/readyz to fail")
        not_live_s = wait_for(lambda: worker.probe("/healthz") != 200, SIZES.outage_s + 60, "/healthz to fail")
        wait_for(lambda: worker.exit_code() is not None, 120, "the worker to exit")
        exit_s = time.monotonic() - gone
        code = worker.exit_code()
    finally:
        worker.kill()
    fault_report.add(Row(
        f"broker gone for good (TAGSTREAM_BROKER_OUTAGE_S={SIZES.outage_s:g})", "at_least_once", kafka_client, len(sent), 0, 0, 0, 0,
        time.monotonic() - began,
        notes=f"not ready after {not_ready_s:.1f} s, not live after {not_live_s:.1f} s, exit {code} after {exit_s:.1f} s",
    ))
    assert not_ready_s < not_live_s
    assert code == 4
    assert any("no broker has answered" in e.get("error", "") for e in worker.events("fatal"))
