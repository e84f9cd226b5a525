"""Long documents: which tokens of a text the model reads, and how window scores become one.

    Truncation.from_dict(config.get("truncation"))    the bundle's strategy (absent = head)
    Windower(tokenizer, max_length, truncation)       texts -> per text, its windows of token ids
    pool(window_probs, counts, pooling, multi_label)  per-window probabilities -> per-text

Strategies (``max_length`` counts the special tokens, e.g. ``[CLS] ... [SEP]``; ``budget`` below
is ``max_length`` minus those):

    head        the first ``budget`` tokens (what every bundle did before strategies existed)
    head+tail   the first ``head_tokens`` and the last ``budget - head_tokens`` tokens, one window
                (Sun et al. 2019, "How to fine-tune BERT for text classification": the end of a
                long text often says as much as its start)
    chunks      windows of ``budget`` tokens, a new one every ``stride`` tokens (``stride`` <
                ``budget`` overlaps them), the last one aligned to the text's end, at most
                ``max_windows`` per text (the first ones); every window is classified and the
                window probabilities are pooled per text (``mean`` or ``max``)

A text that fits in one window gets exactly the ``head`` window under every strategy, so short
texts score the same whichever strategy a bundle records.

This module imports only the standard library, numpy and tokenizers: the worker and training
share it, so what a bundle was trained and evaluated on is what the worker serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

STRATEGIES = ("head", "head+tail", "chunks")
POOLINGS = ("mean", "max")

# Texts handed to the Rust tokenizer at once. Encoding a whole training set in one call keeps
# every Encoding (tokens, offsets, and with truncation the overflowing remainder) alive until
# the call returns: 24k long emails took 4.5 GB that way. Chunks of this size bound it.
ENCODE_CHUNK = 256


class TruncationError(ValueError):
    """A truncation setting that cannot be used (unknown strategy, window too small, ...)."""


@dataclass(frozen=True)
class Truncation:
    """How a text longer than the model's ``max_length`` is read. Stored in config.json."""

    strategy: str = "head"
    stride: int = 0  # chunks: content tokens between window starts; 0 = head/head+tail
    max_windows: int = 1  # chunks: cap on windows per text (cost grows linearly with it)
    pooling: str = "mean"  # chunks: how window probabilities become one per text
    head_tokens: int = 0  # head+tail: content tokens kept from the start

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise TruncationError(f"truncation strategy {self.strategy!r}: expected one of {STRATEGIES}")
        if self.pooling not in POOLINGS:
            raise TruncationError(f"pooling {self.pooling!r}: expected one of {POOLINGS}")
        if self.max_windows < 1:
            raise TruncationError(f"max_windows must be at least 1, got {self.max_windows}")
        if self.strategy == "chunks" and self.stride < 1:
            raise TruncationError(f"chunks need a stride of at least 1 token, got {self.stride}")
        if self.head_tokens < 0:
            raise TruncationError(f"head_tokens must be 0 or more, got {self.head_tokens}")

    @property
    def windowed(self) -> bool:
        """Whether a text may become several windows (only ``chunks``)."""
        return self.strategy == "chunks" and self.max_windows > 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Truncation:
        """The strategy a bundle records; None or {} (bundles before strategies) is ``head``."""
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise TruncationError(f"truncation must be an object, got {type(data).__name__}")
        known = {"strategy", "stride", "max_windows", "pooling", "head_tokens"}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise TruncationError(f"truncation settings {data}: {exc}") from exc


