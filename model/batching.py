"""Grouping token sequences into padded batches, for training and for offline prediction.

Padding is wasted work: a batch costs ``B x T_longest``. Grouping texts of similar length
(bucketing) cuts that waste without changing any answer, because the encoder is
padding-invariant. Training shuffles within and across buckets so batches stay random enough;
prediction simply sorts by length and restores the original order afterwards.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

# Training draws this many batches' worth of examples at random, sorts them by length and cuts
# them into batches: large enough that batches are nearly uniform in length, small enough that
# each batch still mixes examples from across the whole set.
BUCKET_POOL_BATCHES = 50


def training_batches(
    lengths: Sequence[int], batch_size: int, seed: int, *, bucket: bool = True
) -> list[list[int]]:
    """Indices for one epoch of shuffled batches; the same ``seed`` gives the same batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not bucket:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    pool = batch_size * BUCKET_POOL_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by length (shortest first) for prediction; each index appears once."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(sequences: Sequence[Sequence[int] | np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, int64 (B, T) with T the longest sequence; pads on the right."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask
