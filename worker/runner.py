"""Tokenize and classify batches with a loaded bundle: the only module that touches torch.

``ModelRunner`` wraps one ``model.bundle.Bundle``:

- ``tokenize(texts)`` encodes a list of texts in one call to the Rust tokenizer (which releases
  the GIL), truncating to the bundle's ``max_length`` and without padding, so the batcher sees
  each input's real length. The source stage calls it once per poll, not once per message.
- ``classify(token_ids)`` pads one batch to its longest input, runs the TorchScript model under
  ``torch.inference_mode`` and returns the top-k label indices and probabilities as plain
  lists, one device-to-host copy per batch.

Bundles that read long texts otherwise than by their first ``max_length`` tokens
(``head+tail``, ``chunks``: ``model/truncation.py``, the same code training used) are honoured
here. ``tokenize`` returns each text's windows laid end to end in one list: every window of a
text read as several is exactly ``max_length`` tokens long (specials included), so the list's
length is the tokens the model will compute on (what the batcher's token budget counts) and
``classify`` cuts it back into windows every ``max_length`` tokens. ``classify`` runs every
window of the batch, in sub-batches that keep within ``max_batch_size`` rows and
``max_batch_tokens`` padded tokens (the warmed-up shapes), and pools the window probabilities
per text (``model.truncation.pool``); ``Classified.windows`` says how many windows each text
was read as. Multi-label bundles (independent sigmoids) add ``Classified.tags``: per text, the
labels at or over their thresholds with their probabilities, most probable first (maybe none).
Plain bundles (single-label, ``head``) take exactly the path they always took.

On a GPU the ids go through a pinned staging buffer allocated once per thread at the largest
batch and are copied with ``non_blocking=True``; the attention mask is built on the device from the lengths;
bfloat16 or float16 autocast is applied when asked (``dtype``). After the warm-up, a GPU runner runs
its batches as CUDA graphs, padded to bucket shapes (``cuda_graphs``: worker/cuda_graphs.py), as the
~100 kernel launches of one eager call cost more than a small encoder's arithmetic. On the CPU the model uses
``threads`` intra-op threads and float32 unless told otherwise.

``resolve_device`` and ``resolve_dtype`` turn the settings into torch objects and fail with the
setting to change when the machine cannot honour them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.bundle import TOKENIZER_FILE, Bundle, sha256_file
from model.cpus import available_cpus
from model.errors import BundleError
from model.truncation import Windower
from worker.cuda_graphs import (
    BucketedForward,
    GraphedForward,
    needed_shapes,
    padded_rows,
    plan_groups,
)
from worker.documents import (
    DocumentReading,
    document_answers,
    is_plain,
    laid_end_to_end,
    sub_batches,
    windows_of,
)
from worker.errors import BundleLoadError, InferenceError, SettingsError
from worker.inference import Classified, InputId
from worker.telemetry import get_logger
from worker.tokenizing import HeadTokenizer

__all__ = ["Classified", "ModelRunner", "configure_threads", "resolve_device", "resolve_dtype", "resolve_streams"]

log = get_logger("tagstream.worker.runner")
# Turns the model output of one call (B, n_labels) into host arrays of B rows each.
Answer = Callable[[torch.Tensor], tuple[np.ndarray, ...]]

_threads_configured = threading.Lock()
_interop_set = False


def resolve_device(requested: str, *, cuda_available: bool | None = None, device_count: int | None = None) -> torch.device:
    """``auto``/``cpu``/``cuda``/``cuda:N`` -> a torch.device this machine has (SettingsError if not)."""
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    count = (torch.cuda.device_count() if available else 0) if device_count is None else device_count
    requested = requested.strip().lower()
    if requested == "auto":
        return torch.device("cuda:0") if available and count > 0 else torch.device("cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda"):
        index = int(requested.partition(":")[2] or 0)
        if not available or count == 0:
            raise SettingsError(
                f"TAGSTREAM_DEVICE={requested}: no CUDA GPU is visible to this process;"
                " set TAGSTREAM_DEVICE=cpu (or auto), or run on a GPU node"
            )
        if index >= count:
            raise SettingsError(
                f"TAGSTREAM_DEVICE={requested}: this machine has {count} GPU(s) (cuda:0..cuda:{count - 1});"
                " pick one of those"
            )
        return torch.device(f"cuda:{index}")
    raise SettingsError(f"TAGSTREAM_DEVICE={requested}: use auto, cpu, cuda or cuda:N")


def resolve_dtype(requested: str, device: torch.device, *, bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype for ``device`` (None: run in float32, no autocast).

    auto: on a GPU bfloat16 where supported (Ampere and later), else float16; on a CPU float32.
    bfloat16 on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX) is an opt-in: on the 2-core
    AVX512-BF16 development machine the worker ran MiniLM 2.3x and the small preset 1.3x faster
    than in float32 at the same AG News accuracy (0.9053 vs 0.9050; 99.97% of labels identical).
    float32 stays the default: exact agreement with the bundle's offline scores, and no surprise
    on CPUs without native bf16, where it is several times slower (CPU float16 is slower still).
    """
    if requested == "float32":
        return None
    if device.type == "cuda":
        if bf16_supported is None:
            bf16_supported = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return torch.bfloat16 if bf16_supported else torch.float16
        if requested == "bfloat16" and not bf16_supported:
            raise SettingsError(
                f"TAGSTREAM_DTYPE=bfloat16: {device} does not support bfloat16; use float16 or auto"
            )
        return torch.bfloat16 if requested == "bfloat16" else torch.float16
    if requested == "auto":
        return None
    # Explicit requests are honoured: CPU autocast supports both, even where they are slow.
    return torch.bfloat16 if requested == "bfloat16" else torch.float16


