"""The model process's batching policy: which waiting feeder requests run together. No I/O.

Each request is a batch a feeder already formed under the same limits. When a model stream is
free, it takes the oldest waiting request and adds later ones of the same bundle generation while
the merged batch stays within ``max_batch_size`` rows and ``max_batch_tokens`` padded tokens
(rows x the longest row, as the feeders' batcher counts them). A request that does not fit keeps
its place for the next batch, so none starves. There is no timer: requests pile up while the
model is busy, so a busy model merges more, an idle one answers at once.

A request marked ``alone`` (one input to isolate: it was in a stalled model call before, or its
failed batch is retried input by input) is never merged: it runs by itself, so that a call that
hangs or raises again does so on that input only, not on other feeders' batches.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from worker.inference import InputId


@dataclass(frozen=True, slots=True)
class Request:
    """One feeder batch waiting in the model process."""

    port: Any  # the feeder's connection in the model process (where the answer goes)
    slot: int
    rows: int
    tokens: int  # real tokens (sum of the rows' lengths)
    longest: int  # tokens in its longest row
    generation: int  # the bundle its ids were tokenized for
    tokenizer_key: str
    alone: bool = False  # one input to run in a model call of its own (module docstring)
    inputs: tuple[InputId, ...] = ()  # its rows' records: named to the other feeders if their call stalls


def take_merged(pending: deque[Request], max_rows: int, max_tokens: int) -> list[Request]:
    """Remove and return the next merged batch from ``pending`` (oldest first; empty if none)."""
    if not pending:
        return []
    first = pending.popleft()
    group = [first]
    if first.alone:
        return group
    rows, longest = first.rows, first.longest
    kept: list[Request] = []
    while pending:
        request = pending.popleft()
        grown_rows = rows + request.rows
        grown_longest = max(longest, request.longest)
        if (
            not request.alone
            and request.generation == first.generation
            and grown_rows <= max_rows
            and grown_rows * grown_longest <= max_tokens
        ):
            group.append(request)
            rows, longest = grown_rows, grown_longest
        else:
            kept.append(request)
        if rows >= max_rows:
            break
    pending.extendleft(reversed(kept))  # the skipped ones go back in front, in their order
    return group
