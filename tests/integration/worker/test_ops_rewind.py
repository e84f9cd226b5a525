"""`rewind` against the real broker: the promote-then-replay flow, refusal while workers run."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from worker_support import make_tiny_bundle, read_records, wait_until

from worker.cli import main
from worker.ops.errors import GroupActiveError
from worker.ops.rewind import rewind
from worker.settings import load_settings

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def produce_at(bootstrap: str, topic: str, stamps: list[int], partitions: int) -> list[str]:
    """One JSON event per timestamp (ms), round-robin over the partitions; returns the ids."""
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    ids = []
    for i, stamp in enumerate(stamps):
        event_id = f"t{i}"
        value = json.dumps({"id": event_id, "text": f"market shares rose {i}"}).encode()
        producer.send(topic, value=value, partition=i % partitions, timestamp_ms=stamp)
        ids.append(event_id)
    producer.flush(30)
    producer.close()
    return ids


def committed(bootstrap: str, group: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return {tp.partition: m.offset for tp, m in admin.list_group_offsets(group)[group].items()}
    finally:
        admin.close()


def settings_for(bootstrap: str, topic: str, group: str):
    return load_settings(bootstrap_servers=bootstrap, input_topics=[topic], group_id=group, bundle_path=Path("/dev/null"))


def stop(worker) -> None:
    worker.stop()
    assert worker.wait(timeout=30) == 0


def test_promote_then_rewind_replays_the_last_hour_with_the_new_model(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle, tmp_path
):
    """After a bundle swap, rewinding by 1 h re-classifies exactly the events of the last hour, with the new model_version."""
    topic = new_topic(partitions=2, prefix="rewind")
    now = int(time.time() * 1000)
    old = [now - 3 * HOUR_MS + i for i in range(10)]  # three hours ago: not replayed
    recent = [now - HOUR_MS // 2 + i for i in range(12)]  # half an hour ago: replayed
    ids = produce_at(kafka_bootstrap, topic, old + recent, partitions=2)

    first = start_worker(topic, tiny_bundle, dtype="float32")
    assert len(read_records(kafka_bootstrap, f"{topic}.labels", expected=22, quiet_s=0.2)) == 22
    version_a, group = first.slot.current.version, first.settings.group_id
    stop(first)
    assert committed(kafka_bootstrap, group) == {0: 11, 1: 11}

    settings = settings_for(kafka_bootstrap, topic, group)
    dry = rewind(settings, to_ms=now - HOUR_MS, dry_run=True)
    assert dry.replayed == 12 and committed(kafka_bootstrap, group) == {0: 11, 1: 11}
    report = rewind(settings, to_ms=now - HOUR_MS)
    assert [(m.partition, m.before, m.after) for m in report.moves] == [(0, 11, 5), (1, 11, 5)]
    assert report.replayed == 12 and not report.errors
    assert committed(kafka_bootstrap, group) == {0: 5, 1: 5}

    bundle_b = make_tiny_bundle(tmp_path / "bundle-b", seed=7, name="tiny-test")
    second = start_worker(topic, bundle_b, dtype="float32")
    results = [json.loads(r.value) for r in read_records(kafka_bootstrap, f"{topic}.labels", expected=34)]
    by_version = Counter(r["model_version"] for r in results)
    version_b = second.slot.current.version
    assert version_b != version_a
    assert by_version == Counter({version_a: 22, version_b: 12})
    assert {r["id"] for r in results if r["model_version"] == version_b} == set(ids[10:])


def test_rewind_never_moves_forward_and_says_why(kafka_bootstrap, new_topic, start_worker, tiny_bundle):
    """A time after every record leaves each partition at its committed offset, with the reason."""
    topic = new_topic(partitions=2, prefix="rewind-fwd")
    now = int(time.time() * 1000)
    produce_at(kafka_bootstrap, topic, [now - HOUR_MS + i for i in range(6)], partitions=2)
    worker = start_worker(topic, tiny_bundle)
    assert len(read_records(kafka_bootstrap, f"{topic}.labels", expected=6, quiet_s=0.2)) == 6
    group = worker.settings.group_id
    stop(worker)

    report = rewind(settings_for(kafka_bootstrap, topic, group), to_ms=now - 60_000)
    assert report.replayed == 0 and all(m.after is None for m in report.moves)
    assert all("no record at or after" in m.note and "never moved forward" in m.note for m in report.moves)
    assert committed(kafka_bootstrap, group) == {0: 3, 1: 3}
    assert "(unchanged)" in report.render()


def test_rewind_refuses_while_workers_hold_the_group(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle, monkeypatch, capsys
):
    """With a worker running, rewind changes nothing, names the member and how to stop it, and exits 5."""
    topic = new_topic(partitions=2, prefix="rewind-busy")
    now = int(time.time() * 1000)
    produce_at(kafka_bootstrap, topic, [now - HOUR_MS + i for i in range(4)], partitions=2)
    worker = start_worker(topic, tiny_bundle)
    assert len(read_records(kafka_bootstrap, f"{topic}.labels", expected=4, quiet_s=0.2)) == 4
    group = worker.settings.group_id
    wait_until(lambda: committed(kafka_bootstrap, group) == {0: 2, 1: 2}, 30, "the worker's commits")
    wait_until(lambda: worker.health.readiness()[0], 30, "the worker to hold partitions")

    with pytest.raises(GroupActiveError) as refused:
        rewind(settings_for(kafka_bootstrap, topic, group), to_ms=now - 2 * HOUR_MS)
    message = str(refused.value)
    assert "1 active member" in message and f"{topic}/0" in message and "paused-replicas" in message

    monkeypatch.delenv("TAGSTREAM_CONFIG_FILE", raising=False)
    monkeypatch.delenv("TAGSTREAM_BUNDLE_PATH", raising=False)
    for name, value in {"BOOTSTRAP_SERVERS": kafka_bootstrap, "INPUT_TOPICS": topic, "GROUP_ID": group}.items():
        monkeypatch.setenv(f"TAGSTREAM_{name}", value)
    assert main(["rewind", "--by", "2h"]) == 5
    assert "refused" in capsys.readouterr().err
    assert main(["rewind", "--by", "2h", "--dry-run"]) == 0  # a preview is allowed
    assert "a real run would be refused" in capsys.readouterr().out
    assert committed(kafka_bootstrap, group) == {0: 2, 1: 2}

    stop(worker)
    capsys.readouterr()  # the worker's own log lines
    assert main(["rewind", "--by", "2h", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["replayed"] == 4
    assert committed(kafka_bootstrap, group) == {0: 0, 1: 0}
    assert main(["rewind", "--to", "2999-01-01"]) == 2  # the future
