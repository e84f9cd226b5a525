"""What may be committed: the offset bookkeeping (the committers are worker/committer.py and
worker/transactions.py).

Delivery guarantee: **at least once**. An input's offset is committed only once the broker has
acknowledged its result (or its dead-letter record), and only as part of a contiguous prefix:
per partition, the committed position is the lowest offset not yet acknowledged. A crash or a
lost partition therefore redelivers inputs (possibly producing a result twice), never skips one.

``OffsetTracker`` is the bookkeeping (no I/O, thread-safe): the consumer thread ``track``s every
offset it hands downstream, the producer's delivery callbacks ``ack`` them from its I/O thread,
and ``committable`` gives the positions that moved. Partitions carry an *epoch*, bumped on every
assignment, so acknowledgements and queued work from before a rebalance are recognised as stale.

The tracker also keeps, per partition, the inputs given up in stalled model calls and how often
(``mark_stalled``; a pod's model process dying in a call counts apart, as deaths), and the
outputs delivered past the commit: both go in each commit's metadata (``hints``,
worker/delivered_hints.py) for whoever reads the partition next.

The committers use it: ``Committer`` (worker/committer.py) through the consumer group
(at-least-once), ``TransactionalCommitter`` (worker/transactions.py) in the producer's
transactions (exactly-once).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from worker.delivered_hints import encode as encode_hint
from worker.kafka.base import TopicPartition


class Issued(Protocol):
    """An input as the tracker sees it when it is issued (an Event or a DeadLetter)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def epoch(self) -> int: ...


IssuedT = TypeVar("IssuedT", bound=Issued)
# A commit hint's parts for one partition: outputs delivered past the position, the inputs given up
# in stalled model calls (offset: count), and those a pod's model process died in (offset: deaths, alone).
HintParts = tuple[list[int], dict[int, int], dict[int, tuple[int, int]]]


@dataclass(frozen=True)
class ResumePoint:
    position: int  # the lowest unacknowledged offset: reading resumes here
    delivered: frozenset[int]  # later offsets whose outputs the broker already acknowledged
    # Inputs at or past the position that were in model calls given up as stalled, and how often:
    # a partition assigned straight back keeps running them alone (see mark_stalled).
    stalled: tuple[tuple[int, int], ...] = ()
    stalled_new: bool = False  # some of those counts are in no commit yet: the next commit carries them
    died: tuple[tuple[int, int, int], ...] = ()  # (offset, deaths, of them alone): see mark_stalled


@dataclass
class _PartitionState:
    epoch: int
    pending: deque[int] = field(default_factory=deque)  # tracked offsets at or after the position, in order
    acked: set[int] = field(default_factory=set)  # acknowledged offsets still in ``pending``
    abandoned: set[int] = field(default_factory=set)  # dropped during revocation: never acked
    revoking: bool = False  # revocation has begun: queued work for it past ``finish_upto`` is dropped
    issued: int = -1  # the highest offset handed to the model or the sink (see issue)
    finish_upto: int = -1  # while revoking: queued inputs up to this offset still run (see begin_revoke)
    delivered: set[int] = field(default_factory=set)  # re-read offsets whose output already exists
    hint_at: int | None = None  # ``delivered`` came with the commit at this position: valid if read from there
    hinted: int = 0  # acknowledged offsets past the position named in the last commit's hint
    hinting: int = 0  # ... in the commit under way
    # Inputs that were in a model call given up as stalled, and how often (from the hint read at
    # assignment, and this worker's own give-ups); ``stalled_new``: not in a commit's hint yet.
    stalled: dict[int, int] = field(default_factory=dict)
    stalled_new: bool = False
    # The same for a pod's model process dying in a call: offset -> (deaths, of them with it alone).
    died: dict[int, tuple[int, int]] = field(default_factory=dict)
    last_tracked: int | None = None
    committed: int | None = None  # last position known to be committed
    # The group's commit read at assignment (delivered_hints.read_hints), or where a partition given
    # straight back resumes: a position for stalled counts before this assignment has read anything.
    group_committed: int | None = None

    @property
    def last_known_commit(self) -> int | None:
        """The last commit this worker made, else the group's as read: where counts can be committed
        when nothing was read yet."""
        return self.committed if self.committed is not None else self.group_committed


