"""The shared-memory slots between feeders and the model process, and the model process's merging."""

from __future__ import annotations

from collections import deque
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from worker.procs.merge import Request, take_merged
from worker.procs.transport import Channel, SlotShape


@pytest.fixture
def channel():
    made = Channel.create(SlotShape(rows=8, tokens=64, k=3), slots=2)
    yield made
    made.close()


def test_a_request_written_by_the_feeder_is_read_whole_by_another_attachment(channel):
    """Ids and lengths written into a slot are seen, unchanged and unpadded, through a second mapping."""
    other = Channel.attach(channel.name, channel.shape, 2)
    try:
        batch = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
        rows, tokens = channel.slots[1].write_request(batch)
        ids, lengths = other.slots[1].request(rows, tokens)
        assert (rows, tokens) == (3, 9)
        assert lengths.tolist() == [3, 1, 5]
        assert ids.tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13]
    finally:
        other.close()


def test_a_request_in_a_model_call_is_marked_so_for_the_feeder_until_the_call_returns(channel):
    """The model process marks a slot IN_CALL through its own mapping; the feeder sees it (it would
    survive the model process's death: a death in the call), and the slot's next request starts unmarked."""
    other = Channel.attach(channel.name, channel.shape, 2)  # the model process's mapping
    try:
        channel.slots[0].write_request([[1, 2]])
        assert channel.slots[0].lost_in_call() is None
        other.slots[0].in_call(True)
        assert channel.slots[0].lost_in_call() == "died" and channel.slots[1].lost_in_call() is None
        other.slots[0].in_call(False)
        assert channel.slots[0].lost_in_call() is None
        other.slots[0].in_call(True)
        channel.slots[0].write_request([[3]])  # a new request in the slot: not in any call yet
        assert channel.slots[0].lost_in_call() is None
    finally:
        other.close()


def test_the_supervisor_marks_the_calls_it_kills_the_model_process_in_as_hung(channel):
    """Before killing a silent model process the supervisor marks the requests in calls HUNG through
    its own mapping: their feeders then count a hang, timed by the pod, not a death. Slots not in a
    call stay as they were."""
    model, supervisor = (Channel.attach(channel.name, channel.shape, 2) for _ in range(2))
    try:
        channel.slots[0].write_request([[1, 2]])
        channel.slots[1].write_request([[3]])
        model.slots[0].in_call(True)
        assert supervisor.mark_calls_hung() == 1
        assert channel.slots[0].lost_in_call() == "hung" and channel.slots[1].lost_in_call() is None
        assert supervisor.mark_calls_hung() == 0  # marked once
    finally:
        model.close()
        supervisor.close()


def test_answers_come_back_per_row_and_slots_do_not_overlap(channel):
    """Answers written into one slot are read back row by row, and writing slot 0 leaves slot 1 alone."""
    other = Channel.attach(channel.name, channel.shape, 2)
    try:
        channel.slots[1].write_request([[1, 2], [3]])
        other.slots[1].write_answer(np.array([[2, 0, 1], [1, 2, 0]]), np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]]))
        other.slots[0].write_answer(np.full((8, 3), 9), np.full((8, 3), 0.9))
        indices, scores = channel.slots[1].read_answer(2, 3)
        assert indices == [[2, 0, 1], [1, 2, 0]]
        assert np.allclose(scores, [[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]], atol=1e-6)
        assert channel.slots[1].request(2, 3)[0].tolist() == [1, 2, 3]
    finally:
        other.close()


def test_a_request_larger_than_a_slot_is_refused(channel):
    """More rows or token ids than the slot holds raise instead of overwriting the next slot."""
    with pytest.raises(ValueError, match="exceeds the slot"):
        channel.slots[0].write_request([[1]] * 9)
    with pytest.raises(ValueError, match="exceeds the slot"):
        channel.slots[0].write_request([list(range(40)), list(range(30))])


def test_chunks_split_a_batch_by_rows_and_by_tokens_in_order():
    """A batch that fits is one chunk; one that does not is cut in order where rows or tokens run out."""
    shape = SlotShape(rows=3, tokens=10, k=1)
    assert shape.chunks([2, 2, 2]) == [(0, 3)]
    assert shape.chunks([1, 1, 1, 1, 1]) == [(0, 3), (3, 5)]
    assert shape.chunks([6, 5, 4, 2]) == [(0, 1), (1, 3), (3, 4)]


def test_closing_the_creator_removes_the_segment():
    """The supervisor's close unlinks the shared memory: nothing is left behind in /dev/shm."""
    made = Channel.create(SlotShape(rows=2, tokens=8, k=1), slots=1)
    name = made.name
    made.close()
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=name)


def _request(tag: int, rows: int, longest: int, generation: int = 1, alone: bool = False) -> Request:
    return Request(port=tag, slot=0, rows=rows, tokens=rows * longest, longest=longest, generation=generation,
                   tokenizer_key="k", alone=alone, inputs=tuple(("in", 0, tag * 100 + row) for row in range(rows)))


def test_merging_takes_the_oldest_then_whatever_fits_and_keeps_the_rest_in_order():
    """Requests merge while rows and rows x longest fit; one that does not stays at the front, in order."""
    pending = deque([_request(1, 30, 10), _request(2, 40, 10), _request(3, 20, 50), _request(4, 4, 10)])
    group = take_merged(pending, max_rows=64, max_tokens=8192)
    assert [r.port for r in group] == [1, 3, 4]  # 2 would make 70 rows
    assert [r.port for r in pending] == [2]
    assert take_merged(pending, 64, 8192)[0].port == 2
    assert take_merged(pending, 64, 8192) == []


def test_merging_respects_the_padded_token_budget_and_the_bundle_generation():
    """A long request that would pad the merged batch past the budget, or one of another bundle, is left."""
    pending = deque([_request(1, 10, 10), _request(2, 10, 100), _request(3, 5, 10, generation=2),
                     _request(4, 10, 12)])
    group = take_merged(pending, max_rows=64, max_tokens=1000)
    assert [r.port for r in group] == [1, 4]  # 20 rows x 100 > 1000; generation 2 never mixes with 1
    assert [r.port for r in pending] == [2, 3]


def test_a_request_to_isolate_runs_by_itself_and_is_never_merged_into_another():
    """An input that stalled a model call before (or a failed batch's one-by-one retry) runs in a call
    of its own: first in line it takes no company, and behind another it is left for its own turn."""
    pending = deque([_request(1, 1, 10, alone=True), _request(2, 4, 10), _request(3, 1, 10, alone=True),
                     _request(4, 4, 10)])
    assert [r.port for r in take_merged(pending, 64, 8192)] == [1]
    assert [r.port for r in take_merged(pending, 64, 8192)] == [2, 4]
    assert [r.port for r in take_merged(pending, 64, 8192)] == [3]
    assert not pending


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm folder (not Linux)")
def test_a_reserved_channel_holds_its_memory_from_the_start_not_as_slots_are_first_written():
    """A new segment is sparse: tmpfs gives it pages as batches first write them, and a writer that
    finds none left dies of SIGBUS. ``reserve`` takes them all at once (or fails with ENOSPC)."""
    made = Channel.create(SlotShape(rows=64, tokens=8192, k=3), slots=2)
    try:
        path = Path("/dev/shm") / made.name
        need = Channel.size_bytes(made.shape, 2)
        assert path.stat().st_blocks * 512 < need / 2  # nothing written yet
        made.reserve(Path("/dev/shm"))
        assert path.stat().st_blocks * 512 >= need
    finally:
        made.close()
