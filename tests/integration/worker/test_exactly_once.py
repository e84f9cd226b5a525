"""Exactly-once mode against a real broker: a read_committed reader sees each input's outcome once,
through rebalances that abort transactions (issue 10, point 5)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from worker_support import (
    READER_METADATA_MAX_AGE_MS,
    STALL_TOKEN,
    fixture_texts,
    log_events,
    make_null_bundle,
    poll_records,
    produce_events,
    spawn,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.integration


def read_committed(bootstrap: str, topic: str, expected: int, timeout_s: float = 120) -> list:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None, metadata_max_age_ms=READER_METADATA_MAX_AGE_MS,
        enable_auto_commit=False, isolation_level="read_committed",
    )
    try:
        return poll_records(consumer, expected, timeout_s, quiet_s=2.0)
    finally:
        consumer.close()


def successor_labels_each_input_once(bootstrap: str, topic: str, ids: list[str], env: dict[str, str], log: Path) -> None:
    """A worker started with ``env`` after one that failed: a read_committed reader then sees each input once."""
    successor = spawn(env, log)
    try:
        results = read_committed(bootstrap, f"{topic}.labels", expected=len(ids))
    finally:
        successor.terminate()
        successor.wait(30)
    counts = Counter(json.loads(r.value)["id"] for r in results)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1, [i for i, n in counts.items() if n > 1][:10]


def produce(bootstrap: str, topic: str, n: int, bad_every: int = 0, prefix: str = "x", rate: float = 0.0) -> list[str]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    ids = []
    for i, text in enumerate(fixture_texts(n, seed=31)):
        event_id = f"{prefix}{i}"
        value = b"\xff broken" if bad_every and i % bad_every == 0 else json.dumps({"id": event_id, "text": text}).encode()
        producer.send(topic, value=value, key=event_id.encode())
        ids.append(event_id)
        if rate:
            time.sleep(1 / rate)
    producer.flush(30)
    producer.close()
    return ids


def test_each_input_has_exactly_one_committed_outcome(kafka_bootstrap, new_topic, start_worker, tiny_bundle):
    """3,000 inputs (1 in 50 malformed) on 3 partitions: a read_committed reader sees each once; offsets committed."""
    topic = new_topic(partitions=3, prefix="eos")
    ids = produce(kafka_bootstrap, topic, 3000, bad_every=50)
    worker = start_worker(topic, tiny_bundle, processing_guarantee="exactly_once", commit_interval_ms=200)
    bad = sum(1 for i in range(3000) if i % 50 == 0)
    results = read_committed(kafka_bootstrap, f"{topic}.labels", expected=3000 - bad)
    letters = read_committed(kafka_bootstrap, f"{topic}.dlq", expected=bad)
    counts = Counter(json.loads(r.value)["id"] for r in results)
    assert len(results) == 3000 - bad and max(counts.values()) == 1
    assert set(counts) == {i for n, i in enumerate(ids) if n % 50}
    assert len(letters) == bad
    assert worker.metrics.value("tagstream_transactions_total", {"result": "committed"}) >= 1
    assert worker.metrics.value("tagstream_events_out_total", {"topic": topic}) == 3000 - bad
    worker.stop()
    assert worker.wait(timeout=30) == 0


def test_rebalances_abort_transactions_without_duplicates_or_gaps(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle
):
    """A second and a third worker joining mid-stream abort open transactions; read_committed still sees each id once."""
    topic = new_topic(partitions=6, prefix="eos-rebalance")
    n = 6000
    producer = threading.Thread(target=produce, args=(kafka_bootstrap, topic, n), kwargs={"rate": 3000.0})
    producer.start()
    first = start_worker(topic, tiny_bundle, processing_guarantee="exactly_once", commit_interval_ms=200)
    wait_until(lambda: first.metrics.value("tagstream_events_out_total", {"topic": topic}) > 500, 60, "first results")
    second = start_worker(topic, tiny_bundle, processing_guarantee="exactly_once", commit_interval_ms=200)
    third = start_worker(topic, tiny_bundle, processing_guarantee="exactly_once", commit_interval_ms=200)
    producer.join()
    results = read_committed(kafka_bootstrap, f"{topic}.labels", expected=n, timeout_s=180)
    counts = Counter(json.loads(r.value)["id"] for r in results)
    duplicates = {k: v for k, v in counts.items() if v > 1}
    assert duplicates == {} and len(counts) == n, f"{len(counts)} distinct of {n}, {len(duplicates)} duplicated"
    aborted = sum(w.metrics.value("tagstream_transactions_total", {"result": "aborted"}) for w in (first, second, third))
    assert aborted >= 1  # the rebalances did abort open transactions


def test_a_stalled_model_call_is_given_up_without_committing_the_outputs_after_it(
    kafka_bootstrap, new_topic, new_group, tmp_path, kafka_client
):
    """A model call that never returns (the stalling null bundle): the worker gives its batch up and
    exits 1 (model_stalled) at once, aborting the open transaction, which holds outputs of inputs
    after the stalled ones (committed, the successor would publish them again: it did, 926 of 2,000,
    before the abort). A successor labels every input: a read_committed reader sees each once."""
    topic = new_topic(partitions=2, prefix="eos-stall")
    group = new_group()
    texts = fixture_texts(1500, seed=32)
    texts[700] = f"{texts[700]} {STALL_TOKEN}"
    ids = produce_events(kafka_bootstrap, topic, texts)
    eos = {"TAGSTREAM_PROCESSING_GUARANTEE": "exactly_once"}
    log = tmp_path / "stalling.log"
    stalling = spawn(worker_env(kafka_bootstrap, topic, make_null_bundle(tmp_path / "stalling", stalling=True), group,
                                TAGSTREAM_MODEL_STALL_S="3", **eos), log)
    try:
        assert stalling.wait(60) == 1, log.read_text()[-3000:]
    finally:
        if stalling.poll() is None:
            stalling.kill()
    lines = [json.loads(line) for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]
    assert [e["kind"] for e in lines if e["event"] == "fatal"][:1] == ["model_stalled"]
    assert any(e["event"] == "model_call_given_up" for e in lines)

    successor_labels_each_input_once(
        kafka_bootstrap, topic, ids, worker_env(kafka_bootstrap, topic, make_null_bundle(tmp_path / "null"), group, **eos),
        tmp_path / "successor.log",
    )


def test_a_model_thread_lost_mid_transaction_aborts_it_instead_of_committing_outputs_past_its_batch(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle, kafka_client
):
    """A model thread that fails for good with a batch in its call (a pod's model process lost, or a
    stalled call it gave up) abandons that batch, which holds the committed position back. Had the
    transaction been committed, it would hold the outputs of later batches past that position, and
    the successor would publish them again. The worker aborts it instead: a read_committed reader
    sees each input's outcome once, through the failure and the successor."""
    from worker.errors import Failure, WorkerError

    topic = new_topic(partitions=1, prefix="eos-model-lost")  # one partition: batches interleave in it
    ids = produce(kafka_bootstrap, topic, 3000)
    worker = start_worker(topic, tiny_bundle, processing_guarantee="exactly_once", commit_interval_ms=30_000,
                          inference_streams=2, max_batch_size=16)
    runner = worker.slot.current
    classify, calls = runner.classify, []

    def lost_once(token_ids, **kwargs):
        calls.append(len(token_ids))
        if len(calls) == 20:
            raise WorkerError("the model process is gone (test)", Failure.MODEL_PROCESS_LOST)
        return classify(token_ids, **kwargs)

    runner.classify = lost_once
    assert worker.wait(timeout=90) == Failure.MODEL_PROCESS_LOST.exit_code
    runner.classify = classify
    successor = start_worker(topic, tiny_bundle, processing_guarantee="exactly_once", commit_interval_ms=200)
    try:
        results = read_committed(kafka_bootstrap, f"{topic}.labels", expected=len(ids))
    finally:
        successor.stop()
        successor.wait(timeout=60)
    counts = Counter(json.loads(r.value)["id"] for r in results)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1, f"{sum(n - 1 for n in counts.values())} duplicates"


