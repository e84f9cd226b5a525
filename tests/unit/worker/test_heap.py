"""The heap freeze on the hot path (worker/heap.py): frozen when ready, thawed for a bundle swap."""

from __future__ import annotations

import gc
import weakref

import pytest

from worker.heap import HeapFreezer


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def _thawed():
    yield
    gc.unfreeze()


def test_freeze_leaves_what_is_alive_out_of_collections_and_garbage_made_later_is_still_collected():
    heap = HeapFreezer()
    heap.freeze()
    assert gc.get_freeze_count() > 0
    later = _cycle()  # made after the freeze: an ordinary young cycle
    gc.collect()
    assert later() is None


def test_a_thaw_makes_a_frozen_cycle_collectable_and_tick_refreezes_only_once_the_time_is_up():
    heap = HeapFreezer(refreeze_after_s=60.0)
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    old_model = weakref.ref(a)
    heap.freeze()
    del a, b
    gc.collect()
    assert old_model() is not None  # frozen: a cycle no collection visits (the reason for thaw)
    heap.thaw(now=100.0)
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert old_model() is None
    heap.tick(now=159.9)
    assert gc.get_freeze_count() == 0
    heap.tick(now=160.0)
    assert gc.get_freeze_count() > 0


def test_release_thaws_for_good():
    heap = HeapFreezer()
    heap.freeze()
    heap.release()
    assert gc.get_freeze_count() == 0
    heap.tick(now=1e12)
    assert gc.get_freeze_count() == 0


def test_the_start_up_freeze_collects_young_garbage_first_and_the_refreeze_after_a_swap_all_of_it():
    heap = HeapFreezer(refreeze_after_s=0.0)
    young = _cycle()  # start-up temporaries: garbage, not yet collected
    heap.freeze()
    assert young() is None  # collected, not frozen
    heap.thaw(now=0.0)
    model = _Node()
    model.other = _Node()
    model.other.other = model
    gc.collect(1)
    gc.collect(1)  # alive through young collections: now in the oldest generation, as a loaded model is
    swapped_out = weakref.ref(model)
    del model
    gc.collect(1)
    assert swapped_out() is not None  # a young collection does not reach it
    heap.tick(now=0.0)  # the refreeze after a swap collects fully
    assert swapped_out() is None
