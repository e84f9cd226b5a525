"""The model process: holds the bundle once on the device and runs every feeder's batches.

    accept thread      Listener (Unix socket, authkey) -> HELLO: attach the feeder's shared memory,
                       send it the bundle (MODEL)
    stream threads     one per inference stream (1 on a GPU, 2 on a CPU): each in turn leads:
                       swaps in a reloaded bundle, reads the feeders' messages, merges waiting
                       requests (merge.py), then runs its merged batch and answers each feeder
    watcher thread     BundleWatcher: verifies, loads and warms new bundles (as one process does)
    telemetry thread   /metrics, /healthz, /readyz on 127.0.0.1 (the supervisor aggregates them)

Bundle swaps. A new bundle becomes generation g+1 between two batches and is announced to every
feeder; each feeder re-tokenizes what it had tokenized for the old one (worker/model_stage.py's
``_run_batch``). Batches already formed for generation g still run on g, exactly as in one
process: g stays loaded until every feeder has released it (its last runner object of g is gone),
or has disconnected. A request for a generation no longer held is refused (STALE).

The process stops when the supervisor says so (STOP on its control pipe) or disappears (the pipe
closes), never on a terminal's Ctrl-C: it must outlive the feeders' drain.

A model call that runs past TAGSTREAM_MODEL_STALL_S never returns, and holds the device: the main
thread answers each request in it STALLED (so each feeder counts those inputs as stalled: run
alone next time, a dead letter after a second stall, as in one process) and exits at once. The
other feeders hear the call's inputs too: a rebalance while it ran may have given their
partitions to one of them, and only a partition's owner can commit a count.

Each call's inputs are also written to the call journal the supervisor holds (worker/call_journal.py):
a pod killed whole (a container's OOM kill, a liveness probe's SIGKILL) leaves no feeder to count
them, and the next pod's supervisor counts them from there.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing import connection
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram

from model.cpus import available_cpus
from worker.affinity import plan_pinning, spare_cpus
from worker.call_gate import CallGate
from worker.call_journal import CallJournal
from worker.errors import Failure, InferenceError, WorkerError
from worker.inference import InputId
from worker.model_calls import ModelCalls
from worker.procs.merge import Request, take_merged
from worker.procs.transport import (
    DONE,
    FAILED,
    HELLO,
    MODEL,
    OK,
    RELEASE,
    REQUEST,
    STALE,
    STALLED,
    STALLED_INPUTS,
    Channel,
    ModelInfo,
)
from worker.settings import WorkerSettings
from worker.stages import name_process
from worker.telemetry import Health, Metrics, TelemetryServer, configure_logging, get_logger

log = get_logger("tagstream.worker.model")

IDLE_WAIT_S = 0.1  # a leader's wait for requests: bounds how late a new feeder or a swap is noticed
STALL_CHECK_S = 1.0  # how often the main thread looks for a model call past TAGSTREAM_MODEL_STALL_S
ACCEPT_IDLE_WAIT_S = 30.0  # a reconnecting feeder waits this long for its old requests to finish
STALLED_ANSWER_S = 5.0  # the most the answers to a stalled call's feeders may hold up the exit


class ModelServerMetrics:
    """The model process's own metrics, beside the worker's (``tagstream_model_*``)."""

    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.batches = Counter("tagstream_model_batches", "Merged batches the model process ran.", registry=r)
        self.batch_rows = Histogram(
            "tagstream_model_batch_rows", "Inputs per merged batch in the model process.",
            buckets=(1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096), registry=r,
        )
        self.batch_requests = Histogram(
            "tagstream_model_batch_requests", "Feeder batches merged into one model batch.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r,
        )
        self.batch_seconds = Histogram(
            "tagstream_model_batch_seconds", "Model call per merged batch, seconds (the device's own time).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r,
        )
        self.busy = Counter(
            "tagstream_model_busy_seconds",
            "Seconds the model process spent running batches, summed over its streams: its rate near the"
            " stream count means the model is the bottleneck, not the feeders.",
            registry=r,
        )
        self.stale = Counter(
            "tagstream_model_stale_requests", "Requests refused for a bundle generation no longer loaded.", registry=r
        )


@dataclass(eq=False)
class FeederPort:
    """One connected feeder, as the model process sees it."""

    index: int
    conn: connection.Connection
    channel: Channel
    holds: set[int] = field(default_factory=set)  # generations this feeder may still send
    alive: bool = True
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, message: tuple) -> None:
        """Send, ignoring a feeder that has gone (its requests are dropped, its inputs redelivered)."""
        with self.send_lock:
            if not self.alive:
                return
            try:
                self.conn.send(message)
            except (OSError, EOFError, ValueError):
                self.alive = False


class ModelServer:
    """See the module docstring."""

    def __init__(self, settings: WorkerSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.model_metrics = ModelServerMetrics(self.metrics)
        self.health = Health(broker_outage_s=settings.broker_outage_s, model_stall_s=settings.model_stall_s)
        self.telemetry: TelemetryServer | None = None
        self._stopping = threading.Event()
        self._generations: dict[int, Any] = {}  # generation -> ModelRunner
        self._current = 0
        self._info: ModelInfo | None = None
        self._ports: list[FeederPort] = []
        self._ports_lock = threading.Lock()
        self._channels: dict[str, Channel] = {}  # attached once per segment, kept across reconnections
        self._in_flight: dict[str, int] = {}  # running requests per segment
        self._in_flight_cond = threading.Condition()
        self._pending: deque[Request] = deque()
        self._lead = threading.Lock()  # one stream at a time reads messages and forms a batch
        self._threads: list[threading.Thread] = []
        self._listener: connection.Listener | None = None
        self._local: Any = None
        self._slot: Any = None
        self._calls: ModelCalls[Request] = ModelCalls(self.health)  # the requests in each stream's call
        self._journal: CallJournal | None = None  # each call's inputs on disk, for a pod killed whole
        self._gate: CallGate = CallGate(1)  # sized for the streams at start
        # Slots marked IN_CALL (transport.py); once exiting for a stall, only the stalled call's stay so.
        self._marks_lock = threading.Lock()
        self._exiting = False

    # -- start and stop --------------------------------------------------------------------------
    def load(self) -> ModelInfo:
        """Load, check and warm up the bundle (WorkerError when it cannot serve)."""
        from worker.local_model import LocalModel
        from worker.reload import RunnerSlot

        self._local = LocalModel(self.settings, in_pod=True)
        runner = self._local.open()
        self._slot = RunnerSlot(runner)
        self._install(runner)
        self.health.model_ready = True
        assert self._info is not None
        return self._info

    def start(self, address: str, authkey: bytes, journal: tuple[str, str] | None = None) -> int:
        """Listen for feeders and start the streams; returns the telemetry port (127.0.0.1).
        ``journal``: the call journal's folder and set to write each call to (worker/call_journal.py)."""
        if journal is not None:
            self._journal = CallJournal.attach(Path(journal[0]), journal[1], self._local.streams)
            self._calls = ModelCalls(self.health, self._journal)
        self._listener = connection.Listener(address, family="AF_UNIX", authkey=authkey)
        self.telemetry = TelemetryServer(self.metrics, self.health, 0, host="127.0.0.1")
        self.telemetry.start()
        self._spawn("accept", self._accept_main, watched=False, joined=False)
        self._gate = CallGate(self._local.streams)
        for i in range(self._local.streams):
            self._spawn(f"model-{i}", self._stream_main)
        reload_loop = self._local.watch(self._slot, self.metrics, self._stopping)
        if reload_loop is not None:
            self._spawn("watcher", reload_loop, watched=False, joined=False)
        return self.telemetry.port

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._ports_lock:
            ports, self._ports = self._ports, []
        for port in ports:
            with contextlib.suppress(OSError):
                port.conn.close()
        if self.telemetry is not None:
            self.telemetry.stop()
        if self._journal is not None:
            self._journal.close()

    def _spawn(self, name: str, target: Any, watched: bool = True, joined: bool = True) -> None:
        # Daemons: the accept thread stays blocked in accept() (closing a listening socket does not
        # wake it on Linux) and the watcher may be loading a bundle; neither must hold up the exit.
        thread = threading.Thread(target=target, name=f"tagstream-{name}", daemon=True)
        if joined:
            self._threads.append(thread)
        thread.start()  # before /healthz watches it: a thread not started yet reads as dead
        if watched:
            self.health.watch(thread)

    # -- feeders connecting ----------------------------------------------------------------------
    def _accept_main(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn = self._listener.accept()
            except (OSError, EOFError):
                if self._stopping.is_set():
                    return
                continue  # a client that failed the authentication handshake
            try:
                self._welcome(conn)
            except Exception as exc:  # one bad client must not stop the others
                log.warning("feeder_connect_failed", error=repr(exc))
                with contextlib.suppress(OSError):
                    conn.close()

    def _welcome(self, conn: connection.Connection) -> None:
        kind, index, segment, slots, shape = conn.recv()
        if kind != HELLO:
            raise ValueError(f"expected {HELLO}, got {kind!r}")
        channel = self._channels.get(segment)
        if channel is None:
            channel = self._channels[segment] = Channel.attach(segment, shape, slots)
        # A restarted feeder reuses its predecessor's slots: answers still being written for the
        # predecessor must land before the newcomer owns them.
        with self._in_flight_cond:
            self._in_flight_cond.wait_for(lambda: self._in_flight.get(segment, 0) == 0, ACCEPT_IDLE_WAIT_S)
        port = FeederPort(index, conn, channel)
        with self._ports_lock:
            assert self._info is not None
            port.holds.add(self._info.generation)
            port.send((MODEL, self._info))
            self._ports.append(port)
        log.info("feeder_connected", feeder=index, segment=segment, slots=slots)

    def _drop(self, port: FeederPort, why: str) -> None:
        """A feeder left: forget it and its waiting requests (they are redelivered by Kafka)."""
        port.alive = False
        with self._ports_lock:
            if port in self._ports:
                self._ports.remove(port)
        dropped = [r for r in self._pending if r.port is port]
        if dropped:
            self._pending = deque(r for r in self._pending if r.port is not port)
        with contextlib.suppress(OSError):
            port.conn.close()
        log.info("feeder_disconnected", feeder=port.index, reason=why, requests_dropped=len(dropped))
        self._retire_unused()

    # -- the streams -----------------------------------------------------------------------------
    def _stream_main(self) -> None:
        while not self._stopping.is_set():
            with self._lead:
                group = self._collect()
            if group:
                self._run(group)
                if self._calls.given_up():
                    return  # a stalled call that came back after all: the process is exiting

    def _collect(self) -> list[Request]:
        """As the leader: swap, read what the feeders sent, and take the next merged batch."""
        swapped = self._slot.swap_if_offered()
        if swapped is not None:
            self._install(swapped)
        with self._ports_lock:
            ports = {port.conn: port for port in self._ports}
        timeout = 0.0 if self._pending else IDLE_WAIT_S
        if ports:
            ready = connection.wait(list(ports), timeout)
        else:
            self._stopping.wait(timeout)
            ready = []
        for conn in ready:
            self._read(ports[conn])  # type: ignore[index]
        self.health.loop_turned()
        group = take_merged(self._pending, self.settings.max_batch_size, self.settings.max_batch_tokens)
        if group:
            with self._in_flight_cond:
                for request in group:
                    segment = request.port.channel.name
                    self._in_flight[segment] = self._in_flight.get(segment, 0) + 1
        return group

    def _read(self, port: FeederPort) -> None:
        try:
            while port.conn.poll():
                message = port.conn.recv()
                kind = message[0]
                if kind == REQUEST:
                    _, slot, rows, tokens, generation, key, alone, inputs = message
                    lengths = port.channel.slots[slot].lengths[:rows]
                    longest = int(lengths.max()) if rows else 0
                    self._pending.append(Request(port, slot, rows, tokens, longest, generation, key, alone, inputs))
                elif kind == RELEASE:
                    port.holds.discard(message[1])
                    self._retire_unused()
        except (EOFError, OSError) as exc:
            self._drop(port, "connection closed" if isinstance(exc, EOFError) else repr(exc))

    def _run(self, group: list[Request]) -> None:
        first = group[0]
        runner = self._generations.get(first.generation)
        try:
            if runner is None or runner.tokenizer_key != first.tokenizer_key:
                self.model_metrics.stale.inc(len(group))
                log.warning("stale_requests", generation=first.generation, serving=self._current, requests=len(group))
                for request in group:
                    request.port.send((DONE, request.slot, STALE, 0, 0.0, "bundle no longer loaded"))
                return
            self._classify(group, runner)
        finally:
            with self._in_flight_cond:
                for request in group:
                    self._in_flight[request.port.channel.name] -= 1
                self._in_flight_cond.notify_all()

    def _classify(self, group: list[Request], runner: Any) -> None:
        slots = [r.port.channel.slots[r.slot] for r in group]
        views = [slot.request(r.rows, r.tokens) for slot, r in zip(slots, group, strict=True)]
        if len(views) == 1:
            ids, lengths = views[0]
        else:
            ids = np.concatenate([v[0] for v in views])
            lengths = np.concatenate([v[1] for v in views])
        # An input run alone runs with the other stream idle (worker/call_gate.py): if this process
        # dies in its call, the slots name that input only.
        with self._gate.enter(group[0].alone):
            # Seen by the feeders if this process dies or is killed before the call returns (transport.py).
            with self._marks_lock:
                if not self._exiting:  # exiting for another call's stall: this one is not to blame
                    for slot in slots:
                        slot.in_call(True)
            started = time.perf_counter()
            try:
                # On disk too (worker/call_journal.py): named if the whole pod dies in the call.
                suspects = [i for r in group for i in r.inputs] if self._journal is not None else ()
                with self._calls.call(group, suspects, group[0].alone):
                    if runner.plain:
                        answers = runner.classify_packed(ids, lengths)
                    else:  # windows: the feeders pool and rank them (transport.py)
                        answers = runner.probabilities_packed(ids, lengths)
            except InferenceError as exc:
                for request in group:
                    request.port.send((DONE, request.slot, FAILED, 0, 0.0, str(exc)))
                return
            finally:
                self.model_metrics.busy.inc(time.perf_counter() - started)
                if not self._calls.given_up():
                    for slot in slots:
                        slot.in_call(False)
        if self._calls.given_up():
            return  # answered STALLED already (give_up_stalled): its slots are no longer ours to write
        # Counted before the answers go out: a feeder that got its answer sees its batch counted.
        m = self.model_metrics
        m.batches.inc()
        m.batch_rows.observe(len(lengths))
        m.batch_requests.observe(len(group))
        m.batch_seconds.observe(answers.seconds)
        row = 0
        for request in group:
            end = row + request.rows
            slot = request.port.channel.slots[request.slot]
            if runner.plain:
                slot.write_answer(answers.top_indices[row:end], answers.top_scores[row:end])
                width = answers.top_indices.shape[1]
            else:
                slot.write_probabilities(answers.probs[row:end])
                width = answers.probs.shape[1]
            request.port.send((DONE, request.slot, OK, width, answers.seconds, None))
            row = end

    def give_up_stalled(self) -> list[Request]:
        """Answer STALLED to every request in a model call past TAGSTREAM_MODEL_STALL_S (the process
        exits next), and name the inputs in it to the other feeders; the requests. Bounded by
        STALLED_ANSWER_S: a feeder that reads nothing (frozen) must not keep the hung process alive."""
        requests = [r for _, group in self._calls.give_up_stalled() for r in group]

        with self._ports_lock:
            ports = list(self._ports)
        # Calls of other streams still running are lost with the process, but not to blame: unmark
        # them, so their feeders do not count their inputs as stalled (and no later call is marked).
        stalled = {(id(r.port), r.slot) for r in requests}
        with self._marks_lock:
            self._exiting = True
            for port in ports:
                for index, slot in enumerate(port.channel.slots):
                    if (id(port), index) not in stalled:
                        slot.in_call(False)

        def answer() -> None:
            # First, so that each feeder has them before its own STALLED answer or the connection's
            # end: a rebalance while the call ran may have given their partitions to any feeder,
            # and only the partition's owner can commit a count.
            for port in ports:
                named = stalled_inputs_for(port, requests)
                if named:
                    port.send((STALLED_INPUTS, named))
            for request in requests:
                request.port.send((DONE, request.slot, STALLED, 0, 0.0, "the model call stalled"))

        sender = threading.Thread(target=answer, name="tagstream-stalled-answers", daemon=True)
        sender.start()
        sender.join(STALLED_ANSWER_S)
        return requests

    # -- bundles ---------------------------------------------------------------------------------
    def _install(self, runner: Any) -> None:
        """Serve ``runner`` as the next generation and tell every feeder."""
        self._current += 1
        self._generations[self._current] = runner
        reading = runner.reading
        self._info = ModelInfo(
            self._current, runner.name, runner.version, tuple(runner.labels), runner.max_length,
            runner.tokenizer_key, runner.tokenizer_json, top_k=reading.top_k,
            multi_label=reading.multi_label,
            thresholds=None if reading.thresholds is None else tuple(float(t) for t in reading.thresholds),
            truncation=runner.truncation.to_dict(),
        )
        self.metrics.set_model(runner.name, runner.version)
        if self._current > 1:
            self.metrics.bundle_reloads.labels(result="swapped").inc()
            log.info("bundle_swapped", name=runner.name, version=runner.version, generation=self._current)
        with self._ports_lock:
            for port in self._ports:
                port.holds.add(self._current)
                port.send((MODEL, self._info))
        self._retire_unused()

    def _retire_unused(self) -> None:
        """Unload generations no feeder can send any more (the current one always stays)."""
        with self._ports_lock:
            held = set().union(*(port.holds for port in self._ports)) if self._ports else set()
        for generation in [g for g in self._generations if g != self._current and g not in held]:
            runner = self._generations.pop(generation)
            log.info("bundle_unloaded", generation=generation, version=runner.version)


def stalled_inputs_for(port: Any, requests: list[Request]) -> list[InputId]:
    """The inputs of a stalled call to name to ``port``'s feeder: those of the other feeders'
    requests, less any of its own requests (it counts those itself, on their STALLED answer)."""
    own = {i for r in requests if r.port is port for i in r.inputs}
    return list(dict.fromkeys(i for r in requests if r.port is not port for i in r.inputs if i not in own))


def model_process_main(
    settings: WorkerSettings, address: str, authkey: bytes, control: connection.Connection, feeders: int = 0,
    journal: tuple[str, str] | None = None,
) -> None:
    """Entry point of the model process (multiprocessing, spawn): load, report, serve until told to stop.

    ``journal``: the folder and set of the call journal the supervisor holds, where this process
    writes its calls (worker/call_journal.py). Reports ("ready", telemetry port, ModelInfo fields) or ("failed", exit code, message) on
    ``control`` and exits with that code."""
    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor only, which stops the feeders first
    name_process("tagstream-model")
    configure_logging(settings.log_level, settings.log_format, context={"process": "model"})
    # Before torch starts a thread: the CPUs the feeders leave, if any (worker/affinity.py).
    spare = spare_cpus(plan_pinning(settings.cpu_pinning, available_cpus(), 0), feeders)
    if spare is not None:
        os.sched_setaffinity(0, spare)
        log.info("cpu_pinning", cpus=sorted(spare), reason=f"the CPUs the {feeders} feeders leave")
    server = ModelServer(settings)
    try:
        info = server.load()
        port = server.start(address, authkey, journal)
    except WorkerError as exc:
        log.error("cannot_start", kind=exc.failure.label, error=str(exc), exit_code=exc.exit_code)
        control.send(("failed", exc.exit_code, str(exc)))
        raise SystemExit(exc.exit_code) from None
    control.send(("ready", port, info.name, info.version))
    try:
        while True:
            if control.poll(STALL_CHECK_S):
                if control.recv()[0] == "stop":  # EOFError: the supervisor has gone
                    break
            elif server.health.model_stalled():
                # A hung call never returns and holds every feeder's batches: exit at once, so each
                # feeder gives up its batches and drains (model_process_lost) and the pod restarts.
                # The requests in the hung call are answered STALLED first: their feeders count
                # those inputs, so that an input that hangs the model every time is run alone by
                # the next pod, then dead-lettered, instead of restarting the pod for ever.
                call_s = round(server.health.model_busy_for(), 3)
                given_up = server.give_up_stalled()
                # For the supervisor: what of the call no feeder counts (worker/procs/lost_calls.py).
                with contextlib.suppress(OSError, ValueError):
                    control.send(("stalled_call", [i for r in given_up for i in r.inputs],
                                  len(given_up) == 1 and given_up[0].alone))
                log.error("model_stalled", call_s=call_s, limit_s=settings.model_stall_s,
                          requests=len(given_up), inputs=sum(r.rows for r in given_up),
                          feeders=sorted({r.port.index for r in given_up}),
                          exit_code=Failure.MODEL_STALLED.exit_code)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(Failure.MODEL_STALLED.exit_code)
    except (EOFError, OSError):
        log.warning("supervisor_gone", action="stopping")
    server.stop()
    log.info("model_process_stopped")
