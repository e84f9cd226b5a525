"""Between a feeder and the model process: token ids and answers in shared memory, tiny messages on a socket.

Each feeder has one shared-memory segment (``Channel``) of ``slots`` slots. The supervisor creates
it, so it outlives a feeder's restart and is removed once, at the end; the feeder and the model
process attach to it by name. A slot holds one request and, later, its answer::

    lengths  int32[rows]        each row's token count
    ids      int32[tokens]      the rows' token ids end to end, unpadded
    indices  int32[rows * k]    answer: each row's top-k label indices, most probable first
    scores   float32[rows * k]  answer: their probabilities
    probs    float32[rows * labels]  answer, for bundles that are not plain: each row's probabilities
    state    int32[1]           IN_CALL while the request is in a model call (the model process's)

A plain bundle (single-label, read by head: one row per input) is answered by each row's top k.
Another bundle's rows are windows (worker/documents.py: a long input is read as several, a
multi-label input is tagged by thresholds): the model process answers every label's probability
for each window, and the feeder pools and ranks them, as a single process does. ``labels``
(``MAX_POD_LABELS``) bounds the labels of such a bundle in a pod.

Ownership of a slot passes with the messages: the feeder fills a free slot and sends REQUEST; the
model process reads it, writes the answer and sends DONE; the feeder reads the answer and frees
the slot. Nobody touches a slot it does not own, so there are no locks, and no batch is ever
pickled: the messages are tuples of a few numbers on a ``multiprocessing.connection`` socket.

    feeder -> model   (HELLO, feeder, segment name, slots, shape)     once, on connecting
                      (REQUEST, slot, rows, tokens, generation, tokenizer_key, alone, inputs)
                      (RELEASE, generation)   the feeder holds no runner of that bundle any more
    model -> feeder   (MODEL, ModelInfo)      on connecting, and after each bundle swap
                      (DONE, slot, status, k, seconds, error)   k: the answer's width (top k, or labels)
                      (STALLED_INPUTS, [(topic, partition, offset), ...])   before exiting on a stall

``generation`` numbers the bundles the model process has served (1 at start, +1 per swap);
``tokenizer_key`` says which tokenizer produced the ids. The model process runs a request on the
bundle of its generation and refuses one whose tokenizer key does not match (STALE): ids from one
tokenizer never reach another bundle's model. ``alone`` (a bool): the request holds one input to
isolate (it was in a stalled model call before, or its failed batch is retried input by input) and
runs in a model call of its own, never merged: a call that hangs or raises again does so on that
input only. ``inputs``: its rows' records, [(topic, partition, offset), ...] (a few µs to pickle
per batch; read only if the call stalls).

A model call that runs past TAGSTREAM_MODEL_STALL_S is given up: before the model process exits,
each request in it is answered STALLED, so that its feeder counts those inputs as stalled (and
not the others it had waiting, which were never in that call); every input in it is named to
every other feeder too (STALLED_INPUTS, sent first), for whichever owns its partition now: a
rebalance while the call ran may have moved it, and the feeder whose batch it was cannot count it
in a commit any more.

A model process that cannot answer (killed by the supervisor for being silent past the limit, or
dead of a crash or the OOM killer in the middle of a call) leaves its slots' ``state`` behind: a
feeder that loses the model process with a request still in a call counts those inputs as stalled
too (ModelCallStalled), so that an input that kills or freezes the model process every time is
also run alone next time, then dead-lettered, instead of restarting the pod for ever. The
supervisor marks the calls it kills the model process in HUNG first (``Channel.mark_calls_hung``):
a call still IN_CALL when the process is lost is one it died in, and a death, which may come from
outside the worker, convicts an input later than a hang (worker/source.py, _after_stalls).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

HELLO, REQUEST, RELEASE, MODEL, DONE, STALLED_INPUTS = "hello", "request", "release", "model", "done", "stalled_inputs"
# DONE statuses: answered; the model raised (error says why); bundle gone; in a call given up as stalled
OK, FAILED, STALE, STALLED = 0, 1, 2, 3
# A slot's state: IN_CALL while in a model call; HUNG: in a call the supervisor is killing the model
# process in, for being silent past TAGSTREAM_MODEL_STALL_S (still IN_CALL when lost: it died in it)
IDLE, IN_CALL, HUNG = 0, 1, 2
_ALIGN = 64  # each array starts on a cache line
# The most labels of a bundle that is not plain a pod serves: its answers carry every label's
# probability for each window (256 rows x 256 labels: 256 KiB a slot, as much as 65,536 token ids).
MAX_POD_LABELS = 256


@dataclass(frozen=True)
class SlotShape:
    """The most one request may hold: the feeder's batch limits, top_k and the labels of a bundle
    whose windows are answered by their probabilities (module docstring)."""

    rows: int  # max_batch_size
    tokens: int  # max_batch_tokens: a batch's real tokens never exceed its padded ones
    k: int  # top_k
    labels: int = MAX_POD_LABELS

    @property
    def array_lengths(self) -> tuple[int, ...]:
        """Each array's length, in the slot's order (see Slot)."""
        return (self.rows, self.tokens, self.rows * self.k, self.rows * self.k, self.rows * self.labels, 1)

    @property
    def slot_bytes(self) -> int:
        return sum(-(-count * 4 // _ALIGN) * _ALIGN for count in self.array_lengths)

    def chunks(self, lengths: list[int]) -> list[tuple[int, int]]:
        """(start, end) row ranges, in order, each fitting one slot. One range unless the rows came
        from a tokenizer with longer outputs than the batcher counted (a bundle swap)."""
        ranges = []
        start, tokens = 0, 0
        for i, n in enumerate(lengths):
            if i > start and (i - start >= self.rows or tokens + n > self.tokens):
                ranges.append((start, i))
                start, tokens = i, 0
            tokens += n
        ranges.append((start, len(lengths)))
        return ranges


@dataclass(frozen=True)
class ModelInfo:
    """What a feeder needs to know of the bundle the model process serves."""

    generation: int
    name: str
    version: str
    labels: tuple[str, ...]
    max_length: int
    tokenizer_key: str
    tokenizer_json: str  # sent once per connection and swap (a few hundred KB at most)
    # How the feeder reads and answers a bundle that is not plain (worker/documents.py); a plain
    # bundle's answers come ranked from the model process.
    top_k: int
    multi_label: bool
    thresholds: tuple[float, ...] | None
    truncation: dict[str, Any]  # model.truncation.Truncation.to_dict()


class Slot:
    """Numpy views on one slot of a channel."""

    def __init__(self, buf: memoryview, offset: int, shape: SlotShape) -> None:
        views = []
        dtypes = (np.int32, np.int32, np.int32, np.float32, np.float32, np.int32)
        for dtype, count in zip(dtypes, shape.array_lengths, strict=True):
            views.append(np.ndarray((count,), dtype=dtype, buffer=buf, offset=offset))
            offset += -(-count * 4 // _ALIGN) * _ALIGN
        self.lengths, self.ids, self.indices, self.scores, self.probs, self.state = views
        self.shape = shape

    # -- the feeder's side ----------------------------------------------------------------------
    def write_request(self, token_ids: list[list[int]]) -> tuple[int, int]:
        """Copy a batch's ids in; returns (rows, tokens). The batch must fit (``SlotShape.chunks``)."""
        rows = len(token_ids)
        lengths = np.fromiter(map(len, token_ids), dtype=np.int32, count=rows)
        tokens = int(lengths.sum())
        if rows > self.shape.rows or tokens > self.shape.tokens:
            raise ValueError(f"a request of {rows} rows / {tokens} tokens exceeds the slot ({self.shape})")
        self.lengths[:rows] = lengths
        self.ids[:tokens] = np.fromiter(itertools.chain.from_iterable(token_ids), dtype=np.int32, count=tokens)
        self.state[0] = IDLE
        return rows, tokens

    def lost_in_call(self) -> str | None:
        """How the model process was lost with this slot's request in a model call: "died" (a crash,
        the OOM killer, a kill from outside), "hung" (killed by the supervisor as unresponsive), or
        None: the request was not in a call."""
        state = int(self.state[0])
        return "died" if state == IN_CALL else "hung" if state == HUNG else None

    def read_answer(self, rows: int, k: int) -> tuple[list[list[int]], list[list[float]]]:
        """The answer's (top indices, top scores) per row, as lists."""
        n = rows * k
        return (self.indices[:n].reshape(rows, k).tolist(), self.scores[:n].reshape(rows, k).tolist())

    def read_probabilities(self, rows: int, labels: int) -> np.ndarray:
        """The answer's probabilities (rows, labels): a copy, the slot is freed next."""
        return self.probs[: rows * labels].reshape(rows, labels).copy()

    # -- the model process's side ---------------------------------------------------------------
    def request(self, rows: int, tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids end to end, lengths): views, valid until the answer is sent."""
        return self.ids[:tokens], self.lengths[:rows]

    def in_call(self, running: bool) -> None:
        """Mark the request as in a model call (before it), or out of it (after, before answering)."""
        self.state[0] = IN_CALL if running else IDLE

    def mark_hung(self) -> bool:
        """The supervisor's, just before it kills the model process as unresponsive: a request in a
        call is marked HUNG (see lost_in_call); whether it was in one. The process is frozen, so
        nothing else writes the state meanwhile."""
        if self.state[0] == IN_CALL:
            self.state[0] = HUNG
            return True
        return False

    def write_answer(self, top_indices: np.ndarray, top_scores: np.ndarray) -> None:
        """Copy one request's (rows, k) answers in."""
        n = top_indices.size
        self.indices[:n] = top_indices.reshape(-1)
        self.scores[:n] = top_scores.reshape(-1)

    def write_probabilities(self, probs: np.ndarray) -> None:
        """Copy one request's (rows, labels) probabilities in (labels <= the shape's)."""
        self.probs[: probs.size] = probs.reshape(-1)


