"""The worker as a process and as a group member: SIGTERM drains, restarts lose nothing,
two workers split the partitions, and fatal start-up problems exit non-zero with the reason."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from worker_support import (
    DRAIN_TIMEOUT_S,
    READER_METADATA_MAX_AGE_MS,
    STALL_TOKEN,
    START_TIMEOUT_S,
    fixture_texts,
    make_null_bundle,
    produce_events,
    read_records,
    spawn,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.integration

class ResultWatcher:
    """Reads the results topic in the background, counting results per id."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.ids: list[str] = []
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None, metadata_max_age_ms=READER_METADATA_MAX_AGE_MS
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for batch in self._consumer.poll(timeout_ms=100).values():
                self.ids.extend(json.loads(r.value)["id"] for r in batch)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def test_sigterm_mid_stream_then_restart_leaves_no_input_without_a_result(
    kafka_bootstrap, new_topic, new_group, tiny_bundle, tmp_path, kafka_client
):
    """SIGTERM while events stream in drains and exits 0; a restarted worker covers every remaining input."""
    topic = new_topic(partitions=3, prefix="worker-sigterm")
    group = new_group()
    texts = fixture_texts(8000, seed=21)
    ids = produce_events(kafka_bootstrap, topic, texts[:3000], prefix="a")
    late_ids: list[str] = []
    streaming = threading.Thread(  # keeps events coming while the first worker is stopped
        target=lambda: late_ids.extend(
            produce_events(kafka_bootstrap, topic, texts[3000:], prefix="b")
        ),
    )
    watcher = ResultWatcher(kafka_bootstrap, f"{topic}.labels")
    env = worker_env(kafka_bootstrap, topic, tiny_bundle, group)
    first = spawn(env, tmp_path / "first.log")
    try:
        wait_until(lambda: len(watcher.ids) >= 500 or first.poll() is not None, START_TIMEOUT_S,
                   "the first worker's results")
        streaming.start()
        first.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        assert first.wait(DRAIN_TIMEOUT_S + 15) == 0, (tmp_path / "first.log").read_text()[-3000:]
        drain_s = time.monotonic() - signalled_at
        results_at_stop = len(watcher.ids)
        streaming.join(60)
        all_ids = ids + late_ids
        assert len(all_ids) == 8000
        assert results_at_stop < len(all_ids), "the stop was not mid-stream"
        # The worker's own stop (drain, commit, both clients closed) ends within its drain timeout, by its log.
        # The process's exit comes after the interpreter's teardown: twice in CI on 2026-12-02 it came 16-17 s
        # after a stop that had ended in 0.2 s, for a reason not found (not reproduced alone, nor with both
        # cores kept busy). It is bounded here by the margin deploy/k8s/base gives above the drain timeout
        # (terminationGracePeriodSeconds 45 against TAGSTREAM_DRAIN_TIMEOUT_S 20), past which Kubernetes kills
        # the pod: nothing is lost then, as everything it labelled is committed.
        stop = {e["event"]: datetime.fromisoformat(e["timestamp"]) for e in _events(tmp_path / "first.log")}
        assert (stop["producer_closed"] - stop["signal"]).total_seconds() < DRAIN_TIMEOUT_S + 1, stop
        assert drain_s < DRAIN_TIMEOUT_S + EXIT_MARGIN_S

        second = spawn(env, tmp_path / "second.log")
        try:
            wait_until(lambda: set(all_ids) <= set(watcher.ids), RESULTS_TIMEOUT, "results for every input")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(DRAIN_TIMEOUT_S + 15) == 0
    finally:
        if first.poll() is None:
            first.kill()
        watcher.close()
    missing = set(all_ids) - set(watcher.ids)
    assert not missing, f"{len(missing)} inputs without a result"
    log = _events(tmp_path / "first.log")
    drained = [e for e in log if e.get("event") == "drained"]
    assert drained and drained[0]["unacknowledged_left_for_redelivery"] == 0


