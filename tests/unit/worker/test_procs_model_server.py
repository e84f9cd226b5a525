"""The model process and its feeders' runners, in one test process: answers, merging, swaps, failures.

The model server runs on threads here (the pod runs it in a process of its own); the feeders'
links reach it through the same socket and shared memory as in a pod.
"""

from __future__ import annotations

import gc
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from worker_support import fixture_texts, make_tiny_bundle, wait_until

from worker.call_journal import CallJournal, _read_call
from worker.errors import Failure, InferenceError, ModelCallStalled, WorkerError
from worker.inference import Classified
from worker.kafka.base import TopicPartition
from worker.procs.merge import Request
from worker.procs.model_server import ModelServer, stalled_inputs_for
from worker.procs.plan import slot_shape
from worker.procs.remote import ModelLink, RemoteRunner
from worker.procs.transport import Channel
from worker.reload import RunnerSlot
from worker.runner import ModelRunner
from worker.settings import load_settings
from worker.telemetry import Metrics

KEY = secrets.token_bytes(16)


@pytest.fixture
def pod(tiny_bundle):
    """Factory: ``pod.server(**settings)`` starts a model server; ``pod.feeder(server, i)`` connects one."""
    run_dir = Path(tempfile.mkdtemp(prefix="ts-"))  # short: a Unix socket path has ~100 bytes
    made: dict[str, list] = {"servers": [], "links": [], "channels": []}

    class Pod:
        def server(self, bundle: Path = tiny_bundle, journal: tuple[str, str] | None = None, **overrides) -> ModelServer:
            settings = load_settings(
                input_topics="in", bundle_path=bundle,
                **{"max_batch_size": 16, "max_batch_tokens": 512, "reload_interval_s": 0, "inference_streams": 1,
                   "threads": 1, **overrides},
            )
            server = ModelServer(settings)
            server.load()
            server.address = str(run_dir / f"m{len(made['servers'])}.sock")  # type: ignore[attr-defined]
            server.start(server.address, KEY, journal)  # type: ignore[attr-defined]
            made["servers"].append(server)
            return server

        def feeder(self, server: ModelServer, index: int) -> tuple[ModelLink, RemoteRunner]:
            shape = slot_shape(server.settings)
            channel = Channel.create(shape, 2)
            made["channels"].append(channel)
            link = ModelLink(server.address, KEY, feeder=index, segment=channel.name, shape=shape, slots=2)  # type: ignore[attr-defined]
            made["links"].append(link)
            return link, link.open()

    yield Pod()
    for link in made["links"]:
        link.close()
    for server in made["servers"]:
        server.stop()
    gc.collect()
    for channel in made["channels"]:
        channel.close()
    shutil.rmtree(run_dir, ignore_errors=True)


def process_gone(server: ModelServer) -> None:
    """As when the model process dies or exits (os._exit): its end of every connection closes at once,
    and its streams go no further (here they would next wait on the closed connections, and raise)."""
    server._stopping.set()
    for port in list(server._ports):
        port.conn.close()


def hold_model_calls(server: ModelServer, first_only: bool) -> tuple[threading.Event, list[int]]:
    """Make the served model's calls (the first only, or every one) wait until the returned event is
    set, while other requests queue; the rows of each call, in order."""
    model = server._generations[1]
    gate, calls = threading.Event(), []
    real = model.classify_packed

    def held(ids, lengths):
        calls.append(len(lengths))
        if len(calls) == 1 or not first_only:
            gate.wait(30)
        return real(ids, lengths)

    model.classify_packed = held
    return gate, calls


