"""A real Apache Kafka broker (KRaft, one node as broker and controller) run from the cached jars.

    with LocalKafka() as kafka:                     # free ports, fresh temporary log folder
        producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)

    with LocalKafka(scram_users=[ScramUser("alice", "alice-secret")], tls=True) as kafka:
        config = kafka.endpoint("SASL_SSL").client_config("SCRAM-SHA-512")   # or SSL, SASL_PLAINTEXT

``start()`` checks the requested ports, Java 17+, and the jars (fetching them with Maven once),
makes throwaway TLS certificates when asked (``tls.py``), formats a fresh KRaft log folder,
starts the JVM and returns once the broker logged "Kafka Server started" *and* answered a
metadata request. ``stop()`` sends SIGTERM (Kafka's clean shutdown), waits, kills as a last
resort, and removes a temporary log folder: the broker is gone for good.

Controls for fault tests, each keeping the ports, the log folder and the certificates, so that
topics, records and committed group offsets survive:

    halt()      clean shutdown (SIGTERM), like a rolling restart's first half
    kill()      kill -9: no shutdown at all, like a crashed machine
    start()     after halt() or kill(): the same broker again, on the same ports, same data
    restart()   halt() or kill(), an optional pause, start()
    freeze()    SIGSTOP: connections stay open but nothing answers (a GC pause, a hung VM)
    thaw()      SIGCONT: it carries on where it stopped

No orphaned JVMs: a broker started by this process is stopped by ``stop()``, by ``atexit``, and,
if this process dies without either (SIGKILL), by a small watchdog process (see ``procs.py``).
Only ``detach=True`` brokers (``tagstream-worker kafka up``) outlive their starter, on purpose.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from localkafka import procs
from localkafka.config import (
    NODE_ID,
    Ports,
    ScramUser,
    scram_format_args,
    server_properties,
)
from localkafka.endpoint import SECURITY_PROTOCOLS, Endpoint
from localkafka.errors import BrokerStartError, PortInUseError
from localkafka.jars import KafkaJars, ensure_jars, package_file
from localkafka.ports import HOST, check_port_free, free_ports, port_is_free
from localkafka.tls import TlsMaterial, make_broker_tls
from localkafka.toolchain import Java, find_java, find_keytool

READY_LINE = "Kafka Server started"  # logged by KafkaRaftServer once listeners accept clients
BIND_FAILURE = "Address already in use"  # in the log when a listener port was taken
# Warm start-to-ready is 1-3 s on 2 shared cores; the limit only bounds a broker that hangs.
DEFAULT_READY_TIMEOUT_S = 60.0
# Formatting takes about a second; the limit only bounds a JVM that hangs.
FORMAT_TIMEOUT_S = 120.0
# Tried when a port picked as free was taken before the JVM could bind it.
PORT_RACE_ATTEMPTS = 3
# SIGSTOP takes effect at once; this only bounds waiting to see the process stopped.
FREEZE_CONFIRM_S = 2.0
LOG_TAIL_LINES = 25
JVM_OPTS_ENV = "TAGSTREAM_KAFKA_JVM_OPTS"  # extra JVM flags, appended (the last one wins)

# Measured on 2 shared cores: start-to-ready 1.4 s with these flags, 2.1-3.7 s with none.
# AppCDS (-XX:SharedArchiveFile) saved another 0.6 s but costs 4.6 s at the first stop to dump
# the archive and crashes the JVM (SIGBUS) on a truncated archive, so it is not used.
BROKER_JVM_ARGS = (
    "-Xms256m",
    "-Xmx512m",  # ample for tests and demos (Kafka's scripts default to 1 GiB)
    "-XX:+UseSerialGC",  # one small heap: no parallel GC threads to start
    "-XX:TieredStopAtLevel=1",  # C1 only: compiles fast; peak throughput is not the point here
    "-XX:-UsePerfData",  # no hsperfdata file in /tmp
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
TOOL_JVM_ARGS = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData")

# Each listener: the Ports field, what it is (for messages), the `kafka up` option that sets it.
LISTENERS = (
    ("plaintext", "client listener", "--port"),
    ("controller", "controller listener", "--controller-port"),
    ("sasl", "SCRAM listener", "--scram-port"),
    ("ssl", "SSL listener", "--ssl-port"),
    ("sasl_ssl", "SASL_SSL listener", "--sasl-ssl-port"),
)
_PORT_FIELD = {"PLAINTEXT": "plaintext", "SASL_PLAINTEXT": "sasl", "SSL": "ssl", "SASL_SSL": "sasl_ssl"}


def new_cluster_id() -> str:
    """A KRaft cluster id as ``kafka-storage random-uuid`` makes it (22 url-safe base64 chars)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):  # StorageTool would read it as an option
            return cluster_id


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, indented, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "    (no log)"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(f"    {line}" for line in tail) or "    (log is empty)"


class LocalKafka:
    """One local broker process. Ports left as None are picked free; requested ones are checked.

    Arguments:
        port: the PLAINTEXT client port (None: a free one).
        controller_port: the KRaft controller port (None: a free one).
        scram_users: users to create; when non-empty a SASL_PLAINTEXT listener with
            SCRAM-SHA-256 and SCRAM-SHA-512 is added on ``scram_port`` (None: a free one).
        tls: add an SSL listener on ``ssl_port`` (and, with ``scram_users``, a SASL_SSL one on
            ``sasl_ssl_port``), with a throwaway CA and broker certificate made at start
            (``ca_file`` is what clients trust).
        run_dir: folder for server.properties, data/, tls/ and broker.log (None: a new
            temporary folder, removed by ``stop()``). A first start always formats data/ afresh.
        ready_timeout_s: how long ``start()`` waits for the broker to be ready, in seconds.
        detach: leave the broker running when this process exits (for ``kafka up``).
        cache_root, maven_args, fetch_progress: passed to ``ensure_jars``.
        jvm_args: extra JVM flags (after the defaults and ``$TAGSTREAM_KAFKA_JVM_OPTS``).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        scram_users: Sequence[ScramUser] = (),
        scram_port: int | None = None,
        tls: bool = False,
        ssl_port: int | None = None,
        sasl_ssl_port: int | None = None,
        run_dir: Path | None = None,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        detach: bool = False,
        cache_root: Path | None = None,
        maven_args: Sequence[str] = (),
        fetch_progress: Callable[[int], None] | None = None,
        jvm_args: Sequence[str] = (),
    ) -> None:
        self.scram_users = tuple(scram_users)
        self.tls = tls
        # The listeners this broker opens -> the requested port (0: pick a free one).
        self._wanted: dict[str, int] = {"plaintext": port or 0, "controller": controller_port or 0}
        if self.scram_users:
            self._wanted["sasl"] = scram_port or 0
        if tls:
            self._wanted["ssl"] = ssl_port or 0
            if self.scram_users:
                self._wanted["sasl_ssl"] = sasl_ssl_port or 0
        self._given_run_dir = run_dir
        self.ready_timeout_s = ready_timeout_s
        self.detach = detach
        self._cache_root = cache_root
        self._maven_args = tuple(maven_args)
        self._fetch_progress = fetch_progress
        self._jvm_args = tuple(jvm_args)
        self.ports: Ports | None = None
        self.run_dir: Path | None = None
        self.java: Java | None = None
        self.jars: KafkaJars | None = None
        self.tls_material: TlsMaterial | None = None
        self.startup_s: float | None = None  # from launching the JVM to ready, latest start, in s
        self.ready_times_s: list[float] = []  # the same, for every start and restart so far
        self._formatted = False  # data/ holds this broker's cluster: start() brings it back
        self._frozen = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_start = 0  # where the current launch's output begins in broker.log
        self._launched_at = 0.0
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- what clients need -------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self._started_ports().plaintext}"

    @property
    def sasl_bootstrap_servers(self) -> str | None:
        """The SASL_PLAINTEXT (SCRAM) listener, if any."""
        return self._address("SASL_PLAINTEXT")

    @property
    def ssl_bootstrap_servers(self) -> str | None:
        """The SSL listener, if any."""
        return self._address("SSL")

    @property
    def sasl_ssl_bootstrap_servers(self) -> str | None:
        """The SASL_SSL (SCRAM over TLS) listener, if any."""
        return self._address("SASL_SSL")

    @property
    def ca_file(self) -> Path | None:
        """PEM file of the CA that signed the broker's certificate (``tls=True`` brokers)."""
        return None if self.tls_material is None else self.tls_material.ca_file

    def endpoint(self, protocol: str = "PLAINTEXT", user: ScramUser | None = None) -> Endpoint:
        """The listener for ``protocol`` (PLAINTEXT, SASL_PLAINTEXT, SSL, SASL_SSL) as ``user``.

        SASL listeners default to the first SCRAM user; SSL ones carry ``ca_file``.
        """
        if protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {SECURITY_PROTOCOLS}")
        address = self._address(protocol)
        if address is None:
            needs = {"SASL_PLAINTEXT": "scram_users", "SSL": "tls=True"}.get(
                protocol, "scram_users and tls=True"
            )
            raise ValueError(f"this broker has no {protocol} listener: start it with {needs}")
        sasl = protocol.startswith("SASL_")
        user = (user or self.scram_users[0]) if sasl else None
        return Endpoint(
            address,
            protocol,
            username=user.name if user else None,
            password=user.password if user else None,
            cafile=self.ca_file if protocol.endswith("SSL") else None,
            log_path=self.log_path,
        )

    def scram_endpoint(self, user: ScramUser | None = None) -> Endpoint:
        """The SASL_PLAINTEXT (SCRAM) listener as ``user`` (default: the first SCRAM user)."""
        return self.endpoint("SASL_PLAINTEXT", user)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the broker process is alive (frozen counts as alive)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def is_frozen(self) -> bool:
        """Whether ``freeze()`` stopped the broker and ``thaw()`` has not resumed it yet."""
        return self._frozen

    @property
    def log_path(self) -> Path:
        assert self.run_dir is not None, "not started"
        return self.run_dir / "broker.log"

    @property
    def properties_path(self) -> Path:
        assert self.run_dir is not None, "not started"
        return self.run_dir / "server.properties"

    def _started_ports(self) -> Ports:
        if self.ports is None:
            raise RuntimeError("the broker is not started")
        return self.ports

    def _address(self, protocol: str) -> str | None:
        port = getattr(self._started_ports(), _PORT_FIELD[protocol])
        return None if port is None else f"{HOST}:{port}"

    # -- life cycle ----------------------------------------------------------------------------

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> LocalKafka:
        """Start the broker and return once it is ready (see the module docstring).

        After ``halt()`` or ``kill()`` this is the same broker again: same ports, same log
        folder (topics, records, committed offsets, SCRAM users) and certificates. Otherwise it
        is a fresh one. Raises PortInUseError (naming the port and the option that changes it;
        on a restart, the port taken while the broker was down), JavaNotFoundError/
        JavaTooOldError, MavenNotFoundError, FetchError, TlsError or BrokerStartError.
        """
        if self._proc is not None:
            raise RuntimeError("this LocalKafka is already started")
        if self._formatted:
            self._start_again()
        else:
            self._start_fresh()
        if not self.detach:
            atexit.unregister(self.stop)  # once, however many restarts
            atexit.register(self.stop)
        return self

    def halt(self, timeout_s: float = procs.STOP_GRACE_S) -> bool:
        """Shut the broker down cleanly (SIGTERM; SIGKILL after ``timeout_s`` seconds), keeping
        its ports, data and certificates for ``start()``. Returns whether it exited cleanly."""
        return self._end_process(kill=False, timeout_s=timeout_s)

    def kill(self) -> None:
        """``kill -9`` the broker: no clean shutdown. Its data stays for ``start()``, which then
        recovers the logs as Kafka does after a crash."""
        self._end_process(kill=True, timeout_s=0.0)

    def restart(self, *, kill: bool = False, down_s: float = 0.0) -> LocalKafka:
        """``halt()`` (or ``kill()``), wait ``down_s`` seconds, ``start()``: the same broker again."""
        if kill:
            self.kill()
        else:
            self.halt()
        if down_s > 0:
            time.sleep(down_s)
        return self.start()

    def freeze(self) -> None:
        """SIGSTOP the broker: its sockets stay open but it answers nothing until ``thaw()``."""
        proc = self._alive_process("freeze")
        os.kill(proc.pid, signal.SIGSTOP)
        self._frozen = True
        deadline = time.monotonic() + FREEZE_CONFIRM_S
        while procs.process_state(proc.pid) not in ("T", "t", None):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)

    def thaw(self) -> None:
        """SIGCONT a frozen broker: it carries on, and its clients' requests are answered."""
        proc = self._alive_process("thaw")
        os.kill(proc.pid, signal.SIGCONT)
        self._frozen = False

    @contextlib.contextmanager
    def frozen(self) -> Iterator[LocalKafka]:
        """``with kafka.frozen(): ...``: frozen inside the block, thawed after it."""
        self.freeze()
        try:
            yield self
        finally:
            if self.running:
                self.thaw()

    def stop(self, timeout_s: float = procs.STOP_GRACE_S) -> None:
        """Stop the broker for good (SIGTERM, wait ``timeout_s`` seconds, then SIGKILL) and clean
        up: a temporary run folder is removed; a later ``start()`` begins afresh."""
        atexit.unregister(self.stop)
        self._end_process(kill=False, timeout_s=timeout_s)
        self._formatted = False
        self.tls_material = None
        if self._given_run_dir is None and self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # -- steps ---------------------------------------------------------------------------------

    def _start_fresh(self) -> None:
        self._check_requested_ports()
        self.java = find_java()
        self.jars = ensure_jars(
            self._cache_root, maven_args=self._maven_args, progress=self._fetch_progress
        )
        self.run_dir = self._given_run_dir or Path(tempfile.mkdtemp(prefix="tagstream-kafka-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            tls_dir = self.run_dir / "tls"
            shutil.rmtree(tls_dir, ignore_errors=True)
            self.tls_material = make_broker_tls(tls_dir, find_keytool(self.java))
        attempts = PORT_RACE_ATTEMPTS if 0 in self._wanted.values() else 1
        for attempt in range(1, attempts + 1):
            self.ports = self._choose_ports()
            try:
                self._format()
                self._launch(fresh=True)
                self._wait_ready()
                break
            except BrokerStartError:
                self._terminate_quietly()
                if BIND_FAILURE not in log_tail(self.log_path, 200):
                    raise
                if attempt == attempts:
                    raise PortInUseError(
                        f"the broker could not bind its ports {self._describe_ports()} on {HOST}: "
                        f"another process took one; free them or choose others (--port)"
                    ) from None
        self._formatted = True

    def _start_again(self) -> None:
        """Launch the halted or killed broker on its ports and data (no formatting)."""
        for field, role, _ in LISTENERS:
            port = getattr(self._started_ports(), field)
            if port is not None and not port_is_free(port):
                raise self._port_taken_on_restart(port, role)
        try:
            self._launch(fresh=False)
            self._wait_ready()
        except BrokerStartError:
            self._terminate_quietly()
            if BIND_FAILURE not in self._current_log():
                raise
            for field, role, _ in LISTENERS:
                port = getattr(self._started_ports(), field)
                if port is not None and not port_is_free(port):
                    raise self._port_taken_on_restart(port, role) from None
            raise

    def _port_taken_on_restart(self, port: int, role: str) -> PortInUseError:
        return PortInUseError(
            f"the restarted broker cannot listen on port {port} ({role}) again: another process "
            f"took it on {HOST} while the broker was down; stop that process and call start() "
            f"again (the data in {self.run_dir} is kept)"
        )

    def _end_process(self, *, kill: bool, timeout_s: float) -> bool:
        """End the JVM (if any), keeping every file. Returns whether it exited cleanly."""
        proc, self._proc = self._proc, None
        clean = True
        if proc is not None and proc.poll() is None:
            if kill:
                proc.kill()
                clean = False
            else:
                proc.terminate()
                if self._frozen:
                    os.kill(proc.pid, signal.SIGCONT)  # SIGTERM is acted on once it runs again
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    clean = False
            proc.wait()
        self._frozen = False
        self._close_log()
        self._release_watchdog()
        return clean

    def _alive_process(self, action: str) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"cannot {action} the broker: it is not running")
        return self._proc

    def _check_requested_ports(self) -> None:
        for field, role, option in LISTENERS:
            port = self._wanted.get(field)
            if port:
                check_port_free(port, role, option)

    def _choose_ports(self) -> Ports:
        taken = set(self._wanted.values())
        spare = iter(p for p in free_ports(len(self._wanted)) if p not in taken)
        chosen = {}
        for field, port in self._wanted.items():
            if port:
                chosen[field] = port
                continue
            chosen[field] = next(spare, 0)
            if not chosen[field]:
                raise PortInUseError(f"no free ports found on {HOST}")
        return Ports(**chosen)

    def _describe_ports(self) -> str:
        ports = self._started_ports()
        names = {"plaintext": "client", "controller": "controller", "sasl": "SCRAM",
                 "ssl": "SSL", "sasl_ssl": "SASL_SSL"}
        return ", ".join(
            f"{names[field]} {getattr(ports, field)}"
            for field, _, _ in LISTENERS
            if getattr(ports, field) is not None
        )

    def _java_command(self, jvm_args: Sequence[str], main_class: str, *args: str) -> list[str]:
        assert self.java is not None and self.jars is not None and self.run_dir is not None
        return [
            str(self.java.path),
            *jvm_args,
            f"-XX:ErrorFile={self.run_dir / 'hs_err_pid%p.log'}",
            f"-Dlog4j2.configurationFile={package_file('log4j2.properties')}",
            "-cp",
            self.jars.classpath,
            main_class,
            *args,
        ]

    def _format(self) -> None:
        """Write server.properties and format a fresh KRaft log folder (with the SCRAM users)."""
        assert self.run_dir is not None
        data_dir = self.run_dir / "data"
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir()
        self.properties_path.write_text(
            server_properties(self._started_ports(), data_dir, self.tls_material)
        )
        format_log = self.run_dir / "format.log"
        cmd = self._java_command(
            TOOL_JVM_ARGS,
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "--cluster-id",
            new_cluster_id(),
            "--config",
            str(self.properties_path),
            *scram_format_args(self.scram_users),
        )
        try:
            with format_log.open("wb") as out:
                done = subprocess.run(
                    cmd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=FORMAT_TIMEOUT_S,
                    check=False,
                )
        except subprocess.TimeoutExpired as exc:
            raise BrokerStartError(
                f"formatting the KRaft log folder took over {FORMAT_TIMEOUT_S:.0f} s "
                f"(log: {format_log}):\n{log_tail(format_log)}"
            ) from exc
        if done.returncode != 0:
            raise BrokerStartError(
                f"formatting the KRaft log folder failed with exit code {done.returncode} "
                f"(log: {format_log}):\n{log_tail(format_log)}"
            )

    def _launch(self, *, fresh: bool) -> None:
        """Start the JVM; a fresh broker starts a new broker.log, a restarted one appends."""
        extra = shlex.split(os.environ.get(JVM_OPTS_ENV, ""))
        cmd = self._java_command(
            (*BROKER_JVM_ARGS, *extra, *self._jvm_args), "kafka.Kafka", str(self.properties_path)
        )
        self._close_log()
        self._log_file = self.log_path.open("wb" if fresh else "ab")
        if not fresh:
            self._log_file.write(
                f"\n---- tagstream: broker started again on the same data at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')} ----\n".encode()
            )
            self._log_file.flush()
        self._log_start = self._log_file.tell()
        self._launched_at = time.monotonic()
        # Own session: a Ctrl-C in the terminal reaches the starter, which stops the broker
        # cleanly, rather than killing the JVM under it.
        self._proc = subprocess.Popen(
            cmd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.run_dir,
            start_new_session=True,
        )
        if not self.detach:
            self._start_watchdog()

    def _current_log(self) -> str:
        """What the current (or last) launch has written to broker.log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _start_watchdog(self) -> None:
        assert self._proc is not None and self.run_dir is not None
        cleanup = "" if self._given_run_dir is not None else str(self.run_dir)
        self._watchdog = subprocess.Popen(
            [
                sys.executable,
                procs.__file__,
                str(self._proc.pid),
                str(self.properties_path),
                cleanup,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_ready(self) -> None:
        """Wait for the readiness line, then for an answer to a metadata request."""
        assert self._proc is not None
        deadline = self._launched_at + self.ready_timeout_s
        while READY_LINE not in self._current_log():
            returncode = self._proc.poll()
            if returncode is not None:
                raise BrokerStartError(
                    f"the Kafka broker exited with code {returncode} during start-up "
                    f"(log: {self.log_path}):\n{log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise BrokerStartError(
                    f"the Kafka broker was not ready within {self.ready_timeout_s:.0f} s "
                    f"(log: {self.log_path}); a loaded machine may need a longer timeout:\n"
                    f"{log_tail(self.log_path)}"
                )
            time.sleep(0.05)
        try:
            answer_metadata(self.bootstrap_servers, timeout_s=max(1.0, deadline - time.monotonic()))
        except Exception as exc:
            raise BrokerStartError(
                f"the Kafka broker logged '{READY_LINE}' but did not answer a metadata request "
                f"({exc}; log: {self.log_path}):\n{log_tail(self.log_path)}"
            ) from exc
        self.startup_s = time.monotonic() - self._launched_at
        self.ready_times_s.append(self.startup_s)

    def _terminate_quietly(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close_log()
        self._release_watchdog()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _release_watchdog(self) -> None:
        """Tell the watchdog the broker was stopped on purpose, and let it exit."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        try:
            assert watchdog.stdin is not None
            watchdog.stdin.write(procs.STOPPED)
            watchdog.stdin.close()
            watchdog.wait(5.0)
        except (OSError, subprocess.TimeoutExpired):
            watchdog.kill()
            watchdog.wait()


def answer_metadata(
    bootstrap_servers: str, timeout_s: float = 5.0, **client_config: Any
) -> dict[str, Any]:
    """Ask the broker for cluster metadata; raise unless node 1 is listed and not fenced.

    Returns kafka-python's ``describe_cluster()`` dict. Raises kafka-python's errors (or
    RuntimeError) when the broker does not answer within ``timeout_s`` seconds.
    """
    from kafka import KafkaAdminClient  # imported here: the CLI's other commands stay fast

    timeout_ms = int(timeout_s * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
        **client_config,
    )
    try:
        cluster: dict[str, Any] = admin.describe_cluster()
    finally:
        admin.close()
    if not any(b["broker_id"] == NODE_ID and not b.get("is_fenced") for b in cluster["brokers"]):
        raise RuntimeError(
            f"broker {NODE_ID} is not (yet) an unfenced member: {cluster['brokers']}"
        )
    return cluster
