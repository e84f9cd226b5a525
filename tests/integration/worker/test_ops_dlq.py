"""`dlq stats` and `dlq redrive` against the real broker: counts, skips, headers, resume."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaProducer
from worker_support import fixture_texts, produce_events, read_records, wait_until

from worker.cli import main
from worker.errors import Failure
from worker.events import (
    DEAD_LETTER_HEADERS,
    ORIGINAL_SHA256_HEADER,
    ORIGINAL_SIZE_HEADER,
    REASON_HEADER,
    TRUNCATED_HEADER,
    DeadLetter,
    dead_letter_headers,
)
from worker.ops.dlq import dlq_stats
from worker.ops.redrive import REDRIVEN_FROM_HEADER, Selection, redrive
from worker.settings import load_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def ops_settings(kafka_bootstrap: str) -> Callable[..., object]:
    """``ops_settings(**overrides)``: the worker's settings as the ops commands load them."""

    def make(**overrides: object) -> object:
        return load_settings(bootstrap_servers=kafka_bootstrap, input_pattern="(?!)", bundle_path=Path("/dev/null"),
                             **overrides)

    return make


def letter(source: str, partition: int, offset: int, value: bytes | None, reason: Failure,
           key: bytes | None = None, extra: list[tuple[str, bytes]] | None = None) -> tuple[bytes | None, bytes | None, list]:
    """(key, value, headers) of a dead letter exactly as the worker writes one."""
    dead = DeadLetter(source, partition, offset, 1_700_000_000_000 + offset, key, value,
                      [("origin", b"test"), *(extra or [])], reason, "test detail")
    return key, value, dead_letter_headers(dead)