def resolve_streams(requested: int, device: torch.device, threads: int) -> tuple[int, int]:
    """(concurrent batches, intra-op threads for each) from the settings.

    On a CPU, two batches side by side, each on half the threads, beat one batch on all of them:
    small kernels scale poorly across threads, and an intra-op team stalls whenever the OS lends
    one of its cores to a Kafka thread. A GPU runs one batch at a time. ``threads`` 0 means the
    CPUs the container may use (``default_threads``), not the node's cores.
    """
    total = threads or default_threads()
    if device.type == "cuda":
        return max(1, requested or 1), total
    streams = requested or (2 if total >= 2 else 1)
    return streams, max(1, total // streams)


def default_threads() -> int:
    """The CPUs this process may use (affinity mask and cgroup CPU limit); logs the choice."""
    budget = available_cpus()
    log.info("cpu_threads", threads=budget.count, reason=budget.reason, node_cpus=os.cpu_count())
    return budget.count


def configure_threads(threads: int) -> int:
    """Set torch's intra-op thread count (0 = the container's CPUs); returns the count in effect."""
    global _interop_set
    n = threads or default_threads()
    with _threads_configured:
        torch.set_num_threads(n)
        if not _interop_set:
            # One inter-op thread: the worker never runs independent ops in parallel, and a
            # second pool would only compete with Kafka's threads for the cores.
            with contextlib.suppress(RuntimeError):  # already set, or work already started
                torch.set_num_interop_threads(1)
            _interop_set = True
    return torch.get_num_threads()


@dataclass(frozen=True)
class PackedAnswers:
    """One batch's answers as arrays: what the model process writes back into shared memory."""

    top_indices: np.ndarray  # (B, k) int64 label indices, most probable first
    top_scores: np.ndarray  # (B, k) float32 probabilities
    seconds: float


@dataclass(frozen=True)
class PackedProbabilities:
    """``ModelRunner.probabilities_packed``'s answer: host arrays, as the model process writes them out."""

    probs: np.ndarray  # (rows, n_labels) float32
    seconds: float


def packed(token_ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ids as the packed entry points take them: every row's ids end to end, and each row's length."""
    lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.int64, count=len(token_ids))
    flat = np.fromiter(itertools.chain.from_iterable(token_ids), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


class ModelRunner:
    """A loaded bundle on a device, ready to tokenize and classify batches."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        device: torch.device,
        autocast_dtype: torch.dtype | None,
        max_batch_size: int,
        max_batch_tokens: int,
        top_k: int,
        fast_tokenizer: bool = True,
        cuda_graphs: bool = False,
    ) -> None:
        self.bundle = bundle
        self.name = bundle.name
        self.version = bundle.version
        self.labels = list(bundle.labels)
        self.max_length = bundle.max_length
        self.pad_id = bundle.pad_id
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.top_k = max(1, min(top_k, len(self.labels)))
        self._tokenizer_json = str(bundle.tokenizer.to_str())
        self.head_tokenizer = HeadTokenizer(self._tokenizer_json, self.max_length, fast=fast_tokenizer)
        self.task = bundle.task
        self.multi_label = bundle.multi_label
        self.truncation = bundle.truncation
        self._thresholds = np.asarray(bundle.thresholds, dtype=np.float32) if self.multi_label else None
        # Bundles read by head keep the fast path above; the others cut texts into windows.
        self._windower = Windower(bundle.tokenizer, self.max_length, self.truncation) \
            if self.truncation.strategy != "head" else None
        # Whether results carry the windows read (every bundle that does not read by head).
        self.reports_windows = self._windower is not None
        # Identifies what tokenize() produces: inputs tokenized before a bundle swap are
        # re-tokenized only when the new bundle's tokenizer or max_length differ.
        self.tokenizer_key = (f"{sha256_file(bundle.path / TOKENIZER_FILE)[:16]}:{self.max_length}"
                              f":{sorted(self.truncation.to_dict().items())}")
        self._model = bundle.model
        self._arange = np.arange(self.max_length)[None, :]  # (1, max_length), for the padding mask
        # The GPU path stages ids in pinned host memory allocated once at the largest batch,
        # so the host-to-device copy is asynchronous and no batch allocates pinned memory.
        # One buffer per calling thread, as concurrent streams each stage their own batch.
        self._staging = threading.local()
        # Accelerators keep the batch on the device and copy back only the top-k; on a CPU the
        # probabilities are already in host memory and numpy ranks them. Tests run the device
        # path on a CPU by setting this, so it is exercised where no GPU is.
        self.topk_on_device = device.type != "cpu"
        # Reduced precision on a CPU runs oneDNN kernels built and cached per input shape; with
        # every batch length from 1 to max_length that cache (and the heap under it) grew a
        # bf16 worker with the small bundle to 2.6 GB under a steady load. Padding lengths to
        # multiples of 16 bounds the shapes: 1.5 GB there, at the same throughput (peak 1.3 GB
        # in bench/worker_bench.py for both bundles). float32 uses MKL: no per-shape kernels.
        self.length_step = 16 if device.type == "cpu" and autocast_dtype is not None else 1
        # On a GPU, warm_up captures the forward pass as CUDA graphs at bucket shapes (worker/cuda_graphs.py);
        # tests set a BucketedForward here to run the same bucket path eagerly on a CPU.
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self.buckets: BucketedForward | None = None
        self.group_by_length = True  # with buckets: a batch runs as groups of similar length (benchmarks turn it off)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: torch.device,
        autocast_dtype: torch.dtype | None,
        max_batch_size: int,
        max_batch_tokens: int,
        top_k: int,
        fast_tokenizer: bool = True,
        cuda_graphs: bool = False,
    ) -> ModelRunner:
        """Load and verify the bundle at ``path`` (BundleLoadError when it cannot be used)."""
        try:
            bundle = Bundle.load(path, device=device, verify=True)
        except BundleError as exc:
            raise BundleLoadError(str(exc)) from exc
        except (OSError, RuntimeError) as exc:
            raise BundleLoadError(f"bundle {path} cannot be loaded: {exc}") from exc
        return cls(
            bundle, device=device, autocast_dtype=autocast_dtype, max_batch_size=max_batch_size,
            max_batch_tokens=max_batch_tokens, top_k=top_k, fast_tokenizer=fast_tokenizer, cuda_graphs=cuda_graphs,
        )

    @property
    def warm_up_shapes(self) -> list[tuple[int, int]]:
        """(rows, tokens) of the largest batches the limits allow: the warm-up shapes.

        Two shapes bound every batch: the most rows at the longest length the budget allows,
        and the most rows (max_batch_size) at the longest length that still fits the budget.
        """
        long_rows = max(1, min(self.max_batch_size, self.max_batch_tokens // self.max_length))
        wide_len = max(1, min(self.max_length, self.max_batch_tokens // self.max_batch_size))
        shapes = [(long_rows, self.max_length), (self.max_batch_size, wide_len)]
        return list(dict.fromkeys(shapes))

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, unpadded: the first max_length (one tokenizer call), or by the
        bundle's strategy every window of the text end to end (module docstring)."""
        if self._windower is None:
            return self.head_tokenizer.encode(texts)
        return laid_end_to_end(self._windower.windows(texts))

    @property
    def tokenizer_json(self) -> str:
        """The bundle's tokenizer, for a feeder process to build its own (worker.tokenizing)."""
        return self._tokenizer_json

    def classify(
        self, token_ids: list[list[int]], *, inputs: Sequence[InputId] = (), alone: bool = False
    ) -> Classified:
        """Top-k labels and probabilities for one batch of tokenized inputs (as ``tokenize`` gives).
        ``inputs`` and ``alone`` change nothing here: this runner serves one worker, unmerged."""
        if self.plain:
            return self._classify_rows(token_ids)
        return self._classify_documents(token_ids)

    def _classify_documents(self, token_ids: list[list[int]]) -> Classified:
        """Every window of every input, in sub-batches within the limits; pooled per input."""
        started = time.perf_counter()
        rows, counts = windows_of(token_ids, self.max_length)
        parts = sub_batches(rows, self.max_batch_size, self.max_batch_tokens)
        probs = np.concatenate([self.probabilities_packed(*packed(part)).probs for part in parts])  # (W, n_labels)
        return document_answers(probs, counts, self.reading, time.perf_counter() - started)

    @property
    def reading(self) -> DocumentReading:
        """How this bundle's window probabilities become answers (worker/documents.py)."""
        return DocumentReading(
            top_k=self.top_k, pooling=self.truncation.pooling, multi_label=self.multi_label,
            thresholds=self._thresholds, reports_windows=self.reports_windows,
        )

    def _padded_packed(
        self, flat_ids: np.ndarray, lengths: np.ndarray, width: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """ids and mask int64 (B, T) for rows given end to end (``flat_ids``) with each row's length, padded
        to ``width`` or else the longest (rounded up to length_step)."""
        n = len(lengths)
        longest = max(1, int(lengths.max())) if n else 1
        longest = max(longest, min(self.max_length, -(-longest // self.length_step) * self.length_step))
        if width is not None:
            longest = max(longest, width)
        pinned = self._pinned_buffer()
        if pinned is not None and n * longest <= pinned.numel():
            host = pinned[: n * longest].view(n, longest)
        else:
            host = torch.empty((n, longest), dtype=torch.long)
        rows = host.numpy()
        # Built with numpy, in two bulk operations instead of a copy per row: every eager torch
        # call releases and re-takes the GIL, and on a busy 2-core machine each re-take can wait a
        # full switch interval behind a Kafka thread.
        valid = self._arange[:, :longest] < lengths[:, None]  # (B, T)
        rows.fill(self.pad_id)
        rows[valid] = flat_ids
        mask = torch.from_numpy(valid.astype(np.int64))  # (B, T)
        return host, mask, longest

    def _classify_rows(self, token_ids: list[list[int]]) -> Classified:
        """Single-label, one row per input: the path every bundle took before strategies."""
        started = time.perf_counter()
        answers = self.classify_packed(*packed(token_ids))
        return Classified(answers.top_indices.tolist(), answers.top_scores.tolist(), time.perf_counter() - started)

    @property
    def plain(self) -> bool:
        """Single-label and read by head: one row per input, answered by its top k (``classify_packed``).
        A pod's model process answers other bundles' windows with their probabilities
        (``probabilities_packed``), and the feeder pools them (worker/procs/remote.py)."""
        return is_plain(self.multi_label, self.truncation)

    def classify_packed(self, flat_ids: np.ndarray, lengths: np.ndarray) -> PackedAnswers:
        """Like ``classify``, for a batch given as every row's ids end to end (``flat_ids``) and each
        row's length: the model process's merged batches arrive that way from shared memory.
        Plain bundles only (``plain``)."""
        if not self.plain:
            raise InferenceError(f"bundle {self.name} is not plain: its windows are answered by probabilities_packed")
        started = time.perf_counter()

        def top_k(out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            if not self.topk_on_device:
                probs = out.float().numpy()  # (B, n_labels)
                ranked = np.argsort(-probs, axis=1, kind="stable")[:, : self.top_k]  # (B, k)
                return ranked, np.take_along_axis(probs, ranked, axis=1)
            scores, indices = out.float().topk(self.top_k, dim=1)  # (B, k)
            return indices.cpu().numpy(), scores.cpu().numpy()  # the synchronising copies back

        top_indices, top_scores = self._run_model(flat_ids, lengths, top_k, "inputs")
        return PackedAnswers(top_indices, top_scores, time.perf_counter() - started)

    def _run_model(self, flat_ids: np.ndarray, lengths: np.ndarray, answer: Answer, what: str) -> tuple[np.ndarray, ...]:
        """The model on a packed batch; ``answer`` turns its output (B, n_labels) into host arrays, row by row.

        With bucket shapes (CUDA graphs) a batch whose lengths spread widely runs as a few groups of
        similar length, each padded to its own bucket (``plan_groups``): padding every row of a
        1024-row batch to its longest text cost the GPU twice the tokens of AG News's texts."""
        buckets = self.buckets
        if buckets is None or not self.group_by_length or len(lengths) < 2:
            return self._run_rows(flat_ids, lengths, answer, what)
        order = np.argsort(lengths, kind="stable")
        groups = plan_groups(lengths[order], buckets)
        if len(groups) == 1:
            return self._run_rows(flat_ids, lengths, answer, what)
        starts = np.cumsum(lengths) - lengths
        parts = []
        for first, end in groups:
            rows = order[first:end]
            sizes = lengths[rows]
            # Each row's ids, gathered in one indexing: its start in flat_ids, then consecutive positions.
            at = np.repeat(starts[rows] - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))
            parts.append(self._run_rows(flat_ids[at], sizes, answer, what))
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return tuple(np.concatenate(column)[back] for column in zip(*parts, strict=True))

    def _run_rows(self, flat_ids: np.ndarray, lengths: np.ndarray, answer: Answer, what: str) -> tuple[np.ndarray, ...]:
        """One model call. At a bucket shape (CUDA graphs) the batch is padded with rows that ``answer``
        never sees, and ``answer`` runs under the buckets' lock, before the next call overwrites the
        graph's output."""
        n = len(lengths)
        buckets = self.buckets
        shape = buckets.shape_for(n, max(1, int(lengths.max()))) if buckets is not None and n else None
        if shape is not None:
            flat_ids, lengths = padded_rows(flat_ids, lengths, shape[0], self.pad_id)
        host, mask, longest = self._padded_packed(flat_ids, lengths, None if shape is None else shape[1])
        try:
            with torch.inference_mode(), self._autocast():
                if buckets is not None and shape is not None:
                    with buckets.lock:
                        return answer(buckets.run(shape, host, mask)[:n])
                if self.device.type != "cpu":
                    host, mask = host.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
                return answer(self._model(host, mask))
        except Exception as exc:
            raise InferenceError(f"the model failed on a batch of {n} {what} (longest {longest} tokens): {exc}") from exc

    def probabilities_packed(self, flat_ids: np.ndarray, lengths: np.ndarray) -> PackedProbabilities:
        """Every row's probabilities, for rows given as in ``classify_packed``: the windows of a
        bundle that is not ``plain``."""
        started = time.perf_counter()
        (probs,) = self._run_model(flat_ids, lengths, lambda out: (out.float().cpu().numpy(),), "windows")
        return PackedProbabilities(probs, time.perf_counter() - started)

    def warm_up(self) -> float:
        """Run the largest allowed batches (and a one-input batch) once; returns the seconds taken.

        The first calls of a TorchScript model profile and optimise it, and allocators grow
        their pools: paying that here keeps it out of the first real batches' latency.
        """
        started = time.perf_counter()
        filler = self.tokenize(["tagstream warm-up " * self.max_length])[0]
        filler = (filler * (self.max_length // max(1, len(filler)) + 1))[: self.max_length]
        for _ in range(2):  # the profiling executor optimises on the second call
            for rows, width in [*self.warm_up_shapes, (1, min(16, self.max_length))]:
                self.classify([filler[:width]] * rows)
        if self.cuda_graphs and self.buckets is None:
            graphs = GraphedForward(
                self._model, needed_shapes(self.max_batch_size, self.max_length, self.max_batch_tokens),
                device=self.device, autocast_dtype=self.autocast_dtype, pad_id=self.pad_id,
            )
            graphs.capture()
            self.buckets = graphs
        return time.perf_counter() - started

    def _pinned_buffer(self) -> torch.Tensor | None:
        """This thread's pinned staging buffer for host-to-GPU copies (None on CPU)."""
        if self.device.type != "cuda":
            return None
        buffer = getattr(self._staging, "buffer", None)
        if buffer is None:
            buffer = torch.empty(self.max_batch_size * self.max_length, dtype=torch.long, pin_memory=True)
            self._staging.buffer = buffer
        return buffer

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
