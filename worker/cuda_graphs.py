"""The model's forward pass at fixed (rows, length) bucket shapes, and on a GPU as CUDA graphs.

Why: on an H200 a MiniLM-sized encoder computes a 64-row batch in a fraction of a millisecond, but
launching its ~100 kernels one by one (the TorchScript interpreter, the dispatcher and autocast in
front of each) took ~2.5 ms a call, whatever the batch (bench/gpu_bench.py, 2026-12-04: 24,000
texts/s at 64 rows, 56,000 at 256). A CUDA graph replays every kernel of a captured call with one
launch. Graphs need fixed shapes and addresses, so a batch is padded up to the nearest bucket:

    rows    on a ladder of powers of two and the halves between them (1, 2, 3, 4, 6, 8, 12, ...,
            max_batch_size): at most a third more rows than asked for
    length  up to the next multiple of 16 (or max_length)

A padding row is one [PAD] token with its mask set (an all-masked row would give NaN in attention);
its answer is dropped. Buckets that the batch limits can never need (more padded tokens than the
budget even at their smallest batch) are not captured; a batch that fits no bucket runs eagerly.

``BucketedForward`` runs the model eagerly at the bucket shapes: the CPU stand-in that lets tests
exercise the runner's bucket path where there is no GPU. ``GraphedForward`` captures one graph per
bucket when the worker warms up; its graphs share one memory pool and run one at a time, under
``lock``, which the caller holds until it has copied the answer out of the graph's output.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from worker.telemetry import get_logger

log = get_logger("tagstream.worker.cuda_graphs")

LENGTH_STEP = 16
WARM_RUNS = 3  # eager calls per bucket before its capture: TorchScript's profiling executor settles by then


def row_buckets(max_rows: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, 24, ... up to and including ``max_rows``."""
    rungs = {max_rows}
    power = 1
    while power < max_rows:
        rungs.update((power, power + power // 2))
        power *= 2
    return sorted(r for r in rungs if 1 <= r <= max_rows)


def length_buckets(max_length: int) -> list[int]:
    """Multiples of LENGTH_STEP below ``max_length``, then ``max_length``."""
    return [*range(LENGTH_STEP, max_length, LENGTH_STEP), max_length]


def needed_shapes(max_rows: int, max_length: int, max_tokens: int) -> list[tuple[int, int]]:
    """The (rows, length) buckets that some batch within the limits maps to: the smallest batch of a
    bucket (one row and one token more than the bucket below) must fit the padded-token budget."""
    rows, lengths = row_buckets(max_rows), length_buckets(max_length)
    shapes = []
    for i, r in enumerate(rows):
        smallest_rows = rows[i - 1] + 1 if i else 1
        for j, length in enumerate(lengths):
            smallest_length = lengths[j - 1] + 1 if j else 1
            if smallest_rows * smallest_length <= max_tokens:
                shapes.append((r, length))
    return shapes


def padded_rows(flat_ids: np.ndarray, lengths: np.ndarray, rows: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The packed batch (every row's ids end to end, each row's length) with padding rows appended
    up to ``rows``: one [PAD] token each."""
    extra = rows - len(lengths)
    if extra <= 0:
        return flat_ids, lengths
    return (np.concatenate([flat_ids, np.full(extra, pad_id, dtype=flat_ids.dtype)]),
            np.concatenate([lengths, np.ones(extra, dtype=lengths.dtype)]))


# What a model call costs beyond its padded tokens, in padded tokens: a graph replay's ~110 kernels
# take ~0.4 ms however small the batch (H200, MiniLM: 1.2 ms for 64 rows, 3.4 ms for 256,
# bench/gpu_bench.py), about what 4,000 more tokens take; an eager call's launches ~2.5 ms.
GROUP_COST_TOKENS = 4096
EAGER_COST_TOKENS = 25_000


def plan_groups(sorted_lengths: np.ndarray, buckets: BucketedForward) -> list[tuple[int, int]]:
    """Cut a batch's rows, sorted by length, into runs [start, end) that cost the least in all: each
    run padded to its bucket, plus ``buckets.call_cost_tokens`` a call. Cuts fall only where the length bucket
    changes (at most one run per length bucket), so the search is over a handful of cut points."""
    n = len(sorted_lengths)
    bucket_of = np.searchsorted(np.asarray(buckets.length_ladder), sorted_lengths, side="left")
    cuts = [0, *(np.flatnonzero(np.diff(bucket_of)) + 1).tolist(), n]

    def cost(start: int, end: int) -> int:
        rows, longest = end - start, int(sorted_lengths[end - 1])
        shape = buckets.shape_for(rows, longest)
        return rows * longest + EAGER_COST_TOKENS if shape is None else shape[0] * shape[1] + buckets.call_cost_tokens

    best = [0] + [1 << 62] * (len(cuts) - 1)  # best[j]: the cheapest way to run rows [0, cuts[j])
    came_from = [0] * len(cuts)
    for j in range(1, len(cuts)):
        for i in range(j):
            total = best[i] + cost(cuts[i], cuts[j])
            if total < best[j]:
                best[j], came_from[j] = total, i
    runs = []
    j = len(cuts) - 1
    while j > 0:
        runs.append((cuts[came_from[j]], cuts[j]))
        j = came_from[j]
    return runs[::-1]


class BucketedForward:
    """The model at bucket shapes, run eagerly (see the module docstring)."""

    def __init__(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shapes: list[tuple[int, int]]) -> None:
        self._model = model
        self.shapes = sorted(shapes)
        self._rows = sorted({r for r, _ in self.shapes})
        self.length_ladder = sorted({length for _, length in self.shapes})
        self.call_cost_tokens = GROUP_COST_TOKENS  # what a call costs beyond its tokens (plan_groups)
        self._known = set(self.shapes)
        self.lock = threading.Lock()

    def shape_for(self, rows: int, longest: int) -> tuple[int, int] | None:
        """The bucket a batch of ``rows`` rows, the longest ``longest`` tokens, is padded to; None when
        no bucket holds it (it runs eagerly at its own shape)."""
        i, j = bisect.bisect_left(self._rows, rows), bisect.bisect_left(self.length_ladder, longest)
        if i == len(self._rows) or j == len(self.length_ladder):
            return None
        shape = (self._rows[i], self.length_ladder[j])
        return shape if shape in self._known else None

    def run(self, shape: tuple[int, int], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The model's output for a batch already padded to ``shape`` (inputs on the host or the device).
        Call under ``lock``; the answer is valid until the next call."""
        return self._model(ids, mask)


class GraphedForward(BucketedForward):
    """One CUDA graph per bucket, captured by ``capture`` (CUDA only)."""

    def __init__(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shapes: list[tuple[int, int]],
                 *, device: torch.device, autocast_dtype: torch.dtype | None, pad_id: int) -> None:
        super().__init__(model, shapes)
        self._device = device
        self._autocast_dtype = autocast_dtype
        self._pad_id = pad_id
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        # Autocast's cache of cast weights must be off while capturing (PyTorch's CUDA graphs notes).
        return torch.autocast(device_type="cuda", dtype=self._autocast_dtype, cache_enabled=False)

    def capture(self) -> float:
        """Capture a graph for every bucket, largest first; returns the seconds taken. A bucket whose
        capture fails is left out (its batches run eagerly), and said in the log."""
        started = time.perf_counter()
        failed: list[str] = []
        with torch.inference_mode(), self._autocast():
            for shape in sorted(self.shapes, key=lambda s: s[0] * s[1], reverse=True):
                try:
                    self._capture_one(shape)
                except RuntimeError as exc:
                    failed.append(f"{shape[0]}x{shape[1]}: {str(exc).splitlines()[0][:200]}")
        self.shapes = sorted(self._graphs)
        self._known = set(self.shapes)
        torch.cuda.synchronize(self._device)
        seconds = time.perf_counter() - started
        log.info("cuda_graphs_captured", graphs=len(self._graphs), seconds=round(seconds, 2),
                 failed=len(failed), first_failures=failed[:3] or None)
        return seconds

    def _capture_one(self, shape: tuple[int, int]) -> None:
        rows, length = shape
        ids = torch.full((rows, length), self._pad_id, dtype=torch.long, device=self._device)
        mask = torch.zeros((rows, length), dtype=torch.long, device=self._device)
        mask[:, 0] = 1
        side = torch.cuda.Stream(self._device)
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side):
            for _ in range(WARM_RUNS):
                self._model(ids, mask)
        torch.cuda.current_stream(self._device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a bundle reload captures while another thread serves with the old runner's graphs.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = self._model(ids, mask)
        self._graphs[shape] = (graph, ids, mask, out)

    def run(self, shape: tuple[int, int], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        graph, static_ids, static_mask, out = self._graphs[shape]
        static_ids.copy_(ids, non_blocking=True)
        static_mask.copy_(mask, non_blocking=True)
        graph.replay()
        return out
