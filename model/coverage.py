"""Can a tokenizer read this data? The share of ``[UNK]`` tokens on a sample of texts.

    measure(tokenizer, texts, name=...) -> Coverage
    unknown_token_id(tokenizer) -> int | None

A pretrained encoder only knows its own vocabulary: all-MiniLM-L6-v2's English WordPiece reads
about 62% of the tokens of Chinese reviews as ``[UNK]``, and fine-tuning on that loses to a
model trained from scratch (and to a character n-gram TF-IDF baseline). Training measures the
coverage before fine-tuning: with ``--init auto`` an ``unk_share`` above ``threshold`` (2% by
default; English news measures ~0.0%) trains from scratch instead, and an explicit
``--init minilm|PATH`` goes ahead with a warning. The figures go into the report and bundle.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tokenizers import Tokenizer

DEFAULT_THRESHOLD = 0.02
SAMPLE_TEXTS = 2000  # enough for a share to ~1 point; a second or two to tokenize
MOSTLY_UNKNOWN = 0.5  # a text is "mostly unknown" when more than this share of its tokens is


@dataclass(frozen=True)
class Coverage:
    tokenizer: str  # which vocabulary was measured: "minilm", a checkpoint path, "scratch"
    sample: int  # texts measured
    tokens: int  # their tokens, special tokens excluded
    unk_share: float  # share of those tokens that are the unknown token
    mostly_unknown_share: float  # share of texts with more than half their tokens unknown
    threshold: float

    @property
    def too_low(self) -> bool:
        return self.unk_share > self.threshold

    def summary(self) -> str:
        return (f"{self.unk_share:.1%} of tokens unknown, {self.mostly_unknown_share:.1%} of texts"
                f" mostly unknown ({self.sample} texts sampled)")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unk_share": round(self.unk_share, 5),
                "mostly_unknown_share": round(self.mostly_unknown_share, 5)}


def unknown_token_id(tokenizer: Tokenizer) -> int | None:
    """The id of the tokenizer model's unknown token (``[UNK]`` for WordPiece), if it has one."""
    model = json.loads(tokenizer.to_str()).get("model", {})
    token = model.get("unk_token") or "[UNK]"
    return tokenizer.token_to_id(token)


def measure(
    tokenizer: Tokenizer, texts: Sequence[str], *, name: str, threshold: float = DEFAULT_THRESHOLD,
    sample: int = SAMPLE_TEXTS, seed: int = 0,
) -> Coverage:
    """Coverage of ``tokenizer`` on up to ``sample`` texts drawn at random (seeded)."""
    chosen = list(texts) if len(texts) <= sample else random.Random(seed).sample(list(texts), sample)
    bare = Tokenizer.from_str(tokenizer.to_str())
    bare.no_truncation()
    bare.no_padding()
    unk = unknown_token_id(bare)
    tokens = unknown = mostly = 0
    for start in range(0, len(chosen), 256):
        for enc in bare.encode_batch(chosen[start : start + 256], add_special_tokens=False):
            n = len(enc.ids)
            k = sum(1 for i in enc.ids if i == unk) if unk is not None else 0
            tokens += n
            unknown += k
            mostly += int(n > 0 and k / n > MOSTLY_UNKNOWN)
    return Coverage(
        tokenizer=name, sample=len(chosen), tokens=tokens,
        unk_share=unknown / tokens if tokens else 0.0,
        mostly_unknown_share=mostly / len(chosen) if chosen else 0.0, threshold=threshold,
    )
