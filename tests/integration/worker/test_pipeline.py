"""The worker end to end against a real broker: every input gets exactly its result or dead letter."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from kafka import KafkaProducer
from worker_support import committed_total, fixture_texts, produce_events, read_records, wait_until

from model.bundle import Bundle

pytestmark = pytest.mark.integration


def offline_labels(bundle_path, texts: list[str]) -> list[str]:
    bundle = Bundle.load(bundle_path)
    labels = []
    for i in range(0, len(texts), 256):
        probs = bundle.predict_proba(texts[i : i + 256])
        labels.extend(bundle.labels[j] for j in probs.argmax(dim=1).tolist())
    return labels


def test_5000_events_over_3_partitions_get_exactly_one_correct_result_each(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle
):
    """5,000 events on 3 partitions give 5,000 results, every id once, with the bundle's offline labels."""
    topic = new_topic(partitions=3, prefix="worker-5k")
    texts = fixture_texts(5000, seed=11, max_words=60)  # some past max_length: truncated, not rejected
    ids = produce_events(kafka_bootstrap, topic, texts)
    # float32, as offline: dtype auto may pick bf16 autocast, whose near-ties can differ
    worker = start_worker(topic, tiny_bundle, dtype="float32")

    records = read_records(kafka_bootstrap, f"{topic}.labels", expected=5000)
    results = [json.loads(r.value) for r in records]
    counts = Counter(r["id"] for r in results)
    assert len(results) == 5000, f"{len(results)} results for 5000 inputs"
    assert set(counts) == set(ids) and max(counts.values()) == 1

    expected = dict(zip(ids, offline_labels(tiny_bundle, texts), strict=True))
    wrong = [r["id"] for r in results if r["label"] != expected[r["id"]]]
    assert wrong == [], f"{len(wrong)} labels differ from offline predictions, e.g. {wrong[:5]}"

    record, result = records[0], results[0]
    assert record.key == result["id"].encode()  # same key as the input
    assert ("origin", b"test") in record.headers  # input headers kept
    assert result["model"] == "tiny-test" and result["model_version"] == worker.slot.current.version
    assert result["source"]["topic"] == topic and 0 <= result["source"]["partition"] < 3
    assert len(result["top_k"]) == 3 and result["top_k"][0]["label"] == result["label"]
    assert result["latency_ms"] >= 0
    # Records read can exceed 5,000: a rebalance re-reads inputs that were queued, not run.
    assert worker.metrics.value("tagstream_events_in_total", {"topic": topic}) >= 5000
    assert worker.metrics.value("tagstream_events_out_total", {"topic": topic}) == 5000

    # Everything acknowledged is committed: the group's offsets cover all 5,000 inputs.
    worker.stop()
    assert worker.wait(timeout=30) == 0
    assert committed_total(kafka_bootstrap, worker.settings.group_id, topic) == 5000


def test_inputs_compressed_with_every_codec_kafka_offers_are_all_labeled(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle
):
    """Batches compressed with gzip, snappy, lz4 and zstd, as other producers send them, are all read: 800
    inputs, 800 results (without its codec packages kafka-python stopped at the first snappy batch)."""
    topic = new_topic(partitions=2, prefix="worker-codecs")
    texts = fixture_texts(800, seed=14)
    ids = []
    for c, codec in enumerate(("gzip", "snappy", "lz4", "zstd")):
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type=codec, linger_ms=20)
        for i in range(200):
            event_id = f"{codec}-{i}"
            producer.send(topic, value=json.dumps({"id": event_id, "text": texts[200 * c + i]}).encode())
            ids.append(event_id)
        producer.flush(30)
        producer.close()
    worker = start_worker(topic, tiny_bundle)
    labeled = read_records(kafka_bootstrap, f"{topic}.labels", expected=800)
    assert Counter(json.loads(r.value)["id"] for r in labeled) == Counter(ids)
    assert worker.metrics.value("tagstream_events_out_total", {"topic": topic}) == 800


