"""The model in the worker's own process (``TAGSTREAM_PROCESSES=1``, the default).

``LocalModel.open`` turns the settings into a device, a compute precision, inference streams
and threads; caps malloc's arenas; loads and verifies the bundle, checks the settings against it
and warms it up at the largest batch. ``watch`` returns the bundle watcher's loop (hot reload),
which loads and warms each new version off the hot path (worker/reload.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.allocator import tune_allocator
from worker.errors import BundleLoadError
from worker.procs.transport import MAX_POD_LABELS
from worker.reload import BundleWatcher, RunnerSlot
from worker.runner import (
    ModelRunner,
    configure_threads,
    resolve_device,
    resolve_dtype,
    resolve_streams,
)
from worker.settings import WorkerSettings, check_against_bundle
from worker.telemetry import Metrics, get_logger

log = get_logger("tagstream.worker")


def check_pod_serves(runner: ModelRunner) -> None:
    """BundleLoadError unless feeder processes can serve ``runner``'s bundle: a bundle that is not
    plain sends every label's probability for each window through shared memory (transport.py)."""
    if not runner.plain and len(runner.labels) > MAX_POD_LABELS:
        kind = "multi-label" if runner.multi_label else f"read by {runner.truncation.strategy}"
        raise BundleLoadError(
            f"bundle {runner.name} {runner.version} is {kind} with {len(runner.labels)} labels: feeder processes"
            f" (TAGSTREAM_PROCESSES > 1) receive every label's probability for such a bundle's windows, for at"
            f" most {MAX_POD_LABELS} labels; run this bundle with TAGSTREAM_PROCESSES=1"
        )


class LocalModel:
    """Loads the bundle here; see the module docstring."""

    def __init__(self, settings: WorkerSettings, *, in_pod: bool = False) -> None:
        self.settings = settings
        # The model process of feeder processes (worker/procs/) answers through fixed-shape shared
        # memory: a bundle that is not plain fits it up to MAX_POD_LABELS labels (transport.py).
        self.in_pod = in_pod
        self.device: Any = None
        self.dtype: Any = None
        self._streams = 1

    @property
    def streams(self) -> int:
        return self._streams

    def open(self) -> ModelRunner:
        s = self.settings
        self.device = resolve_device(s.device)
        self.dtype = resolve_dtype(s.dtype, self.device)
        self._streams, per_stream = resolve_streams(s.inference_streams, self.device, s.threads)
        threads = configure_threads(per_stream)
        allocator = tune_allocator()  # before the model allocates anything
        runner = self.load(s.bundle_path)
        warm_s = runner.warm_up()
        log.info(
            "model_ready", name=runner.name, version=runner.version, labels=runner.labels, device=str(self.device),
            dtype=str(self.dtype or "float32"), streams=self._streams, threads_per_stream=threads,
            warm_up_s=round(warm_s, 3), warm_up_shapes=runner.warm_up_shapes, allocator=allocator,
            cuda_graphs=len(runner.buckets.shapes) if runner.buckets is not None else 0,
            tokenizer=runner.head_tokenizer.engine, fast_tokenizer_off=runner.head_tokenizer.why_not_flash or None,
        )
        return runner

    def load(self, path: Path) -> ModelRunner:
        """Load and verify the bundle at ``path`` and check the settings against it (not warmed up)."""
        s = self.settings
        runner = ModelRunner.load(
            path, device=self.device, autocast_dtype=self.dtype, max_batch_size=s.max_batch_size,
            max_batch_tokens=s.max_batch_tokens, top_k=s.top_k, fast_tokenizer=s.fast_tokenizer,
            cuda_graphs=s.cuda_graphs,
        )
        check_against_bundle(s, labels=runner.labels, max_length=runner.max_length)
        if self.in_pod:
            check_pod_serves(runner)
        return runner

    def load_and_warm(self, path: Path) -> ModelRunner:
        runner = self.load(path)
        runner.warm_up()
        return runner

    def watch(self, slot: RunnerSlot, metrics: Metrics, stopping: threading.Event) -> Callable[[], None] | None:
        if self.settings.reload_interval_s <= 0:
            return None
        watcher = BundleWatcher(
            self.settings.bundle_path, slot=slot, metrics=metrics, interval_s=self.settings.reload_interval_s,
            load=self.load_and_warm,
        )
        return lambda: watcher.run(stopping)
