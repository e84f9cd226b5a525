"""Hot reload: a new valid bundle is offered and swapped; invalid or half-written ones are not."""

from __future__ import annotations

import shutil

import torch
from structlog.testing import capture_logs
from worker_fakes import Clock
from worker_support import make_tiny_bundle

from worker.reload import BundleWatcher, RunnerSlot
from worker.runner import ModelRunner
from worker.telemetry import Metrics


def load(path):
    return ModelRunner.load(
        path, device=torch.device("cpu"), autocast_dtype=None, max_batch_size=8, max_batch_tokens=256, top_k=2
    )


def setup(tmp_path, settle_s=0.0, clock=None):
    """A watcher on a tiny bundle; by default a change is looked at at once (``settle_s`` 0)."""
    path = make_tiny_bundle(tmp_path / "bundle", seed=1)
    slot = RunnerSlot(load(path))
    metrics = Metrics()
    watcher = BundleWatcher(path, slot=slot, load=load, metrics=metrics, interval_s=1.0, settle_s=settle_s,
                            clock=clock or Clock())
    return path, slot, watcher, metrics


def test_unchanged_folder_does_nothing(tmp_path):
    """Without a change the watcher neither loads nor offers anything."""
    _, slot, watcher, _ = setup(tmp_path)
    assert watcher.check() == "unchanged"
    assert slot.swap_if_offered() is None


def test_new_valid_bundle_is_offered_and_swapped(tmp_path):
    """A new bundle written in place is verified, loaded and swapped in by the slot."""
    path, slot, watcher, _ = setup(tmp_path)
    old = slot.current.version
    make_tiny_bundle(path, seed=2)
    assert watcher.check() == "offered"
    assert slot.current.version == old  # not before the inference stage swaps
    swapped = slot.swap_if_offered()
    assert swapped is not None and swapped.version != old and slot.current is swapped
    assert watcher.check() == "unchanged"


def test_tampered_bundle_is_refused_and_the_old_one_serves(tmp_path):
    """A new bundle that fails verification is refused, logged and counted; the old one stays."""
    path, slot, watcher, metrics = setup(tmp_path)
    old = slot.current
    staged = make_tiny_bundle(tmp_path / "staged", seed=3)
    (staged / "labels.json").write_text('["x", "y", "z"]\n')  # tampered after export
    shutil.rmtree(path)
    shutil.copytree(staged, path)
    with capture_logs() as logs:
        assert watcher.check() == "refused"
    assert slot.swap_if_offered() is None and slot.current is old
    assert metrics.value("tagstream_bundle_reloads_total", {"result": "refused"}) == 1
    assert metrics.value("tagstream_failures_total", {"kind": "reload_refused"}) == 1
    refused = [e for e in logs if e["event"] == "bundle_refused"]
    assert refused and "failed verification" in refused[0]["error"]
    assert watcher.check() == "unchanged"  # not retried until the folder changes again
    make_tiny_bundle(path, seed=4)
    assert watcher.check() == "offered"


def test_bundle_being_copied_is_waited_for(tmp_path):
    """A folder without its manifest yet is neither loaded nor refused: the watcher waits."""
    path, _slot, watcher, metrics = setup(tmp_path)
    (path / "manifest.json").unlink()
    assert watcher.check() == "waiting"
    assert metrics.value("tagstream_bundle_reloads_total", {"result": "refused"}) == 0
    make_tiny_bundle(path, seed=5)
    assert watcher.check() == "offered"


def test_touched_files_of_the_same_version_are_not_reloaded(tmp_path):
    """A folder that changed on disk but still holds the serving version is not reloaded."""
    import os

    path, slot, watcher, _ = setup(tmp_path)
    os.utime(path / "metrics.json", ns=(1, 1))
    assert watcher.check() == "unchanged"
    assert slot.swap_if_offered() is None


def test_a_bundle_copied_in_place_file_by_file_is_looked_at_only_once_the_copy_has_settled(tmp_path):
    """Mid-copy the folder mixes two bundles; verified then, it was refused (an error and an alert) although
    the copy ended well. Each change restarts the wait; the folder as it settles is offered, nothing refused."""
    clock = Clock()
    path, slot, watcher, metrics = setup(tmp_path, settle_s=2.0, clock=clock)
    old = slot.current.version
    staged = make_tiny_bundle(tmp_path / "staged", seed=6)
    for name in ("model.ts", "config.json", "labels.json", "manifest.json"):  # the rest later
        shutil.copy(staged / name, path / name)
        assert watcher.check() == "waiting"
        clock.now += 1.0
        assert watcher.check() == "waiting"  # changed 1 s ago: still being written
    for name in sorted(p.name for p in staged.iterdir()):
        shutil.copy(staged / name, path / name)
    clock.now += 1.0
    assert watcher.check() == "waiting"
    clock.now += 2.0
    assert watcher.check() == "offered"
    assert metrics.value("tagstream_bundle_reloads_total", {"result": "refused"}) == 0
    swapped = slot.swap_if_offered()
    assert swapped is not None and swapped.version != old


def test_a_tampered_bundle_that_settles_is_still_refused(tmp_path):
    clock = Clock()
    path, slot, watcher, metrics = setup(tmp_path, settle_s=2.0, clock=clock)
    (path / "model.ts").write_bytes((path / "model.ts").read_bytes() + b"x")
    (path / "manifest.json").write_text((path / "manifest.json").read_text().replace('"version": "', '"version": "t'))
    assert watcher.check() == "waiting"
    clock.now += 2.0
    assert watcher.check() == "refused"
    assert metrics.value("tagstream_bundle_reloads_total", {"result": "refused"}) == 1
    assert slot.swap_if_offered() is None  # the loaded bundle keeps serving
    clock.now += 10.0
    assert watcher.check() == "unchanged"  # refused once, not again until the folder changes
