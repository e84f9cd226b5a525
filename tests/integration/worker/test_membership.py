"""Static group membership (issue 10, finding 5): a worker killed and restarted under the same
group_instance_id gets its partitions back at once, and a static member stopping on purpose hands
them over at once, instead of both waiting out the session timeout."""

from __future__ import annotations

import json
import signal
import time

import pytest
from worker_support import (
    START_TIMEOUT_S,
    fixture_texts,
    produce_events,
    read_records,
    spawn,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.integration

SESSION_TIMEOUT_MS = 30_000  # what a dynamic member's replacement waits at least


def log_events(path, event: str) -> list[dict]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for line in lines if line.startswith("{") for e in [json.loads(line)] if e.get("event") == event]


def test_a_killed_static_member_gets_its_partitions_back_at_once(
    kafka_bootstrap, new_topic, new_group, tiny_bundle, tmp_path, kafka_client
):
    """SIGKILL, then a restart with the same group_instance_id: partitions assigned in well under the session timeout."""
    topic = new_topic(partitions=3, prefix="static-kill")
    produce_events(kafka_bootstrap, topic, fixture_texts(300, seed=8))
    env = worker_env(kafka_bootstrap, topic, tiny_bundle, new_group())
    env.update(TAGSTREAM_GROUP_INSTANCE_ID="worker-a", TAGSTREAM_SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS))
    first = spawn(env, tmp_path / "first.log")
    try:
        wait_until(lambda: log_events(tmp_path / "first.log", "partitions_assigned"), START_TIMEOUT_S, "an assignment")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    restarted_at = time.monotonic()
    second = spawn(env, tmp_path / "second.log")
    try:
        wait_until(
            lambda: any(e["partitions"] for e in log_events(tmp_path / "second.log", "partitions_assigned")),
            START_TIMEOUT_S, "the restarted worker's assignment",
        )
        waited_s = time.monotonic() - restarted_at
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    # A fresh Python with torch starts in a few seconds; a dynamic member would wait >= 30 s more.
    assert waited_s < SESSION_TIMEOUT_MS / 1000 / 2, f"{waited_s:.1f} s to get the partitions back"


def test_a_static_member_stopping_hands_its_partitions_over_at_once(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle
):
    """SIGTERM-style stop of one static member: the other gets every partition in well under the session timeout."""
    topic = new_topic(partitions=4, prefix="static-stop")
    a = start_worker(topic, tiny_bundle, group_instance_id="worker-a", session_timeout_ms=SESSION_TIMEOUT_MS)
    b = start_worker(topic, tiny_bundle, group_instance_id="worker-b", session_timeout_ms=SESSION_TIMEOUT_MS)
    wait_until(lambda: a.health.assigned and b.health.assigned, 60, "both workers to hold partitions")
    stopped_at = time.monotonic()
    a.stop()
    assert a.wait(timeout=30) == 0
    wait_until(lambda: b.health.assigned == 4, SESSION_TIMEOUT_MS / 1000 / 2, "the other worker to hold all 4")
    assert time.monotonic() - stopped_at < SESSION_TIMEOUT_MS / 1000 / 2


def test_a_worker_starting_on_its_own_is_assigned_once_and_keeps_its_partitions(
    kafka_bootstrap, new_topic, new_group, tiny_bundle, tmp_path, kafka_client
):
    """One assignment at start and no revocation until the stop: kafka-python used to revoke
    and reassign every partition some 100-300 ms after its first assignment (a metadata snapshot
    recorded before it subscribed; worker/kafka/compat.py, section 6), waiting for the batches in
    flight, or behind a hung model call for up to 10 s."""
    topic = new_topic(partitions=3, prefix="assigned-once")
    ids = produce_events(kafka_bootstrap, topic, fixture_texts(2000, seed=9))
    log = tmp_path / "worker.log"
    worker = spawn(worker_env(kafka_bootstrap, topic, tiny_bundle, new_group()), log)
    try:
        results = read_records(kafka_bootstrap, f"{topic}.labels", len(ids))
        time.sleep(1.0)  # well past the first metadata refresh after the join
        assert not log_events(log, "partitions_revoked"), "revoked while running"
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    assert {json.loads(r.value)["id"] for r in results} == set(ids)
    assigned = log_events(log, "partitions_assigned")
    assert len(assigned) == 1, [e["partitions"] for e in assigned]
    assert len(assigned[0]["partitions"]) == 3
