"""A feeder's side of the model process: ``ModelLink`` (a ``ModelHost``) and ``RemoteRunner`` (a ``Runner``).

The feeder's Worker runs unchanged: its source tokenizes with ``RemoteRunner.tokenize`` (here, in
the feeder), its model threads call ``RemoteRunner.classify``, which copies the batch's ids into a
free shared-memory slot, sends a REQUEST and waits for DONE (transport.py). One receiver thread
reads the model process's messages: answers wake their caller; a MODEL message (a bundle swap)
becomes a new ``RemoteRunner`` offered to the worker's ``RunnerSlot``, which the batcher swaps in
between batches; inputs tokenized for the previous bundle are re-tokenized before they run.

When the last reference to a runner goes (no batch of it is waiting or running), the link tells
the model process it may unload that bundle (RELEASE). If the model process goes away, every
waiting and later ``classify`` raises a WorkerError (model_process_lost): the feeder drains,
committing only what was acknowledged, and exits; the supervisor then stops the pod. A request
that was in a model call the model process gave up as stalled is answered STALLED before it goes:
its ``classify`` raises ModelCallStalled, and the feeder counts those inputs as stalled
(worker/model_stage.py), as one process does with its own stalled call. Every input in that call
is also named to every other feeder (STALLED_INPUTS): a rebalance may have given its partition to
one of them while the call ran, and only the partition's owner can count it. A request the model
process was lost with while it was in a model call (its slot's state: the process was killed as
unresponsive, or died in the call) raises ModelCallStalled too, and is counted the same way; as a
death when it died (``ModelCallStalled.died``), which convicts an input later than a hang.
Nobody names such a call's inputs to the other feeders (the model process is gone), so the link
hands them to ``relay_lost``: the feeder passes those of partitions it no longer holds (a
rebalance while the call ran) to the supervisor, which passes them to the other feeders
(worker/procs/feeder.py), as STALLED_INPUTS does for a call given up.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from multiprocessing import connection
from typing import Any, TypeVar

import numpy as np
from tokenizers import Tokenizer

from model.truncation import Truncation, Windower
from worker.documents import (
    DocumentReading,
    document_answers,
    is_plain,
    laid_end_to_end,
    sub_batches,
    windows_of,
)
from worker.errors import Failure, InferenceError, ModelCallStalled, WorkerError
from worker.inference import Classified, InputId
from worker.procs.transport import (
    DONE,
    FAILED,
    HELLO,
    MODEL,
    OK,
    RELEASE,
    REQUEST,
    STALLED,
    STALLED_INPUTS,
    Channel,
    ModelInfo,
    Slot,
    SlotShape,
)
from worker.reload import RunnerSlot
from worker.telemetry import Metrics, get_logger
from worker.tokenizing import HeadTokenizer

log = get_logger("tagstream.worker.feeder")
T = TypeVar("T")

CONNECT_TIMEOUT_S = 60.0  # the model process is ready before feeders start; this bounds a hang
ANSWER_POLL_S = 1.0  # how often a waiting classify looks whether the model process is still there


class ModelLink:
    """A feeder's connection to the model process (see the module docstring)."""

    def __init__(
        self, address: str, authkey: bytes, *, feeder: int, segment: str, shape: SlotShape, slots: int,
        fast_tokenizer: bool = True,
    ) -> None:
        self.fast_tokenizer = fast_tokenizer
        self._address = address
        self._authkey = authkey
        self.feeder = feeder
        self._segment = segment
        self.shape = shape
        self._slots = slots
        self._conn: connection.Connection | None = None
        self._channel: Channel | None = None
        self._send_lock = threading.RLock()  # model threads, and runners' finalizers, send
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._done = [threading.Event() for _ in range(slots)]
        self._answers: list[tuple] = [()] * slots
        self._lost: str | None = None
        self._offer: Callable[[Any], None] | None = None
        self._receiver: threading.Thread | None = None
        # Other feeders' inputs in a model call that stalled (STALLED_INPUTS): counted by the feeder
        # that owns their partitions now (OffsetTracker.mark_stalled_at, which returns how many).
        self.count_stalled: Callable[[list[InputId]], int] | None = None
        # The inputs of a request lost in a model call (inputs, died, alone), for the other feeders.
        self.relay_lost: Callable[[list[InputId], bool, bool], None] | None = None
        self._in_slot: list[tuple[Sequence[InputId], bool]] = [((), False)] * slots  # each request's inputs, alone

    # -- ModelHost -------------------------------------------------------------------------------
    @property
    def streams(self) -> int:
        return self._slots  # one model thread per slot: each has one batch in the model process

    def open(self) -> RemoteRunner:
        """Connect, attach the slots, and take the bundle the model process serves."""
        try:
            self._conn = connection.Client(self._address, family="AF_UNIX", authkey=self._authkey)
        except (OSError, EOFError) as exc:
            raise WorkerError(f"cannot reach the model process at {self._address}: {exc}", Failure.MODEL_PROCESS_LOST) from exc
        self._channel = Channel.attach(self._segment, self.shape, self._slots)
        for slot in range(self._slots):
            self._free.put(slot)
        self._conn.send((HELLO, self.feeder, self._segment, self._slots, self.shape))
        if not self._conn.poll(CONNECT_TIMEOUT_S):
            raise WorkerError(f"the model process did not answer within {CONNECT_TIMEOUT_S:g} s", Failure.MODEL_PROCESS_LOST)
        kind, info = self._conn.recv()
        assert kind == MODEL, kind
        runner = RemoteRunner(self, info)
        self._receiver = threading.Thread(target=self._receive_main, name="tagstream-model-link", daemon=True)
        self._receiver.start()
        log.info(
            "model_ready", name=runner.name, version=runner.version, labels=runner.labels, generation=info.generation,
            served_by="model process", slots=self._slots, tokenizer=runner.head_tokenizer.engine,
        )
        return runner

    def watch(self, slot: RunnerSlot, metrics: Metrics, stopping: threading.Event) -> Callable[[], None] | None:
        self._offer = slot.offer  # the model process watches the bundle; swaps arrive as messages
        return None

    # -- requests --------------------------------------------------------------------------------
    def request(
        self, token_ids: list[list[int]], generation: int, key: str, inputs: Sequence[InputId] = (),
        alone: bool = False,
    ) -> Classified:
        """Run one batch of a plain bundle that fits a slot in the model process: its rows' top k
        (``inputs``: its records, named to the other feeders if its call stalls; ``alone``: in a
        model call of its own). Raises InferenceError (the model raised: retried one by one),
        ModelCallStalled (the model process gave up the call it was in, or was lost in it) or
        WorkerError (the model process is gone)."""
        started = time.perf_counter()
        indices, scores = self._exchange(token_ids, generation, key, inputs, alone, Slot.read_answer)
        return Classified(indices, scores, time.perf_counter() - started)

    def request_probabilities(
        self, rows: list[list[int]], generation: int, key: str, inputs: Sequence[InputId] = (),
        alone: bool = False,
    ) -> np.ndarray:
        """``request`` for windows of a bundle that is not plain: each row's probabilities
        (rows, labels), which the caller pools per input (worker/documents.py)."""
        return self._exchange(rows, generation, key, inputs, alone, Slot.read_probabilities)

    def _exchange(
        self, token_ids: list[list[int]], generation: int, key: str, inputs: Sequence[InputId], alone: bool,
        read: Callable[[Slot, int, int], T],
    ) -> T:
        """Send one request and wait for its answer, which ``read(slot, rows, width)`` copies out."""
        self._check_alive()
        assert self._channel is not None
        slot = self._free.get()
        try:
            rows, tokens = self._channel.slots[slot].write_request(token_ids)
            done = self._done[slot]
            done.clear()
            self._answers[slot] = ()
            self._in_slot[slot] = (inputs, alone)
            self._send((REQUEST, slot, rows, tokens, generation, key, alone, inputs))
            while not done.wait(ANSWER_POLL_S):
                self._check_alive(slot)
            answer = self._answers[slot]
            if answer and answer[2] == STALLED:  # it came before the connection closed (same socket, in order)
                raise ModelCallStalled(
                    f"the model process gave up the model call these {rows} inputs were in: it ran past"
                    f" TAGSTREAM_MODEL_STALL_S ({answer[5]})"
                )
            self._check_alive(slot)
            _, _, status, width, _seconds, error = answer
            if status == OK:
                return read(self._channel.slots[slot], rows, width)
            if status == FAILED:
                raise InferenceError(error)
            raise WorkerError(
                f"the model process no longer holds bundle generation {generation} ({error}); restarting"
                " this feeder re-reads the inputs with the bundle served now", Failure.MODEL_PROCESS_LOST,
            )
        finally:
            self._free.put(slot)

    def release(self, generation: int) -> None:
        """No runner of ``generation`` is left here (a finalizer): the model process may unload it."""
        if self._lost is None:
            with contextlib.suppress(WorkerError):
                self._send((RELEASE, generation))

    def close(self) -> None:
        if self._conn is not None:
            with self._send_lock, contextlib.suppress(OSError):
                self._conn.close()
        self._lost = self._lost or "closed"
        if self._channel is not None:
            self._channel.close()

    # -- internals -------------------------------------------------------------------------------
    def _send(self, message: tuple) -> None:
        assert self._conn is not None
        with self._send_lock:
            try:
                self._conn.send(message)
            except (OSError, ValueError) as exc:
                self._lose(f"sending to the model process failed: {exc!r}")
                self._check_alive()

    def _receive_main(self) -> None:
        assert self._conn is not None
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                self._lose("the model process closed the connection (it stopped or died)")
                return
            if message[0] == DONE:
                slot = message[1]
                self._answers[slot] = message
                self._done[slot].set()
            elif message[0] == STALLED_INPUTS:
                named = [tuple(i) for i in message[1]]
                counted = self.count_stalled(named) if self.count_stalled is not None else 0
                log.warning("stalled_inputs_heard", inputs=len(named), counted=counted,
                            why="other feeders' inputs in the model call that stalled; counted: those of"
                                " partitions this feeder owns now")
            elif message[0] == MODEL:
                runner = RemoteRunner(self, message[1])
                log.info("bundle_offered", name=runner.name, version=runner.version, generation=runner.generation)
                if self._offer is not None:
                    self._offer(runner)

    def _lose(self, why: str) -> None:
        if self._lost is None:
            self._lost = why
            log.error("model_process_lost", reason=why)
        for done in self._done:
            done.set()

    def _check_alive(self, slot: int | None = None) -> None:
        """Raise if the model process is gone: ModelCallStalled if ``slot``'s request was in the
        model call it died in or was killed in (transport.py), so its inputs are counted."""
        if self._lost is None:
            return
        how = self._channel.slots[slot].lost_in_call() if slot is not None and self._channel is not None else None
        if how is not None and slot is not None and self.relay_lost is not None:
            inputs, alone = self._in_slot[slot]
            self.relay_lost(list(inputs), how == "died", alone)
        if how == "hung":
            raise ModelCallStalled(
                f"the model process was lost in the model call these inputs were in ({self._lost}): the"
                " supervisor killed it as unresponsive (TAGSTREAM_MODEL_STALL_S); counted as a stalled call"
            )
        if how == "died":
            raise ModelCallStalled(
                f"the model process was lost in the model call these inputs were in ({self._lost}): it died"
                " in the call; counted as a death in a model call", died=True,
            )
        raise WorkerError(f"the model process is gone: {self._lost}", Failure.MODEL_PROCESS_LOST)


