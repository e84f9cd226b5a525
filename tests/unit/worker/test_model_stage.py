"""ModelStage: batches through the model threads to the sink, what the drain and a barrier wait
for, and what is abandoned (read again later) when a thread ends or a call stalls."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kafka.structs import TopicPartition
from worker_fakes import Clock

from worker.batcher import Batch
from worker.call_journal import CallJournal, _read_call
from worker.errors import Failure, InferenceError, ModelCallStalled, WorkerError
from worker.events import DeadLetter, Event
from worker.inference import Classified
from worker.model_stage import ModelStage, Results
from worker.offsets import OffsetTracker
from worker.stages import StageClock
from worker.telemetry import Health, Metrics

TP = TopicPartition("news", 0)


class FakeRunner:
    """Labels every input 0; fails a batch holding a token in ``fails``; once ``hold`` is set, each
    call waits for ``release``."""

    name, version, labels, max_length, tokenizer_key = "fake", "v1", ["a", "b"], 16, "tok"

    def __init__(self, fails: set[int] | None = None, stalls: set[int] | None = None,
                 deaths: set[int] | None = None) -> None:
        self.fails = fails or set()
        self.stalls = stalls or set()  # a batch holding one: the pod's model process gave its call up
        self.deaths = deaths or set()  # ... the pod's model process died in its call
        self.calls: list[list[list[int]]] = []
        self.alone: list[bool] = []  # per call, whether it was asked to run unmerged
        self.inputs: list[list[tuple]] = []  # per call, the records it was told it holds
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [[len(t)] for t in texts]

    def classify(self, token_ids: list[list[int]], *, inputs=(), alone: bool = False) -> Classified:
        self.calls.append(token_ids)
        self.alone.append(alone)
        self.inputs.append(list(inputs))
        if self.hold.is_set():
            self.entered.set()
            self.release.wait(10)
        tokens = {t for ids in token_ids for t in ids}
        if tokens & self.fails:  # first: a batch holding one fails whole, and is retried input by input
            raise InferenceError(f"cannot classify {sorted(tokens)}")
        if tokens & self.stalls:
            raise ModelCallStalled("the model process gave up the model call (test)")
        if tokens & self.deaths:
            raise ModelCallStalled("the model process died in the model call (test)", died=True)
        return Classified([[0, 1] for _ in token_ids], [[0.9, 0.1] for _ in token_ids], 0.001)


class Stage:
    """A ModelStage with one thread, and what it sent to the sink and abandoned."""

    def __init__(self, runner: FakeRunner, health: Health | None = None, *, streams: int = 1,
                 journal: CallJournal | None = None) -> None:
        self.tracker = OffsetTracker()
        self.tracker.assign([TP])
        self.runner = runner
        self.sink: list[Any] = []
        self.abandoned: list[Event] = []
        self.stalled: list[Event] = []
        self.died: list[tuple[list[int], bool]] = []  # per death reported: its inputs' offsets, alone
        self.lost: list[int] = []
        self.stage = ModelStage(
            streams, tracker=self.tracker, metrics=Metrics(), health=health or Health(), clock=StageClock(Metrics(), enabled=False),
            to_sink=self.sink.append, abandon=self.abandoned.extend, on_stalled=self._on_stalled,
            on_lost=lambda: self.lost.append(self.stage._done),  # batches done when it was called
            journal=journal,
        )
        self.error: list[BaseException] = []
        self.next_offset = 0
        self.threads = [threading.Thread(target=self._main) for _ in range(streams)]
        self.thread = self.threads[0]
        for thread in self.threads:
            thread.start()

    def _on_stalled(self, events: list[Event], died: bool = False, alone: bool = False) -> None:
        if died:
            self.died.append(([e.offset for e in events], alone))
        else:
            self.stalled.extend(events)

    def _main(self) -> None:
        try:
            self.stage.run()
        except BaseException as exc:  # the worker's _spawn records it as fatal
            self.error.append(exc)

    def batch(self, tokens: list[int], epoch: int | None = None, reason: str = "size") -> Batch[Event]:
        offsets = range(self.next_offset, self.next_offset + len(tokens))
        self.next_offset += len(tokens)
        tracked = self.tracker.track(TP, offsets)
        items = [Event("news", 0, o, 0, None, [], f"e{o}", "text", 0.0, tracked if epoch is None else epoch,
                       token_ids=[t], tokenizer_key="tok") for o, t in zip(offsets, tokens, strict=True)]
        self.tracker.issue(items)
        return Batch(items, 1, len(items), len(items), reason)  # type: ignore[arg-type]

    def finish(self) -> None:
        self.stage.put_stops()
        for thread in self.threads:
            thread.join(10)
            assert not thread.is_alive()


def test_batches_run_in_queue_order_and_their_results_reach_the_sink():
    s = Stage(FakeRunner())
    first, second = s.batch([1, 2]), s.batch([3])
    assert s.stage.put(first, s.runner) and s.stage.put(second, s.runner)
    assert s.stage.wait_for_issued()  # both finished: a barrier may follow them
    s.finish()
    assert [type(w) for w in s.sink] == [Results, Results]
    assert [e.event_id for e in s.sink[0].events] == ["e0", "e1"] and s.sink[1].events[0].event_id == "e2"
    assert s.sink[0].labels == ["a", "b"] and s.sink[0].model_version == "v1"
    assert s.runner.calls == [[[1], [2]], [[3]]]
    assert s.abandoned == [] and s.error == []


def test_inputs_of_an_older_assignment_are_abandoned_not_run():
    s = Stage(FakeRunner())
    stale = s.batch([1, 2], epoch=-5)  # read under an epoch the tracker no longer accepts
    assert s.stage.put(stale, s.runner)
    s.finish()
    assert [e.offset for e in s.abandoned] == [0, 1]
    assert s.runner.calls == [] and s.sink == []


def test_a_failed_batch_is_retried_one_by_one_and_only_the_input_that_still_fails_is_dead_lettered():
    s = Stage(FakeRunner(fails={7}))
    assert s.stage.put(s.batch([1, 7, 3]), s.runner)
    s.finish()
    results, letters = s.sink
    assert [e.offset for e in results.events] == [0, 2]  # in input order, the failing one left out
    assert len(results.classified.top_indices) == 2
    assert [(d.offset, d.reason) for d in letters] == [(1, Failure.INFERENCE_FAILED)]
    assert isinstance(letters[0], DeadLetter) and "cannot classify [7]" in letters[0].detail


def test_a_model_that_fails_every_input_alone_too_is_fatal_and_what_was_queued_is_abandoned():
    s = Stage(FakeRunner(fails={1, 2}))
    s.runner.hold.set()
    assert s.stage.put(s.batch([1, 2]), s.runner)
    assert s.runner.entered.wait(10)
    assert s.stage.put(s.batch([3]), s.runner)  # queued behind the failing batch
    s.runner.release.set()
    s.thread.join(10)
    assert isinstance(s.error[0], WorkerError) and s.error[0].failure is Failure.MODEL_FAILED
    # no thread is left: the queued batch is abandoned (read again later), never run
    assert s.stage.running == 0
    assert [e.offset for e in s.abandoned] == [0, 1, 2] and s.sink == []
    assert [3] not in [ids for call in s.runner.calls for ids in call]
    assert not s.stage.wait_for_issued()  # a barrier behind it is not passed: no commit
    assert not s.stage.put(s.batch([4]), s.runner)  # and later batches are refused


def test_a_stalled_call_is_given_up_counted_as_done_and_its_answers_are_never_published():
    clock = Clock()
    s = Stage(FakeRunner(), Health(clock=clock, model_stall_s=3.0))
    s.runner.hold.set()
    assert s.stage.put(s.batch([1, 2]), s.runner)
    assert s.runner.entered.wait(10)
    clock.now += 5.0
    aborted: list[str] = []
    s.stage.give_up_stalled(before_counting=lambda: aborted.append("abort"))
    assert aborted == ["abort"]  # before the batch counted as done
    assert [e.offset for e in s.abandoned] == [0, 1]
    assert [e.offset for e in s.stalled] == [0, 1]  # counted for the next reader (delivered_hints)
    assert s.stage.given_up(s.thread) and s.stage.running == 0
    assert s.stage.wait_for_issued() is True  # counted done: a waiting barrier is not held by it
    s.runner.release.set()  # the call comes back after all
    s.thread.join(10)
    assert not s.thread.is_alive() and s.sink == [] and s.error == []


@pytest.mark.parametrize("stall_s", [0.0, 3.0])
def test_a_call_within_its_limit_is_not_given_up(stall_s):
    clock = Clock()
    s = Stage(FakeRunner(), Health(clock=clock, model_stall_s=stall_s))
    s.runner.hold.set()
    assert s.stage.put(s.batch([1]), s.runner)
    assert s.runner.entered.wait(10)
    clock.now += 2.0
    s.stage.give_up_stalled(before_counting=lambda: pytest.fail("nothing was given up"))
    s.runner.release.set()
    s.finish()
    assert s.abandoned == [] and s.stalled == [] and len(s.sink) == 1


def test_a_call_the_pods_model_process_gave_up_counts_its_inputs_as_stalled_and_ends_the_thread():
    """In a feeder, a stalled call is given up by the model process, which answers ModelCallStalled:
    its inputs are reported stalled (the next worker runs them alone) and abandoned, exactly as one
    process's give_up_stalled does, and the error is fatal (the feeder drains and exits)."""
    s = Stage(FakeRunner(stalls={9}))
    assert s.stage.put(s.batch([1, 9, 3]), s.runner)
    s.thread.join(10)
    assert isinstance(s.error[0], ModelCallStalled) and s.error[0].failure is Failure.MODEL_STALLED
    assert [e.offset for e in s.stalled] == [0, 1, 2]
    assert [e.offset for e in s.abandoned] == [0, 1, 2] and s.sink == []


