"""A feeder process: the ordinary Worker, with its model served by the pod's model process.

It polls, parses, tokenizes, batches, produces and commits exactly as a single-process worker
does (its own Kafka clients, offset tracker and commits; per-partition order and commit after
acknowledgement hold within it), and never imports torch. It stops (drains) on SIGTERM or
SIGINT, or when the supervisor goes away, and exits with the worker's exit code.

When the model process is lost in a call, the feeder counts that call's inputs (run alone next
time, a dead letter once convicted: worker/source.py), but only those of partitions it holds. A
rebalance while the call ran may have given the rest to another feeder: they go to the
supervisor (``("lost_call", inputs, died, alone)``), which passes them to the other feeders
(``("count", ...)``), each counting those it holds. Without that, a pod whose first feeder took
every partition and ran the culprit before the second joined counted nothing, and the pod after
it died on the input once more. Every input a feeder counts it also tells the supervisor
(``("marked", inputs)``), which keeps those no feeder held for the next pod (worker/procs/lost_calls.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import connection

from prometheus_client import generate_latest

from worker.app import Worker, exit_past_stuck_threads
from worker.call_journal import DeathCounts
from worker.errors import WorkerError
from worker.kafka.base import TopicPartition
from worker.procs.remote import ModelLink
from worker.procs.transport import SlotShape
from worker.settings import WorkerSettings
from worker.stages import name_process
from worker.telemetry import configure_logging, get_logger

log = get_logger("tagstream.worker.feeder")


@dataclass(frozen=True)
class FeederPlan:
    """Everything a feeder process is started with (pickled once, at spawn)."""

    index: int
    settings: WorkerSettings
    address: str  # the model process's socket
    authkey: bytes
    segment: str  # this feeder's shared memory
    shape: SlotShape
    slots: int
    tokenizer_threads: int
    # Inputs the pods before this one were killed whole in model calls with, as the supervisor
    # counted them from the journal at the pod's start (worker/call_journal.py); usually empty.
    died_in: dict[TopicPartition, dict[int, tuple[int, int]]] = field(default_factory=dict)
    # This feeder's name (plan.feeder_identity): its transactional id without static membership, the
    # same for each restart of this feeder (and of the pod on this host), so each fences the one before.
    identity: str | None = None


def feeder_main(plan: FeederPlan, control: connection.Connection) -> None:
    """Entry point of a feeder process (multiprocessing, spawn)."""
    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor only: it decides the order of stopping
    name_process(f"tagstream-fdr{plan.index}")
    # The tokenizer's thread pool, sized before its first use: N feeders share the CPUs.
    os.environ.setdefault("RAYON_NUM_THREADS", str(plan.tokenizer_threads))
    s = plan.settings
    configure_logging(s.log_level, s.log_format, context={"process": f"feeder-{plan.index}"})
    link = ModelLink(
        plan.address, plan.authkey, feeder=plan.index, segment=plan.segment, shape=plan.shape, slots=plan.slots,
        fast_tokenizer=s.fast_tokenizer,
    )
    worker = Worker(s, model=link, telemetry_host="127.0.0.1", cpu_slot=plan.index,
                    died_in=DeathCounts(plan.died_in) if plan.died_in else None,
                    transactional_process=plan.identity)
    link.count_stalled = worker.tracker.mark_stalled_at
    link.relay_lost = relay_to(control, worker.tracker.assigned)
    # Every input counted in a hint, for the supervisor's tally (worker/procs/lost_calls.py).
    worker.tracker.on_marked = lambda counted: _tell(control, ("marked", counted))

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal", signal=signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=_watch_supervisor, args=(control, worker), name="tagstream-supervisor-watch", daemon=True).start()
    try:
        worker.start()
    except WorkerError as exc:
        log.error("cannot_start", kind=exc.failure.label, error=str(exc), exit_code=exc.exit_code)
        _tell(control, ("failed", exc.exit_code, str(exc)))
        link.close()
        sys.exit(exc.exit_code)
    _tell(control, ("started", worker.metrics_port))
    waited = worker.wait()
    code = 0 if waited is None else waited
    # Its counters as they end, for the pod's /metrics in place of its last scrape, which missed
    # what it delivered after (worker/procs/podview.py).
    _tell(control, ("last_metrics", generate_latest(worker.metrics.registry)))
    link.close()
    exit_past_stuck_threads(code)
    sys.exit(code)


def _watch_supervisor(control: connection.Connection, worker: Worker) -> None:
    """Drain when the supervisor says stop, or when it has gone (its end of the pipe closed); count
    the inputs of another feeder's call the model process was lost in (see the module's doc)."""
    try:
        while (message := control.recv())[0] != "stop":
            if message[0] == "count":
                _, inputs, died, alone = message
                counted = worker.tracker.mark_stalled_at([tuple(i) for i in inputs], died, alone)
                log.warning("lost_call_inputs_heard", inputs=len(inputs), counted=counted, died=died,
                            why="another feeder's inputs in the model call the model process was lost in;"
                                " counted: those of partitions this feeder holds now")
    except (EOFError, OSError):
        log.warning("supervisor_gone", action="draining")
    worker.stop()


def relay_to(
    control: connection.Connection, held: Callable[[], list]
) -> Callable[[list[tuple[str, int, int]], bool, bool], None]:
    """The link's ``relay_lost``: a lost call's inputs of partitions this feeder does not hold (see
    the module's doc) go to the supervisor."""

    def relay(inputs: list[tuple[str, int, int]], died: bool, alone: bool) -> None:
        mine = set(held())
        others = [i for i in inputs if (i[0], i[1]) not in mine]
        if others:
            _tell(control, ("lost_call", others, died, alone))

    return relay


_TELL_LOCK = threading.Lock()  # "started" (the main thread) and a relay (a model thread) share the pipe


def _tell(control: connection.Connection, message: tuple) -> None:
    with _TELL_LOCK, contextlib.suppress(OSError, ValueError):  # the supervisor has gone; the watcher stops us
        control.send(message)
