"""The pod's main process when ``TAGSTREAM_PROCESSES`` > 1: starts, watches and stops the others.

Start: reclaim what pods killed whole left in /dev/shm and claim names there (shm_claim.py), check
that /dev/shm can hold the feeders' slots, count the inputs of model calls a pod before was killed
whole in (worker/call_journal.py: the feeders are given the counts, the model process writes its
calls to the journal), create and reserve each feeder's shared memory, start
the model process and wait until it has loaded, checked and warmed up the bundle (a bundle or
settings problem exits here with its code, as one process would), serve the pod's /metrics,
/healthz and /readyz on TAGSTREAM_METRICS_PORT (podview.py), then start the feeders.

Running: a feeder that dies (a crash, SIGKILL, a fatal error) is restarted after a back-off
(1, 2, 4, 8, 16 s), and the others carry on; its partitions come back to its successor at once
with static membership (its id is kept), else after the group's session timeout. A feeder that
dies more than FEEDER_RESTARTS_MAX times within RESTART_WINDOW_S, or whose very first start fails
(a setting, the broker, a topic: its next start would fail the same way), stops the pod with its
exit code. If the model process dies, the feeders drain (committing only what was acknowledged)
and the pod exits non-zero (1, or the model process's own code), so the orchestrator restarts
it with a fresh model process: the model is never restarted under running feeders.

Stop (SIGTERM or SIGINT): every feeder drains as one worker does (TAGSTREAM_DRAIN_TIMEOUT_S),
then the model process stops. Exit codes mean what they mean for one process: 0 when every
feeder drained cleanly, else the first non-zero code. A second signal kills everything at once
(exit 130; nothing unacknowledged was committed).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing import connection
from multiprocessing.process import BaseProcess
from typing import Any

from worker.call_journal import CallJournal, process_identity
from worker.errors import EXIT_INTERNAL, SettingsError, WorkerError
from worker.procs.feeder import FeederPlan, feeder_main
from worker.procs.lost_calls import UncountedInputs
from worker.procs.model_server import model_process_main
from worker.procs.plan import (
    SHM_DIR,
    SLOTS_PER_FEEDER,
    check_shared_memory,
    feeder_identity,
    feeder_settings,
    shared_memory_short,
    slot_shape,
    tokenizer_threads,
)
from worker.procs.podview import PodView
from worker.procs.shm_claim import ShmClaim
from worker.procs.transport import Channel
from worker.settings import WorkerSettings, env_name
from worker.telemetry import Endpoints, TelemetryServer, configure_logging, get_logger

log = get_logger("tagstream.worker.supervisor")

FEEDER_RESTARTS_MAX = 5  # restarts of one feeder within RESTART_WINDOW_S before the pod gives up
RESTART_WINDOW_S = 600.0
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0)  # waits before the 1st, 2nd, ... restart in the window
EXIT_MARGIN_S = 5.0  # beyond the drain deadline, for a feeder's final commit and process exit
MODEL_STOP_TIMEOUT_S = 10.0
MONITOR_TICK_S = 0.2  # how often the supervisor looks at its processes when nothing happens
MODEL_PROBE_EVERY_S = 5.0  # how often the supervisor checks that the model process answers at all
EXIT_FORCED = 130
FORCED_MODEL_WAIT_S = 1.0  # a forced exit waits this long for the killed model process, to unmark its calls


@dataclass
class FeederProc:
    index: int
    process: BaseProcess | None = None
    control: connection.Connection | None = None
    started: bool = False  # this incarnation reported that it consumes
    ever_started: bool = False
    restart_at: float | None = None
    deaths: deque[float] = field(default_factory=deque)
    exit_code: int | None = None


class Supervisor:
    """See the module docstring."""

    def __init__(self, settings: WorkerSettings, feeders: int) -> None:
        self.settings = settings
        self.n = feeders
        self._ctx = multiprocessing.get_context("spawn")  # never fork: torch threads, CUDA
        self._shape = slot_shape(settings)
        self._channels: list[Channel] = []
        self._claim: ShmClaim | None = None
        self._journal: CallJournal | None = None  # held for the pod; its model process writes the calls
        self._uncounted = UncountedInputs(self._keep_lost)  # inputs of lost calls, until a feeder counts them
        self._address = ""
        self._authkey = secrets.token_bytes(32)
        self._model: BaseProcess | None = None
        self._model_control: connection.Connection | None = None
        self._feeders = [FeederProc(i) for i in range(feeders)]
        # A silent model process keeps the pod live until _watch_model kills it (podview.py).
        self.view = PodView(feeders, model_silence_s=settings.model_stall_s)
        self.telemetry: TelemetryServer | None = None
        self._stopping = False
        self._stop_at: float | None = None
        self._signals = 0
        self._code: int | None = None  # the pod's exit code once decided by a failure
        self._model_stopped = False

    # -- start -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the model process (warmed up) and the feeders; WorkerError when the pod cannot run."""
        try:
            self._start()
        except BaseException:
            self._cleanup()
            raise

    def _start(self) -> None:
        s = self.settings
        self._claim = ShmClaim.take(SHM_DIR)  # first: what dead pods left there is freed (shm_claim.py)
        summary = check_shared_memory(s, self.n)
        # What pods killed whole in a model call left there is counted now (worker/call_journal.py).
        self._journal = CallJournal.open(s.state_dir, s.group_id, streams=0)
        self._address = str(self._claim.make_run_dir() / "model.sock")
        self._channels = [
            Channel.create(self._shape, SLOTS_PER_FEEDER, self._claim.segment_name(i)) for i in range(self.n)
        ]
        for channel in self._channels:
            try:
                channel.reserve(SHM_DIR)  # the memory now, or a clear refusal: never SIGBUS mid-stream
            except OSError as exc:
                raise shared_memory_short(s, self.n, f"reserving it in {SHM_DIR} failed ({exc.strerror})") from exc
        log.info("pod_starting", feeders=self.n, shared_memory=summary, slots_per_feeder=SLOTS_PER_FEEDER,
                 shared_memory_claim=self._claim.token)
        self._start_model()
        if self._stopping:  # a signal while the model loaded: nothing was consumed, stop cleanly
            return
        try:
            self.telemetry = TelemetryServer.serving(
                Endpoints(self.view.metrics, self.view.liveness, self.view.readiness), s.metrics_port
            )
        except OSError as exc:
            raise SettingsError(
                f"{env_name('metrics_port')}={s.metrics_port}: cannot listen ({exc.strerror}); pick a free port, or 0"
            ) from exc
        self.telemetry.start()
        log.info("telemetry_listening", port=self.telemetry.port, paths=["/metrics", "/healthz", "/readyz"])
        if s.model_stall_s:
            threading.Thread(target=self._watch_model, name="tagstream-model-watch", daemon=True).start()
        for feeder in self._feeders:
            self._start_feeder(feeder)

    def _watch_model(self) -> None:
        """A model process that answers nothing at all (frozen: stopped, or a hang that holds its
        interpreter) cannot time its own calls: once it has been silent for TAGSTREAM_MODEL_STALL_S
        it is killed, and the pod fails as when it dies (its feeders give up their batches and drain).
        The calls it is killed in are marked HUNG first, so that their feeders count a hang, timed
        here, and not a death (transport.py)."""
        limit = self.settings.model_stall_s
        answered = time.monotonic()
        while not self._stopping and not self._model_stopped:
            time.sleep(MODEL_PROBE_EVERY_S)
            if self.view.answers(self.view.model):
                answered = time.monotonic()
                continue
            silent = time.monotonic() - answered
            if silent > limit and not self._stopping and self._model is not None:
                hung = sum(channel.mark_calls_hung() for channel in self._channels)
                log.error("model_process_unresponsive", silent_s=round(silent, 1), limit_s=limit, action="killing it",
                          requests_in_calls=hung)
                self._model.kill()
                return

    def _start_model(self) -> None:
        ours, theirs = self._ctx.Pipe()
        process = self._ctx.Process(
            target=model_process_main,
            args=(self.settings, self._address, self._authkey, theirs, self.n, self._journal_set()),
            name="tagstream-model", daemon=False,
        )
        process.start()
        theirs.close()
        self._model, self._model_control = process, ours
        while not self._stopping:  # loading and warming up a large model on a busy CPU takes what it takes
            ready = connection.wait([ours, process.sentinel], timeout=MONITOR_TICK_S)
            if ours in ready:
                try:
                    message = ours.recv()
                except EOFError:
                    message = ("died",)
                if message[0] == "ready":
                    _, port, name, version = message
                    self.view.model.port = port
                    log.info("model_process_ready", pid=process.pid, name=name, version=version)
                    return
                if message[0] == "failed":
                    _, code, text = message
                    process.join(MODEL_STOP_TIMEOUT_S)
                    raise WorkerError(text, _failure_for(code))
            if process.sentinel in ready and not ours.poll():
                process.join()
                raise WorkerError(f"the model process exited ({_describe_exit(process.exitcode)}) before it was ready")

    def _journal_set(self) -> tuple[str, str] | None:
        """Where the model process writes its calls: the journal's folder and set, if it is on."""
        return None if self._journal is None else (str(self._journal.folder), self._journal.name)

    def _start_feeder(self, feeder: FeederProc) -> None:
        plan = FeederPlan(
            index=feeder.index, settings=feeder_settings(self.settings, feeder.index), address=self._address,
            authkey=self._authkey, segment=self._channels[feeder.index].name, shape=self._shape,
            slots=SLOTS_PER_FEEDER, tokenizer_threads=tokenizer_threads(self.n),
            died_in=self._journal.counts if self._journal is not None else {},
            identity=feeder_identity(process_identity(self._journal), feeder.index),
        )
        ours, theirs = self._ctx.Pipe()
        process = self._ctx.Process(target=feeder_main, args=(plan, theirs), name=f"tagstream-feeder-{feeder.index}")
        process.start()
        theirs.close()
        feeder.process, feeder.control, feeder.started, feeder.restart_at = process, ours, False, None
        log.info("feeder_starting", feeder=feeder.index, pid=process.pid)

    # -- run -----------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Begin the drain (signal handlers); returns at once."""
        if not self._stopping:
            self._stopping = True
            self._stop_at = time.monotonic()
            log.info("stopping", drain_timeout_s=self.settings.drain_timeout_s, feeders=self.n)
            for feeder in self._feeders:
                feeder.restart_at = None
                if feeder.process is not None and feeder.process.is_alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(feeder.process.pid or 0, signal.SIGTERM)

    def on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        if self._signals > 1:  # a second signal: stop now (safe: nothing unacknowledged is committed)
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            self.kill_all()
            os._exit(EXIT_FORCED)
        log.info("signal", signal=signal.Signals(signum).name)
        self.stop()

    def wait(self) -> int:
        """Watch the processes until the pod has stopped; the exit code."""
        try:
            while not self._done():
                self._tick()
        finally:
            self._stop_model()
            self._cleanup()
        code = self._code
        if code is None:
            code = next((f.exit_code for f in self._feeders if f.exit_code), 0)
        log.info("pod_stopped", exit_code=code)
        return code

    def _done(self) -> bool:
        return self._stopping and not any(f.process is not None and f.process.is_alive() for f in self._feeders)

    def _tick(self) -> None:
        owners: dict[Any, tuple[FeederProc, BaseProcess] | None] = {}
        for feeder in self._feeders:
            if feeder.process is not None:
                for w in (feeder.process.sentinel, feeder.control):
                    if w is not None:
                        owners[w] = (feeder, feeder.process)
        if self._model is not None and not self._model_stopped:
            owners[self._model.sentinel] = None
        for ready in connection.wait(list(owners), timeout=MONITOR_TICK_S):
            owner = owners[ready]
            if owner is None:
                self._on_model_exit()
                continue
            feeder, process = owner
            if feeder.process is not process:
                continue  # this incarnation's exit was handled already (its pipe and its exit both woke us)
            if ready is feeder.control:
                self._on_feeder_message(feeder)
            elif ready is process.sentinel:
                self._on_feeder_exit(feeder)
        now = time.monotonic()
        for feeder in self._feeders:
            if feeder.restart_at is not None and now >= feeder.restart_at and not self._stopping:
                self._start_feeder(feeder)
        if self._stopping and self._stop_at is not None:
            deadline = self._stop_at + self.settings.drain_timeout_s + EXIT_MARGIN_S
            if now > deadline:
                for feeder in self._feeders:
                    if feeder.process is not None and feeder.process.is_alive():
                        log.warning("feeder_drain_overdue", feeder=feeder.index, action="killing")
                        feeder.process.kill()

    def _on_feeder_message(self, feeder: FeederProc) -> None:
        assert feeder.control is not None
        try:
            message = feeder.control.recv()
        except (EOFError, OSError):
            feeder.control.close()
            feeder.control = None
            return
        if message[0] == "started":
            feeder.started = feeder.ever_started = True
            self.view.feeder_up(feeder.index, message[1])
            log.info("feeder_started", feeder=feeder.index, pid=feeder.process.pid if feeder.process else None)
        elif message[0] == "failed":
            log.error("feeder_cannot_start", feeder=feeder.index, exit_code=message[1], error=message[2])
        elif message[0] == "lost_call":
            self.relay_lost_call(feeder, message)
        elif message[0] == "marked":
            self._uncounted.marked(message[1])
        elif message[0] == "last_metrics":
            self.view.feeder_last_metrics(feeder.index, message[1])

    def _read_last_messages(self, feeder: FeederProc) -> None:
        """Every message still in ``feeder``'s pipe (it has exited, or the pod stops)."""
        while feeder.control is not None and feeder.control.poll():
            self._on_feeder_message(feeder)  # sets control to None at the pipe's end

    def relay_lost_call(self, sender: FeederProc, message: tuple) -> None:
        """A feeder's inputs of a call the model process was lost in, of partitions it no longer
        holds: to every other feeder, which counts those it holds; what none holds goes to the
        journal (worker/procs/lost_calls.py)."""
        _, inputs, died, alone = message
        self._uncounted.to_count(inputs, alone)
        told = []
        for feeder in self._feeders:
            if feeder is not sender and feeder.control is not None:
                with contextlib.suppress(OSError, ValueError):  # gone: its exit is handled on its own
                    feeder.control.send(("count", inputs, died, alone))
                    told.append(feeder.index)
        log.warning("lost_call_inputs_relayed", feeder=sender.index, inputs=len(inputs), to_feeders=told, died=died)

    def _keep_lost(self, inputs: list[Any], alone: bool) -> None:
        """A lost call's inputs no feeder held: counted by the next pod, from the journal."""
        if self._journal is not None:
            self._journal.add_lost(inputs, alone)
        log.warning("lost_call_inputs_kept", inputs=len(inputs), alone=alone,
                    partitions=sorted({f"{t}[{p}]" for t, p, _ in inputs}), journal=self._journal is not None,
                    why="no feeder held their partitions (a rebalance): the next pod counts them from the call"
                        " journal" if self._journal is not None else "no feeder held their partitions, and the"
                        " call journal is off (TAGSTREAM_STATE_DIR): not counted")

    def _on_feeder_exit(self, feeder: FeederProc) -> None:
        assert feeder.process is not None
        process = feeder.process
        process.join()
        code = _exit_code(process.exitcode)
        self._read_last_messages(feeder)  # "started"/"failed", "marked", "last_metrics" still in the pipe
        if feeder.control is not None:
            feeder.control.close()
        feeder.process, feeder.control = None, None
        will_restart = not self._stopping
        self.view.feeder_down(feeder.index, restarting=will_restart and feeder.ever_started)
        level = log.info if self._stopping and code == 0 else log.error
        level("feeder_exited", feeder=feeder.index, pid=process.pid, exit=_describe_exit(process.exitcode))
        if self._stopping:
            feeder.exit_code = code
            return
        if not feeder.ever_started:
            self._fail(code or EXIT_INTERNAL, f"feeder {feeder.index} could not start ({_describe_exit(process.exitcode)})")
            return
        now = time.monotonic()
        while feeder.deaths and now - feeder.deaths[0] > RESTART_WINDOW_S:
            feeder.deaths.popleft()
        if len(feeder.deaths) >= FEEDER_RESTARTS_MAX:
            self._fail(
                code or EXIT_INTERNAL,
                f"feeder {feeder.index} died {len(feeder.deaths) + 1} times within {RESTART_WINDOW_S:g} s",
            )
            return
        delay = RESTART_BACKOFF_S[min(len(feeder.deaths), len(RESTART_BACKOFF_S) - 1)]
        feeder.deaths.append(now)
        feeder.restart_at = now + delay
        log.warning("feeder_restarting", feeder=feeder.index, in_s=delay, restarts_in_window=len(feeder.deaths))

    def _on_model_exit(self) -> None:
        assert self._model is not None
        self._model.join()
        self._model_stopped = True
        self._unmark_calls()  # at once: its feeders are counting the calls it died in themselves
        self._read_model_messages()
        self.view.model_alive = False
        self.view.model.port = None
        code = _exit_code(self._model.exitcode)
        self._fail(code or EXIT_INTERNAL, f"the model process exited ({_describe_exit(self._model.exitcode)})")

    def _fail(self, code: int, why: str) -> None:
        """Stop the pod with ``code`` (the first failure decides it)."""
        if self._code is None:
            self._code = code
            log.error("pod_failing", reason=why, exit_code=code, action="draining the feeders, then exiting")
            print(f"tagstream-worker: {why}", file=sys.stderr)
        self.stop()

    # -- stop ------------------------------------------------------------------------------------------
    def _stop_model(self) -> None:
        model, control = self._model, self._model_control
        if model is None or self._model_stopped:
            return
        self._model_stopped = True
        if control is not None:
            with contextlib.suppress(OSError, ValueError):
                control.send(("stop",))
        model.join(MODEL_STOP_TIMEOUT_S)
        if model.is_alive():
            log.warning("model_process_stop_overdue", action="killing")
            model.kill()
            model.join(2)
        if model.exitcode not in (0, None) and self._code is None:
            log.warning("model_process_exit", exit=_describe_exit(model.exitcode))

    def _read_model_messages(self) -> None:
        """What the model process said before it exited: a call it gave up as hung (lost_calls.py)."""
        control = self._model_control
        with contextlib.suppress(EOFError, OSError, ValueError):
            while control is not None and control.poll():
                message = control.recv()
                if message[0] == "stalled_call":
                    self._uncounted.to_count(message[1], message[2])

    def _unmark_calls(self) -> None:
        """The model process has ended under this supervisor: a death was counted by its feeders
        (transport.py's slots), and a stop is nobody's fault. The journal counts only a pod killed
        whole, supervisor and all (worker/call_journal.py)."""
        if self._journal is not None:
            self._journal.unmark_calls()

    def kill_all(self) -> None:
        for process in [self._model, *(f.process for f in self._feeders)]:
            if process is not None and process.is_alive():
                with contextlib.suppress(OSError):
                    process.kill()
        if self._model is not None:  # an operator's forced stop is no input's fault
            self._model.join(FORCED_MODEL_WAIT_S)  # short: a process stuck in a driver may not die at once
            if not self._model.is_alive():
                self._unmark_calls()

    def _cleanup(self) -> None:
        if self._model is not None and self._model.is_alive() and not self._model_stopped:
            self._stop_model()
        if self.telemetry is not None:
            self.telemetry.stop()
            self.telemetry = None
        for channel in self._channels:
            channel.close()
        self._channels = []
        for feeder in self._feeders:  # a feeder's last words not read yet: its counts (lost_calls.py)
            self._read_last_messages(feeder)
        self._uncounted.close()
        if self._journal is not None:
            if self._model is None or not self._model.is_alive():
                self._unmark_calls()
            self._journal.close()
            self._journal = None
        if self._claim is not None:
            self._claim.release()
            self._claim = None


def _exit_code(exitcode: int | None) -> int:
    """A process's exit code as the pod reports it: killed by a signal counts as 1 (internal)."""
    if exitcode is None or exitcode < 0:
        return EXIT_INTERNAL
    return exitcode


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
        return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _failure_for(code: int) -> Any:
    from worker.errors import Failure

    for failure in (Failure.SETTINGS_INVALID, Failure.BUNDLE_INVALID, Failure.KAFKA_FATAL):
        if failure.exit_code == code:
            return failure
    return Failure.INTERNAL


def run_pod(settings: WorkerSettings, feeders: int) -> int:
    """``tagstream-worker run`` with TAGSTREAM_PROCESSES > 1: the supervisor in this process."""
    configure_logging(settings.log_level, settings.log_format, context={"process": "supervisor"})
    supervisor = Supervisor(settings, feeders)
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    signal.signal(signal.SIGINT, supervisor.on_signal)
    try:
        supervisor.start()
    except WorkerError as exc:
        log.error("cannot_start", kind=exc.failure.label, error=str(exc), exit_code=exc.exit_code)
        print(f"tagstream-worker: {exc}", file=sys.stderr)
        return exc.exit_code
    return supervisor.wait()