RESULTS_TIMEOUT = 90
EXIT_MARGIN_S = 45 - 20  # deploy/k8s/base: terminationGracePeriodSeconds less TAGSTREAM_DRAIN_TIMEOUT_S


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_two_workers_in_one_group_split_the_partitions_and_cover_all(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle
):
    """Two workers in one group each take some of the 3 partitions; together they label every input."""
    topic = new_topic(partitions=3, prefix="worker-group")
    first = start_worker(topic, tiny_bundle)
    second = start_worker(topic, tiny_bundle)
    wait_until(
        lambda: first.health.assigned > 0 and second.health.assigned > 0
        and first.health.assigned + second.health.assigned == 3,
        60, "both workers to hold partitions",
    )
    assert {first.health.assigned, second.health.assigned} == {1, 2}
    ids = produce_events(kafka_bootstrap, topic, fixture_texts(3000, seed=22))
    records = read_records(kafka_bootstrap, f"{topic}.labels", expected=3000)
    assert {json.loads(r.value)["id"] for r in records} == set(ids)
    in_first = first.metrics.value("tagstream_events_in_total", {"topic": topic})
    in_second = second.metrics.value("tagstream_events_in_total", {"topic": topic})
    assert in_first > 0 and in_second > 0 and in_first + in_second >= 3000
    partitions_first = {tp.partition for tp in first.tracker.assigned()}
    partitions_second = {tp.partition for tp in second.tracker.assigned()}
    assert partitions_first.isdisjoint(partitions_second)


def test_hot_reload_swaps_a_new_bundle_and_refuses_a_tampered_one(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle, tmp_path
):
    """A new valid bundle is swapped in without a restart (results carry its version); a tampered one is refused."""
    import shutil

    from worker_support import make_tiny_bundle

    topic = new_topic(partitions=1, prefix="worker-reload")
    worker = start_worker(topic, tiny_bundle, reload_interval_s=0.2)
    old_version = worker.slot.current.version
    produce_events(kafka_bootstrap, topic, fixture_texts(100, seed=23), prefix="before")

    staged = make_tiny_bundle(tmp_path / "staged-new", seed=7)
    new_version = json.loads((staged / "manifest.json").read_text())["version"]
    assert new_version != old_version
    shutil.rmtree(tiny_bundle)
    shutil.copytree(staged, tiny_bundle)  # replace the served folder, as a deploy would
    wait_until(
        lambda: worker.metrics.value("tagstream_model_info", {"name": "tiny-test", "version": new_version}) == 1,
        30, "the new bundle to be swapped in",
    )
    produce_events(kafka_bootstrap, topic, fixture_texts(100, seed=24), prefix="after")

    tampered = make_tiny_bundle(tmp_path / "staged-bad", seed=8)
    (tampered / "model.ts").write_bytes((tampered / "model.ts").read_bytes() + b"tampered")
    shutil.rmtree(tiny_bundle)
    shutil.copytree(tampered, tiny_bundle)
    wait_until(lambda: worker.metrics.value("tagstream_bundle_reloads_total", {"result": "refused"}) >= 1,
               30, "the tampered bundle to be refused")
    produce_events(kafka_bootstrap, topic, fixture_texts(100, seed=25), prefix="tampered")

    records = read_records(kafka_bootstrap, f"{topic}.labels", expected=300)
    versions: dict[str, set[str]] = {}
    for record in records:
        result = json.loads(record.value)
        versions.setdefault(result["id"].rstrip("0123456789"), set()).add(result["model_version"])
    assert versions["after"] == {new_version}
    assert versions["tampered"] == {new_version}  # the refused bundle never served
    assert versions["before"] <= {old_version, new_version}
    assert worker.slot.current.version == new_version


def test_check_passes_with_a_good_setup_and_names_a_missing_topic(
    kafka_bootstrap, new_topic, new_group, tiny_bundle, tmp_path, kafka_client
):
    """`tagstream-worker check` exits 0 for a good setup, naming the client it connected with and how long the
    input topic keeps its records, and non-zero naming a missing input topic."""
    topic = new_topic(partitions=1, prefix="worker-check", configs={"retention.ms": "5400000"})
    env = worker_env(kafka_bootstrap, topic, tiny_bundle, new_group())
    good = subprocess.run([sys.executable, "-m", "worker.cli", "check"], env=env, capture_output=True,
                          text=True, timeout=START_TIMEOUT_S)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok   bundle: tiny-test version" in good.stdout and "worker can start" in good.stdout
    assert f"PLAINTEXT, {kafka_client})" in good.stdout
    assert f"ok   input retention: {topic} 1.5 h: a group stopped or behind longer than that loses inputs" in good.stdout
    env["TAGSTREAM_INPUT_TOPICS"] = "no-such-topic-here"
    bad = subprocess.run([sys.executable, "-m", "worker.cli", "check"], env=env, capture_output=True,
                         text=True, timeout=START_TIMEOUT_S)
    assert bad.returncode == 4
    assert "FAIL topics: input topic(s) ['no-such-topic-here'] do not exist" in bad.stdout