def produce_transactions(bootstrap: str, topic: str, texts: list[str]) -> tuple[list[str], list[str]]:
    """Events written by a transactional producer, as an exactly-once upstream writes them: odd
    transactions aborted, even ones committed. Returns (committed ids, aborted ids)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"upstream-{topic}")
    producer.init_transactions()
    committed: list[str] = []
    aborted: list[str] = []
    for t in range(4):
        producer.begin_transaction()
        ids = [f"t{t}-{i}" for i in range(25)]
        for i, event_id in enumerate(ids):
            producer.send(topic, value=json.dumps({"id": event_id, "text": texts[25 * t + i]}).encode())
        producer.flush(30)
        if t % 2:
            producer.abort_transaction()
            aborted += ids
        else:
            producer.commit_transaction()
            committed += ids
    producer.close()
    return committed, aborted


def test_records_of_aborted_upstream_transactions_are_not_labeled(kafka_bootstrap, new_topic, start_worker, tiny_bundle):
    """Inputs from a transactional producer: the 50 of its committed transactions get results, the 50 of its
    aborted ones none (read_committed, the default; at-least-once read them too before), and the offsets no poll
    returns are not taken for inputs deleted unread."""
    topic = new_topic(partitions=2, prefix="worker-txn-input")
    ids = produce_events(kafka_bootstrap, topic, fixture_texts(10, seed=16), prefix="plain")
    committed, aborted = produce_transactions(kafka_bootstrap, topic, fixture_texts(100, seed=15))
    worker = start_worker(topic, tiny_bundle)
    labeled = read_records(kafka_bootstrap, f"{topic}.labels", expected=60)
    got = Counter(json.loads(r.value)["id"] for r in labeled)
    assert got == Counter(ids + committed) and not set(got) & set(aborted)
    # The offsets of markers and aborted records are gaps no poll returns, not inputs deleted unread.
    assert worker.metrics.value("tagstream_inputs_deleted_unread_total", {"topic": topic}) == 0

    worker.stop()
    assert worker.wait(timeout=30) == 0


def test_malformed_events_go_to_the_dead_letter_topic_and_the_rest_are_labeled(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle
):
    """Of 1,200 events, the 200 malformed ones land in the DLQ with reasons and bytes intact; 1,000 are labeled."""
    topic = new_topic(partitions=3, prefix="worker-dlq")
    good = fixture_texts(1000, seed=12)
    malformed = [
        (b"\xff\xfe\xfa not utf-8", "invalid_utf8"),
        (b"{not json", "invalid_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (b'{"id": "x"}', "missing_text"),
        (b'{"text": 42}', "text_not_string"),
        (b'{"text": "   "}', "empty_text"),
        (b"", "empty_payload"),
        (json.dumps({"text": "x" * 3000}).encode(), "payload_too_large"),
    ]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    sent_bad: dict[bytes, tuple[bytes, str]] = {}
    good_ids = []
    bad_i = 0
    for i in range(1200):
        if i % 6 == 5 and bad_i < 200:  # spread the bad ones through the stream
            value, reason = malformed[bad_i % len(malformed)]
            key = f"bad{bad_i}".encode()
            sent_bad[key] = (value, reason)
            producer.send(topic, value=value, key=key)
            bad_i += 1
        else:
            event_id = f"ok{len(good_ids)}"
            producer.send(topic, value=json.dumps({"id": event_id, "text": good[len(good_ids)]}).encode(),
                          key=event_id.encode())
            good_ids.append(event_id)
    producer.flush(30)
    producer.close()
    assert len(sent_bad) == 200 and len(good_ids) == 1000

    worker = start_worker(topic, tiny_bundle, max_payload_bytes=2048)
    dead = read_records(kafka_bootstrap, f"{topic}.dlq", expected=200)
    labeled = read_records(kafka_bootstrap, f"{topic}.labels", expected=1000)

    assert len(dead) == 200
    for record in dead:
        value, reason = sent_bad[record.key]
        headers = dict(record.headers)
        assert record.value == value  # original bytes, untouched
        assert headers["tagstream.reason"].decode() == reason
        assert headers["tagstream.source.topic"].decode() == topic
        assert int(headers["tagstream.source.offset"]) >= 0 and headers["tagstream.dead_lettered_at"]
    assert Counter(json.loads(r.value)["id"] for r in labeled) == Counter(good_ids)
    for reason in {r for _, r in malformed}:
        expected = sum(1 for _, r in sent_bad.values() if r == reason)
        assert worker.metrics.value("tagstream_dead_letters_total", {"reason": reason}) == expected


def test_keyed_outputs_land_on_the_partition_javas_producer_picks_with_either_client(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle
):
    """Results and dead letters keep their input's key and go to the partition Java's producer would
    pick for it (murmur2 of the key): the same under both clients, so pods running either keep one
    key's outputs on one partition. Keyless inputs are labeled too."""
    from kafka.partitioner.default import murmur2

    topic = new_topic(partitions=3, prefix="worker-keys")
    labels_topic = new_topic(partitions=4, name=f"{topic}.labels")
    dlq_topic = new_topic(partitions=4, name=f"{topic}.dlq")
    ids = produce_events(kafka_bootstrap, topic, fixture_texts(400, seed=14))
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    for i in range(40):
        producer.send(topic, value=b"{not json", key=f"bad{i}".encode())
        producer.send(topic, value=json.dumps({"id": f"nokey{i}", "text": "no key here"}).encode())
    producer.flush(30)
    producer.close()

    start_worker(topic, tiny_bundle)
    labeled = read_records(kafka_bootstrap, labels_topic, expected=440)
    dead = read_records(kafka_bootstrap, dlq_topic, expected=40)

    def java_partition(key: bytes) -> int:
        return (murmur2(key) & 0x7FFFFFFF) % 4

    keyed = [r for r in labeled if r.key is not None]
    assert sorted(r.key.decode() for r in keyed) == sorted(ids)
    assert len(dead) == 40 and all(r.key is not None for r in dead)
    misplaced = [(r.key, r.partition) for r in keyed + dead if r.partition != java_partition(r.key)]
    assert misplaced == [], f"{len(misplaced)} of {len(keyed) + len(dead)} keyed outputs off Java's partition"
    assert {r.partition for r in keyed} == {0, 1, 2, 3}  # the keys spread: the check above had work to do
    keyless = sorted(json.loads(r.value)["id"] for r in labeled if r.key is None)
    assert keyless == sorted(f"nokey{i}" for i in range(40))


