"""ModelCalls: which model calls are given up once TAGSTREAM_MODEL_STALL_S has passed, and what they held."""

from __future__ import annotations

import threading

from worker_fakes import Clock

from worker.model_calls import ModelCalls
from worker.telemetry import Health


def in_call(calls: ModelCalls[str], items: list[str], entered: threading.Event, leave: threading.Event) -> threading.Thread:
    """A model thread inside a call over ``items`` until ``leave`` is set."""
    def main() -> None:
        with calls.call(items):
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=main)
    thread.start()
    assert entered.wait(10)
    return thread


def test_only_calls_past_the_limit_are_given_up_with_their_inputs():
    clock = Clock()
    health = Health(clock=clock, model_stall_s=3.0)
    calls: ModelCalls[str] = ModelCalls(health)
    leave = threading.Event()
    old = in_call(calls, ["a", "b"], threading.Event(), leave)
    clock.now += 2.5
    young = in_call(calls, ["c"], threading.Event(), leave)
    clock.now += 1.0  # old: 3.5 s, young: 1.0 s
    try:
        assert calls.give_up_stalled() == [(old, ["a", "b"])]
        assert calls.given_up(old) and not calls.given_up(young)
        assert calls.give_up_stalled() == []  # given up once
    finally:
        leave.set()
        old.join()
        young.join()
    assert calls.given_up(old)  # still, once its call came back: its answers are not to be published


def test_a_finished_call_is_never_given_up_and_a_limit_of_0_gives_up_nothing():
    clock = Clock()
    calls: ModelCalls[str] = ModelCalls(Health(clock=clock, model_stall_s=3.0))
    with calls.call(["a"]):
        pass
    clock.now += 60
    assert calls.give_up_stalled() == [] and not calls.given_up()

    unlimited: ModelCalls[str] = ModelCalls(Health(clock=clock, model_stall_s=0.0))
    leave = threading.Event()
    thread = in_call(unlimited, ["b"], threading.Event(), leave)
    clock.now += 3600
    try:
        assert unlimited.give_up_stalled() == []
    finally:
        leave.set()
        thread.join()


def test_a_call_is_what_healthz_reads_too():
    clock = Clock()
    health = Health(clock=clock, model_stall_s=3.0)
    calls: ModelCalls[str] = ModelCalls(health)
    leave = threading.Event()
    thread = in_call(calls, ["a"], threading.Event(), leave)
    clock.now += 4
    try:
        assert health.model_busy_for() == 4 and health.model_stalled()
    finally:
        leave.set()
        thread.join()
    assert health.model_busy_for() == 0
