"""Hostile input mixed into a valid stream (issue 10, point 7), generated with hypothesis: the worker
never exits, every hostile record is dead-lettered with the reason it deserves (or, labeled, when it
is in fact valid: a binary key or header value), and every valid event is labeled."""

from __future__ import annotations

import json
import string
import time
from typing import Any

import pytest
from harness import (
    SIZES,
    START_TIMEOUT_S,
    Outcomes,
    Row,
    WorkerProcess,
    clients,
    send_records,
    wait_for,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from worker_support import fixture_texts, worker_env

LABELED = "labeled"  # the expected outcome of a record that is valid after all
BIG_TOPIC = {"max.message.bytes": str(5 * 1024 * 1024)}


class NotUtf8(str):
    """A header key that encodes to bytes that are not UTF-8 (as a C or Java client may send it)."""

    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        return b"\xff\xfe-" + str.encode(self)


def event(i: int, text: str = "free prize call now") -> bytes:
    return json.dumps({"id": f"h{i}", "text": text}).encode()


def _json_or_utf8(value: bytes) -> str:
    """The reason a value that is not JSON gets: invalid_utf8 when its bytes are not UTF-8 to begin with."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    return "invalid_json"


texts = st.text(string.ascii_letters + " ", min_size=1, max_size=40).filter(str.strip)

# Each strategy gives (value, key, headers, expected reason or LABELED).
KINDS = (
    st.binary(max_size=40).map(lambda b: (b"\xff" + b, None, [], "invalid_utf8")),
    st.tuples(texts, st.integers(min_value=1, max_value=30)).map(
        lambda t: ((lambda full: full[: max(1, min(t[1], len(full) - 1))])(event(0, t[0])), None, [], "invalid_json")
    ),
    st.integers(min_value=2_000, max_value=50_000).map(lambda d: (b"[" * d + b"]" * d, None, [], "invalid_json")),
    st.integers(min_value=2_000, max_value=20_000).map(lambda d: (b'{"a":' * d + b"1" + b"}" * d, None, [], "invalid_json")),
    texts.map(lambda t: (b'{"id": "n", "text": "' + t.encode() + b'\x00"}', None, [], "invalid_json")),
    st.binary(min_size=1, max_size=8).map(lambda b: (b"\x00" + b, None, [], _json_or_utf8(b"\x00" + b))),
    st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(),
              st.lists(st.integers(), max_size=3)).map(
        lambda v: (json.dumps({"id": "w", "text": v}).encode(), None, [], "text_not_string")
    ),
    st.one_of(st.lists(st.integers(), max_size=3), st.integers(), texts).map(
        lambda v: (json.dumps(v).encode(), None, [], "not_an_object")
    ),
    st.just((b'{"id": "m", "body": "no text field"}', None, [], "missing_text")),
    st.text(" \t\n\r\u00a0\u2003", min_size=1, max_size=10).map(
        lambda ws: (json.dumps({"id": "e", "text": ws}).encode(), None, [], "empty_text")
    ),
    st.sampled_from([None, b""]).map(lambda v: (v, b"tomb", [], "empty_payload")),
    st.integers(min_value=1_100_000, max_value=4_000_000).map(
        lambda n: (b'{"id": "big", "text": "' + b"spam " * (n // 5) + b'"}', None, [], "payload_too_large")
    ),
    st.binary(min_size=1, max_size=64).map(lambda k: (event(1), k, [], LABELED)),
    st.binary(max_size=64).map(lambda v: (event(2), None, [("bin", v), ("nul", b"\x00")], LABELED)),
    st.just((event(3), b"kept", [(NotUtf8("k"), b"v"), ("ok", b"1")], "invalid_header")),
)
HOSTILE = st.one_of(*KINDS)
# One record of every kind (so each example covers them all), then random ones.
MIX = st.tuples(st.tuples(*KINDS), st.lists(HOSTILE, min_size=SIZES.hostile_records, max_size=SIZES.hostile_records))


@pytest.mark.parametrize("kafka_client", clients("confluent"), indirect=True)
@settings(
    max_examples=SIZES.hostile_examples, deadline=None, database=None, phases=[Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(MIX)
def test_hostile_records_mixed_into_a_valid_stream_never_stop_the_worker(
    kafka_bootstrap, new_topic, new_group, tiny_bundle, tmp_path_factory, fault_report, kafka_client, mix
):
    """Every hostile record gets its dead letter (or its result, if valid), every valid one a result; no exit."""
    began = time.monotonic()
    hostile = [*mix[0], *mix[1]]
    topic = new_topic(partitions=2, prefix="fault-hostile", configs=BIG_TOPIC)
    new_topic(partitions=1, name=f"{topic}.dlq")
    valid = [(json.dumps({"id": f"v{i}", "text": t}).encode(), f"v{i}".encode(), [])
             for i, t in enumerate(fixture_texts(len(hostile), seed=3))]
    mixed: list[tuple[Any, Any, list, str]] = []
    for bad, good in zip(hostile, valid, strict=True):
        mixed += [bad, (*good, LABELED)]
    landed = send_records(kafka_bootstrap, topic, [(v, k, h) for v, k, h, _ in mixed])
    expected = {where: want for where, (*_, want) in zip(landed, mixed, strict=True)}

    outcomes = Outcomes(kafka_bootstrap, topic)
    log = tmp_path_factory.mktemp("hostile") / "worker.log"
    worker = WorkerProcess(worker_env(kafka_bootstrap, topic, tiny_bundle, new_group()), log).start()
    try:
        wait_for(lambda: bool(worker.events("partitions_assigned")) or worker.exit_code() is not None,
                 START_TIMEOUT_S, "the worker to start")
        outcomes.wait_for(expected, 180)
        still_running = worker.exit_code() is None
    finally:
        code = worker.stop()
        outcomes.close()
    counts = outcomes.account(expected)
    wrong = {
        where: (want, outcomes.reasons.get(where, LABELED if where in outcomes.results else "nothing"))
        for where, want in expected.items()
        if (want == LABELED and where not in outcomes.results)
        or (want != LABELED and outcomes.reasons.get(where) != want)
    }
    reasons = sorted({want for want in expected.values() if want != LABELED})
    fault_report.add(Row(
        f"hostile records mixed 1:1 into a valid stream ({len(hostile)} hostile)", "at_least_once", kafka_client,
        len(expected),
        counts["results"], counts["dead_letters"], counts["missing"], counts["duplicates"], time.monotonic() - began,
        notes=f"hypothesis; reasons seen: {', '.join(reasons)}; wrong outcomes: {len(wrong)}",
    ))
    assert still_running, log.read_text()[-2000:]
    assert wrong == {}, f"{len(wrong)} records with the wrong outcome, e.g. {list(wrong.items())[:5]}"
    assert counts["missing"] == 0
    assert code == 0