def test_check_fails_when_the_metrics_port_is_taken_like_run_would(
    kafka_bootstrap, new_topic, new_group, tiny_bundle
):
    """With TAGSTREAM_METRICS_PORT taken, `check` and `run` both exit 2 with a line naming the setting."""
    import socket

    topic = new_topic(partitions=1, prefix="worker-port")
    with socket.create_server(("0.0.0.0", 0)) as taken:
        env = worker_env(kafka_bootstrap, topic, tiny_bundle, new_group())
        env["TAGSTREAM_METRICS_PORT"] = str(taken.getsockname()[1])
        check = subprocess.run([sys.executable, "-m", "worker.cli", "check"], env=env, capture_output=True,
                               text=True, timeout=START_TIMEOUT_S)
        run = subprocess.run([sys.executable, "-m", "worker.cli", "run"], env=env, capture_output=True,
                             text=True, timeout=START_TIMEOUT_S)
    assert run.returncode == 2 and "TAGSTREAM_METRICS_PORT" in run.stderr.splitlines()[-1]
    assert check.returncode == 2, check.stdout
    assert "FAIL metrics port: TAGSTREAM_METRICS_PORT=" in check.stdout and "worker would not start" in check.stdout


@pytest.mark.parametrize(
    ("change", "exit_code", "message"),
    [
        ("bundle", 3, "failed verification"),
        ("topic", 4, "input topic 'no-such-topic-here' does not exist"),
    ],
)
def test_fatal_start_up_problems_exit_non_zero_with_the_reason(
    kafka_bootstrap, new_topic, new_group, tiny_bundle, tmp_path, change, exit_code, message, kafka_client
):
    """A tampered bundle exits 3 and a missing input topic exits 4, each with a one-line reason."""
    topic = new_topic(partitions=1, prefix="worker-fatal")
    if change == "bundle":
        (tiny_bundle / "labels.json").write_text('["a", "b", "c"]\n')
    else:
        topic = "no-such-topic-here"
    env = worker_env(kafka_bootstrap, topic, tiny_bundle, new_group())
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "run"], env=env, capture_output=True, text=True,
                          timeout=START_TIMEOUT_S)
    assert proc.returncode == exit_code, proc.stdout + proc.stderr
    assert message in proc.stderr.splitlines()[-1]


def test_a_model_stage_lost_mid_stream_exits_without_waiting_for_the_batches_it_held(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle, kafka_client
):
    """When the model stage fails for good mid-stream (a pod's model process lost, say), the batches it
    held and the ones queued for it can never be acknowledged: the worker gives them up at once (they
    are read again after the restart) instead of waiting for them in its drain and its rebalance
    listener (up to 10 s, while its partitions wait), exits with the failure's code, and a successor
    labels every input."""
    from worker.errors import Failure, WorkerError

    topic = new_topic(partitions=3, prefix="worker-model-lost")
    ids = produce_events(kafka_bootstrap, topic, fixture_texts(4000, seed=23))
    worker = start_worker(topic, tiny_bundle, drain_timeout_s=30)  # rebalance grace: min(30, 10) s
    runner = worker.slot.current
    classify, calls = runner.classify, []

    def lost_after_a_few(token_ids, **kwargs):
        calls.append(len(token_ids))
        if len(calls) > 3:
            raise WorkerError("the model process is gone (test)", Failure.MODEL_PROCESS_LOST)
        return classify(token_ids, **kwargs)

    runner.classify = lost_after_a_few
    wait_until(lambda: worker.fatal is not None, 60, "the model stage's failure")
    failed_at = time.monotonic()
    assert worker.wait(timeout=60) == Failure.MODEL_PROCESS_LOST.exit_code
    exit_s = time.monotonic() - failed_at
    assert exit_s < 5, f"the worker waited {exit_s:.1f} s for batches the lost model stage could not finish"
    assert worker.tracker.in_flight() == 0

    runner.classify = classify
    successor = start_worker(topic, tiny_bundle)
    records = read_records(kafka_bootstrap, f"{topic}.labels", expected=len(ids))
    assert {json.loads(r.value)["id"] for r in records} == set(ids)
    successor.stop()


