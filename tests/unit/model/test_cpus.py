"""CPU budget from the affinity mask and a fake cgroup tree (v2 cpu.max, v1 cfs quota)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.cpus import available_cpus


def cgroup_v2(root: Path, cpu_max: str | None, own: str = "/", nested: dict[str, str] | None = None) -> Path:
    """A fake cgroup v2 mount at ``root`` and a /proc/self/cgroup naming ``own``; returns the latter."""
    root.mkdir(parents=True, exist_ok=True)
    if cpu_max is not None:
        (root / "cpu.max").write_text(cpu_max + "\n")
    for path, value in (nested or {}).items():
        folder = root / path.strip("/")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpu.max").write_text(value + "\n")
    proc = root.parent / "proc-self-cgroup"
    proc.write_text(f"0::{own}\n")
    return proc


@pytest.mark.parametrize(
    ("cpu_max", "affinity", "expected"),
    [
        ("200000 100000", 64, 2),  # a 2-CPU limit on a 64-core node
        ("150000 100000", 64, 2),  # 1.5 CPUs round up
        ("50000 100000", 64, 1),  # half a CPU: still one thread
        ("max 100000", 8, 8),  # no limit: the affinity mask decides
        ("800000 100000", 4, 4),  # a limit above the pinned cores: the mask decides
    ],
)
def test_cgroup_v2_quota_and_affinity(tmp_path: Path, cpu_max: str, affinity: int, expected: int) -> None:
    """The thread count is min(affinity, ceil(quota / period)), at least 1."""
    proc = cgroup_v2(tmp_path / "cgroup", cpu_max)
    budget = available_cpus(tmp_path / "cgroup", proc, affinity=affinity)
    assert budget.count == expected
    assert budget.affinity == affinity


def test_limit_reason_names_the_file_and_the_rounding(tmp_path: Path) -> None:
    """The log sentence says the limit, the file it came from and the affinity it undercuts."""
    proc = cgroup_v2(tmp_path / "cgroup", "150000 100000")
    budget = available_cpus(tmp_path / "cgroup", proc, affinity=64)
    assert budget.quota == 1.5
    assert "1.5" in budget.reason and "cpu.max" in budget.reason and "64" in budget.reason


def test_no_limit_reason_says_so(tmp_path: Path) -> None:
    """Without a quota the reason says the affinity mask decided."""
    proc = cgroup_v2(tmp_path / "cgroup", "max 100000")
    budget = available_cpus(tmp_path / "cgroup", proc, affinity=3)
    assert budget.quota is None and budget.count == 3
    assert "no cgroup CPU limit" in budget.reason


def test_the_tightest_limit_among_ancestors_wins(tmp_path: Path) -> None:
    """A pod-level limit on a parent cgroup binds a container cgroup without its own limit."""
    proc = cgroup_v2(
        tmp_path / "cgroup", None, own="/kubepods/pod1/ctr",
        nested={"/kubepods/pod1": "300000 100000", "/kubepods/pod1/ctr": "max 100000"},
    )
    budget = available_cpus(tmp_path / "cgroup", proc, affinity=32)
    assert budget.count == 3
    assert budget.source.endswith("pod1/cpu.max")


def test_cgroup_v1_quota_is_the_fallback(tmp_path: Path) -> None:
    """With no cpu.max, cgroup v1's cpu.cfs_quota_us / cpu.cfs_period_us give the limit."""
    root = tmp_path / "cgroup"
    cpu = root / "cpu,cpuacct"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("250000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")  # path absent under the mount
    budget = available_cpus(root, proc, affinity=16)
    assert budget.count == 3 and budget.quota == 2.5


def test_cgroup_v1_unlimited_quota(tmp_path: Path) -> None:
    """cfs_quota_us -1 means no limit."""
    cpu = tmp_path / "cgroup" / "cpu"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("1:cpu:/\n")
    assert available_cpus(tmp_path / "cgroup", proc, affinity=6).count == 6


def test_missing_cgroup_files_fall_back_to_the_affinity(tmp_path: Path) -> None:
    """No cgroup mount at all (not Linux, or no access): the affinity mask alone."""
    budget = available_cpus(tmp_path / "nothing", tmp_path / "no-proc", affinity=5)
    assert budget.count == 5 and budget.quota is None

