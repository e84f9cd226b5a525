"""Crashes and scaling while events stream (issue 10, point 7): kill -9 again and again, 1 -> 3 -> 1
workers, and a model slower than max.poll.interval.ms allows. Nothing may go missing; exactly-once
may not duplicate either."""

from __future__ import annotations

import random
import statistics
import time

import pytest
from harness import (
    FULL,
    SIZES,
    START_TIMEOUT_S,
    Outcomes,
    Row,
    Stream,
    WorkerProcess,
    clients,
    wait_for,
)
from worker_support import worker_env

RESULTS_TIMEOUT_S = 240

BEFORE_ONLY_FULL = pytest.mark.skipif(
    not FULL, reason="the 'before' row (dynamic membership, 1 s commits) waits out a 45 s session timeout per kill:"
    " make faults only",
)
KILL_VARIANTS = [
    # (guarantee, static membership, commit interval ms, client) for each client of the scenario
    # (both at full size; at the reduced size one each: see harness.clients)
    *(pytest.param("at_least_once", False, 1000, c, id=f"at-least-once-before-{c}", marks=BEFORE_ONLY_FULL)
      for c in clients("kafka-python")),
    *(pytest.param("at_least_once", True, 200, c, id=f"at-least-once-{c}") for c in clients("kafka-python")),
    *(pytest.param("exactly_once", True, 200, c, id=f"exactly-once-{c}") for c in clients("confluent")),
]
SCALE_VARIANTS = [
    *(pytest.param("at_least_once", c, id=f"at_least_once-{c}") for c in clients("confluent")),
    *(pytest.param("exactly_once", c, id=f"exactly_once-{c}") for c in clients("kafka-python")),
]


@pytest.mark.parametrize(("guarantee", "static", "commit_ms", "kafka_client"), KILL_VARIANTS, indirect=["kafka_client"])
def test_kill_9_again_and_again_while_streaming(
    kafka_bootstrap, new_topic, new_group, tiny_bundle, tmp_path, fault_report, guarantee, static, commit_ms,
    kafka_client,
):
    """kill -9 at random moments while events stream: 0 missing; exactly-once also 0 duplicates (read_committed)."""
    began = time.monotonic()
    topic = new_topic(partitions=SIZES.kill_partitions, prefix="fault-kill")
    env = worker_env(kafka_bootstrap, topic, tiny_bundle, new_group())
    env.update(TAGSTREAM_PROCESSING_GUARANTEE=guarantee, TAGSTREAM_COMMIT_INTERVAL_MS=str(commit_ms))
    if static:
        env["TAGSTREAM_GROUP_INSTANCE_ID"] = "fault-worker-0"
    exactly_once = guarantee == "exactly_once"
    outcomes = Outcomes(kafka_bootstrap, topic, read_committed=exactly_once)
    stream = Stream(kafka_bootstrap, topic, SIZES.kill_events, SIZES.kill_rate).start()
    rng = random.Random(13)
    worker = WorkerProcess(env, tmp_path / "worker-0.log").start()
    recoveries: list[float] = []
    try:
        for k in range(SIZES.kills):
            wait_for(lambda w=worker: any(e["partitions"] for e in w.events("partitions_assigned")),
                     START_TIMEOUT_S + 60, f"worker {k} to get partitions")
            time.sleep(rng.uniform(0.5, 2.5))  # a random moment in its work
            worker.kill()
            worker = WorkerProcess(env, tmp_path / f"worker-{k + 1}.log").start()
            recoveries.append(wait_for(
                lambda w=worker: any(e["partitions"] for e in w.events("partitions_assigned")),
                START_TIMEOUT_S + 60, f"restart {k + 1} to get partitions",
            ))
        sent = stream.join()
        outcomes.wait_for(sent, RESULTS_TIMEOUT_S)
        assert worker.exit_code() is None, "the last worker exited by itself"
    finally:
        code = worker.stop()
        outcomes.close()
    counts = outcomes.account(sent)
    fault_report.add(Row(
        f"kill -9 x{SIZES.kills} while streaming, {SIZES.kill_partitions} partitions", guarantee, kafka_client, len(sent),
        counts["results"], counts["dead_letters"], counts["missing"], counts["duplicates"], time.monotonic() - began,
        notes=(f"{'static' if static else 'dynamic'} membership, commits every {commit_ms} ms;"
               f" {counts['duplicates'] / SIZES.kills:,.0f} duplicates per kill;"
               f" restart to partitions {statistics.median(recoveries):.1f} s (median)"),
    ))
    assert counts["missing"] == 0, f"{counts['missing']} inputs without an outcome"
    if exactly_once:
        assert counts["duplicates"] == 0, f"{counts['duplicates']} duplicate outcomes read_committed"
    assert code == 0


