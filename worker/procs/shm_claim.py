"""Whose shared memory is whose: a pod claims its segments' names, and reclaims those of dead pods.

A pod's feeder slots are POSIX shared memory (transport.py), files in /dev/shm that outlive the
processes that made them. The supervisor removes them as it stops, but a pod killed whole (the
kubelet's SIGKILL after a failed liveness probe or the grace period, the OOM killer, which kills
every process of a container under cgroup v2) removes nothing. Kubernetes keeps a pod's /dev/shm
across its container's restarts (kubernetes/kubernetes#81001), so each such death left 2 slots per
feeder behind (4.3 MB with the GPU overlay's settings), counted against the pod's memory; once the
default 64 MB /dev/shm was full, every later start was refused for want of shared memory.

So each supervisor takes a claim first: a lock file ``tagstream-<token>.lock`` in /dev/shm, created
under a temporary name, locked (``flock``) and only then renamed into place, so that no other
process ever sees it unlocked while its owner lives. Its segments are named ``tagstream-<token>-…``.
The kernel drops the lock when the supervisor dies, however it dies. At start, before its own
claim, a supervisor reclaims every claim whose lock it can take: that pod is dead, and its lock
file and segments are removed. A claim whose lock is held belongs to a live pod (another container
of the same Kubernetes pod, or another pod on a development machine) and is left alone.

The pod's run folder (the model process's socket) is ``<tmp>/tagstream-<token>``, reclaimed with
the claim: the Kubernetes manifests' /tmp is an emptyDir, which outlives restarts too.

Where /dev/shm is not a folder (not Linux), segments keep random names and nothing is reclaimed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from worker.telemetry import get_logger

log = get_logger("tagstream.worker.supervisor")

PREFIX = "tagstream-"
LOCK_SUFFIX = ".lock"


@dataclass(frozen=True)
class Reclaimed:
    """What a dead pod had left in /dev/shm, now removed."""

    claims: int
    segments: int
    bytes: int


class ShmClaim:
    """This pod's claim on a name in /dev/shm (see the module docstring); ``release`` at the end."""

    def __init__(self, token: str, shm_dir: Path, fd: int | None, run_root: Path) -> None:
        self.token = token
        self._shm_dir = shm_dir
        self._fd = fd  # the open, locked lock file (None where /dev/shm is not a folder)
        self.run_dir = run_root / f"{PREFIX}{token}"  # made by make_run_dir, removed by release

    @classmethod
    def take(cls, shm_dir: Path, run_root: Path | None = None) -> ShmClaim:
        """Reclaim dead pods' segments and run folders, then claim a new name for this pod's."""
        token = secrets.token_hex(6)
        run_root = Path(tempfile.gettempdir()) if run_root is None else run_root
        if not shm_dir.is_dir():
            return cls(token, shm_dir, None, run_root)
        reclaimed = reclaim_dead(shm_dir, run_root)
        if reclaimed.claims:
            log.warning(
                "shared_memory_reclaimed", pods=reclaimed.claims, segments=reclaimed.segments,
                mib=round(reclaimed.bytes / 2**20, 1),
                why="left by pods killed whole (SIGKILL, the OOM killer) before they could remove them",
            )
        scratch = shm_dir / f".{PREFIX}{token}{LOCK_SUFFIX}.new"
        try:
            fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:  # the segments may still be possible: a claim never stops the pod
            log.warning("shared_memory_unclaimed", folder=str(shm_dir), error=str(exc),
                        why="no lock file: a pod killed whole will leave its segments for good")
            return cls(token, shm_dir, None, run_root)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(scratch, shm_dir / f"{PREFIX}{token}{LOCK_SUFFIX}")  # seen by others only once locked
        return cls(token, shm_dir, fd, run_root)

    def make_run_dir(self) -> Path:
        """This pod's private run folder (the model process's socket)."""
        self.run_dir.mkdir(mode=0o700)
        return self.run_dir

    def segment_name(self, index: int) -> str:
        """The shared-memory name of this pod's ``index``-th segment."""
        return f"{PREFIX}{self.token}-f{index}"

    def release(self) -> None:
        """At the end, once the segments are removed: the run folder and the lock file go, then the lock."""
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self._shm_dir / f"{PREFIX}{self.token}{LOCK_SUFFIX}").unlink()
        os.close(self._fd)
        self._fd = None


def reclaim_dead(shm_dir: Path, run_root: Path | None = None) -> Reclaimed:
    """Remove the lock files, segments and run folders of every claim whose lock nobody holds."""
    claims = segments = size = 0
    for lock in sorted(shm_dir.glob(f"{PREFIX}*{LOCK_SUFFIX}")):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue  # its owner released it meanwhile, or it is another user's
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live pod's
            token = lock.name[len(PREFIX) : -len(LOCK_SUFFIX)]
            for segment in shm_dir.glob(f"{PREFIX}{token}-*"):
                with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
                    held = segment.stat().st_size
                    segment.unlink()
                    size, segments = size + held, segments + 1
            if run_root is not None:
                shutil.rmtree(run_root / f"{PREFIX}{token}", ignore_errors=True)
            with contextlib.suppress(OSError):
                lock.unlink()
            claims += 1
        finally:
            os.close(fd)
    return Reclaimed(claims, segments, size)