class RemoteRunner:
    """The bundle the model process serves, from a feeder: tokenizes here, classifies there.

    A plain bundle's batch goes to the model process as it is and comes back ranked. Another
    bundle's inputs are read here as the model process's own runner reads them (worker/documents.py):
    cut into windows, sent in requests within the slot's limits, and their windows' probabilities
    pooled and ranked here, with the same numpy code."""

    def __init__(self, link: ModelLink, info: ModelInfo) -> None:
        self.name = info.name
        self.version = info.version
        self.labels = list(info.labels)
        self.max_length = info.max_length
        self.tokenizer_key = info.tokenizer_key
        self.generation = info.generation
        self.multi_label = info.multi_label
        self._link = link
        self.head_tokenizer = HeadTokenizer(info.tokenizer_json, info.max_length, fast=link.fast_tokenizer)
        truncation = Truncation.from_dict(info.truncation)
        self.plain = is_plain(info.multi_label, truncation)
        self._windower = (
            Windower(Tokenizer.from_str(info.tokenizer_json), info.max_length, truncation)
            if truncation.strategy != "head" else None
        )
        self.reading = DocumentReading(
            top_k=info.top_k, pooling=truncation.pooling, multi_label=info.multi_label,
            thresholds=None if info.thresholds is None else np.asarray(info.thresholds, dtype=np.float32),
            reports_windows=self._windower is not None,
        )
        # Runs when the last batch holding this runner is done (CPython frees it then): the model
        # process may unload this generation once no feeder holds it.
        weakref.finalize(self, link.release, info.generation)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, unpadded, as the model process's runner gives them (runner.py)."""
        if self._windower is None:
            return self.head_tokenizer.encode(texts)
        return laid_end_to_end(self._windower.windows(texts))

    def classify(
        self, token_ids: list[list[int]], *, inputs: Sequence[InputId] = (), alone: bool = False
    ) -> Classified:
        """Top-k labels and probabilities for one batch, computed by the model process (``inputs``
        and ``alone``: see Runner.classify)."""
        if not self.plain:
            return self._classify_documents(token_ids, inputs, alone)
        shape = self._link.shape
        lengths = [len(ids) for ids in token_ids]
        if max(lengths, default=0) > shape.tokens:
            raise InferenceError(
                f"an input of {max(lengths)} tokens does not fit a request of max_batch_tokens={shape.tokens}"
            )
        ranges = shape.chunks(lengths)
        if len(ranges) == 1:
            return self._link.request(token_ids, self.generation, self.tokenizer_key, inputs, alone)
        indices: list[list[int]] = []
        scores: list[list[float]] = []
        seconds = 0.0
        for start, end in ranges:
            part = self._link.request(
                token_ids[start:end], self.generation, self.tokenizer_key, inputs[start:end], alone
            )
            indices.extend(part.top_indices)
            scores.extend(part.top_scores)
            seconds += part.seconds
        return Classified(indices, scores, seconds)

    def _classify_documents(self, token_ids: list[list[int]], inputs: Sequence[InputId], alone: bool) -> Classified:
        """Every window of every input, in requests within the slot's limits; pooled per input here."""
        started = time.perf_counter()
        rows, counts = windows_of(token_ids, self.max_length)
        owner = np.repeat(np.arange(len(counts)), counts)  # each window's input
        shape = self._link.shape
        probs: list[np.ndarray] = []
        start = 0
        for part in sub_batches(rows, shape.rows, shape.tokens):
            end = start + len(part)
            named = [inputs[i] for i in dict.fromkeys(owner[start:end].tolist())] if inputs else []
            probs.append(self._link.request_probabilities(part, self.generation, self.tokenizer_key, named, alone))
            start = end
        return document_answers(np.concatenate(probs), counts, self.reading, time.perf_counter() - started)
