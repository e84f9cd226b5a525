"""Ports on 127.0.0.1 for the local broker: checking a requested one, picking free ones."""

from __future__ import annotations

import socket
from contextlib import ExitStack

from localkafka.errors import PortInUseError

HOST = "127.0.0.1"


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


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free now (another process may still take one later)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(_bind(0)) for _ in range(count)]
        return [s.getsockname()[1] for s in socks]