@pytest.mark.full_size_only("confluent")  # make test: kafka-python (a confluent pod is fenced the same way in outsider runs)
def test_a_worker_killed_mid_transaction_is_fenced_by_its_successor_without_static_membership(
    kafka_bootstrap, new_topic, new_group, tmp_path, tiny_bundle, kafka_client
):
    """A worker SIGKILLed with a transaction open, without static membership: its successor on the host takes
    the same transactional id (its call-journal set's, worker/call_journal.py) and aborts that transaction at
    once, so a read_committed reader sees each input once without waiting out the broker's transaction
    timeout (15 min here). Before, each process's id had its own pid in it: the reader waited that long."""
    topic = new_topic(partitions=2, prefix="eos-fence")
    group = new_group()
    ids = produce_events(kafka_bootstrap, topic, fixture_texts(12000, seed=33))
    env = worker_env(kafka_bootstrap, topic, tiny_bundle, group, TAGSTREAM_PROCESSING_GUARANTEE="exactly_once",
                     TAGSTREAM_GROUP_INSTANCE_ID="none", TAGSTREAM_TRANSACTION_TIMEOUT_MS="900000",
                     TAGSTREAM_SESSION_TIMEOUT_MS="10000")  # the killed member's partitions move after 10 s
    reader = KafkaConsumer(f"{topic}.labels", bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                           group_id=None, isolation_level="read_committed",
                           metadata_max_age_ms=READER_METADATA_MAX_AGE_MS)
    first = spawn(env, tmp_path / "first.log")
    try:
        seen = 0

        def some_results() -> bool:  # mid-stream: committed results, and most inputs still to label
            nonlocal seen
            seen += sum(len(batch) for batch in reader.poll(timeout_ms=100).values())
            return seen >= 1000 or first.poll() is not None

        wait_until(some_results, 120, "the first committed results")
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        first.kill()
        first.wait(30)
    finally:
        reader.close()
        if first.poll() is None:
            first.kill()
    successor_labels_each_input_once(kafka_bootstrap, topic, ids, env, tmp_path / "successor.log")
    txn_ids = [e["transactional_id"] for log in ("first.log", "successor.log")
               for e in log_events(tmp_path / log, "transactions_ready")]
    assert len(txn_ids) == 2 and txn_ids[0] == txn_ids[1], txn_ids