def test_routes_send_labels_to_their_topics(kafka_bootstrap, new_topic, start_worker, tiny_bundle):
    """With a route for one label, its results go to the routed topic and the others to the output topic."""
    topic = new_topic(partitions=1, prefix="worker-route")
    texts = fixture_texts(300, seed=13)
    ids = produce_events(kafka_bootstrap, topic, texts)
    labels = dict(zip(ids, offline_labels(tiny_bundle, texts), strict=True))
    n_spam = sum(1 for label in labels.values() if label == "spam")
    assert 0 < n_spam < len(ids)
    start_worker(topic, tiny_bundle, routes={"spam": "{topic}.spam"}, dtype="float32")  # as offline
    routed = read_records(kafka_bootstrap, f"{topic}.spam", expected=n_spam)
    rest = read_records(kafka_bootstrap, f"{topic}.labels", expected=len(ids) - n_spam)
    assert {json.loads(r.value)["id"] for r in routed} == {i for i, lab in labels.items() if lab == "spam"}
    assert {json.loads(r.value)["label"] for r in rest} <= {"ham", "news"} and len(rest) == len(ids) - n_spam


def test_readiness_follows_assignment(kafka_bootstrap, new_topic, start_worker, tiny_bundle):
    """/readyz turns ready once the model is warm and partitions are assigned."""
    import urllib.request

    topic = new_topic(partitions=2, prefix="worker-ready")
    worker = start_worker(topic, tiny_bundle)
    wait_until(lambda: worker.health.readiness()[0], 30, "the worker to become ready")
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/readyz", timeout=5) as response:
        assert json.loads(response.read())["assigned_partitions"] == 2