def classifying(
    outcome: dict, name: str, runner: RemoteRunner, texts: list[str], inputs: list[tuple] = ()
) -> threading.Thread:
    """A started thread classifying ``texts`` through ``runner``; ``outcome[name]``: None, or what it raised."""

    def send() -> None:
        try:
            runner.classify(runner.tokenize(texts), inputs=inputs)
            outcome[name] = None
        except BaseException as exc:
            outcome[name] = exc

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def local_answers(bundle: Path, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
    """Each text classified alone, in this process: the reference."""
    import torch

    runner = ModelRunner.load(bundle, device=torch.device("cpu"), autocast_dtype=None, max_batch_size=16,
                              max_batch_tokens=512, top_k=3)
    indices, scores = [], []
    for ids in runner.tokenize(texts):
        one = runner.classify([ids])
        indices.extend(one.top_indices)
        scores.extend(one.top_scores)
    return indices, np.array(scores)


def test_answers_land_with_the_right_feeder_and_row_and_padding_changes_nothing(pod, tiny_bundle):
    """Two feeders' concurrent batches of mixed lengths get the same labels and scores as one text at a time."""
    server = pod.server()
    feeders = [pod.feeder(server, 0), pod.feeder(server, 1)]
    texts = {i: fixture_texts(96, seed=10 + i, min_words=1, max_words=60) for i in range(2)}
    got: dict[int, tuple[list, list]] = {0: ([], []), 1: ([], [])}

    def feed(i: int, part: int) -> None:
        _, runner = feeders[i]
        chunk = texts[i][part * 48 : (part + 1) * 48]
        for start in range(0, len(chunk), 12):  # batches of 12 rows, two in flight per feeder
            answer = runner.classify(runner.tokenize(chunk[start : start + 12]))
            got[i][0].append((part, start, answer.top_indices))
            got[i][1].append((part, start, answer.top_scores))

    threads = [threading.Thread(target=feed, args=(i, part)) for i in range(2) for part in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for i in range(2):
        indices = [row for _, _, rows in sorted(got[i][0]) for row in rows]
        scores = np.array([row for _, _, rows in sorted(got[i][1]) for row in rows])
        want_indices, want_scores = local_answers(tiny_bundle, texts[i])
        assert indices == want_indices
        assert np.allclose(scores, want_scores, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tags_bundle", "chunks_bundle", "head_tags_bundle"])
def test_bundles_read_in_windows_or_tagged_are_answered_through_feeders_as_in_one_process(pod, fixture, request):
    """Multi-label and windowed bundles through the model process: two feeders' concurrent batches of
    long and short texts, cut into windows in requests within the slot, get the windows, tags, top k
    and scores the bundle's own runner gives in one process."""
    import torch

    bundle = request.getfixturevalue(fixture)
    server = pod.server(bundle=bundle)
    feeders = [pod.feeder(server, 0)[1], pod.feeder(server, 1)[1]]
    local = ModelRunner.load(bundle, device=torch.device("cpu"), autocast_dtype=None, max_batch_size=16,
                             max_batch_tokens=512, top_k=3)
    texts = {i: fixture_texts(40, seed=20 + i, min_words=1, max_words=90) for i in range(2)}
    got: dict[int, list] = {0: [], 1: []}

    def feed(i: int) -> None:
        for start in range(0, 40, 10):
            chunk = texts[i][start : start + 10]
            inputs = [("in", i, start + n) for n in range(len(chunk))]
            got[i].append(feeders[i].classify(feeders[i].tokenize(chunk), inputs=inputs))

    threads = [threading.Thread(target=feed, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    windows_seen = []
    for i in range(2):
        assert feeders[i].tokenize(texts[i]) == local.tokenize(texts[i])
        remote = Classified.join(got[i])
        want = local.classify(local.tokenize(texts[i]))
        assert remote.top_indices == want.top_indices
        assert np.allclose(remote.top_scores, want.top_scores, atol=1e-5)
        assert remote.windows == want.windows
        assert (remote.tags is None) == (want.tags is None)
        for got_tags, want_tags in zip(remote.tags or [], want.tags or [], strict=True):
            assert [j for j, _ in got_tags] == [j for j, _ in want_tags]
            assert np.allclose([p for _, p in got_tags], [p for _, p in want_tags], atol=1e-5)
        windows_seen.extend(want.windows or [1])
    if fixture != "head_tags_bundle":
        assert max(windows_seen) > 1  # long texts were read as several windows
    assert any(remote.tags) if fixture != "chunks_bundle" else remote.tags is None


def test_requests_of_different_feeders_waiting_together_run_as_one_merged_batch(pod, tiny_bundle):
    """While the model is busy, two feeders' requests queue, then run as one batch, each answered correctly."""
    server = pod.server()
    (link_a, runner_a), (link_b, runner_b) = pod.feeder(server, 0), pod.feeder(server, 1)
    gate, calls = hold_model_calls(server, first_only=True)  # the first batch holds the only stream
    texts = fixture_texts(11, seed=3)
    batches = {"first": texts[:3], "a": texts[3:7], "b": texts[7:11]}
    answers: dict[str, object] = {}
    runners = {"first": runner_a, "a": runner_a, "b": runner_b}

    def send(name: str) -> None:
        answers[name] = runners[name].classify(runners[name].tokenize(batches[name]))

    first = threading.Thread(target=send, args=("first",))
    first.start()
    wait_until(lambda: len(calls) == 1, 10, "the first batch to reach the model")
    others = [threading.Thread(target=send, args=(name,)) for name in ("a", "b")]
    for thread in others:
        thread.start()
    wait_until(lambda: link_a._free.qsize() == 0 and link_b._free.qsize() == 1, 10, "both requests to be sent")
    time.sleep(0.3)  # the messages are on their way to the (busy) model process
    gate.set()
    for thread in [first, *others]:
        thread.join(30)
    assert calls == [3, 8]  # the two waiting requests ran as one batch of 4 + 4 rows
    assert server.metrics.value("tagstream_model_batch_requests_sum") == 3
    want_indices, _ = local_answers(tiny_bundle, texts)
    got = [*answers["first"].top_indices, *answers["a"].top_indices, *answers["b"].top_indices]  # type: ignore[attr-defined]
    assert got == want_indices


def test_a_bundle_swap_reaches_the_feeders_and_old_batches_finish_on_their_own_bundle(pod, tiny_bundle, tmp_path):
    """After a swap the feeder is offered the new bundle; the old runner still answers with the old model until
    released, then the model process unloads it and refuses its ids (never runs them on the new model)."""
    server = pod.server()
    link, old = pod.feeder(server, 0)
    slot = RunnerSlot(old)
    link.watch(slot, Metrics(), threading.Event())
    new_bundle = make_tiny_bundle(tmp_path / "new", seed=7, max_length=16, name="tiny-new")
    server._slot.offer(server._local.load_and_warm(new_bundle))
    wait_until(lambda: slot._offered is not None, 10, "the feeder to be offered the new bundle")
    new = slot.swap_if_offered()
    assert new is not None and new.generation == 2 and new.version != old.version
    assert new.tokenizer_key != old.tokenizer_key  # max_length differs: inputs must be re-tokenized

    texts = fixture_texts(8, seed=5)
    assert old.classify(old.tokenize(texts)).top_indices == local_answers(tiny_bundle, texts)[0]
    assert new.classify(new.tokenize(texts)).top_indices == local_answers(new_bundle, texts)[0]
    assert server.metrics.value("tagstream_bundle_reloads_total", {"result": "swapped"}) == 1

    ids, old_key = old.tokenize(texts), old.tokenizer_key
    del old  # the slot holds the new runner now: nothing here references the old one
    gc.collect()
    wait_until(lambda: 1 not in server._generations, 10, "the old bundle to be unloaded")
    with pytest.raises(WorkerError) as raised:  # a late request for it: refused, never run on the new model
        link.request(ids, 1, old_key)
    assert raised.value.failure is Failure.MODEL_PROCESS_LOST
    assert server.metrics.value("tagstream_model_stale_requests_total") == 1


def test_a_swap_from_a_plain_bundle_to_a_tagging_one_read_in_windows_reads_and_answers_it_in_the_feeder(
    pod, tags_bundle
):
    """A swap to a multi-label bundle read in windows: the feeder's new runner cuts windows and pools
    and tags them as the bundle's own runner does."""
    import torch

    server = pod.server()
    link, old = pod.feeder(server, 0)
    slot = RunnerSlot(old)
    link.watch(slot, Metrics(), threading.Event())
    server._slot.offer(server._local.load_and_warm(tags_bundle))
    wait_until(lambda: slot._offered is not None, 10, "the feeder to be offered the new bundle")
    new = slot.swap_if_offered()
    assert old.plain and new is not None and not new.plain and new.multi_label
    texts = fixture_texts(12, seed=8, min_words=20, max_words=90)
    local = ModelRunner.load(tags_bundle, device=torch.device("cpu"), autocast_dtype=None, max_batch_size=16,
                             max_batch_tokens=512, top_k=3)
    got, want = new.classify(new.tokenize(texts)), local.classify(local.tokenize(texts))
    assert got.windows == want.windows and max(got.windows or [1]) > 1
    assert [[j for j, _ in t] for t in got.tags or []] == [[j for j, _ in t] for t in want.tags or []]
    assert got.top_indices == want.top_indices


def test_the_model_raising_on_a_batch_is_an_inference_error_in_the_feeder(pod):
    """A batch the model fails on comes back as InferenceError, so the feeder retries it one input at a time."""
    server = pod.server()
    _, runner = pod.feeder(server, 0)

    def broken(ids, lengths):
        raise InferenceError("boom")

    server._generations[1].classify_packed = broken
    with pytest.raises(InferenceError, match="boom"):
        runner.classify(runner.tokenize(["a text"]))


def test_a_feeder_whose_model_process_goes_away_fails_with_model_process_lost(pod):
    """When the model process stops, the feeder's next classify raises WorkerError (model_process_lost) at once."""
    server = pod.server()
    _, runner = pod.feeder(server, 0)
    assert runner.classify(runner.tokenize(["before"])).top_indices
    server.stop()
    started = time.monotonic()
    with pytest.raises(WorkerError) as raised:
        for _ in range(50):  # the link notices the closed socket on its receiver thread
            runner.classify(runner.tokenize(["after"]))
            time.sleep(0.1)
    assert raised.value.failure is Failure.MODEL_PROCESS_LOST
    assert time.monotonic() - started < 10


def test_a_batch_longer_than_a_slot_is_sent_in_parts_and_answered_in_order(pod, tiny_bundle):
    """A batch over the slot's rows (e.g. re-tokenized after a swap) is split, and its answers keep their order."""
    server = pod.server(max_batch_size=4, max_batch_tokens=128)
    _, runner = pod.feeder(server, 0)
    texts = fixture_texts(10, seed=8)
    assert runner.classify(runner.tokenize(texts)).top_indices == local_answers(tiny_bundle, texts)[0]


def test_a_call_past_the_stall_limit_is_answered_stalled_to_the_feeders_in_it_and_to_no_other(pod):
    """The model process gives up a call past TAGSTREAM_MODEL_STALL_S before it exits: the feeder
    whose request was in that call gets ModelCallStalled (it counts those inputs as stalled); a
    feeder whose request was only waiting gets no such answer (its inputs were never in the call),
    but hears which inputs were in it (a rebalance may have moved their partition to that feeder)."""
    server = pod.server()
    server.health.model_stall_s = 0.3
    (link_a, runner_a), (link_b, runner_b) = pod.feeder(server, 0), pod.feeder(server, 1)
    heard: dict[str, list] = {"a": [], "b": []}

    def hearing(name: str):
        def count(named: list) -> int:
            heard[name].extend(named)
            return len(named)
        return count

    link_a.count_stalled, link_b.count_stalled = hearing("a"), hearing("b")
    gate, calls = hold_model_calls(server, first_only=False)
    outcome: dict[str, BaseException | None] = {}

    a = classifying(outcome, "a", runner_a, ["one", "two"], [("in", 3, 41), ("in", 3, 42)])
    wait_until(lambda: calls == [2], 10, "feeder a's inputs in the model call")
    b = classifying(outcome, "b", runner_b, ["four"], [("in", 1, 7)])
    # One stream, busy in the hung call: b's request waits unread on its socket.
    wait_until(lambda: any(p.index == 1 and p.conn.poll() for p in server._ports), 10, "feeder b's request")
    wait_until(server.health.model_stalled, 10, "the call to pass the stall limit")
    given_up = server.give_up_stalled()
    assert [(r.port.index, r.rows) for r in given_up] == [(0, 2)]
    a.join(10)
    wait_until(lambda: heard["b"], 10, "feeder b to hear of the inputs in the call")
    assert heard == {"a": [], "b": [("in", 3, 41), ("in", 3, 42)]}  # a counts them itself (ModelCallStalled)
    assert isinstance(outcome["a"], ModelCallStalled) and outcome["a"].failure is Failure.MODEL_STALLED
    assert b.is_alive() and "b" not in outcome  # still waiting: never answered STALLED
    gate.set()  # the hung call returns after all: its answer is dropped, and its stream ends
    server.stop()  # the process exits: b's waiting request is lost, not stalled
    b.join(15)
    lost = outcome["b"]
    assert isinstance(lost, WorkerError) and lost.failure is Failure.MODEL_PROCESS_LOST, lost
    assert calls == [2]


@pytest.mark.parametrize("killed_as_unresponsive", [False, True], ids=["died", "killed-as-unresponsive"])
def test_a_model_process_lost_in_a_call_counts_that_calls_inputs_as_stalled_and_no_others(pod, killed_as_unresponsive):
    """When the model process is lost while a request is in a model call (killed as unresponsive by
    the supervisor, or dead of a crash mid-call, so it answers nothing), that request's feeder gets
    ModelCallStalled and counts the inputs (run alone next time): as a hang when the supervisor
    marked the call before killing, else as a death. A request that was only waiting is lost as
    before (model_process_lost: read again in batches)."""
    server = pod.server()
    (link_a, runner_a), (_link_b, runner_b) = pod.feeder(server, 0), pod.feeder(server, 1)
    gate, calls = hold_model_calls(server, first_only=True)
    outcome: dict[str, BaseException | None] = {}
    relayed: list[tuple] = []
    link_a.relay_lost = lambda *lost: relayed.append(lost)  # the feeder passes them on (feeder.py)

    a = classifying(outcome, "a", runner_a, ["one", "two"], [("in", 0, 1), ("in", 1, 2)])
    wait_until(lambda: calls == [2], 10, "feeder a's inputs in the model call")
    b = classifying(outcome, "b", runner_b, ["four"])
    wait_until(lambda: any(p.index == 1 and p.conn.poll() for p in server._ports), 10, "feeder b's request")
    if killed_as_unresponsive:  # the supervisor's mark, through the same shared memory
        assert link_a._channel.mark_calls_hung() == 1  # type: ignore[union-attr]
    process_gone(server)
    a.join(15)
    b.join(15)
    assert isinstance(outcome["a"], ModelCallStalled), outcome
    assert "lost in the model call" in str(outcome["a"])
    assert outcome["a"].died is not killed_as_unresponsive
    assert relayed == [([("in", 0, 1), ("in", 1, 2)], not killed_as_unresponsive, False)]  # b's was in no call
    lost = outcome["b"]
    assert type(lost) is WorkerError and lost.failure is Failure.MODEL_PROCESS_LOST, lost
    gate.set()


def test_exiting_for_a_stalled_call_leaves_the_other_streams_call_unmarked_so_its_inputs_are_not_counted(pod):
    """Two streams: one call stalls past the limit while the other's call is still young. The model
    process exits for the first; the second call is lost with it but is not to blame, so its
    feeder sees model_process_lost (its inputs are read again in batches), not ModelCallStalled."""
    server = pod.server(inference_streams=2)
    server.health.model_stall_s = 1.0
    (_link_a, runner_a), (_link_b, runner_b) = pod.feeder(server, 0), pod.feeder(server, 1)
    gate, calls = hold_model_calls(server, first_only=False)
    outcome: dict[str, BaseException | None] = {}

    a = classifying(outcome, "a", runner_a, ["one", "two"])
    wait_until(server.health.model_stalled, 10, "a's call to pass the stall limit")
    b = classifying(outcome, "b", runner_b, ["four"])
    wait_until(lambda: calls == [2, 1], 10, "b's input in the other stream's call")
    assert [(r.port.index, r.rows) for r in server.give_up_stalled()] == [(0, 2)]
    process_gone(server)
    a.join(15)
    b.join(15)
    assert isinstance(outcome["a"], ModelCallStalled) and "ran past" in str(outcome["a"]), outcome
    lost = outcome["b"]
    assert type(lost) is WorkerError and lost.failure is Failure.MODEL_PROCESS_LOST, lost
    gate.set()


def test_a_stalled_calls_inputs_are_named_to_each_feeder_but_its_own_requests_inputs():
    """Each feeder hears the inputs of the other feeders' requests in the call, once each, and not
    those its own requests in that call hold (it counts them on their STALLED answer; a second
    count would dead-letter an input that stalled once)."""
    a, b, c = object(), object(), object()

    def request(port, inputs) -> Request:
        return Request(port=port, slot=0, rows=len(inputs), tokens=len(inputs), longest=1, generation=1,
                       tokenizer_key="k", inputs=tuple(inputs))

    requests = [request(a, [("in", 0, 1), ("in", 1, 5)]), request(b, [("in", 1, 5), ("in", 2, 9)]),
                request(a, [("in", 0, 2)])]
    assert stalled_inputs_for(a, requests) == [("in", 2, 9)]  # ("in", 1, 5) is in a's own request too
    assert stalled_inputs_for(b, requests) == [("in", 0, 1), ("in", 0, 2)]
    assert stalled_inputs_for(c, requests) == [("in", 0, 1), ("in", 1, 5), ("in", 2, 9), ("in", 0, 2)]


def test_a_request_to_run_alone_waits_for_the_other_streams_call_so_that_a_death_in_it_names_its_input(pod):
    """Two streams (a CPU): a process that dies cannot say which call killed it, so the slots of every
    call in flight count their inputs. An input run alone was counted once already; run beside
    another stream's call, a death there would count it a second time and dead-letter it. So it
    waits until the other call returns, and its slot alone is marked while it runs."""
    server = pod.server(inference_streams=2)
    (_link_a, runner_a), (link_b, runner_b) = pod.feeder(server, 0), pod.feeder(server, 1)
    gate, calls = hold_model_calls(server, first_only=True)
    outcome: dict[str, BaseException | None] = {}
    a = classifying(outcome, "a", runner_a, ["one", "two"])
    wait_until(lambda: calls == [2], 10, "feeder a's inputs in the model call")

    def alone() -> None:
        runner_b.classify(runner_b.tokenize(["suspect"]), inputs=[("in", 0, 7)], alone=True)
        outcome["b"] = None

    b = threading.Thread(target=alone)
    b.start()
    wait_until(lambda: not any(p.index == 1 and p.conn.poll() for p in server._ports), 10, "b's request read")
    time.sleep(0.3)
    assert calls == [2]  # the second stream is free, but waits for the first stream's call
    assert not any(slot.lost_in_call() for slot in link_b._channel.slots)  # type: ignore[union-attr]
    gate.set()
    a.join(15)
    b.join(15)
    assert calls == [2, 1] and outcome == {"a": None, "b": None}


def test_each_call_is_in_the_supervisors_journal_while_it_runs_so_a_pod_killed_whole_counts_it_and_only_then(
    pod, tmp_path
):
    """The model process writes each merged call's inputs to the journal set its supervisor holds,
    flagged when one input runs alone, and marks it idle after (worker/call_journal.py). A pod
    killed whole in a call leaves it marked: the next pod's supervisor counts those inputs. A model
    process that dies under a living supervisor is counted by its feeders instead: the supervisor
    unmarks the set, and the next pod counts nothing."""
    supervisor = CallJournal.open(tmp_path, "g", streams=0)
    assert supervisor is not None
    path = supervisor.folder / f"{supervisor.name}.call-0"
    server = pod.server(journal=(str(supervisor.folder), supervisor.name))
    (_link_a, runner_a), (_link_b, runner_b) = pod.feeder(server, 0), pod.feeder(server, 1)
    model = server._generations[1]
    real, seen = model.classify_packed, []

    def peeking(ids, lengths):
        found = _read_call(path)
        seen.append(None if found is None else (found[2], found[1]))
        return real(ids, lengths)

    model.classify_packed = peeking
    runner_a.classify(runner_a.tokenize(["one", "two"]), inputs=[("in", 0, 1), ("in", 1, 2)])
    runner_b.classify(runner_b.tokenize(["suspect"]), inputs=[("in", 0, 7)], alone=True)
    assert seen == [([("in", 0, 1), ("in", 1, 2)], False), ([("in", 0, 7)], True)]  # (inputs, alone)
    assert _read_call(path) is None  # idle between calls: a death now counts nothing

    for killed_whole in (True, False):
        server = pod.server(journal=(str(supervisor.folder), supervisor.name))  # the pod's model process
        _link, runner = pod.feeder(server, 0)
        gate, calls = hold_model_calls(server, first_only=True)
        outcome: dict[str, BaseException | None] = {}
        a = classifying(outcome, "a", runner, ["three"], [("in", 1, 3)])
        wait_until(lambda: calls == [1], 10, "the input in the model call")  # noqa: B023
        process_gone(server)  # the model process dies in the call
        a.join(15)
        if not killed_whole:
            supervisor.unmark_calls()  # the supervisor lives on to see it end: its feeders counted the call
        supervisor.close()  # then the supervisor is killed too: its lock goes, nothing else
        supervisor = CallJournal.open(tmp_path, "g", streams=0)  # the next pod's
        assert supervisor is not None
        assert supervisor.counts == {TopicPartition("in", 1): {3: (1, 0)}}  # killed whole: counted; else not again
        assert _read_call(path) is None  # counted once: cleared
        gate.set()
    supervisor.close()
