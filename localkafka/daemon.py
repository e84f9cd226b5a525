"""The broker of ``tagstream-worker kafka up``: started detached, found again by ``status``/``down``.

Everything lives in one state folder (``$TAGSTREAM_KAFKA_STATE_DIR``, else ``broker/`` beside
the jar cache, e.g. ``~/.cache/tagstream/kafka/broker``)::

    state.json          pid, ports, bootstrap servers, SCRAM user, CA file, paths, start time
    server.properties   data/   tls/   format.log   broker.log   (broker.log is kept after `down`)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from localkafka import procs
from localkafka.broker import LocalKafka, answer_metadata
from localkafka.config import SCRAM_MECHANISMS, ScramUser
from localkafka.errors import BrokerStateError
from localkafka.jars import cache_root

STATE_ENV = "TAGSTREAM_KAFKA_STATE_DIR"
STATE_FILE = "state.json"
DEFAULT_PORT = 9092  # the worker's default bootstrap_servers is localhost:9092
DEFAULT_SCRAM_PORT = 9094
DEFAULT_SSL_PORT = 9093
DEFAULT_SASL_SSL_PORT = 9095
DEFAULT_SCRAM_USER = ScramUser("tagstream", "tagstream-secret")  # loopback-only development broker
# A broker answering on loopback replies in milliseconds; this bounds `status` on a stuck one.
STATUS_PROBE_TIMEOUT_S = 5.0


def state_dir() -> Path:
    """The folder holding the ``kafka up`` broker's state, data and log."""
    if env := os.environ.get(STATE_ENV):
        return Path(env).expanduser()
    return cache_root() / "broker"


@dataclass(frozen=True)
class BrokerState:
    """What ``kafka up`` records about the broker it left running."""

    pid: int
    kafka_version: str
    bootstrap_servers: str
    controller_port: int
    sasl_bootstrap_servers: str | None
    scram_user: str | None
    scram_password: str | None
    scram_mechanisms: tuple[str, ...]
    properties_path: str
    log_path: str
    data_dir: str
    started_at: float  # seconds since the epoch
    startup_s: float  # JVM launch to ready, in seconds
    # TLS listeners (`up --tls`); defaults keep records written before they existed readable.
    ssl_bootstrap_servers: str | None = None
    sasl_ssl_bootstrap_servers: str | None = None
    ssl_cafile: str | None = None  # PEM file of the throwaway CA: what clients trust

    @property
    def running(self) -> bool:
        """Whether the recorded pid is alive and still this broker (not a reused pid)."""
        return procs.is_running(self.pid) and procs.cmdline_contains(self.pid, self.properties_path)

    def answers(self, timeout_s: float = STATUS_PROBE_TIMEOUT_S) -> bool:
        """Whether the broker answers a metadata request within ``timeout_s`` seconds."""
        try:
            answer_metadata(self.bootstrap_servers, timeout_s=timeout_s)
        except Exception:
            return False
        return True

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One `up`/`down` at a time per state folder."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_state(folder: Path | None = None) -> BrokerState | None:
    """The recorded broker, or None when there is none (or its record is unreadable)."""
    path = (folder or state_dir()) / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        raw["scram_mechanisms"] = tuple(raw["scram_mechanisms"])
        return BrokerState(**raw)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _forget(folder: Path) -> None:
    (folder / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(folder / "data", ignore_errors=True)
    shutil.rmtree(folder / "tls", ignore_errors=True)


def up(
    *,
    port: int = DEFAULT_PORT,
    scram: bool = False,
    scram_port: int = DEFAULT_SCRAM_PORT,
    scram_user: ScramUser = DEFAULT_SCRAM_USER,
    tls: bool = False,
    ssl_port: int = DEFAULT_SSL_PORT,
    sasl_ssl_port: int = DEFAULT_SASL_SSL_PORT,
    ready_timeout_s: float | None = None,
    fetch_progress: Callable[[int], None] | None = None,
    folder: Path | None = None,
) -> tuple[BrokerState, bool]:
    """Start the detached broker, or find the one already running with compatible options.

    Returns (state, started): ``started`` is False when a running broker was reused.
    """
    folder = folder or state_dir()
    with _locked(folder):
        current = read_state(folder)
        if current is not None and current.running:
            wanted_port = f"127.0.0.1:{port}"
            if (
                current.bootstrap_servers != wanted_port
                or (scram and not current.sasl_bootstrap_servers)
                or (tls and not current.ssl_bootstrap_servers)
            ):
                extras = "".join(
                    f", {name}"
                    for name, on in (
                        ("SCRAM", current.sasl_bootstrap_servers),
                        ("TLS", current.ssl_bootstrap_servers),
                    )
                    if on
                )
                raise BrokerStateError(
                    f"a broker is already running (pid {current.pid}, {current.bootstrap_servers}"
                    f"{extras}) with other options: run `tagstream-worker kafka down` first"
                )
            return current, False
        _forget(folder)  # a stale record (broker gone, machine rebooted): start afresh
        kwargs = {} if ready_timeout_s is None else {"ready_timeout_s": ready_timeout_s}
        broker = LocalKafka(
            port=port,
            scram_users=[scram_user] if scram else (),
            scram_port=scram_port if scram else None,
            tls=tls,
            ssl_port=ssl_port if tls else None,
            sasl_ssl_port=sasl_ssl_port if tls and scram else None,
            run_dir=folder,
            detach=True,
            fetch_progress=fetch_progress,
            **kwargs,  # type: ignore[arg-type]
        )
        broker.start()
        assert broker.pid is not None and broker.ports is not None and broker.jars is not None
        state = BrokerState(
            pid=broker.pid,
            kafka_version=broker.jars.version,
            bootstrap_servers=broker.bootstrap_servers,
            controller_port=broker.ports.controller,
            sasl_bootstrap_servers=broker.sasl_bootstrap_servers,
            scram_user=scram_user.name if scram else None,
            scram_password=scram_user.password if scram else None,
            scram_mechanisms=SCRAM_MECHANISMS if scram else (),
            properties_path=str(broker.properties_path),
            log_path=str(broker.log_path),
            data_dir=str(folder / "data"),
            started_at=time.time(),
            startup_s=round(broker.startup_s or 0.0, 2),
            ssl_bootstrap_servers=broker.ssl_bootstrap_servers,
            sasl_ssl_bootstrap_servers=broker.sasl_ssl_bootstrap_servers,
            ssl_cafile=None if broker.ca_file is None else str(broker.ca_file),
        )
        tmp = folder / f"{STATE_FILE}.tmp"
        tmp.write_text(state.to_json())
        tmp.replace(folder / STATE_FILE)
        return state, True


def down(
    *, timeout_s: float = procs.STOP_GRACE_S, folder: Path | None = None
) -> tuple[BrokerState | None, bool]:
    """Stop the recorded broker and remove its data (the log stays).

    Returns (state, clean): state is None when no broker was recorded; clean is False when it
    had to be killed after ``timeout_s`` seconds.
    """
    folder = folder or state_dir()
    with _locked(folder):
        state = read_state(folder)
        clean = True
        if state is not None and state.running:
            clean = procs.stop_pid(state.pid, timeout_s)
        _forget(folder)
        return state, clean
