"""A real Apache Kafka broker (KRaft, one node as broker and controller) run from the cached jars.

    with LocalKafka() as kafka:                     # free ports, fresh temporary log folder
        producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)

    with LocalKafka(scram_users=[ScramUser("alice", "alice-secret")]) as kafka:
        config = kafka.scram_endpoint().client_config("SCRAM-SHA-512")

``start()`` checks the requested ports, Java 17+, and the jars (fetching them with Maven once),
formats a fresh KRaft log folder, starts the JVM and returns once the broker logged
"Kafka Server started" *and* answered a metadata request. ``stop()`` sends SIGTERM (Kafka's
clean shutdown), waits, and kills as a last resort.

No orphaned JVMs: a broker started by this process is stopped by ``stop()``, by ``atexit``, and,
if this process dies without either (SIGKILL), by a small watchdog process (see ``procs.py``).
Only ``detach=True`` brokers (``tagstream-worker kafka up``) outlive their starter, on purpose.
"""

from __future__ import annotations

import atexit
import base64
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from localkafka import procs
from localkafka.config import (
    NODE_ID,
    SCRAM_MECHANISMS,
    Ports,
    ScramUser,
    scram_format_args,
    server_properties,
)
from localkafka.errors import BrokerStartError, PortInUseError
from localkafka.jars import KafkaJars, ensure_jars, package_file
from localkafka.ports import HOST, check_port_free, free_ports
from localkafka.toolchain import Java, find_java

READY_LINE = "Kafka Server started"  # logged by KafkaRaftServer once listeners accept clients
# Warm start-to-ready is 1-3 s on 2 shared cores; the limit only bounds a broker that hangs.
DEFAULT_READY_TIMEOUT_S = 60.0
# Formatting takes about a second; the limit only bounds a JVM that hangs.
FORMAT_TIMEOUT_S = 120.0
# Tried when a port picked as free was taken before the JVM could bind it.
PORT_RACE_ATTEMPTS = 3
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


@dataclass(frozen=True)
class ScramEndpoint:
    """Where and as whom a client reaches the SASL_PLAINTEXT (SCRAM) listener."""

    bootstrap_servers: str
    username: str
    password: str
    mechanisms: tuple[str, ...] = SCRAM_MECHANISMS
    log_path: Path | None = None  # the broker's log, when it is a local broker

    def client_config(
        self, mechanism: str = "SCRAM-SHA-512", *, password: str | None = None
    ) -> dict[str, Any]:
        """kafka-python client settings for this endpoint (``password`` overrides the right one)."""
        if mechanism not in self.mechanisms:
            raise ValueError(f"mechanism {mechanism!r} is not one of {self.mechanisms}")
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": mechanism,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password if password is None else password,
        }


