"""CallGate: a call that runs an input alone runs with no other call in flight, and waits for none for ever."""

from __future__ import annotations

import threading
import time

from worker.call_gate import CallGate


def enter_in_thread(gate: CallGate, alone: bool, inside: threading.Event, leave: threading.Event) -> threading.Thread:
    def main() -> None:
        with gate.enter(alone):
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=main)
    thread.start()
    return thread


def test_an_alone_call_waits_for_the_running_call_and_keeps_new_ones_out_until_it_returns():
    gate = CallGate(streams=2)
    running_in, running_out = threading.Event(), threading.Event()
    running = enter_in_thread(gate, False, running_in, running_out)
    assert running_in.wait(5)
    alone_in, alone_out = threading.Event(), threading.Event()
    alone = enter_in_thread(gate, True, alone_in, alone_out)
    assert not alone_in.wait(0.2)  # the other stream's call is in flight
    later_in, later_out = threading.Event(), threading.Event()
    later = enter_in_thread(gate, False, later_in, later_out)
    assert not later_in.wait(0.2)  # an alone call is waiting: it goes first
    running_out.set()
    assert alone_in.wait(5)
    assert not later_in.wait(0.2)  # kept out while the alone call runs
    alone_out.set()
    assert later_in.wait(5)
    later_out.set()
    for thread in (running, alone, later):
        thread.join(5)


def test_ordinary_calls_run_side_by_side_and_one_stream_never_waits():
    gate = CallGate(streams=2)
    first_in, second_in, out = threading.Event(), threading.Event(), threading.Event()
    threads = [enter_in_thread(gate, False, first_in, out), enter_in_thread(gate, False, second_in, out)]
    assert first_in.wait(5) and second_in.wait(5)
    out.set()
    for thread in threads:
        thread.join(5)

    single = CallGate(streams=1)
    with single.enter(True), single.enter(False):  # nested: would deadlock if it counted anything
        pass


def test_a_call_given_up_as_stalled_lets_the_others_in_though_it_never_returns():
    gate = CallGate(streams=2)
    hung_in, never = threading.Event(), threading.Event()
    hung = enter_in_thread(gate, True, hung_in, never)
    assert hung_in.wait(5)
    other_in, other_out = threading.Event(), threading.Event()
    other = enter_in_thread(gate, False, other_in, other_out)
    assert not other_in.wait(0.2)
    gate.leave(hung)  # ModelStage.give_up_stalled
    assert other_in.wait(5)
    other_out.set()
    other.join(5)
    never.set()  # should it return after all, its own leave changes nothing
    hung.join(5)
    started = time.monotonic()
    with gate.enter(True):
        pass
    assert time.monotonic() - started < 1
