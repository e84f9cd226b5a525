"""A feeder process: the ordinary Worker, with its model served by the pod's model process.

It polls, parses, tokenizes, batches, produces and commits exactly as a single-process worker
does (its own Kafka clients, offset tracker and commits; per-partition order and commit after
acknowledgement hold within it), and never imports torch. It stops (drains) on SIGTERM or
SIGINT, or when the supervisor goes away, and exits with the worker's exit code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass
from multiprocessing import connection

from worker.app import Worker, exit_past_stuck_threads
from worker.errors import WorkerError
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
    worker = Worker(s, model=link, telemetry_host="127.0.0.1", cpu_slot=plan.index)
    link.count_stalled = worker.tracker.mark_stalled_at

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
    link.close()
    exit_past_stuck_threads(code)
    sys.exit(code)


def _watch_supervisor(control: connection.Connection, worker: Worker) -> None:
    """Drain when the supervisor says stop, or when it has gone (its end of the pipe closed)."""
    try:
        while control.recv()[0] != "stop":
            pass
    except (EOFError, OSError):
        log.warning("supervisor_gone", action="draining")
    worker.stop()


def _tell(control: connection.Connection, message: tuple) -> None:
    with contextlib.suppress(OSError, ValueError):  # the supervisor has gone; the watcher stops us
        control.send(message)