# make test: kafka-python; a confluent worker exiting 1 past a hung call is in make test by
# test_delivered_hints_on_broker's confluent-exactly_once row
@pytest.mark.full_size_only("confluent")
def test_a_hung_model_call_is_timed_in_healthz_and_the_worker_exits_1_leaving_no_input_unlabeled(
    kafka_bootstrap, new_topic, new_group, tmp_path, kafka_client
):
    """A model call that never returns (the stalling null bundle, on a text holding STALL_TOKEN):
    /healthz says how long the call has run, and past TAGSTREAM_MODEL_STALL_S the worker exits 1
    (model_stalled) instead of holding its partitions for ever, leaving the hung thread behind. It
    gives the hung batch up rather than waiting out the drain timeout for it; a successor labels
    every input, the stalling one and the rest of its batch included. (That /healthz fails past the
    limit is tests/unit/worker/test_telemetry.py's: the worker now exits within milliseconds of it,
    too soon for a probe to be sure of seeing it.)"""
    topic = new_topic(partitions=2, prefix="worker-stall")
    group = new_group()
    texts = fixture_texts(400, seed=24)
    texts[200] = f"{texts[200]} {STALL_TOKEN}"
    ids = produce_events(kafka_bootstrap, topic, texts)
    stalling = make_null_bundle(tmp_path / "stalling", stalling=True)
    log = tmp_path / "stalling.log"
    proc = spawn(worker_env(kafka_bootstrap, topic, stalling, group, TAGSTREAM_MODEL_STALL_S="3"), log)
    bodies: list[dict] = []

    def events(name):
        lines = log.read_text(errors="replace").splitlines()
        return [e for e in (json.loads(line) for line in lines if line.startswith("{")) if e.get("event") == name]

    def healthz_times_the_call():
        ports = events("telemetry_listening")
        if not ports:
            return proc.poll() is not None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]['port']}/healthz", timeout=2) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # past the limit, in the moment before the exit
            body = json.loads(exc.read())
        except OSError:
            return proc.poll() is not None
        bodies.append(body)
        return body["model_call_s"] >= 1

    try:
        wait_until(healthz_times_the_call, START_TIMEOUT_S, "/healthz to time the hung call")
        assert bodies and bodies[-1]["model_call_s"] >= 1, log.read_text()[-3000:]
        assert bodies[-1]["model_stall_limit_s"] == 3
        # Failing, it fails for the call alone. The body rounds to milliseconds: a call 3.0004 s old fails the
        # check (> 3 s) and reads 3.0 (seen once in CI), so the reading is compared with >=.
        assert all(body["ok"] or body["model_call_s"] >= 3 for body in bodies), bodies
        assert proc.wait(DRAIN_TIMEOUT_S + 30) == 1, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    fatal = events("fatal")[0]
    assert fatal["kind"] == "model_stalled"
    exited = events("exiting_past_stuck_threads")[0]
    assert exited["exit_code"] == 1
    # The hung batch is given up (read again by the successor): the drain delivers and commits the
    # rest at once instead of waiting out TAGSTREAM_DRAIN_TIMEOUT_S for a call that never returns.
    given_up = events("model_call_given_up")
    assert len(given_up) == 1 and given_up[0]["inputs"] >= 1, given_up

    def at(e):
        return datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
    assert (at(exited) - at(fatal)).total_seconds() < DRAIN_TIMEOUT_S / 2, (fatal, exited)

    watcher = ResultWatcher(kafka_bootstrap, f"{topic}.labels")
    successor = spawn(worker_env(kafka_bootstrap, topic, make_null_bundle(tmp_path / "null"), group),
                      tmp_path / "successor.log")
    try:
        wait_until(lambda: set(ids) <= set(watcher.ids), RESULTS_TIMEOUT, "results for every input")
    finally:
        watcher.close()
        successor.send_signal(signal.SIGTERM)
        assert successor.wait(DRAIN_TIMEOUT_S + 15) == 0