def resolve(
    strategy: str,
    max_length: int,
    *,
    n_special: int = 2,
    stride: int | None = None,
    max_windows: int | None = None,
    pooling: str | None = None,
    head_tokens: int | None = None,
) -> Truncation:
    """A complete ``Truncation`` from a strategy name and the options given (None: default).

    Defaults: chunks overlap by a quarter of a window (stride = 3/4 of the budget) and read at
    most 8 windows; head+tail keeps a quarter of the budget from the start, the rest from the end.
    """
    budget = max_length - n_special
    if budget < 1:
        raise TruncationError(f"max_length {max_length} leaves no room for text after {n_special} special tokens")
    if strategy == "head":
        return Truncation()
    if strategy == "head+tail":
        head = budget // 4 if head_tokens is None else head_tokens
        if not 0 <= head <= budget:
            raise TruncationError(f"--head-tokens {head}: must be between 0 and {budget} (max_length minus specials)")
        return Truncation(strategy="head+tail", head_tokens=head)
    if strategy == "chunks":
        step = max(1, budget * 3 // 4) if stride is None else stride
        if not 1 <= step <= budget:
            raise TruncationError(f"--stride {step}: must be between 1 and {budget} (max_length minus specials)")
        return Truncation(
            strategy="chunks", stride=step, max_windows=8 if max_windows is None else max_windows,
            pooling=pooling or "mean",
        )
    raise TruncationError(f"truncation strategy {strategy!r}: expected one of {STRATEGIES}")


class Windower:
    """Turns texts into windows of token ids, specials included, each at most ``max_length``.

    ``tokenizer`` is any `tokenizers` tokenizer (its own truncation and padding are ignored:
    private copies are made). ``windows(texts)`` returns, per text, a non-empty list of windows.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, truncation: Truncation | None = None) -> None:
        self.max_length = max_length
        self.truncation = truncation or Truncation()
        # head: the tokenizer's own truncation, exactly as bundles have always been read.
        self._head = Tokenizer.from_str(tokenizer.to_str())
        self._head.no_padding()
        self._head.enable_truncation(max_length=max_length)
        # Other strategies: the whole text without specials, cut here.
        self._bare = Tokenizer.from_str(tokenizer.to_str())
        self._bare.no_padding()
        self._bare.no_truncation()
        self.prefix, self.suffix = special_affixes(self._bare)
        self.budget = max_length - len(self.prefix) - len(self.suffix)
        if self.budget < 1:
            raise TruncationError(
                f"max_length {max_length} leaves no room for text after the special tokens"
                f" {self.prefix + self.suffix}"
            )
        if self.truncation.strategy == "head+tail" and self.truncation.head_tokens > self.budget:
            raise TruncationError(
                f"head_tokens {self.truncation.head_tokens} exceeds the {self.budget} tokens a window holds"
            )
        if self.truncation.strategy == "chunks" and self.truncation.stride > self.budget:
            raise TruncationError(f"stride {self.truncation.stride} exceeds the {self.budget} tokens a window holds")

    def windows(self, texts: Sequence[str]) -> list[list[list[int]]]:
        """Per text, its windows of token ids (each: prefix + content + suffix, <= max_length)."""
        out: list[list[list[int]]] = []
        for start in range(0, len(texts), ENCODE_CHUNK):
            chunk = list(texts[start : start + ENCODE_CHUNK])
            if self.truncation.strategy == "head":
                out.extend([e.ids] for e in self._head.encode_batch(chunk))
            else:
                encodings = self._bare.encode_batch(chunk, add_special_tokens=False)
                out.extend(self.split(e.ids) for e in encodings)
        return out

    def split(self, content: list[int]) -> list[list[int]]:
        """The windows of one text's content ids (no specials), by this strategy."""
        budget, t = self.budget, self.truncation
        if len(content) <= budget or t.strategy == "head":
            return [self.prefix + content[:budget] + self.suffix]
        if t.strategy == "head+tail":
            tail = budget - t.head_tokens
            kept = content[: t.head_tokens] + (content[-tail:] if tail else [])
            return [self.prefix + kept + self.suffix]
        starts = list(range(0, len(content) - budget + 1, t.stride))
        if starts[-1] + budget < len(content):
            starts.append(len(content) - budget)  # the last window ends where the text ends
        return [self.prefix + content[s : s + budget] + self.suffix for s in starts[: t.max_windows]]


def special_affixes(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The special-token ids a tokenizer puts before and after one text (e.g. [CLS], [SEP])."""
    probe = "tagstream"
    bare = tokenizer.encode(probe, add_special_tokens=False).ids
    full = tokenizer.encode(probe, add_special_tokens=True).ids
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    raise TruncationError("cannot tell where the tokenizer's special tokens go around a text")


def offsets(counts: Sequence[int]) -> np.ndarray:
    """Start row of each text's windows in a flat (sum(counts), ...) array."""
    starts = np.zeros(len(counts), dtype=np.int64)
    if len(counts) > 1:
        np.cumsum(np.asarray(counts[:-1], dtype=np.int64), out=starts[1:])
    return starts


def pool(window_probs: np.ndarray, counts: Sequence[int], pooling: str = "mean", multi_label: bool = False) -> np.ndarray:
    """Per-text probabilities (N, L) from per-window ones (sum(counts), L), windows in text order.

    mean: the average window; max: each label's best window (single-label rows are then
    renormalised to sum to 1, so they stay a distribution). One window: returned unchanged.
    """
    probs = np.asarray(window_probs, dtype=np.float32)
    if len(counts) == probs.shape[0]:
        return probs  # one window per text: nothing to pool
    if min(counts, default=1) < 1:
        raise TruncationError("every text has at least one window")
    starts = offsets(counts)
    if pooling == "max":
        pooled = np.maximum.reduceat(probs, starts, axis=0)
        if not multi_label:
            pooled = pooled / pooled.sum(axis=1, keepdims=True)
        return pooled.astype(np.float32)
    if pooling == "mean":
        sums = np.add.reduceat(probs.astype(np.float64), starts, axis=0)
        return (sums / np.asarray(counts, dtype=np.float64)[:, None]).astype(np.float32)
    raise TruncationError(f"pooling {pooling!r}: expected one of {POOLINGS}")
