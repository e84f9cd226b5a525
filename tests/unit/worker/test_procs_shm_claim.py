"""A pod's claim on its shared memory: segments of pods killed whole are reclaimed, live pods' never."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from worker.procs.plan import SHM_DIR
from worker.procs.shm_claim import LOCK_SUFFIX, PREFIX, ShmClaim, reclaim_dead

# A stand-in supervisor: takes a claim, makes its segments (real shared memory in /dev/shm, or plain
# files elsewhere), says its token, and waits to be killed.
POD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from worker.procs.shm_claim import ShmClaim
    from worker.procs.transport import Channel, SlotShape
    shm_dir, segments, run_root = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[4])
    claim = ShmClaim.take(shm_dir, run_root)
    (claim.make_run_dir() / "model.sock").write_bytes(b"")
    channels = []
    for i in range(segments):
        if sys.argv[3] == "shm":
            channels.append(Channel.create(SlotShape(rows=4, tokens=64, k=2), 2, claim.segment_name(i)))
        else:
            (shm_dir / claim.segment_name(i)).write_bytes(b"x" * 1000)
    print(claim.token, flush=True)
    time.sleep(600)
    """
)


def pod_killed_whole(shm_dir: Path, segments: int, run_root: Path, kind: str = "files") -> str:
    """Run the stand-in in a process group of its own and SIGKILL the whole group (as the kubelet or
    the OOM killer end a container: its helper processes too); its token."""
    proc = subprocess.Popen([sys.executable, "-c", POD, str(shm_dir), str(segments), kind, str(run_root)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    token = proc.stdout.readline().strip()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert token, "the stand-in pod did not start"
    return token


def owned(shm_dir: Path, token: str) -> list[str]:
    return sorted(p.name for p in shm_dir.iterdir() if p.name.startswith(f"{PREFIX}{token}"))


def test_a_dead_pods_segments_are_reclaimed_at_the_next_start_and_a_live_pods_are_not(tmp_path):
    """A claim whose owner was SIGKILLed is removed, lock file, segments and run folder; a live claim
    stays whole."""
    shm, run = tmp_path / "shm", tmp_path / "run"
    shm.mkdir(), run.mkdir()
    live = ShmClaim.take(shm, run)
    (shm / live.segment_name(0)).write_bytes(b"live")
    live.make_run_dir()
    dead = pod_killed_whole(shm, segments=3, run_root=run)
    assert owned(shm, dead) == [f"{PREFIX}{dead}-f0", f"{PREFIX}{dead}-f1", f"{PREFIX}{dead}-f2",
                                f"{PREFIX}{dead}{LOCK_SUFFIX}"]
    assert owned(run, dead) == [f"{PREFIX}{dead}"]

    reclaimed = reclaim_dead(shm, run)
    assert (reclaimed.claims, reclaimed.segments, reclaimed.bytes) == (1, 3, 3000)
    assert owned(shm, dead) == [] and owned(run, dead) == []
    assert owned(shm, live.token) == [f"{PREFIX}{live.token}-f0", f"{PREFIX}{live.token}{LOCK_SUFFIX}"]
    assert owned(run, live.token) == [f"{PREFIX}{live.token}"]
    assert reclaim_dead(shm, run).claims == 0  # nothing else to do

    live.release()
    assert owned(shm, live.token) == [f"{PREFIX}{live.token}-f0"]  # the segment is the pod's to unlink
    assert owned(run, live.token) == []


def test_taking_a_claim_reclaims_first_and_names_segments_by_the_claim(tmp_path):
    shm, run = tmp_path / "shm", tmp_path / "run"
    shm.mkdir(), run.mkdir()
    dead = pod_killed_whole(shm, segments=1, run_root=run)
    claim = ShmClaim.take(shm, run)
    assert owned(shm, dead) == [] and owned(run, dead) == []
    assert claim.token != dead and claim.segment_name(2) == f"{PREFIX}{claim.token}-f2"
    claim.release()
    assert list(shm.iterdir()) == [] and list(run.iterdir()) == []


@pytest.mark.skipif(not SHM_DIR.is_dir(), reason="no /dev/shm folder (not Linux)")
def test_real_shared_memory_of_a_pod_killed_whole_is_left_behind_then_reclaimed(tmp_path):
    """With POSIX shared memory in /dev/shm, as a pod's slots are: the segments of a process group
    killed at once (no clean-up ran, nor multiprocessing's resource tracker) stay until the next claim."""
    dead = pod_killed_whole(SHM_DIR, segments=2, run_root=tmp_path, kind="shm")
    assert owned(SHM_DIR, dead) == [f"{PREFIX}{dead}-f0", f"{PREFIX}{dead}-f1", f"{PREFIX}{dead}{LOCK_SUFFIX}"]
    claim = ShmClaim.take(SHM_DIR, tmp_path)
    try:
        assert owned(SHM_DIR, dead) == []
    finally:
        claim.release()
    assert owned(SHM_DIR, claim.token) == []


def test_a_claim_that_cannot_be_opened_is_left_alone_and_a_lock_that_cannot_be_made_does_not_stop_the_pod(
    tmp_path, monkeypatch
):
    """Another user's claim (a lock file this process may not open) is skipped, not an error; where no
    lock file can be made, the pod still gets its names, unclaimed."""
    import worker.procs.shm_claim as shm_claim

    shm, run = tmp_path / "shm", tmp_path / "run"
    shm.mkdir(), run.mkdir()
    foreign = pod_killed_whole(shm, segments=1, run_root=run)
    real_open = os.open

    def refusing(path, flags, *args):
        if str(path).endswith(f"{foreign}{LOCK_SUFFIX}") or str(path).endswith(".new"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(shm_claim.os, "open", refusing)
    claim = ShmClaim.take(shm, run)  # reclaims nothing it may not open, and makes no lock of its own
    assert owned(shm, foreign) == [f"{PREFIX}{foreign}-f0", f"{PREFIX}{foreign}{LOCK_SUFFIX}"]
    assert owned(shm, claim.token) == [] and claim.segment_name(0).startswith(f"{PREFIX}{claim.token}")
    claim.release()