@pytest.mark.parametrize(("guarantee", "kafka_client"), SCALE_VARIANTS, indirect=["kafka_client"])
def test_one_to_three_to_one_workers_while_streaming(
    kafka_bootstrap, new_topic, new_group, tiny_bundle, tmp_path, fault_report, guarantee, kafka_client
):
    """Scale 1 -> 3 -> 1 workers (SIGTERM on the way down) during a stream: 0 missing."""
    began = time.monotonic()
    topic = new_topic(partitions=6, prefix="fault-scale")
    env = worker_env(kafka_bootstrap, topic, tiny_bundle, new_group())
    env.update(TAGSTREAM_PROCESSING_GUARANTEE=guarantee)
    exactly_once = guarantee == "exactly_once"
    outcomes = Outcomes(kafka_bootstrap, topic, read_committed=exactly_once)
    stream = Stream(kafka_bootstrap, topic, SIZES.scale_events, rate=SIZES.scale_events / 12).start()
    workers = [WorkerProcess({**env, "TAGSTREAM_GROUP_INSTANCE_ID": f"scale-{i}"}, tmp_path / f"w{i}.log")
               for i in range(3)]
    exits: list[int | None] = []
    try:
        workers[0].start()
        wait_for(lambda: bool(workers[0].events("partitions_assigned")), START_TIMEOUT_S, "the first worker")
        time.sleep(2)
        workers[1].start()
        workers[2].start()
        wait_for(lambda: all(any(e["partitions"] for e in w.events("partitions_assigned")) for w in workers[1:]),
                 START_TIMEOUT_S, "three workers sharing the partitions")
        time.sleep(2)
        exits = [workers[2].stop(), workers[1].stop()]
        sent = stream.join()
        outcomes.wait_for(sent, RESULTS_TIMEOUT_S)
    finally:
        exits.append(workers[0].stop())
        for w in workers:
            w.kill()
        outcomes.close()
    counts = outcomes.account(sent)
    fault_report.add(Row(
        "1 -> 3 -> 1 workers while streaming, 6 partitions", guarantee, kafka_client, len(sent), counts["results"],
        counts["dead_letters"], counts["missing"], counts["duplicates"], time.monotonic() - began,
        notes="two join mid-stream, then both stop (SIGTERM) mid-stream",
    ))
    assert counts["missing"] == 0
    if exactly_once:
        assert counts["duplicates"] == 0
    assert exits == [0, 0, 0]


@pytest.mark.parametrize("kafka_client", clients("confluent"), indirect=True)
def test_a_model_slower_than_max_poll_interval_keeps_its_membership(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle, fault_report, kafka_client
):
    """Batches that take longer than max.poll.interval.ms: no rebalance, no failed commit, every input labeled."""
    from worker_support import fixture_texts, produce_events, read_records

    began = time.monotonic()
    topic = new_topic(partitions=2, prefix="fault-slow")
    n = 40
    produce_events(kafka_bootstrap, topic, fixture_texts(n, seed=2))
    worker = start_worker(
        topic, tiny_bundle, max_poll_interval_ms=1_500, session_timeout_ms=6_000, max_batch_size=8,
        commit_interval_ms=500,
    )
    runner = worker.slot.current
    fast = runner.classify

    def slow(token_ids, **kwargs):
        time.sleep(2.0)  # longer than max.poll.interval.ms
        return fast(token_ids, **kwargs)

    runner.classify = slow  # type: ignore[method-assign]
    results = read_records(kafka_bootstrap, f"{topic}.labels", expected=n, timeout_s=120)
    m = worker.metrics
    failed_commits = m.value("tagstream_commits_total", {"result": "failed"})
    worker.stop()
    assert worker.wait(timeout=60) == 0
    fault_report.add(Row(
        "model slower than max.poll.interval.ms (2 s batches, 1.5 s limit)", "at_least_once", kafka_client, n,
        len(results), 0,
        n - len({r.value for r in results}), len(results) - n, time.monotonic() - began,
        notes=f"commit failures: {failed_commits:.0f}; the member stayed in the group",
    ))
    assert len(results) == n
    assert failed_commits == 0
