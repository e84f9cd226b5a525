"""When a worker pins its threads to one CPU, and to which (worker/affinity.py)."""

from __future__ import annotations

import os
import threading

import pytest

from model.cpus import CpuBudget
from worker.affinity import pin_this_thread, plan_pinning, release_this_thread, spare_cpus

MASK = {2, 3, 5, 7}


def budget(quota: float | None) -> CpuBudget:
    return CpuBudget(count=len(MASK), affinity=len(MASK), quota=quota, source="cpu.max" if quota else "")


def test_auto_pins_only_where_the_pod_owns_its_cpus() -> None:
    """auto: no CPU limit (CPUs shared with other pods) or a mask wider than the limit -> no pin;
    a mask within the limit (the static CPU manager's exclusive CPUs) -> a pin, saying why."""
    assert plan_pinning("auto", budget(None), 0, MASK).cpu is None
    wide = plan_pinning("auto", budget(2.0), 0, MASK)
    assert wide.cpu is None and "shared" in wide.reason
    owned = plan_pinning("auto", budget(4.0), 0, MASK)
    assert owned.cpu == 2 and "within the CPU limit" in owned.reason
    assert plan_pinning("auto", budget(3.5), 0, MASK).cpu == 2  # a limit of 3.5 CPUs may use 4


def test_on_pins_anyway_and_off_never() -> None:
    assert plan_pinning("on", budget(None), 0, MASK).cpu == 2
    off = plan_pinning("off", budget(4.0), 0, MASK)
    assert off.cpu is None and off.reason == "TAGSTREAM_CPU_PINNING=off"


def test_feeders_take_the_cpus_of_the_mask_in_turn() -> None:
    """Feeder i gets the i-th CPU of the mask, round robin: feeders share a core only past its size."""
    assert [plan_pinning("on", budget(None), i, MASK).cpu for i in range(6)] == [2, 3, 5, 7, 2, 3]
    assert plan_pinning("on", budget(None), 1, MASK).allowed == frozenset(MASK)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no thread affinity on this platform")
def test_a_pinned_thread_passes_the_pin_to_the_threads_it_starts_and_can_be_released() -> None:
    """Pinning acts on the calling thread only, threads it starts inherit it, and a release gives
    the whole mask back."""
    mask = frozenset(os.sched_getaffinity(0))
    seen: dict[str, set[int]] = {}

    def body() -> None:
        cpu = min(mask)
        pin_this_thread(cpu)
        child = threading.Thread(target=lambda: seen.setdefault("child", os.sched_getaffinity(0)))
        child.start()
        child.join()
        seen["pinned"] = os.sched_getaffinity(0)
        release_this_thread(mask)
        seen["released"] = os.sched_getaffinity(0)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen["pinned"] == seen["child"] == {min(mask)}
    assert seen["released"] == mask
    assert os.sched_getaffinity(0) == mask  # the test's own thread was never pinned


def test_the_model_process_takes_the_cpus_the_feeders_leave() -> None:
    """4 feeders on a 6-CPU mask take the first 4; the model process gets the last 2. With no CPU
    spare, or no pinning, it keeps the whole mask."""
    six = {0, 1, 2, 3, 4, 5}
    plan = plan_pinning("on", budget(None), 0, six)
    assert spare_cpus(plan, 4) == {4, 5}
    assert [plan_pinning("on", budget(None), i, six).cpu for i in range(4)] == [0, 1, 2, 3]
    assert spare_cpus(plan, 6) is None and spare_cpus(plan, 8) is None
    assert spare_cpus(plan_pinning("off", budget(None), 0, six), 4) is None