class Channel:
    """One feeder's shared-memory slots (see the module docstring)."""

    def __init__(self, shm: shared_memory.SharedMemory, shape: SlotShape, slots: int, owner: bool) -> None:
        self._shm = shm
        self.shape = shape
        self.owner = owner
        buf = shm.buf
        assert buf is not None
        self.slots = [Slot(buf, i * shape.slot_bytes, shape) for i in range(slots)]

    @classmethod
    def create(cls, shape: SlotShape, slots: int, name: str | None = None) -> Channel:
        """A new segment (the supervisor's, named by its claim: shm_claim.py; it unlinks it at the end)."""
        name = name or f"tagstream-{secrets.token_hex(6)}"
        shm = shared_memory.SharedMemory(name=name, create=True, size=max(1, slots * shape.slot_bytes))
        return cls(shm, shape, slots, owner=True)

    def reserve(self, shm_dir: Path) -> None:
        """Give the segment its memory now (``posix_fallocate``), not page by page as batches first
        write each slot: a tmpfs that runs out under a write kills the writer with SIGBUS, mid-stream;
        here it is an OSError (ENOSPC) at start. Where the segment is not a file in ``shm_dir`` (not
        Linux), nothing is reserved."""
        path = shm_dir / self.name
        if not path.exists():
            return
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, self._shm.size)
        finally:
            os.close(fd)

    @classmethod
    def attach(cls, name: str, shape: SlotShape, slots: int) -> Channel:
        return cls(shared_memory.SharedMemory(name=name), shape, slots, owner=False)

    def mark_calls_hung(self) -> int:
        """``Slot.mark_hung`` on every slot; how many were in a call."""
        return sum(slot.mark_hung() for slot in self.slots)

    @staticmethod
    def size_bytes(shape: SlotShape, slots: int) -> int:
        return slots * shape.slot_bytes

    @property
    def name(self) -> str:
        return self._shm.name

    def close(self) -> None:
        """Unmap (views must be gone); the creator also removes the segment."""
        self.slots = []
        try:
            self._shm.close()
        except BufferError:
            return  # a view is still alive somewhere: the mapping goes with the process
        finally:
            if self.owner:
                with contextlib.suppress(FileNotFoundError):
                    self._shm.unlink()
