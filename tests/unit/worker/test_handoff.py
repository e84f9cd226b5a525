"""The source -> inference hand-off: never blocks the source, counts pending inputs, closes."""

from __future__ import annotations

import threading
import time

from worker.handoff import InputHandoff


def test_put_never_blocks_and_counts_pending():
    """put accepts past capacity (the source pauses instead) and pending counts until release."""
    h: InputHandoff[int, str] = InputHandoff(capacity=4)
    h.put([1, 2, 3], ["bad"])
    assert h.pending == 4 and h.over_capacity
    h.put([4, 5], [])
    events, letters, closed, _ = h.take(0.0)
    assert events == [1, 2, 3, 4, 5] and letters == ["bad"] and not closed
    assert h.pending == 6  # taken is not released: they are in the batcher now
    h.release(4)
    assert h.pending == 2 and h.below_resume_mark and not h.over_capacity


def test_take_waits_for_input_up_to_timeout():
    """take blocks until something arrives or the timeout passes."""
    h: InputHandoff[int, str] = InputHandoff(capacity=10)
    started = time.monotonic()
    assert h.take(0.05) == ([], [], False, None)
    assert time.monotonic() - started >= 0.04
    threading.Timer(0.02, lambda: h.put([7], [])).start()
    events, *_ = h.take(2.0)
    assert events == [7]


def test_close_wakes_the_taker():
    """close() ends a waiting take at once and reports input as ended."""
    h: InputHandoff[int, str] = InputHandoff(capacity=10)
    threading.Timer(0.02, h.close).start()
    started = time.monotonic()
    assert h.take(5.0) == ([], [], True, None)
    assert time.monotonic() - started < 1.0


def test_a_barrier_splits_what_take_returns():
    """Inputs put before a barrier come out with it; inputs put after it wait for the next take."""
    h: InputHandoff[int, str] = InputHandoff(capacity=10)
    h.put([1, 2], ["a"])
    h.put_barrier("txn-1")
    h.put([3], ["b"])
    h.put_barrier("txn-2")
    assert h.take(0.0) == ([1, 2], ["a"], False, "txn-1")
    assert h.take(0.0) == ([3], ["b"], False, "txn-2")
    h.put([4], [])
    assert h.take(0.0) == ([4], [], False, None)
    h.put_barrier("empty")
    h.close()
    assert h.take(0.0) == ([], [], True, "empty")
