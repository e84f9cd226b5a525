"""Ports on 127.0.0.1 for the local broker: checking a requested one, picking free ones.

Picked ports lie *below the kernel's ephemeral range* (``ip_local_port_range``, usually
32768-60999). The kernel hands ephemeral ports to outgoing connections; while a broker is down
for a restart, its clients keep reconnecting, and one of them could be given the broker's own
listener port as its local port (or even connect to itself), so the broker could not bind it
again. Ports outside that range are only ever taken by a program asking for that exact port.
"""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack
from pathlib import Path

from localkafka.errors import PortInUseError

HOST = "127.0.0.1"
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
IANA_EPHEMERAL_RANGE = (49152, 65535)  # macOS and the BSDs, when /proc is absent
# Picked ports start here: above the fixed ports of common services (Kafka 9092-9095,
# Prometheus 9090-9100, ...), so a picked port is rarely one a person is about to start.
LOW_PORT_FLOOR = 20000
MIN_CANDIDATES = 1000  # below this many candidates, let the kernel choose (bind to port 0)
PICK_TRIES = 200  # random candidates tried per port before giving up (taken ones are rare)

_rng = random.Random()  # own instance: tests that seed `random` must not make sessions collide


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # The JVM binds with SO_REUSEADDR too, so a port left in TIME_WAIT by a previous broker is
    # usable by it and must not count as taken here.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        raise
    return sock


def port_is_free(port: int) -> bool:
    """Whether a listener could bind ``127.0.0.1:port`` right now."""
    try:
        _bind(port).close()
    except OSError:
        return False
    return True


def check_port_free(port: int, role: str, option: str) -> None:
    """Raise PortInUseError, naming the option that changes it, when ``port`` is taken."""
    if not 0 < port < 65536:
        raise PortInUseError(f"{option} {port} is not a TCP port (1-65535)")
    if not port_is_free(port):
        raise PortInUseError(
            f"port {port} on {HOST} ({role}) is already in use: stop what listens there "
            f"(a broker from `tagstream-worker kafka up`? run `tagstream-worker kafka down`) "
            f"or choose another port with {option}"
        )


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (inclusive)."""
    try:
        low, high = (int(x) for x in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return IANA_EPHEMERAL_RANGE
    return low, high


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free now, below the ephemeral range when it leaves room.

    Another process may still take one before the broker binds it; ``LocalKafka.start`` retries.
    """
    low, _ = ephemeral_range()
    with ExitStack() as stack:
        if low - LOW_PORT_FLOOR < MIN_CANDIDATES:
            socks = [stack.enter_context(_bind(0)) for _ in range(count)]
            return [s.getsockname()[1] for s in socks]
        ports: list[int] = []
        for _ in range(count):
            for _ in range(PICK_TRIES):
                port = _rng.randrange(LOW_PORT_FLOOR, low)
                if port in ports:
                    continue
                try:
                    stack.enter_context(_bind(port))  # held until all are picked: distinct
                except OSError:
                    continue
                ports.append(port)
                break
            else:
                raise PortInUseError(
                    f"no free port found on {HOST} between {LOW_PORT_FLOOR} and {low - 1} "
                    f"after {PICK_TRIES} tries"
                )
        return ports
