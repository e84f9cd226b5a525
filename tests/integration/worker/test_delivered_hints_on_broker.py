"""Delivered hints on a real broker (worker/delivered_hints.py): outputs acknowledged past the
committed position are named in the commit's metadata, and the partition's next reader does not
label those inputs again."""

from __future__ import annotations

import json
import signal
from collections import Counter

import pytest
from kafka import KafkaAdminClient
from worker_support import (
    DRAIN_TIMEOUT_S,
    STALL_TOKEN,
    START_TIMEOUT_S,
    assert_only_dead_letter,
    fixture_texts,
    log_events,
    make_null_bundle,
    produce_events,
    read_records,
    spawn,
    wait_until,
    worker_env,
)

from worker.delivered_hints import decode

pytestmark = pytest.mark.integration


# make test: confluent (its at-least-once commit metadata is tested nowhere else there); kafka-python's
# hints are in make test by the hang test's kafka-python-at_least_once row
@pytest.mark.full_size_only("kafka-python")
def test_inputs_labelled_past_a_stalled_batch_are_not_labelled_again_by_the_successor(
    kafka_bootstrap, new_topic, new_group, tmp_path, kafka_client
):
    """A stalled model call holds each partition's committed position at its inputs while the other
    model thread delivers the rest. The commits name what was delivered past the position; the
    worker exits 1 (model_stalled); its successor reads from the committed positions and labels the
    given-up inputs, but not the ones the hints name: each of those has exactly one result."""
    topic = new_topic(partitions=2, prefix="worker-hints")
    group = new_group()
    texts = fixture_texts(400, seed=31)
    texts[200] = f"{texts[200]} {STALL_TOKEN}"
    ids = produce_events(kafka_bootstrap, topic, texts)
    stalling = spawn(
        worker_env(kafka_bootstrap, topic, make_null_bundle(tmp_path / "stalling", stalling=True), group,
                   TAGSTREAM_MODEL_STALL_S="3"),
        tmp_path / "stalling.log",
    )
    try:
        assert stalling.wait(START_TIMEOUT_S + DRAIN_TIMEOUT_S) == 1, (tmp_path / "stalling.log").read_text()[-3000:]
    finally:
        if stalling.poll() is None:
            stalling.kill()

    # What the stalled worker's last commits say it delivered past its committed positions.
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        commits = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    hinted = {(tp.partition, offset) for tp, om in commits.items() for offset in decode(om.metadata, om.offset)}
    assert hinted, f"no hint in the commits: {commits}"
    inputs = {(r.partition, r.offset): json.loads(r.value)["id"] for r in read_records(kafka_bootstrap, topic, len(ids))}
    hinted_ids = {inputs[key] for key in hinted}

    log = tmp_path / "successor.log"
    successor = spawn(worker_env(kafka_bootstrap, topic, make_null_bundle(tmp_path / "null"), group), log)
    try:
        def all_labelled() -> bool:
            return set(ids) <= {json.loads(r.value)["id"] for r in read_records(
                kafka_bootstrap, f"{topic}.labels", len(ids), timeout_s=2, quiet_s=0)}
        wait_until(all_labelled, 120, "a result for every input")
    finally:
        successor.send_signal(signal.SIGTERM)
        assert successor.wait(DRAIN_TIMEOUT_S + 15) == 0, log.read_text()[-3000:]
    counts = Counter(json.loads(r.value)["id"] for r in read_records(kafka_bootstrap, f"{topic}.labels", len(ids)))
    assert set(ids) <= set(counts)  # nothing lost
    assert {i: counts[i] for i in hinted_ids if counts[i] != 1} == {}  # not labelled again
    read = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    skipping = [e for e in read if e.get("event") == "delivered_hints_read"]
    assert skipping and sum(sum(e["skipping"].values()) for e in skipping) == len(hinted), skipping


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
@pytest.mark.full_size_only("kafka-python-exactly_once", "confluent-at_least_once")  # make test: one row per client
def test_an_input_that_hangs_the_model_every_time_is_run_alone_then_dead_lettered_instead_of_restarting_for_ever(
    kafka_bootstrap, new_topic, new_group, tmp_path, kafka_client, guarantee
):
    """An input on which every model call hangs (the stalling null bundle, on STALL_TOKEN) used to
    restart the worker for ever: each successor read it again and hung again. Now the first worker's
    commit names the inputs of the call it gave up (exactly-once: in a transaction of its own, after
    aborting the last one); the second runs each of them alone, so it hangs on that input alone (and
    labels the others); the third dead-letters it (stalled_twice) without running it and labels
    everything else. Nothing is lost."""
    topic = new_topic(partitions=2, prefix="worker-stall-pill")
    group = new_group()
    texts = fixture_texts(300, seed=32)
    texts[150] = f"{texts[150]} {STALL_TOKEN}"
    ids = produce_events(kafka_bootstrap, topic, texts)
    pill = ids[150]
    stalling = make_null_bundle(tmp_path / "stalling", stalling=True)
    env = worker_env(kafka_bootstrap, topic, stalling, group, TAGSTREAM_MODEL_STALL_S="3",
                     TAGSTREAM_PROCESSING_GUARANTEE=guarantee)
    committed = {"isolation_level": "read_committed"}  # exactly-once: aborted outputs are not results
    logs = [tmp_path / f"worker{i}.log" for i in (1, 2, 3)]

    events = log_events

    for log in logs[:2]:  # each hangs on the pill: first in a batch, then alone
        proc = spawn(env, log)
        try:
            assert proc.wait(START_TIMEOUT_S + DRAIN_TIMEOUT_S) == 1, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
        assert events(log, "fatal")[0]["kind"] == "model_stalled"
    if guarantee == "exactly_once":  # the counts went in a transaction of their own, after the abort
        assert all(events(log, "stalled_inputs_counted") for log in logs[:2])
    given_up = [events(log, "model_call_given_up")[0]["inputs"] for log in logs[:2]]
    assert given_up[0] > 1 and given_up[1] == 1, given_up  # the second time the pill was alone

    third = spawn(env, logs[2])
    try:
        def all_answered() -> bool:
            labelled = {json.loads(r.value)["id"] for r in read_records(
                kafka_bootstrap, f"{topic}.labels", len(ids) - 1, timeout_s=2, quiet_s=0, **committed)}
            return set(ids) - {pill} <= labelled and bool(events(logs[2], "input_dead_lettered_after_stalls"))
        wait_until(all_answered, 120, "a result for every input, and the one that hangs the model dead-lettered")
    finally:
        third.send_signal(signal.SIGTERM)
        assert third.wait(DRAIN_TIMEOUT_S + 15) == 0, logs[2].read_text()[-3000:]
    assert_only_dead_letter(kafka_bootstrap, topic, pill, "stalled_twice", **committed)
    assert [e["stalls"] for e in events(logs[2], "input_dead_lettered_after_stalls")] == [2]
    results = Counter(json.loads(r.value)["id"] for r in read_records(
        kafka_bootstrap, f"{topic}.labels", len(ids) - 1, **committed))
    assert pill not in results
    if guarantee == "exactly_once":
        assert max(results.values()) == 1  # each input's outcome once, through three workers
