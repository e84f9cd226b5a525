"""The cyclic garbage collector and the hot path: the heap a worker starts with is left out of its scans.

Every event allocates a few container objects (its parsed JSON, an Event, a list of token ids)
that live for some milliseconds: long enough to survive young collections and be promoted to the
oldest generation. CPython then runs a full collection whenever the promoted objects reach a
quarter of that generation, and a full collection walks every tracked object of the process:
torch, the bundle, the Kafka client, hundreds of thousands of objects that live as long as it
does. ``gc.freeze()`` moves everything alive at that moment into a permanent generation that no
collection visits; objects made later are collected as before. Measured with
``bench/kafka_path_bench.py`` (null bundle, 50,000 events): the parse stage, where most of those
collections landed, went from 3.7-10.7 to 1.8-1.9 µs an event, and the worker's CPU per event
from 106-110 to 94-95 µs with kafka-python (the collector switched off altogether: 91-93).

Freezing keeps reference cycles among the frozen objects from being collected. A bundle swap
makes the old model garbage, and whatever of it sits in cycles must be collectable, so a swap
thaws the heap (``thaw``); it is frozen again ``REFREEZE_AFTER_S`` later (``tick``), when the old
bundle's last batches are long done, after one full collection.
"""

from __future__ import annotations

import gc
import time

from worker.telemetry import get_logger

log = get_logger("tagstream.worker.heap")

REFREEZE_AFTER_S = 60.0


class HeapFreezer:
    """Freezes the heap once the worker is ready; thaws it for a bundle swap, then freezes again."""

    def __init__(self, refreeze_after_s: float = REFREEZE_AFTER_S) -> None:
        self._refreeze_after_s = refreeze_after_s
        self._refreeze_at: float | None = None

    def freeze(self, why: str = "ready", full: bool = False) -> None:
        """Collect the young garbage (``full``: all of it), then leave everything alive out of later
        collections.

        At start-up a young collection is enough: the start-up's temporaries are young, and a full
        one walks the whole heap, torch included, which took 0.1-0.3 s in a worker and 2 s and more
        in a test process (the suite starts about a hundred workers in-process). What old garbage
        is frozen with the rest stays allocated until a thaw: a bounded, one-time amount. After a
        bundle swap the old model is old garbage, so that refreeze collects fully."""
        started = time.perf_counter()
        gc.collect(2 if full else 1)
        gc.freeze()
        self._refreeze_at = None
        log.info("heap_frozen", why=why, objects=gc.get_freeze_count(),
                 ms=round((time.perf_counter() - started) * 1000, 1))

    def thaw(self, now: float) -> None:
        """A bundle swap: let collections see the whole heap again until ``tick`` refreezes it."""
        gc.unfreeze()
        self._refreeze_at = now + self._refreeze_after_s

    def tick(self, now: float) -> None:
        """Called often (the batcher's loop): refreezes once the time after a thaw has passed."""
        if self._refreeze_at is not None and now >= self._refreeze_at:
            self.freeze("bundle swapped", full=True)

    def release(self) -> None:
        """The worker has stopped: collections see the whole heap again (a test process runs many)."""
        gc.unfreeze()
        self._refreeze_at = None