def test_a_call_given_up_while_a_failed_batch_is_retried_counts_the_whole_batch():
    """The one-by-one retry brackets each call over the whole batch (none of it is published yet):
    given up there, every input of the batch is counted, as in one process."""
    s = Stage(FakeRunner(fails={7}, stalls={9}))
    assert s.stage.put(s.batch([7, 9]), s.runner)  # fails as a batch (7), then 9 stalls alone
    s.thread.join(10)
    assert isinstance(s.error[0], ModelCallStalled)
    assert [e.offset for e in s.stalled] == [0, 1] and s.sink == []


def test_a_call_the_pods_model_process_died_in_counts_its_inputs_as_deaths_the_retry_only_the_input_alone():
    """The pod's model process died in the call (ModelCallStalled.died): its inputs are counted as
    deaths, not hangs, since a death may come from outside the worker and convicts later; in a
    failed batch's one-by-one retry only the input in the call is counted, with it alone, as one
    process's journal names it. The error is fatal either way."""
    s = Stage(FakeRunner(deaths={9}))
    assert s.stage.put(s.batch([1, 9, 3]), s.runner)
    s.thread.join(10)
    assert isinstance(s.error[0], ModelCallStalled) and s.error[0].died
    assert s.died == [([0, 1, 2], False)] and s.stalled == [] and s.sink == []

    s = Stage(FakeRunner(fails={7}, deaths={9}))
    assert s.stage.put(s.batch([7, 9, 3]), s.runner)  # fails as a batch (7), then the model dies on 9 alone
    s.thread.join(10)
    assert s.died == [([1], True)] and s.stalled == [] and s.sink == []


