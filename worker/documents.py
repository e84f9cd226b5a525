"""From a batch's window probabilities to its answers: the part of classifying that needs no model.

Bundles that are not plain (multi-label, or read in windows: ``model/truncation.py``) are answered
in three steps: cut each input's ids into windows (``windows_of``), run the windows through the
model in sub-batches within the batch limits (``sub_batches``), then pool each input's window
probabilities and rank them (``document_answers``). The first and last steps are pure numpy, so the
model's own process and a feeder process (worker/procs/remote.py, which gets the probabilities of
its windows from the pod's model process) answer the same inputs the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.truncation import Truncation, pool
from worker.inference import Classified


@dataclass(frozen=True)
class DocumentReading:
    """How a bundle's window probabilities become answers (what ``document_answers`` needs of it)."""

    top_k: int
    pooling: str  # model.truncation.pool's
    multi_label: bool
    thresholds: np.ndarray | None  # multi-label: one per label
    reports_windows: bool  # whether results say how many windows each input was read as


def is_plain(multi_label: bool, truncation: Truncation) -> bool:
    """Single-label and read by head: one row per input, answered by its top k (transport.py)."""
    return not multi_label and truncation.strategy == "head"


def laid_end_to_end(windows: list[list[list[int]]]) -> list[list[int]]:
    """Each text's windows (model.truncation.Windower.windows) as one list of ids: what ``tokenize``
    gives for a bundle read in windows. Every window but a text's last is ``max_length`` long."""
    return [[t for window in text_windows for t in window] for text_windows in windows]


def windows_of(token_ids: Sequence[list[int]], max_length: int) -> tuple[list[list[int]], list[int]]:
    """Each input's windows (its ids laid end to end, every ``max_length`` tokens: runner.py's
    ``tokenize``) as rows, and how many windows each input has (at least one)."""
    counts = [max(1, -(-len(ids) // max_length)) for ids in token_ids]
    rows = [ids[i : i + max_length] for ids in token_ids for i in range(0, max(1, len(ids)), max_length)]
    return rows, counts


def sub_batches(rows: list[list[int]], max_rows: int, max_tokens: int) -> list[list[list[int]]]:
    """Consecutive groups of rows within ``max_rows`` rows and ``max_tokens`` padded tokens."""
    parts: list[list[list[int]]] = []
    current: list[list[int]] = []
    longest = 0
    for row in rows:
        width = max(longest, len(row))
        if current and (len(current) + 1 > max_rows or width * (len(current) + 1) > max_tokens):
            parts.append(current)
            current, width = [], len(row)
        current.append(row)
        longest = width
    if current:
        parts.append(current)
    return parts


def document_answers(probs: np.ndarray, counts: list[int], reading: DocumentReading, seconds: float) -> Classified:
    """Pool ``probs`` (windows, labels) per input (``counts`` windows each, in order), then rank."""
    pooled = pool(probs, counts, reading.pooling, reading.multi_label)  # (B, n_labels)
    top = np.argsort(-pooled, axis=1, kind="stable")[:, : reading.top_k]  # (B, k)
    tags = None
    if reading.thresholds is not None:
        over = pooled >= reading.thresholds[None, :]
        tags = []
        for row, on in zip(pooled, over, strict=True):
            chosen = np.flatnonzero(on)
            chosen = chosen[np.argsort(-row[chosen], kind="stable")]
            tags.append([(int(j), float(row[j])) for j in chosen])
    return Classified(
        top.tolist(), np.take_along_axis(pooled, top, axis=1).tolist(), seconds,
        windows=counts if reading.reports_windows else None, tags=tags,
    )