class OffsetTracker:
    """Per-partition bookkeeping of handed-out and acknowledged offsets."""

    def __init__(self, finish_issued_on_revoke: bool = True, delivered_hints: bool = False) -> None:
        """``finish_issued_on_revoke``: at-least-once (see begin_revoke); exactly-once passes False,
        since its revocation aborts the open transaction and every output after it is discarded.
        ``delivered_hints`` (at-least-once): a partition whose position is held back is committed
        again, at the same position, once more outputs past it were acknowledged, so that the
        commit's hint names them (worker/delivered_hints.py). Exactly-once never names delivered
        outputs (nothing past its commit is published) but, like at-least-once, counts the inputs
        of stalled model calls in its commits' hints (``mark_stalled``)."""
        self._finish_issued = finish_issued_on_revoke
        self.delivered_hints = delivered_hints
        # A hint named inputs of stalled model calls: the batcher thread looks for inputs to run
        # alone (Event.alone) only once this is set, not in every hand-over.
        self.runs_alone = False
        # Told the inputs each mark_stalled_at counted (a pod's feeder tells its supervisor: worker/procs/lost_calls.py).
        self.on_marked: Callable[[list[tuple[str, int, int]]], None] | None = None
        self._lock = threading.Lock()
        self._parts: dict[TopicPartition, _PartitionState] = {}
        self._epochs: dict[TopicPartition, int] = {}  # survives revocation, so epochs only grow
        # Survives revocation too: each partition's position committed last (see last_commit).
        self._floors: dict[TopicPartition, int] = {}
        # Acks arrive on the producer's I/O thread; appending to a deque is atomic, so the
        # hot path takes no lock. They are applied when positions are computed.
        self._inbox: deque[tuple[TopicPartition, int, int]] = deque()
        self.revocations = 0  # bumped by begin_revoke, so the batcher thread knows to purge

    # -- assignment ------------------------------------------------------------------------
    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Start tracking ``partitions`` under a fresh epoch (a no-op for ones already held)."""
        with self._lock:
            for tp in partitions:
                if tp not in self._parts:
                    epoch = self._epochs.get(tp, 0) + 1
                    self._epochs[tp] = epoch
                    self._parts[tp] = _PartitionState(epoch=epoch)

    def begin_revoke(self, partitions: Iterable[TopicPartition]) -> None:
        """Revocation has started: queued inputs of these partitions past the highest one already
        issued are dropped, not run; running ones, and (at-least-once) queued ones below it, finish.

        The batcher groups inputs by length, so a partition's inputs reach the model out of offset
        order. Dropping a queued input below one whose output was already published would hold the
        committed position back at the dropped one, and the partition's next owner would publish
        every later output again: queued inputs up to the highest issued offset are therefore run,
        so that the commit at revocation can cover all that was published.
        """
        with self._lock:
            for tp in partitions:
                state = self._parts.get(tp)
                if state is not None and not state.revoking:
                    state.revoking = True
                    state.finish_upto = state.issued if self._finish_issued else -1
            self.revocations += 1

    def accepts(self, tp: tuple[str, int], epoch: int, offset: int) -> bool:
        """Whether an input read under ``epoch`` should still be processed: not stale, and not
        dropped by a revocation under way (see begin_revoke)."""
        state = self._parts.get(tp)  # type: ignore[call-overload]
        return state is not None and state.epoch == epoch and (not state.revoking or offset <= state.finish_upto)

    def split(self, items: list[IssuedT]) -> tuple[list[IssuedT], list[IssuedT]]:
        """(still wanted, dropped) by ``accepts``, in one pass: the dropped ones belong to revoked
        partitions (or to an older assignment) and are read again by the partition's next owner."""
        keep: list[IssuedT] = []
        drop: list[IssuedT] = []
        accepts = self.accepts
        for item in items:
            (keep if accepts((item.topic, item.partition), item.epoch, item.offset) else drop).append(item)
        return keep, drop

    def issue(self, items: Iterable[Issued]) -> None:
        """Inputs about to go to the model or the sink (batcher thread), before any of them is
        checked with ``accepts`` there: a revocation that begins later finishes every queued input
        of their partitions up to the highest of them."""
        highest: dict[tuple[tuple[str, int], int], int] = {}
        for item in items:
            key = ((item.topic, item.partition), item.epoch)
            if highest.get(key, -1) < item.offset:
                highest[key] = item.offset
        with self._lock:
            for (tp, epoch), offset in highest.items():
                state = self._parts.get(tp)  # type: ignore[call-overload]
                # Once revoking, the bound is fixed: what was issued past it is dropped where it is checked.
                if state is not None and state.epoch == epoch and not state.revoking and offset > state.issued:
                    state.issued = offset

    def abandon(self, tp: tuple[str, int], offset: int, epoch: int) -> None:
        """An input dropped without output: no longer in flight, and never committed past."""
        with self._lock:
            state = self._parts.get(tp)  # type: ignore[call-overload]
            if state is not None and state.epoch == epoch:
                state.abandoned.add(offset)

    def revoke(self, partitions: Iterable[TopicPartition]) -> int:
        """Stop tracking ``partitions``; returns how many handed-out inputs were never acknowledged.

        Their later acknowledgements, and their queued inputs (recognised by epoch), are
        dropped: the next owner starts from the committed position and redelivers them.
        """
        with self._lock:
            self._apply_acks()
            dropped = 0
            for tp in partitions:
                state = self._parts.pop(tp, None)
                if state is not None:
                    dropped += len(state.pending) - len(state.acked)
                    if state.committed is not None:
                        self._floors[tp] = max(state.committed, self._floors.get(tp, state.committed))
            return dropped

    def resume_points(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, ResumePoint]:
        """Per partition with unacknowledged inputs: where reading must resume, and which later
        offsets already have an acknowledged output (so a re-read can skip them)."""
        with self._lock:
            self._apply_acks()
            points = {}
            for tp in partitions:
                state = self._parts.get(tp)
                if state is None:
                    continue
                self._position(state)  # drops the acknowledged prefix
                if state.pending:
                    points[tp] = ResumePoint(state.pending[0], frozenset(state.acked),
                                             *_stalled_from(state, state.pending[0]))
            return points

    def committed_points(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, ResumePoint]:
        """Per partition, the last committed position (exactly-once: nothing past it is delivered)."""
        with self._lock:
            points = {}
            for tp in partitions:
                state = self._parts.get(tp)
                if state is None:
                    continue
                if state.committed is not None and state.last_tracked is not None:
                    position: int | None = state.committed
                elif state.stalled or state.died:  # read nothing yet: a point only to keep its stalled counts
                    position = state.last_known_commit
                else:
                    position = None
                if position is not None:
                    points[tp] = ResumePoint(position, frozenset(), *_stalled_from(state, position))
            return points

    def restart_from_committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Forget everything past the last commit (exactly-once, after an abort): a fresh epoch per
        partition, so queued and running work is dropped; returns where each must be re-read from."""
        with self._lock:
            self._apply_acks()
            seeks = {}
            for tp in partitions:
                state = self._parts.get(tp)
                if state is None:
                    continue
                epoch = self._epochs[tp] + 1
                self._epochs[tp] = epoch
                # The stalled counts stay: the inputs they name are read again from the commit.
                self._parts[tp] = _PartitionState(epoch=epoch, committed=state.committed, stalled=state.stalled,
                                                  stalled_new=state.stalled_new, died=state.died,
                                                  group_committed=state.group_committed)
                if state.committed is not None and state.last_tracked is not None:
                    seeks[tp] = state.committed
            self.revocations += 1  # the batcher purges what it holds of the old epochs
            return seeks

    def uncommitted(self) -> bool:
        """Whether anything was handed out since the last commit (exactly-once: a transaction is due)."""
        with self._lock:
            return any(
                state.last_tracked is not None and (state.committed is None or state.last_tracked >= state.committed)
                for state in self._parts.values()
            )

    def skip_delivered(
        self, tp: TopicPartition, offsets: Iterable[int], stalled: Iterable[tuple[int, int]] = (),
        position: int | None = None, stalled_new: bool = False, died: Iterable[tuple[int, int, int]] = (),
    ) -> None:
        """Offsets of ``tp`` whose outputs were acknowledged before a rebalance gave the partition
        straight back: when read again they are acknowledged at once instead of re-run. ``stalled``:
        (offset, count) of its inputs given up in stalled model calls before, and ``died`` (offset,
        deaths, of them alone) those a pod's model process died in, kept as they were
        (``stalled_new``: some are in no commit yet, so the next commit still carries them);
        ``position``: where reading resumes (everything before it is committed or delivered)."""
        with self._lock:
            state = self._parts.get(tp)
            if state is not None:
                state.delivered.update(offsets)
                state.stalled.update(stalled)
                state.died.update((o, (n, alone)) for o, n, alone in died)
                state.stalled_new = state.stalled_new or (stalled_new and bool(state.stalled or state.died))
                if position is not None:
                    state.group_committed = position
                self.runs_alone = self.runs_alone or bool(state.stalled or state.died)

    def skip_delivered_from(
        self, tp: TopicPartition, position: int, offsets: Iterable[int], stalled: dict[int, int] | None = None,
        died: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        """``skip_delivered`` for a hint read with the group's commit at ``position``, and the inputs
        it names as given up in stalled model calls or died in (``stalled_counts``, ``died_counts``):
        kept only if reading ``tp`` starts exactly there (see ``delivered``), and only before it has
        started."""
        with self._lock:
            state = self._parts.get(tp)
            if state is not None and state.last_tracked is None and not state.delivered:
                if self.delivered_hints:  # exactly-once: an at-least-once predecessor's outputs are not ours
                    state.delivered.update(offsets)
                state.stalled.update(stalled or {})
                state.died.update(died or {})
                state.hint_at = position
                self.runs_alone = self.runs_alone or bool(stalled or died)

    def note_group_committed(self, tp: TopicPartition, position: int) -> None:
        """The group's committed position for ``tp``, read when it was assigned (see stalled_positions)."""
        with self._lock:
            state = self._parts.get(tp)
            if state is not None:
                state.group_committed = position

    def known_commit(self, tp: TopicPartition) -> int | None:
        """The last commit this worker made for ``tp``, else the group's as read at assignment."""
        state = self._parts.get(tp)
        return state.last_known_commit if state is not None else None

    def stalled_counts(self, tp: TopicPartition) -> dict[int, int]:
        """Inputs of ``tp`` that were in model calls given up as stalled, and how often; usually empty."""
        state = self._parts.get(tp)
        return state.stalled if state is not None else {}

    def died_counts(self, tp: TopicPartition) -> dict[int, tuple[int, int]]:
        """Inputs of ``tp`` that a pod's model process died in calls with: (deaths, of them with the
        input alone); usually empty."""
        state = self._parts.get(tp)
        return state.died if state is not None else {}

    def mark_stalled(self, items: Iterable[Issued], died: bool = False, alone: bool = False) -> None:
        """Inputs given up in a stalled model call: counted, for the next commit's hint, so that
        whoever reads them next runs them alone, and not a third time. ``died``: a pod's model
        process died in the call instead (``alone``: with the input alone in it), which convicts
        later (worker/source.py, _after_stalls)."""
        # Any epoch: a count is a fact about the record, not about an output. A call that began
        # before a rebalance gave the partition straight back stalls on the same input the new
        # epoch reads again.
        self.mark_stalled_at([input_id(item) for item in items], died, alone)

    def mark_stalled_at(self, inputs: Iterable[tuple[str, int, int]], died: bool = False, alone: bool = False) -> int:
        """``mark_stalled`` by (topic, partition, offset); inputs of partitions not held are ignored
        (a pod's feeder hears of every input in a stalled call: worker/procs/remote.py). Returns
        how many were counted (``on_marked`` is told which)."""
        counted = []
        with self._lock:
            for input_ in inputs:
                topic, partition, offset = input_
                state = self._parts.get((topic, partition))  # type: ignore[call-overload]
                if state is not None:
                    if died:
                        deaths, deaths_alone = state.died.get(offset, (0, 0))
                        state.died[offset] = (deaths + 1, deaths_alone + alone)
                    else:
                        state.stalled[offset] = state.stalled.get(offset, 0) + 1
                    state.stalled_new = True
                    counted.append(input_)
        if counted and self.on_marked is not None:
            self.on_marked(counted)
        return len(counted)

    def delivered(self, tp: TopicPartition, first: int | None = None) -> set[int]:
        """Offsets to skip when read (see skip_delivered); usually empty. ``first``: the offset of the
        records about to be tracked. A hint from the commit (skip_delivered_from) holds only if the
        first read of the partition starts at the hint's position: read from anywhere else (a reset,
        a log that started over), its offsets may not be the records that were labelled."""
        state = self._parts.get(tp)
        if state is None:
            return set()
        if state.hint_at is not None and first is not None:
            with self._lock:
                if state.hint_at is not None:
                    if first != state.hint_at or state.last_tracked is not None:
                        state.delivered.clear()
                        state.stalled.clear()
                        state.died.clear()
                    state.hint_at = None
        return state.delivered

    def epoch(self, tp: TopicPartition) -> int | None:
        """The current epoch of an assigned partition, or None when not assigned."""
        state = self._parts.get(tp)
        return state.epoch if state is not None else None

    def is_current(self, tp: TopicPartition, epoch: int) -> bool:
        state = self._parts.get(tp)
        return state is not None and state.epoch == epoch

    def assigned(self) -> list[TopicPartition]:
        with self._lock:
            return sorted(self._parts)

    # -- the hot path ------------------------------------------------------------------------
    def track(self, tp: TopicPartition, offsets: Iterable[int]) -> int:
        """Record offsets handed downstream (in increasing order); returns the partition's epoch."""
        with self._lock:
            state = self._parts.get(tp)
            if state is None:
                # Records of a partition we do not hold: poll never returns those.
                raise KeyError(f"{tp} is not assigned")
            for offset in offsets:
                if state.last_tracked is None and state.committed is None:
                    # Where this epoch started reading is the group's committed position (or
                    # the reset point): nothing to commit until an acknowledgement moves it.
                    state.committed = offset
                state.pending.append(offset)
                state.last_tracked = offset
                if state.delivered and offset in state.delivered:
                    state.delivered.discard(offset)
                    state.acked.add(offset)  # its output was acknowledged before the rebalance
            return state.epoch

    def ack(self, tp: TopicPartition, offset: int, epoch: int) -> None:
        """The broker acknowledged the output for this input (any thread, no lock)."""
        self._inbox.append((tp, offset, epoch))

    def ack_many(self, acks: list[tuple[TopicPartition, int, int]]) -> None:
        """``ack`` for several inputs at once: (partition, offset, epoch) each."""
        self._inbox.extend(acks)

    # -- committing ------------------------------------------------------------------------
    def committable(self, partitions: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Positions (next offset to read) that advanced past the last commit, per partition."""
        with self._lock:
            self._apply_acks()
            positions = {}
            for tp in self._parts if partitions is None else partitions:
                state = self._parts.get(tp)
                if state is None:
                    continue
                position = self._position(state)
                if position is None and state.stalled_new:  # counts for a partition read nothing of yet
                    position = state.last_known_commit
                if position is not None and (
                    position != state.committed
                    or state.stalled_new
                    or (self.delivered_hints and len(state.acked) > state.hinted)
                ):
                    positions[tp] = position
            return positions

    def hint_parts(self, positions: dict[TopicPartition, int]) -> dict[TopicPartition, HintParts]:
        """For a commit of ``positions`` (from ``committable``), per partition: the offsets past the
        position whose outputs the broker acknowledged, and the inputs at or past it given up in
        stalled model calls with their counts, and died in; for the commit's hint (worker/delivered_hints.py)."""
        with self._lock:
            out: dict[TopicPartition, HintParts] = {}
            for tp, position in positions.items():
                state = self._parts.get(tp)
                if state is None:
                    continue
                acked, later = [], []
                if self.delivered_hints:
                    acked = [o for o in state.acked if o > position]
                    # What the hint this reader started from names and it has not read yet is passed
                    # on: a reader that stops before reaching it (a pod failing as it starts) loses
                    # none of it.
                    later = acked + [o for o in state.delivered if o > position]
                stalled = {o: n for o, n in state.stalled.items() if o >= position}
                died = {o: d for o, d in state.died.items() if o >= position}
                state.hinting = len(acked)
                if later or stalled or died:
                    out[tp] = (later, stalled, died)
            return out

    def hints(self, positions: dict[TopicPartition, int]) -> dict[TopicPartition, str]:
        """The metadata string for each partition of a commit of ``positions`` that has something to
        say (worker/delivered_hints.py): outputs already acknowledged past the position, so that the
        partition's next reader does not label those inputs again, and the stalled inputs' counts."""
        hints = {}
        for tp, (later, stalled, died) in self.hint_parts(positions).items():
            text = encode_hint(positions[tp], later, stalled, died)
            if text:
                hints[tp] = text
        return hints

    def stalled_positions(self) -> dict[TopicPartition, int]:
        """Partitions whose stalled counts are in no commit yet, at their last committed position
        (exactly-once, after its final transaction was aborted: see TransactionalCommitter)."""
        with self._lock:
            positions = {tp: state.last_known_commit for tp, state in self._parts.items() if state.stalled_new}
            return {tp: p for tp, p in positions.items() if p is not None}

    def mark_committed(self, positions: dict[TopicPartition, int]) -> None:
        with self._lock:
            for tp, position in positions.items():
                state = self._parts.get(tp)
                if state is None:
                    continue
                if state.committed is None or position > state.committed:
                    state.committed = position
                if position == state.committed:
                    state.hinted = state.hinting
                    state.stalled_new = False

    def last_commit(self, tp: TopicPartition) -> int | None:
        """The position last committed for ``tp`` (or where its reading started), in this assignment
        or an earlier one; None before any. Re-reads (a rebalance, a rewind, an aborted transaction)
        resume at or past it: only a log that started over is read below it."""
        with self._lock:
            state = self._parts.get(tp)
            known = [c for c in (None if state is None else state.committed, self._floors.get(tp)) if c is not None]
            return max(known) if known else None

    def started_over(self, tp: TopicPartition, offset: int) -> None:
        """``tp``'s log started over below its committed position (the topic was deleted and created
        again): count its position from ``offset``, the first record read of the new log."""
        with self._lock:
            self._floors.pop(tp, None)
            state = self._parts.get(tp)
            if state is not None and state.committed is not None and offset < state.committed:
                state.committed = offset

    def committed_position(self, tp: TopicPartition) -> int | None:
        """The last committed position, else the oldest unacknowledged offset (for lag)."""
        state = self._parts.get(tp)
        if state is None:
            return None
        if state.committed is not None:
            return state.committed
        pending = state.pending
        return pending[0] if pending else None

    def in_flight(self, partitions: Iterable[TopicPartition] | None = None) -> int:
        """Inputs handed downstream and not yet acknowledged."""
        with self._lock:
            self._apply_acks()
            tps = self._parts if partitions is None else partitions
            total = 0
            for tp in tps:
                state = self._parts.get(tp)
                if state is not None:
                    total += len(state.pending) - len(state.acked) - len(state.abandoned)
            return total

    def _apply_acks(self) -> None:
        inbox = self._inbox
        while inbox:
            tp, offset, epoch = inbox.popleft()
            state = self._parts.get(tp)
            if state is not None and state.epoch == epoch:
                state.acked.add(offset)

    @staticmethod
    def _position(state: _PartitionState) -> int | None:
        pending, acked = state.pending, state.acked
        while pending and pending[0] in acked:
            acked.discard(pending.popleft())
        if pending:
            return pending[0]
        return None if state.last_tracked is None else state.last_tracked + 1


def input_id(item: Issued) -> tuple[str, int, int]:
    """An input's (topic, partition, offset): how a stall count names it across processes."""
    return (item.topic, item.partition, item.offset)


def _stalled_from(
    state: _PartitionState, position: int
) -> tuple[tuple[tuple[int, int], ...], bool, tuple[tuple[int, int, int], ...]]:
    """A ResumePoint's (stalled, stalled_new, died) at ``position``."""
    return (
        tuple(sorted((o, n) for o, n in state.stalled.items() if o >= position)),
        state.stalled_new,
        tuple(sorted((o, n, alone) for o, (n, alone) in state.died.items() if o >= position)),
    )
