"""How many CPUs this process may really use: the affinity mask and the cgroup CPU quota.

``os.cpu_count()`` counts the node's cores. In a container that is wrong twice over: the pod
may be pinned to a few cores (affinity, e.g. the kubelet's static CPU manager), and it is
throttled to its CPU limit by the cgroup quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us`` in v1) however many cores it sees. A 2-CPU pod on a 64-core node that
starts 64 intra-op threads spends its quota in a few milliseconds per period and then stalls:
two 2-thread torch processes sharing 2 cores ran 10-25x slower than one alone here.

``available_cpus()`` returns the smaller of the two, with the quota rounded up
(``ceil(quota / period)``, at least 1: the JVM's and Go's container support round the same
way, so a 1.5-CPU limit gets 2 threads that together stay within it most of the time), and a
sentence saying where the number came from, for the log.

Standard library only: both the worker and the training CLI import it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 mounts the cpu controller under one of these names, depending on the distribution.
_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs this process may use and why."""

    count: int  # threads to run: min(affinity, ceil(quota)), at least 1
    affinity: int  # CPUs in the affinity mask (os.cpu_count() where there is no mask)
    quota: float | None  # the cgroup CPU limit in CPUs (quota / period); None: no limit
    source: str  # the file the quota came from, or "" without one

    @property
    def reason(self) -> str:
        """One sentence for the log: what was chosen and why."""
        if self.quota is None:
            return f"{self.count} CPU(s) in the affinity mask; no cgroup CPU limit"
        if self.count < self.affinity:
            return (
                f"cgroup CPU limit {self.quota:g} ({self.source}) rounded up to {self.count},"
                f" below the {self.affinity} CPU(s) in the affinity mask"
            )
        return (
            f"{self.affinity} CPU(s) in the affinity mask, within the cgroup CPU limit"
            f" {self.quota:g} ({self.source})"
        )


def available_cpus(
    cgroup_root: Path = CGROUP_ROOT,
    proc_self_cgroup: Path = PROC_SELF_CGROUP,
    affinity: int | None = None,
) -> CpuBudget:
    """The CPUs this process may use: affinity mask and cgroup quota (paths are for tests)."""
    if affinity is None:
        affinity = _affinity()
    quota, source = cgroup_cpu_limit(cgroup_root, proc_self_cgroup)
    count = affinity if quota is None else min(affinity, max(1, math.ceil(quota)))
    return CpuBudget(max(1, count), affinity, quota, source)


def cgroup_cpu_limit(
    cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP
) -> tuple[float | None, str]:
    """(the tightest CPU limit over this process's cgroup and its ancestors, the file it is in).

    Looks at the process's own cgroup (from ``/proc/self/cgroup``) and every ancestor up to the
    mount point, because a limit set on a parent (the pod) binds a child (the container) too.
    Inside a container with its own cgroup namespace the mount point *is* the container's
    cgroup; without one the path from ``/proc/self/cgroup`` may not exist under the mount, and
    the mount point's own files are used. (None, "") when no file sets a limit.
    """
    paths = _own_cgroup_paths(proc_self_cgroup)
    best: tuple[float | None, str] = (None, "")
    for directory in _candidates(cgroup_root, paths.get("v2", "/")):
        limit = _read_v2(directory / "cpu.max")
        if limit is not None and (best[0] is None or limit < best[0]):
            best = (limit, str(directory / "cpu.max"))
    if best[0] is not None:
        return best
    for name in _V1_CPU_DIRS:
        mount = cgroup_root / name
        for directory in _candidates(mount, paths.get(name, "/")):
            limit = _read_v1(directory)
            if limit is not None and (best[0] is None or limit < best[0]):
                best = (limit, str(directory / "cpu.cfs_quota_us"))
    return best


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _own_cgroup_paths(proc_self_cgroup: Path) -> dict[str, str]:
    """{"v2": path} and {controller list: path} for v1, from lines like ``0::/kubepods/...``."""
    try:
        text = proc_self_cgroup.read_text()
    except OSError:
        return {}
    paths: dict[str, str] = {}
    for line in text.splitlines():
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if not controllers:
            paths["v2"] = path or "/"
        else:
            paths[controllers] = path or "/"
    return paths


def _candidates(mount: Path, own: str) -> list[Path]:
    """The process's cgroup folder under ``mount`` and its ancestors, then the mount point."""
    found = []
    parts = [p for p in own.strip("/").split("/") if p and p != ".."]
    for depth in range(len(parts), 0, -1):
        directory = mount.joinpath(*parts[:depth])
        if directory.is_dir():
            found.append(directory)
    found.append(mount)
    return found


def _read_v2(path: Path) -> float | None:
    """``cpu.max`` holds "QUOTA PERIOD" in microseconds, or "max PERIOD" for no limit."""
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    if len(fields) < 1 or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read_v1(directory: Path) -> float | None:
    """``cpu.cfs_quota_us`` (-1 for no limit) over ``cpu.cfs_period_us``."""
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text().strip())
        period = int((directory / "cpu.cfs_period_us").read_text().strip())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
