"""Stopping broker processes cleanly, and the watchdog that stops an orphaned one.

Standard library only: besides being imported, this file is run as a script by
``LocalKafka.start`` (``python procs.py PID MARKER RUN_DIR``) to watch over a broker whose starter
may die without stopping it (a test session killed with SIGKILL, a crashed notebook). The
watchdog blocks reading its stdin, a pipe whose only writer is the starter:

- the starter stops the broker itself, then writes ``stopped`` and closes the pipe: nothing to do;
- the starter dies: the pipe closes with nothing written, and the watchdog stops the broker
  (SIGTERM, then SIGKILL after a grace period) and removes the broker's run folder.

The watchdog runs in its own session, so a Ctrl-C meant for the starter does not reach it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

STOPPED = b"stopped"
# Kafka's controlled shutdown of a single node takes 1-3 s; past this it is stuck, so SIGKILL.
STOP_GRACE_S = 30.0
_POLL_S = 0.05


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (zombies, which are only waiting to be reaped, are not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    state = process_state(pid)
    return state != "Z"  # None: no /proc (macOS): trust kill(0)


def process_state(pid: int) -> str | None:
    """``pid``'s state letter from /proc (R, S, T for stopped, Z, ...); None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[0]


def cmdline_contains(pid: int, marker: str) -> bool:
    """Whether ``pid``'s command line contains ``marker``: a guard against a reused pid."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc: cannot tell, assume it is ours
    return marker.encode() in raw


def wait_exit(pid: int, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``pid`` to exit; True when it has."""
    deadline = time.monotonic() + timeout_s
    while is_running(pid):
        if time.monotonic() >= deadline:
            return False
        _reap(pid)
        time.sleep(_POLL_S)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # only our own children can be reaped
        os.waitpid(pid, os.WNOHANG)


def stop_pid(pid: int, grace_s: float = STOP_GRACE_S) -> bool:
    """SIGTERM ``pid``, wait ``grace_s`` for its clean shutdown, then SIGKILL.

    Returns True when it exited cleanly within the grace period, False when it had to be killed.
    """
    try:
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)  # a frozen (SIGSTOPped) broker handles SIGTERM only once resumed
    except ProcessLookupError:
        return True
    if wait_exit(pid, grace_s):
        return True
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    wait_exit(pid, 10.0)
    return False


def watch(pid: int, marker: str, run_dir: str) -> int:
    """The watchdog's body (see the module docstring)."""
    message = sys.stdin.buffer.read()  # returns when the starter closes the pipe or dies
    if message.startswith(STOPPED):
        return 0
    if is_running(pid) and cmdline_contains(pid, marker):
        stop_pid(pid)
    if run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(watch(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""))