def test_inputs_to_isolate_are_sent_unmerged_and_others_are_not():
    """A batch of an input that stalled before (reason "alone") and each one-by-one retry of a failed
    batch ask the runner for a call of their own (a pod's model process would merge them with other
    feeders' batches); ordinary batches leave the runner free to merge. Every call names its records
    (a pod's model process names them to the other feeders if the call stalls)."""
    s = Stage(FakeRunner(fails={7}))
    assert s.stage.put(s.batch([1, 2]), s.runner)
    assert s.stage.put(s.batch([5], reason="alone"), s.runner)
    assert s.stage.put(s.batch([7, 3]), s.runner)
    s.finish()
    assert list(zip(s.runner.calls, s.runner.alone, s.runner.inputs, strict=True)) == [
        ([[1], [2]], False, [("news", 0, 0), ("news", 0, 1)]), ([[5]], True, [("news", 0, 2)]),
        ([[7], [3]], False, [("news", 0, 3), ("news", 0, 4)]), ([[7]], True, [("news", 0, 3)]),
        ([[3]], True, [("news", 0, 4)]),
    ]


def test_a_batch_lost_with_its_failed_thread_is_reported_before_it_counts_as_done():
    """A thread failing for good with a batch in its call reports it (an exactly-once worker aborts
    the open transaction) before the batch counts as done, so no barrier passes it first."""
    s = Stage(FakeRunner(stalls={9}))
    assert s.stage.put(s.batch([1]), s.runner) and s.stage.wait_for_issued()
    assert s.lost == []  # a batch that ran is not lost
    assert s.stage.put(s.batch([9]), s.runner)
    s.thread.join(10)
    assert s.lost == [1]  # reported once, while only the first batch counted as done


def test_each_call_is_in_the_journal_while_it_runs_an_input_retried_alone_by_itself_and_none_after(tmp_path):
    """A worker that dies in a call counts what the journal names at its next start: the batch's
    inputs, and in the one-by-one retry of a failed batch only the input being run."""
    journal = CallJournal.open(tmp_path, "g", streams=1)
    assert journal is not None
    path = journal.folder / "worker-0.call-0"
    seen: list[Any] = []

    class Peeking(FakeRunner):
        def classify(self, token_ids, *, inputs=(), alone=False):
            found = _read_call(path)
            seen.append(None if found is None else ([offset for _, _, offset in found[2]], found[1]))
            return super().classify(token_ids, inputs=inputs, alone=alone)

    s = Stage(Peeking(fails={7}), journal=journal)
    assert s.stage.put(s.batch([1, 7, 3]), s.runner)
    s.finish()
    assert seen == [([0, 1, 2], False), ([0], True), ([1], True), ([2], True)]  # (inputs, alone)
    assert _read_call(path) is None  # idle: a death now counts nothing
    journal.close()


def test_a_batch_run_alone_waits_for_the_other_streams_call_so_that_a_death_in_it_names_its_input():
    s = Stage(FakeRunner(), streams=2)
    s.runner.hold.set()
    assert s.stage.put(s.batch([1, 2]), s.runner)
    assert s.runner.entered.wait(10)  # one stream is in a call over two inputs
    s.runner.hold.clear()
    assert s.stage.put(s.batch([3], reason="alone"), s.runner)
    threading.Event().wait(0.3)
    assert s.runner.calls == [[[1], [2]]]  # the alone batch has not started beside it
    s.runner.release.set()
    s.finish()
    assert s.runner.calls == [[[1], [2]], [[3]]] and s.runner.alone == [False, True]