def write_letters(bootstrap: str, dlq: str, letters: list[tuple[bytes | None, bytes | None, list]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for key, value, headers in letters:
        producer.send(dlq, key=key, value=value, headers=headers, partition=0)
    producer.flush(30)
    producer.close()


def good(i: int) -> bytes:
    return json.dumps({"id": f"r{i}", "text": f"free prize call now {i}"}).encode()


def mixed_letters(source: str) -> list[tuple[bytes | None, bytes | None, list]]:
    """5 redrivable, 3 that would fail again, 2 truncated copies, 1 not from tagstream."""
    letters = [letter(source, 0, i, good(i), Failure.INFERENCE_FAILED, key=f"k{i}".encode()) for i in range(5)]
    letters += [letter(source, 1, 10 + i, b"\xff\xfe bad bytes", Failure.INVALID_UTF8) for i in range(3)]
    truncated = [(TRUNCATED_HEADER, b"true"), (ORIGINAL_SIZE_HEADER, b"5000000"), (ORIGINAL_SHA256_HEADER, b"ab" * 32)]
    letters += [letter(source, 0, 20 + i, good(20 + i)[:20], Failure.PAYLOAD_TOO_LARGE, extra=truncated) for i in range(2)]
    letters.append((None, good(99), [("origin", b"elsewhere")]))
    return letters


def test_stats_counts_the_workers_dead_letters_by_reason_and_source(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle, ops_settings
):
    """13 malformed inputs over 2 partitions are counted by reason and by source partition, oldest to newest."""
    topic = new_topic(partitions=2, prefix="ops-stats")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    bad = [b"{not json"] * 6 + [b"\xff\xfe"] * 4 + [json.dumps({"id": "x"}).encode()] * 3
    for i, value in enumerate(bad):
        producer.send(topic, value=value, partition=i % 2)
    producer.flush(30)
    producer.close()
    produce_events(kafka_bootstrap, topic, fixture_texts(10, seed=3))
    start_worker(topic, tiny_bundle)
    assert len(read_records(kafka_bootstrap, f"{topic}.dlq", expected=13, quiet_s=0.2)) == 13

    stats = dlq_stats(ops_settings(), f"{topic}.dlq")
    assert stats.total == 13
    assert stats.by_reason == Counter({"invalid_json": 6, "invalid_utf8": 4, "missing_text": 3})
    assert stats.by_source == Counter({(topic, 0): 7, (topic, 1): 6})
    assert stats.truncated == 0 and stats.foreign == 0
    assert stats.oldest_ms is not None and stats.oldest_ms <= (stats.newest_ms or 0)
    text = stats.render()
    assert "invalid_json" in text and f"{topic}/0" in text


def test_redrive_republishes_key_bytes_and_headers_and_counts_every_skip(kafka_bootstrap, new_topic, ops_settings):
    """5 of 11 dead letters are re-published as they came in, with their origin noted; the others are skipped by kind."""
    source, target = new_topic(prefix="ops-src"), new_topic(prefix="ops-target")
    dlq = new_topic(prefix="ops-dlq")
    write_letters(kafka_bootstrap, dlq, mixed_letters(source))

    report = redrive(ops_settings(), Selection(dlq, to_topic=target))
    assert report.considered == 11
    assert report.redriven == Counter({target: 5})
    assert report.would_fail_again == Counter({"invalid_utf8": 3})
    assert (report.truncated, report.foreign, report.filtered) == (2, 1, 0)

    records = read_records(kafka_bootstrap, target, expected=5)
    assert len(records) == 5
    for i, record in enumerate(sorted(records, key=lambda r: r.key)):
        assert record.key == f"k{i}".encode() and record.value == good(i)
        names = [k for k, _ in record.headers]
        assert ("origin", b"test") in record.headers
        assert not set(names) & DEAD_LETTER_HEADERS
        assert dict(record.headers)[REDRIVEN_FROM_HEADER] == f"{dlq}/0/{i}".encode()

    again = redrive(ops_settings(), Selection(dlq, to_topic=target))
    assert again.considered == 0 and again.total_redriven == 0  # resumed at the end: nothing twice


def test_force_sends_records_that_would_fail_again_but_never_truncated_copies(kafka_bootstrap, new_topic, ops_settings):
    """--force re-publishes the invalid UTF-8 records too; the truncated copies stay skipped."""
    source, target, dlq = new_topic(prefix="ops-src"), new_topic(prefix="ops-target"), new_topic(prefix="ops-dlq")
    write_letters(kafka_bootstrap, dlq, mixed_letters(source))
    report = redrive(ops_settings(), Selection(dlq, to_topic=target, force=True))
    assert report.total_redriven == 8 and report.truncated == 2 and not report.would_fail_again
    assert len(read_records(kafka_bootstrap, target, expected=8)) == 8


def test_interrupted_redrive_resumes_without_repeating(kafka_bootstrap, new_topic, ops_settings):
    """A redrive stopped after 7 of 20 records, run again, sends the other 13: each record exactly once."""
    source, dlq = new_topic(prefix="ops-src"), new_topic(prefix="ops-dlq")
    write_letters(kafka_bootstrap, dlq, [letter(source, 0, i, good(i), Failure.INFERENCE_FAILED) for i in range(20)])

    def stop_after_seven(report) -> None:
        if report.total_redriven == 7:
            raise KeyboardInterrupt

    first = redrive(ops_settings(), Selection(dlq), on_record=stop_after_seven)
    assert first.interrupted and first.redriven == Counter({source: 7})
    second = redrive(ops_settings(), Selection(dlq))
    assert second.resumed_from == {0: 7} and second.redriven == Counter({source: 13})

    records = read_records(kafka_bootstrap, source, expected=20)
    origins = Counter(dict(r.headers)[REDRIVEN_FROM_HEADER].decode() for r in records)
    assert len(records) == 20 and set(origins) == {f"{dlq}/0/{i}" for i in range(20)}


def test_selection_has_its_own_progress_and_since_and_limit_apply(kafka_bootstrap, new_topic, ops_settings):
    """A --reason redrive leaves other reasons for a later redrive; --since skips older letters; --limit stops early."""
    source, target, dlq = new_topic(prefix="ops-src"), new_topic(prefix="ops-target"), new_topic(prefix="ops-dlq")
    letters = [letter(source, 0, i, good(i), Failure.INFERENCE_FAILED) for i in range(4)]
    letters += [letter(source, 0, 10 + i, json.dumps({"id": i, "body": "x"}).encode(), Failure.MISSING_TEXT) for i in range(3)]
    write_letters(kafka_bootstrap, dlq, letters)

    future = Selection(dlq, to_topic=target, since="2999-01-01", since_ms=32_503_680_000_000)
    assert redrive(ops_settings(), future).considered == 0
    only = redrive(ops_settings(), Selection(dlq, to_topic=target, reasons=frozenset({"inference_failed"})), limit=3)
    assert only.total_redriven == 3 and only.stopped_by_limit
    rest = redrive(ops_settings(), Selection(dlq, to_topic=target, reasons=frozenset({"inference_failed"})))
    assert rest.total_redriven == 1 and rest.filtered == 3
    # The worker now reads the field "body": the missing_text letters would no longer fail.
    fixed = redrive(ops_settings(text_field="body"), Selection(dlq, to_topic=target, reasons=frozenset({"missing_text"})))
    assert fixed.resumed_from == {0: 0} and fixed.total_redriven == 3
    assert len(read_records(kafka_bootstrap, target, expected=7)) == 7


def test_dry_run_sends_and_commits_nothing(kafka_bootstrap, new_topic, ops_settings):
    """--dry-run reports what it would do, then a real run still finds every record."""
    source, target, dlq = new_topic(prefix="ops-src"), new_topic(prefix="ops-target"), new_topic(prefix="ops-dlq")
    write_letters(kafka_bootstrap, dlq, mixed_letters(source))
    dry = redrive(ops_settings(), Selection(dlq, to_topic=target), dry_run=True)
    assert dry.total_redriven == 5 and "would redrive 5" in dry.render()
    assert read_records(kafka_bootstrap, target, expected=1, timeout_s=2, quiet_s=0) == []
    assert redrive(ops_settings(), Selection(dlq, to_topic=target)).total_redriven == 5


def test_cli_prints_stats_and_redrive_from_the_environment(kafka_bootstrap, new_topic, monkeypatch, capsys):
    """`tagstream-worker dlq stats|redrive` read the brokers from TAGSTREAM_*; no bundle path is needed."""
    source, dlq = new_topic(prefix="ops-src"), new_topic(prefix="ops-dlq")
    write_letters(kafka_bootstrap, dlq, mixed_letters(source))
    for name in ("TAGSTREAM_BUNDLE_PATH", "TAGSTREAM_INPUT_TOPICS", "TAGSTREAM_INPUT_PATTERN", "TAGSTREAM_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TAGSTREAM_BOOTSTRAP_SERVERS", kafka_bootstrap)

    assert main(["dlq", "stats", "--from", dlq, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["total"] == 11 and stats["truncated"] == 2 and stats["by_reason"]["inference_failed"] == 5

    assert main(["dlq", "redrive", "--from", dlq, "--reason", "no_such_reason"]) == 2
    assert "use one of" in capsys.readouterr().err
    assert main(["dlq", "redrive", "--from", dlq]) == 0
    out = capsys.readouterr().out
    assert f"to {source}: 5" in out and "would fail again (invalid_utf8: 3)" in out and "truncated" in out
    wait_until(lambda: len(read_records(kafka_bootstrap, source, expected=5, timeout_s=5, quiet_s=0)) == 5, 30, "redriven records")
    assert main(["dlq", "stats", "--from", "no-such-topic.dlq"]) == 4
    assert REASON_HEADER not in capsys.readouterr().out
