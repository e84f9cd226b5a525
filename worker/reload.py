"""Model updates without a restart: watch the bundle folder, verify in the background, swap between batches.

``BundleWatcher.check`` (run every ``reload_interval_s`` on its own thread) fingerprints the
folder (every file's name, size and mtime; the path is resolved, so a symlink switched to a new
folder counts as a change). A change is looked at once the folder has stayed the same for
``SETTLE_S``: a bundle copied into the served folder one file at a time (``cp``, ``kubectl cp``)
mixes two bundles while the copy runs, and verified then it was refused, logged as an error and
alerted on (TagstreamBundleReloadRefused) although the copy ended well (bench/outsider/reload.sh:
5 refusals for one such copy). Then it verifies and loads the bundle off the hot path,
checks it against the settings, warms it up, and offers it to the ``RunnerSlot``; the inference
stage takes it between two batches. A bundle that fails any step is refused, logged and counted
(``tagstream_bundle_reloads_total{result="refused"}``) while the loaded one keeps serving; it is
retried only when the folder changes again. Results carry the version that produced them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from model.errors import BundleError
from worker.errors import Failure, WorkerError
from worker.inference import Runner
from worker.telemetry import Metrics, get_logger

log = get_logger("tagstream.worker.reload")

Fingerprint = tuple[str, tuple[tuple[str, int, int], ...]]
SETTLE_S = 2.0  # a folder that changed more recently than this is taken to be still being written


class RunnerSlot:
    """The runner serving now, and at most one verified replacement waiting to be swapped in."""

    def __init__(self, runner: Runner) -> None:
        self._lock = threading.Lock()
        self._current = runner
        self._offered: Runner | None = None

    @property
    def current(self) -> Runner:
        return self._current

    def offer(self, runner: Runner) -> None:
        with self._lock:
            self._offered = runner  # a newer offer replaces one not yet taken

    def swap_if_offered(self) -> Runner | None:
        """Make the offered runner current (batcher thread, between batches); return it."""
        if self._offered is None:  # the common case, without the lock
            return None
        with self._lock:
            runner, self._offered = self._offered, None
            if runner is not None:
                self._current = runner
            return runner


class BundleWatcher:
    """Polls the bundle folder and offers verified new bundles to the slot."""

    def __init__(
        self,
        path: Path,
        *,
        slot: RunnerSlot,
        load: Callable[[Path], Runner],
        metrics: Metrics,
        interval_s: float,
        settle_s: float = SETTLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._slot = slot
        self._load = load
        self._metrics = metrics
        self._interval_s = interval_s
        self._settle_s = settle_s
        self._clock = clock
        self._seen = fingerprint(path)
        self._waiting: Fingerprint | None = None
        self._settling: tuple[Fingerprint, float] | None = None  # the folder as last seen changed, and since when

    def run(self, stopping: threading.Event) -> None:
        while not stopping.wait(self._interval_s):
            try:
                self.check()
            except Exception as exc:  # the watcher must never take the worker down
                log.exception("bundle_watch_failed", error=repr(exc))

    def check(self) -> str:
        """Look once: 'unchanged', 'waiting', 'offered' (a new version was loaded) or 'refused'."""
        # Here, not at the top: model.bundle imports torch, which a feeder process never needs.
        from model.bundle import MANIFEST_FILE, read_manifest, verify_bundle

        now = fingerprint(self._path)
        if now == self._seen:
            self._settling = None
            return "unchanged"
        if not self._settled(now):
            return "waiting"
        if not any(name == MANIFEST_FILE for name, _, _ in now[1]):
            # Mid-replacement (write_bundle renames folders) or being copied: look again later.
            if now != self._waiting:
                self._waiting = now
                log.warning("bundle_incomplete", path=str(self._path), detail=f"no {MANIFEST_FILE} yet; waiting")
            return "waiting"
        self._seen = now
        current = self._slot.current.version
        try:
            manifest = read_manifest(self._path)
            version = str(manifest.get("version"))
            if version == current:
                # Same version on disk: make sure it still verifies, but keep the loaded copy.
                verify_bundle(self._path)
                return "unchanged"
            runner = self._load(self._path)
        except (BundleError, WorkerError, OSError, RuntimeError) as exc:
            self._metrics.bundle_reloads.labels(result="refused").inc()
            self._metrics.count_failure(Failure.RELOAD_REFUSED)
            log.error(
                "bundle_refused", path=str(self._path), serving_version=current, error=str(exc),
                action="keeping the loaded bundle; fix or replace the folder to retry",
            )
            return "refused"
        self._slot.offer(runner)
        log.info("bundle_loaded", path=str(self._path), version=runner.version, serving_version=current)
        return "offered"

    def _settled(self, now: Fingerprint) -> bool:
        """Whether the folder has stayed as ``now`` for ``settle_s``; a change restarts the wait."""
        if self._settling is None or self._settling[0] != now:
            if self._settling is None:
                log.info("bundle_changed", path=str(self._path),
                         detail=f"looked at once it has stayed the same for {self._settle_s:g} s")
            self._settling = (now, self._clock())
        return self._clock() - self._settling[1] >= self._settle_s


def fingerprint(path: Path) -> Fingerprint:
    """What changes when the bundle folder does: resolved path, and each file's size and mtime."""
    resolved = os.path.realpath(path)
    entries = []
    try:
        with os.scandir(resolved) as it:
            for entry in it:
                if entry.is_file():
                    st = entry.stat()
                    entries.append((entry.name, st.st_size, st.st_mtime_ns))
    except OSError:
        pass
    return resolved, tuple(sorted(entries))