class LocalKafka:
    """One local broker process. Ports left as None are picked free; requested ones are checked.

    Arguments:
        port: the PLAINTEXT client port (None: a free one).
        controller_port: the KRaft controller port (None: a free one).
        scram_users: users to create; when non-empty a SASL_PLAINTEXT listener with
            SCRAM-SHA-256 and SCRAM-SHA-512 is added on ``scram_port`` (None: a free one).
        run_dir: folder for server.properties, data/ and broker.log (None: a new temporary
            folder, removed by ``stop()``). data/ is always formatted afresh.
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
        run_dir: Path | None = None,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        detach: bool = False,
        cache_root: Path | None = None,
        maven_args: Sequence[str] = (),
        fetch_progress: Callable[[int], None] | None = None,
        jvm_args: Sequence[str] = (),
    ) -> None:
        self._requested = Ports(
            plaintext=port or 0, controller=controller_port or 0, sasl=scram_port or 0
        )
        self.scram_users = tuple(scram_users)
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
        self.startup_s: float | None = None  # from launching the JVM to ready, in seconds
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- what clients need -------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self._started_ports().plaintext}"

    @property
    def sasl_bootstrap_servers(self) -> str | None:
        sasl = self._started_ports().sasl
        return None if sasl is None else f"{HOST}:{sasl}"

    def scram_endpoint(self, user: ScramUser | None = None) -> ScramEndpoint:
        """The SCRAM listener as ``user`` (default: the first SCRAM user)."""
        if not self.scram_users or self.sasl_bootstrap_servers is None:
            raise ValueError(
                "this broker was started without scram_users: it has no SCRAM listener"
            )
        user = user or self.scram_users[0]
        return ScramEndpoint(
            self.sasl_bootstrap_servers, user.name, user.password, log_path=self.log_path
        )

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

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

    # -- life cycle ----------------------------------------------------------------------------

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> LocalKafka:
        """Start the broker and return once it is ready (see the module docstring).

        Raises PortInUseError, JavaNotFoundError/JavaTooOldError, MavenNotFoundError, FetchError
        or BrokerStartError, each with a message saying what to change.
        """
        if self._proc is not None:
            raise RuntimeError("this LocalKafka is already started")
        self._check_requested_ports()
        self.java = find_java()
        self.jars = ensure_jars(
            self._cache_root, maven_args=self._maven_args, progress=self._fetch_progress
        )
        self.run_dir = self._given_run_dir or Path(tempfile.mkdtemp(prefix="tagstream-kafka-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        picks_ports = 0 in (self._requested.plaintext, self._requested.controller) or (
            bool(self.scram_users) and self._requested.sasl == 0
        )
        attempts = PORT_RACE_ATTEMPTS if picks_ports else 1
        for attempt in range(1, attempts + 1):
            self.ports = self._choose_ports()
            try:
                self._format()
                self._launch()
                self._wait_ready()
                break
            except BrokerStartError:
                self._terminate_quietly()
                if "Address already in use" not in log_tail(self.log_path, 200):
                    raise
                if attempt == attempts:
                    raise PortInUseError(
                        f"the broker could not bind its ports {self._describe_ports()} on {HOST}: "
                        f"another process took one; free them or choose others (--port)"
                    ) from None
        if not self.detach:
            atexit.register(self.stop)
        return self

    def stop(self, timeout_s: float = procs.STOP_GRACE_S) -> None:
        """Stop the broker (SIGTERM, wait ``timeout_s`` seconds, then SIGKILL) and clean up."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_log()
        self._release_watchdog()
        if self._given_run_dir is None and self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # -- steps ---------------------------------------------------------------------------------

    def _check_requested_ports(self) -> None:
        wanted = [
            (self._requested.plaintext, "client listener", "--port"),
            (self._requested.controller, "controller listener", "--controller-port"),
        ]
        if self.scram_users:
            wanted.append((self._requested.sasl or 0, "SCRAM listener", "--scram-port"))
        for port, role, option in wanted:
            if port:
                check_port_free(port, role, option)

    def _choose_ports(self) -> Ports:
        spare = iter(free_ports(3))
        taken = {self._requested.plaintext, self._requested.controller, self._requested.sasl}

        def pick(requested: int) -> int:
            if requested:
                return requested
            for port in spare:
                if port not in taken:
                    return port
            raise PortInUseError(f"no free ports found on {HOST}")

        plaintext = pick(self._requested.plaintext)
        controller = pick(self._requested.controller)
        sasl = pick(self._requested.sasl or 0) if self.scram_users else None
        return Ports(plaintext=plaintext, controller=controller, sasl=sasl)

    def _describe_ports(self) -> str:
        ports = self._started_ports()
        parts = [f"client {ports.plaintext}", f"controller {ports.controller}"]
        if ports.sasl is not None:
            parts.append(f"SCRAM {ports.sasl}")
        return ", ".join(parts)

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
        self.properties_path.write_text(server_properties(self._started_ports(), data_dir))
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

    def _launch(self) -> None:
        extra = shlex.split(os.environ.get(JVM_OPTS_ENV, ""))
        cmd = self._java_command(
            (*BROKER_JVM_ARGS, *extra, *self._jvm_args), "kafka.Kafka", str(self.properties_path)
        )
        self._close_log()
        self._log_file = self.log_path.open("wb")
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
        while READY_LINE not in self.log_path.read_text(errors="replace"):
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
