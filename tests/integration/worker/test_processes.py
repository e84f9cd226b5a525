"""TAGSTREAM_PROCESSES=2 against a real broker: one pod of two feeder processes and a model process.

Every input is labeled once; SIGTERM drains both feeders and exits 0; a feeder killed with SIGKILL
is restarted and nothing is lost; exactly-once holds per feeder; a new bundle is swapped in across
the processes without ever running one bundle's token ids on another's model; the pod exits
non-zero when its model process dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from worker_support import (
    DRAIN_TIMEOUT_S,
    STALL_TOKEN,
    assert_only_dead_letter,
    fixture_texts,
    make_null_bundle,
    make_tiny_bundle,
    produce_events,
    read_records,
    spawn,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.integration

POD_START_S = 180  # three Python processes, one importing torch, on a busy 2-core machine
RESULTS_S = 180


class Pod:
    """``tagstream-worker run`` with TAGSTREAM_PROCESSES=2 as a subprocess, read through its JSON log."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = spawn({**env, "TAGSTREAM_PROCESSES": "2"}, log)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if name is None or event.get("event") == name:
                    out.append(event)
        return out

    def port(self) -> int:
        wait_until(lambda: self.events("telemetry_listening") or self.proc.poll() is not None, POD_START_S,
                   "the pod's telemetry")
        assert self.proc.poll() is None, self.tail()
        return int(self.events("telemetry_listening")[0]["port"])

    def feeder_pids(self, index: int) -> list[int]:
        return [e["pid"] for e in self.events("feeder_started") if e["feeder"] == index]

    def wait_started(self) -> None:
        wait_until(lambda: (self.feeder_pids(0) and self.feeder_pids(1)) or self.proc.poll() is not None,
                   POD_START_S, "both feeders to start")
        assert self.proc.poll() is None, self.tail()

    def metric(self, name: str, labels: str = "") -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port()}/metrics", timeout=10) as response:
            text = response.read().decode()
        key = f"{name}{{{labels}}}" if labels else name
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(key + " "))

    def model_call_s(self) -> float:
        """How long the model process's current model call has run (0 when idle), from the pod's /healthz."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port()}/healthz", timeout=10) as response:
                body = response.read()
        except urllib.error.HTTPError as failing:  # 503 once a call passes the limit: the body still says
            body = failing.read()
        return float(json.loads(body).get("model_process", {}).get("model_call_s", 0.0))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(DRAIN_TIMEOUT_S + 30)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Results:
    """Reads a results topic in the background (read_committed when asked), counting results per id."""

    def __init__(self, bootstrap: str, topic: str, **client: Any) -> None:
        self.values: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                       group_id=None, **client)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for batch in self._consumer.poll(timeout_ms=100).values():
                self.values.extend(json.loads(r.value) for r in batch)

    def ids(self) -> Counter:
        return Counter(v["id"] for v in list(self.values))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


@pytest.fixture
def pods(tmp_path):
    made: list[Pod] = []

    def start(env: dict[str, str], name: str) -> Pod:
        pod = Pod(env, tmp_path / f"{name}.log")
        made.append(pod)
        return pod

    yield start
    for pod in made:
        pod.kill()


def produce_steadily(bootstrap: str, topic: str, texts: list[str], per_second: float) -> tuple[threading.Thread, list[str]]:
    """Produce ``texts`` in the background at about ``per_second``; returns the thread and the ids (filled as sent)."""
    ids: list[str] = []

    def run() -> None:
        for start in range(0, len(texts), 50):
            ids.extend(produce_events(bootstrap, topic, texts[start : start + 50], prefix=f"s{start}-"))
            time.sleep(50 / per_second)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, ids


def test_two_feeders_label_every_input_once_and_sigterm_drains_both(
    kafka_bootstrap, new_topic, new_group, tiny_bundle, pods
):
    """Both feeders take partitions and label inputs; SIGTERM mid-stream drains both and exits 0; after a
    restart every input has exactly one result."""
    topic = new_topic(partitions=4, prefix="pod-drain")
    env = worker_env(kafka_bootstrap, topic, tiny_bundle, new_group())
    results = Results(kafka_bootstrap, f"{topic}.labels")
    try:
        first = pods(env, "first")
        first.wait_started()
        streaming, ids = produce_steadily(kafka_bootstrap, topic, fixture_texts(4000, seed=41), per_second=400)
        wait_until(
            lambda: {e["process"] for e in first.events("partitions_assigned") if e["partitions"]}
            == {"feeder-0", "feeder-1"} or first.proc.poll() is not None,
            60, "both feeders to hold partitions",
        )
        wait_until(lambda: len(results.values) >= 500 or first.proc.poll() is not None, RESULTS_S,
                   "the first results")
        assert first.metric("tagstream_ready") == 1
        assert first.metric("tagstream_feeders", 'state="running"') == 2
        assert first.stop() == 0, first.tail()
        drained = first.events("drained")
        assert sorted(e["process"] for e in drained) == ["feeder-0", "feeder-1"]
        assert all(e["unacknowledged_left_for_redelivery"] == 0 for e in drained)
        assert first.events("model_process_stopped")
        claim = first.events("pod_starting")[0]["shared_memory_claim"]  # shm_claim.py: the pod's names
        assert not [p for p in Path("/dev/shm").glob(f"tagstream-{claim}*")], "the pod left shared memory behind"
        assert not (Path(tempfile.gettempdir()) / f"tagstream-{claim}").exists(), "the pod left its run folder"
        assert streaming.is_alive(), "the stop was not mid-stream"
        streaming.join(60)

        second = pods(env, "second")
        wait_until(lambda: set(ids) <= set(results.ids()) or second.proc.poll() is not None, RESULTS_S,
                   "results for every input")
        time.sleep(1.0)  # a duplicate would come right behind
        assert second.stop() == 0, second.tail()
    finally:
        results.close()
    counts = results.ids()
    assert len(ids) == 4000 and set(counts) == set(ids)
    assert max(counts.values()) == 1, f"{sum(c > 1 for c in counts.values())} inputs labeled more than once"


def test_a_feeder_killed_with_sigkill_is_restarted_and_nothing_is_lost_and_a_dead_model_stops_the_pod(
    kafka_bootstrap, new_topic, new_group, tiny_bundle, pods
):
    """SIGKILL of one feeder mid-stream: it is restarted (its static id gets its partitions back), the other
    carries on, and every input gets a result; SIGKILL of the model process makes the pod exit 1."""
    topic = new_topic(partitions=4, prefix="pod-kill")
    env = worker_env(kafka_bootstrap, topic, tiny_bundle, new_group(),
                     TAGSTREAM_GROUP_INSTANCE_ID=f"pod-{uuid.uuid4().hex[:6]}")
    ids = produce_events(kafka_bootstrap, topic, fixture_texts(5000, seed=42))
    results = Results(kafka_bootstrap, f"{topic}.labels")
    try:
        pod = pods(env, "pod")
        pod.wait_started()
        wait_until(lambda: len(results.values) >= 500 or pod.proc.poll() is not None, RESULTS_S, "the first results")
        victim = pod.feeder_pids(0)[-1]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(pod.feeder_pids(0)) == 2 or pod.proc.poll() is not None, 60, "feeder 0's restart")
        assert pod.proc.poll() is None, pod.tail()
        assert pod.feeder_pids(0)[-1] != victim
        assert pod.events("feeder_restarting")[0]["feeder"] == 0
        wait_until(lambda: set(ids) <= set(results.ids()), RESULTS_S, "results for every input")
        assert pod.metric("tagstream_feeder_restarts_total", 'feeder="0"') == 1
        assert pod.metric("tagstream_feeder_restarts_total", 'feeder="1"') == 0

        model_pid = pod.events("model_process_ready")[0]["pid"]
        os.kill(model_pid, signal.SIGKILL)
        assert pod.proc.wait(DRAIN_TIMEOUT_S + 30) == 1, pod.tail()
        assert pod.events("pod_failing")[0]["reason"] == "the model process exited (killed by SIGKILL)"
    finally:
        results.close()
    assert set(results.ids()) == set(ids)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
# make test: the default guarantee; exactly-once pods through a feeder's SIGKILL below, and an
# exactly-once worker with this pill in test_delivered_hints_on_broker.py
@pytest.mark.full_size_only("exactly_once")
def test_an_input_that_hangs_the_model_every_time_is_dead_lettered_after_a_bounded_number_of_pod_restarts(
    kafka_bootstrap, new_topic, new_group, tmp_path, pods, guarantee
):
    """A model call that never returns in the model process (the stalling null bundle, on the pill):
    past TAGSTREAM_MODEL_STALL_S the model process answers the feeders whose requests were in that
    call STALLED and exits; the pod exits 1 instead of holding its partitions for ever. The call's
    inputs are counted in a commit, so the next pod runs each of them alone, unmerged (it hangs on
    the pill alone), and whoever reads the pill's partition after that dead-letters it
    (stalled_twice) without running it: the second pod's other feeder, if the partition reaches it
    as the pod drains, else the third pod, which labels everything else. Nothing is lost.
    The pill waits in the backlog, so the rebalance as each pod's second feeder joins often moves
    its partition while the call runs (exactly-once gives partitions up at once): the model
    process names every input of the call to every feeder, and the one that owns the partition
    then counts it. So the bound is exact: one hang on a batch, one on the pill alone."""
    topic = new_topic(partitions=4, prefix="pod-stall")
    group = new_group()
    env = worker_env(kafka_bootstrap, topic, make_null_bundle(tmp_path / "stalling", stalling=True), group,
                     TAGSTREAM_MODEL_STALL_S="3", TAGSTREAM_GROUP_INSTANCE_ID=f"pod-{uuid.uuid4().hex[:6]}",
                     TAGSTREAM_PROCESSING_GUARANTEE=guarantee)
    texts = fixture_texts(600, seed=43)
    texts[300] = f"{texts[300]} {STALL_TOKEN}"
    ids = produce_events(kafka_bootstrap, topic, texts)
    pill = ids[300]
    results = Results(kafka_bootstrap, f"{topic}.labels")
    try:
        first = pods(env, "pod1")
        assert first.proc.wait(POD_START_S + 60) == 1, first.tail()
        stalled = first.events("model_stalled")
        assert stalled and stalled[0]["process"] == "model" and stalled[0]["call_s"] > 3, first.tail()
        assert stalled[0]["inputs"] > 1, stalled  # the pill was in a batch
        assert first.events("pod_failing")[0]["reason"] == "the model process exited (exit code 1)"
        counted = [e for e in first.events("model_call_given_up") if e.get("by") == "model process"]
        assert sum(e["inputs"] for e in counted) >= stalled[0]["inputs"], first.tail()

        # Successors until one runs on (at most three: a count lost would show as a batch hung again).
        successors: list[Pod] = []
        stalls: list[tuple[int, int]] = []

        def dead_lettered() -> list[dict]:
            return [e for pod in successors for e in pod.events("input_dead_lettered_after_stalls")]

        def settled(pod: Pod) -> bool:
            started = bool(pod.feeder_pids(0) and pod.feeder_pids(1))  # so that SIGTERM finds a drain
            everything_else = started and set(ids) - {pill} <= set(results.ids()) and bool(dead_lettered())
            return pod.proc.poll() is not None or bool(pod.events("model_stalled")) or everything_else

        for n in (2, 3, 4):
            pod = pods(env, f"pod{n}")
            successors.append(pod)
            wait_until(lambda pod=pod: settled(pod), POD_START_S + RESULTS_S,
                       "the pod to hang on the pill again, or a result for every other input and the pill dead-lettered")
            if pod.proc.poll() is None and not pod.events("model_stalled"):
                break  # runs on
            assert pod.proc.wait(60) == 1, pod.tail()  # it hung (its drain may have dead-lettered the pill)
            stalls += [(e["requests"], e["inputs"]) for e in pod.events("model_stalled")]
        assert successors[-1].proc.poll() is None, f"every successor hung on the pill: {stalls}"
        assert stalls == [(1, 1)], stalls  # once, on the pill alone
        assert successors[-1].stop() == 0, successors[-1].tail()
        assert not successors[-1].events("model_stalled"), successors[-1].tail()
        assert [e["stalls"] for e in dead_lettered()] == [2]
        assert pill not in results.ids()
    finally:
        results.close()
    assert_only_dead_letter(kafka_bootstrap, topic, pill, "stalled_twice")


def test_an_input_whose_model_call_the_model_process_or_the_whole_pod_is_killed_in_is_dead_lettered_in_bounded_restarts(
    kafka_bootstrap, new_topic, new_group, tmp_path, pods
):
    """A model process killed in the middle of a call (SIGKILL while it hangs on the pill, as the OOM
    killer or a crash would) answers nobody, but the slot of each request in that call says so: their
    feeders count those inputs as deaths. A pod killed whole (every process, as a container's OOM kill
    or a liveness probe's SIGKILL ends it) leaves no feeder to count: its model process wrote each
    call to the journal its supervisor holds, and the next pod's supervisor counts it from there.
    Pods 1 and 3 lose their model process, pod 2 is killed whole while it runs the pill alone. A
    death may come from outside the worker, so deaths convict only after two with the input alone,
    as in one process: the fourth pod dead-letters the pill without running it. Before the slots,
    such a kill counted nothing and the pods restarted for ever; before the journal, so did pods
    killed whole. The journal counts only pod 2's call: a death the feeders counted is never counted
    again at the next start."""
    topic = new_topic(partitions=2, prefix="pod-killed-call")
    env = worker_env(kafka_bootstrap, topic, make_null_bundle(tmp_path / "stalling", stalling=True), new_group(),
                     TAGSTREAM_GROUP_INSTANCE_ID=f"pod-{uuid.uuid4().hex[:6]}",
                     TAGSTREAM_MODEL_STALL_S="300")  # the pods never give the call up themselves
    ids = produce_events(kafka_bootstrap, topic, fixture_texts(100, seed=46), prefix="a")
    results = Results(kafka_bootstrap, f"{topic}.labels")
    try:
        killed = []
        for n in (1, 2, 3):
            pod = pods(env, f"pod{n}")
            pod.wait_started()
            if n == 1:
                wait_until(lambda: set(ids) <= set(results.ids()), RESULTS_S, "the first results")
                pill = produce_events(kafka_bootstrap, topic, [f"a news item that hangs the model {STALL_TOKEN}"],
                                      prefix="pill")[0]
            wait_until(lambda: pod.model_call_s() >= 1.0, POD_START_S, "the pill's model call to hang")  # noqa: B023
            model = pod.events("model_process_ready")[0]["pid"]
            if n == 2:  # whole: the feeders and the supervisor first, so that no process counts the call
                for pid in [*pod.feeder_pids(0)[-1:], *pod.feeder_pids(1)[-1:], pod.proc.pid, model]:
                    os.kill(pid, signal.SIGKILL)
                assert pod.proc.wait(60) == -signal.SIGKILL
            else:
                os.kill(model, signal.SIGKILL)
                assert pod.proc.wait(60) == 1, pod.tail()
            killed.append(pod)
        counted = [[(e["inputs"], e["died"]) for e in pod.events("model_call_given_up")] for pod in killed]
        assert counted == [[(1, True)], [], [(1, True)]], [pod.tail() for pod in killed]
        from_journal = [[(e["inputs"], e["alone"]) for e in pod.events("died_in_model_calls_counted")]
                        for pod in killed]
        assert from_journal == [[], [], [(1, 1)]], [pod.tail() for pod in killed]  # pod 2's call, alone, once
        assert not any(pod.events("input_dead_lettered_after_stalls") for pod in killed[:2])
        fourth = pods(env, "pod4")
        # The third pod's other feeder may have dead-lettered the pill already: wait for a drain to stop.
        fourth.wait_started()

        def dead_lettered() -> list[dict]:
            return [e for pod in (killed[2], fourth) for e in pod.events("input_dead_lettered_after_stalls")]

        wait_until(lambda: bool(dead_lettered()) or fourth.proc.poll() is not None, POD_START_S + RESULTS_S,
                   "the pill dead-lettered")
        assert fourth.proc.poll() is None and not fourth.events("model_call_given_up"), fourth.tail()
        assert not fourth.events("died_in_model_calls_counted"), fourth.tail()  # pod 3's death: counted by its feeders
        assert [(e["stalls"], e["died_in_calls"]) for e in dead_lettered()] == [(3, 3)]
        assert fourth.stop() == 0, fourth.tail()
    finally:
        results.close()
    assert_only_dead_letter(kafka_bootstrap, topic, pill, "stalled_twice")


def test_a_frozen_model_process_is_killed_past_the_stall_limit_and_the_pod_exits_1(
    kafka_bootstrap, new_topic, new_group, tiny_bundle, pods
):
    """A model process that answers nothing (SIGSTOP: it cannot time its own calls) is killed by the
    supervisor once silent for TAGSTREAM_MODEL_STALL_S, and the pod exits 1, its inputs read again later."""
    topic = new_topic(partitions=4, prefix="pod-frozen")
    env = worker_env(kafka_bootstrap, topic, tiny_bundle, new_group(), TAGSTREAM_MODEL_STALL_S="3",
                     TAGSTREAM_GROUP_INSTANCE_ID=f"pod-{uuid.uuid4().hex[:6]}")
    produce_events(kafka_bootstrap, topic, fixture_texts(200, seed=45))
    pod = pods(env, "pod")
    pod.wait_started()
    model_pid = pod.events("model_process_ready")[0]["pid"]
    os.kill(model_pid, signal.SIGSTOP)
    try:
        assert pod.proc.wait(60) == 1, pod.tail()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(model_pid, signal.SIGCONT)
    unresponsive = pod.events("model_process_unresponsive")
    assert unresponsive and unresponsive[0]["silent_s"] > 3, pod.tail()
    assert pod.events("pod_failing")[0]["reason"] == "the model process exited (killed by SIGKILL)"


@pytest.mark.parametrize("membership", ["static", "dynamic"])
def test_exactly_once_holds_per_feeder_through_a_feeder_sigkill(
    kafka_bootstrap, new_topic, new_group, tiny_bundle, pods, membership
):
    """Exactly-once with two feeders: a read_committed reader sees each input once, though a feeder is killed.
    The restarted feeder takes its predecessor's transactional id, with static membership or without, so it
    aborts the transaction the killed one left open: without, the broker would keep it open for the
    transaction timeout (15 min here), and the reader would see nothing past it in the meantime."""
    topic = new_topic(partitions=4, prefix="pod-eos")
    membership_env = (
        {"TAGSTREAM_GROUP_INSTANCE_ID": f"pod-{uuid.uuid4().hex[:6]}"} if membership == "static"
        # The killed member's partitions move after its session (10 s), not the default 45 s.
        else {"TAGSTREAM_GROUP_INSTANCE_ID": "none", "TAGSTREAM_SESSION_TIMEOUT_MS": "10000",
              "TAGSTREAM_TRANSACTION_TIMEOUT_MS": "900000"}
    )
    env = worker_env(kafka_bootstrap, topic, tiny_bundle, new_group(), TAGSTREAM_PROCESSING_GUARANTEE="exactly_once",
                     **membership_env)
    # Enough that the killed feeder is mid-stream, its transaction open with outputs in it.
    ids = produce_events(kafka_bootstrap, topic, fixture_texts(12000, seed=43))
    results = Results(kafka_bootstrap, f"{topic}.labels", isolation_level="read_committed")
    try:
        pod = pods(env, "pod")
        pod.wait_started()
        # Killed while it holds partitions (not before the startup rebalance gives it any, when the
        # other feeder could finish every input before the restart, 1 s of backoff and a start later).
        wait_until(
            lambda: {e["process"] for e in pod.events("partitions_assigned") if e["partitions"]}
            == {"feeder-0", "feeder-1"} or pod.proc.poll() is not None,
            60, "both feeders to hold partitions",
        )
        # Mid-stream: both feeders at work (results from before feeder 1 held partitions do not count).
        before = len(results.values)
        wait_until(lambda: len(results.values) >= before + 1000 or pod.proc.poll() is not None, RESULTS_S,
                   "results from both feeders")
        os.kill(pod.feeder_pids(1)[-1], signal.SIGKILL)
        wait_until(lambda: set(ids) <= set(results.ids()) or pod.proc.poll() is not None, RESULTS_S,
                   "committed results for every input")
        wait_until(lambda: len(pod.feeder_pids(1)) == 2 or pod.proc.poll() is not None, 60, "feeder 1's restart")
        time.sleep(2.0)  # a duplicate would come right behind
        assert len(pod.feeder_pids(1)) == 2, "feeder 1 was restarted"
        assert pod.stop() == 0, pod.tail()
    finally:
        results.close()
    counts = results.ids()
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1
    ids_of_feeder_1 = [e["transactional_id"] for e in pod.events("transactions_ready") if e["process"] == "feeder-1"]
    assert len(ids_of_feeder_1) == 2 and len(set(ids_of_feeder_1)) == 1, ids_of_feeder_1


def test_a_new_bundle_is_swapped_in_across_processes_and_each_result_comes_from_its_own_bundle(
    kafka_bootstrap, new_topic, new_group, tmp_path, pods
):
    """Mid-stream the bundle folder is replaced by one with another tokenizer length, multi-label and read in
    windows: the model process swaps it in, the feeders follow, and every result's label (or tags and windows)
    is what its own bundle predicts for that text."""
    import torch

    from model.truncation import Truncation
    from worker.runner import ModelRunner

    served = make_tiny_bundle(tmp_path / "served", seed=0, max_length=32)
    staged = make_tiny_bundle(tmp_path / "staged", seed=9, max_length=16, name="tiny-test", thresholds=[0.5, 0.3, 0.7],
                              head_scale=5.0, truncation=Truncation(strategy="chunks", stride=10, max_windows=3,
                                                                    pooling="max"))
    topic = new_topic(partitions=2, prefix="pod-reload")
    env = {**worker_env(kafka_bootstrap, topic, served, new_group()), "TAGSTREAM_RELOAD_INTERVAL_S": "0.3"}
    texts = fixture_texts(3000, seed=44, min_words=20, max_words=40)  # longer than 16 tokens: truncation differs
    by_id: dict[str, str] = {}
    pod = pods(env, "pod")
    pod.wait_started()
    by_id.update(zip(produce_events(kafka_bootstrap, topic, texts[:1500], prefix="a"), texts[:1500], strict=True))
    references = {}
    for path in (served, staged):
        runner = ModelRunner.load(path, device=torch.device("cpu"), autocast_dtype=None, max_batch_size=64,
                                  max_batch_tokens=8192, top_k=3)
        references[runner.version] = runner
    wait_until(lambda: pod.metric("tagstream_events_out_total", f'topic="{topic}"') >= 500, RESULTS_S,
               "results from the first bundle")
    shutil.rmtree(served)
    shutil.copytree(staged, served)  # replace the served folder, as a deploy would
    # The rest of the stream once the model process has swapped: on a busy machine the first bundle
    # could otherwise finish every input before the new one is loaded and warmed up.
    wait_until(lambda: any(e["process"] == "model" for e in pod.events("bundle_swapped")), RESULTS_S,
               "the model process to swap the bundle in")
    late = produce_events(kafka_bootstrap, topic, texts[1500:], prefix="b")
    by_id.update(zip(late, texts[1500:], strict=True))
    records = read_records(kafka_bootstrap, f"{topic}.labels", expected=3000, timeout_s=RESULTS_S)
    assert pod.stop() == 0, pod.tail()
    values = [json.loads(r.value) for r in records]
    assert {v["id"] for v in values} == set(by_id)
    versions = Counter(v["model_version"] for v in values)
    assert set(versions) == set(references), versions
    wrong, windowed = 0, 0
    for version, runner in references.items():
        mine = [v for v in values if v["model_version"] == version]
        for start in range(0, len(mine), 64):
            chunk = mine[start : start + 64]
            answers = runner.classify(runner.tokenize([by_id[v["id"]] for v in chunk]))
            for n, v in enumerate(chunk):
                if answers.tags is None:  # the served bundle: plain
                    wrong += v["label"] != runner.labels[answers.top_indices[n][0]]
                    continue
                tags = [runner.labels[j] for j, _ in answers.tags[n]]
                wrong += [t["label"] for t in v["labels"]] != tags or v["windows"] != (answers.windows or [])[n]
                windowed += v["windows"] > 1
    assert wrong == 0, f"{wrong} results disagree with the bundle they name"
    assert windowed, "no text was read as several windows by the new bundle"
    assert not pod.events("stale_requests")
    swaps = Counter(e["process"] for e in pod.events("bundle_swapped"))
    assert swaps == {"model": 1, "feeder-0": 1, "feeder-1": 1}  # the model process swaps, each feeder follows


def _allowed_cpus(pid: int) -> list[set[int]]:
    """The CPUs each thread of ``pid`` may run on (sched_getaffinity takes a thread id on Linux)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            out.append(os.sched_getaffinity(int(task.name)))
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread affinity from /proc (Linux)")
def test_pinned_feeders_run_their_threads_each_on_a_cpu_of_its_own(
    kafka_bootstrap, new_topic, new_group, tiny_bundle, pods
):
    """TAGSTREAM_CPU_PINNING=on: feeder i's Kafka and stage threads run on the i-th CPU of the mask
    (logged as cpu_pinning), and the pod labels every input."""
    mask = sorted(os.sched_getaffinity(0))
    topic = new_topic(partitions=4, prefix="pod-pinned")
    ids = produce_events(kafka_bootstrap, topic, fixture_texts(500, seed=47))
    results = Results(kafka_bootstrap, f"{topic}.labels")
    try:
        pod = pods({**worker_env(kafka_bootstrap, topic, tiny_bundle, new_group()), "TAGSTREAM_CPU_PINNING": "on"},
                   "pinned")
        pod.wait_started()
        wait_until(lambda: set(ids) <= set(results.ids()) or pod.proc.poll() is not None, RESULTS_S,
                   "results for every input")
        for index in (0, 1):
            cpu = mask[index % len(mask)]
            logged = [e for e in pod.events("cpu_pinning") if e.get("process") == f"feeder-{index}"]
            assert logged and logged[-1]["cpu"] == cpu, logged
            pinned = [cpus for cpus in _allowed_cpus(pod.feeder_pids(index)[-1]) if cpus == {cpu}]
            assert len(pinned) >= 4, _allowed_cpus(pod.feeder_pids(index)[-1])  # source, batcher, sink, model-0, clients'
        assert pod.stop() == 0, pod.tail()
    finally:
        results.close()
    assert set(results.ids()) == set(ids)
