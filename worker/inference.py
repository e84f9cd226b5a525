"""What the pipeline needs from a model, without importing torch.

``Runner`` is the interface the source (``tokenize``), the model threads (``classify``) and the
sink (labels, name, version) use. Two classes implement it:

- ``worker.runner.ModelRunner``: the bundle loaded in this process (torch, the device);
- ``worker.procs.remote.RemoteRunner``: a feeder process's view of the model held by the pod's
  model process (``TAGSTREAM_PROCESSES`` > 1): tokenizes here, classifies through shared memory.

``ModelHost`` is where the worker gets its runner from, and how it learns of reloaded bundles:
``worker.local_model.LocalModel`` (load, warm up and watch the bundle here) or
``worker.procs.remote.ModelLink`` (the model process does all three). A feeder never imports
torch: a process with torch loaded costs ~275 MB more memory and seconds more to start.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from worker.reload import RunnerSlot
    from worker.telemetry import Metrics


InputId = tuple[str, int, int]  # an input's topic, partition and offset


@dataclass(frozen=True)
class Classified:
    """One batch's answers, as plain Python lists (one host copy per batch)."""

    top_indices: list[list[int]]  # (B, k) label indices, most probable first
    top_scores: list[list[float]]  # (B, k) their probabilities
    seconds: float  # wall time of the model call, padding and copies included
    windows: list[int] | None = None  # per input, windows read (bundles not reading by head)
    tags: list[list[tuple[int, float]]] | None = None  # multi-label: per input, labels over threshold

    @classmethod
    def join(cls, parts: list[Classified]) -> Classified:
        """One Classified for inputs classified in several calls (e.g. one at a time), in order."""
        def cat(name: str) -> list | None:
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else [x for v in values for x in v]

        return cls(
            [i for p in parts for i in p.top_indices], [s for p in parts for s in p.top_scores],
            sum(p.seconds for p in parts), cat("windows"), cat("tags"),
        )


class Runner(Protocol):
    """A loaded bundle, ready to tokenize texts and classify batches of token ids."""

    name: str
    version: str
    labels: list[str]
    max_length: int
    # Identifies what tokenize() produces: inputs tokenized before a bundle swap are
    # re-tokenized only when the new bundle's tokenizer or max_length differ.
    tokenizer_key: str

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, truncated to max_length, unpadded (one tokenizer call)."""
        ...

    def classify(
        self, token_ids: list[list[int]], *, inputs: Sequence[InputId] = (), alone: bool = False
    ) -> Classified:
        """Top-k labels and probabilities for one batch of tokenized inputs. ``inputs``: which
        records they are, row by row; a runner that serves several feeders (a pod's model process)
        names them to the others if the call stalls, since a rebalance may have given their
        partitions to one of them. ``alone``: the batch is one input to isolate (it was in a stalled
        model call before, or its batch failed and each input is retried by itself); such a runner
        runs it unmerged."""
        ...


class ModelHost(Protocol):
    """Where a worker's runner comes from."""

    @property
    def streams(self) -> int:
        """How many batches the worker should have in the model at once (its model threads)."""
        ...

    def open(self) -> Runner:
        """The runner to start with: loaded, checked against the settings and warmed up.

        Raises WorkerError (BundleLoadError, SettingsError, ...) when there is none to serve."""
        ...

    def watch(
        self, slot: RunnerSlot, metrics: Metrics, stopping: threading.Event
    ) -> Callable[[], None] | None:
        """Arrange for newer bundles to be offered to ``slot``; returns a loop for the worker to
        run on a thread of its own, or None when nothing needs one."""
        ...
