"""Tokenizers: train a WordPiece or BPE vocabulary on the training texts, or reuse a file.

    train_tokenizer(texts, TokenizerConfig) -> Tokenizer   BERT-style: [CLS] text [SEP]
    load_tokenizer(path) -> Tokenizer                      any `tokenizers` tokenizer.json
    prepare(tokenizer, max_length) -> Tokenizer            a copy that truncates and pads
    encode(tokenizer, texts) -> (ids, mask)                int64 (B, T), T = longest in batch

Trained tokenizers put ``[PAD]`` at id 0 (the encoder's default ``pad_id``), then ``[UNK]``,
``[CLS]``, ``[SEP]``, ``[MASK]``. The stored tokenizer has truncation and padding off; those are
set at run time from the model's ``max_length`` so one file serves every batch size.

Reproducibility: the `tokenizers` WordPiece/BPE trainers are not bit-for-bit deterministic
(huggingface/tokenizers#1794: hash-map order breaks ties between equally frequent merges), so
two trainings on the same texts can differ in a few rare sub-words. Everything downstream is
seeded; to pin the vocabulary too, reuse a tokenizer.json (``--tokenizer``). Resumed runs and
DDP processes always share one tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from model.config import TokenizerConfig
from model.errors import TokenizerError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # in id order: [PAD] is 0
PAD_TOKENS = (PAD, "<pad>")  # what a reused tokenizer may call its padding token


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    """A new WordPiece (or BPE) tokenizer whose vocabulary is learned from ``texts``.

    Chinese, Japanese kanji and other CJK ideographs are split into one word per character
    (``handle_chinese_chars``): unspaced text then becomes characters and the sub-words the
    trainer builds from them. Lowercasing does nothing to scripts without case. Accent stripping
    (``strip_accents``) removes every non-spacing mark after Unicode decomposition: harmless for
    Chinese, but in Thai, Hindi, Arabic, Hebrew or Japanese kana those marks are vowels or
    voicing, so when ``texts`` carry such marks (see :func:`script_marks_share`) it is turned off.
    """
    texts = list(texts)
    strip = cfg.strip_accents and script_marks_share(texts) <= SCRIPT_MARKS_MAX_SHARE
    normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=strip,
        lowercase=cfg.lowercase,
    )
    if cfg.kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100))
        trainer: Any = trainers.WordPieceTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=SPECIAL_TOKENS,
            show_progress=False,
        )
        tok.decoder = decoders.WordPiece()
    elif cfg.kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK, end_of_word_suffix="</w>"))
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=SPECIAL_TOKENS,
            end_of_word_suffix="</w>",
            show_progress=False,
        )
        tok.decoder = decoders.BPEDecoder(suffix="</w>")
    else:
        raise TokenizerError(f"tokenizer kind {cfg.kind!r}: expected 'wordpiece' or 'bpe'")
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        special_tokens=[(CLS, tok.token_to_id(CLS)), (SEP, tok.token_to_id(SEP))],
    )
    return tok


# Marks that are accents on Latin, Greek or Cyrillic letters (what stripping is for); any other
# non-spacing mark belongs to a script where it is part of the letter or the vowel.
_DIACRITIC_BLOCKS = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F))
# Above this share of characters (after decomposition) such marks make stripping harmful.
SCRIPT_MARKS_MAX_SHARE = 0.001
_SAMPLE_TEXTS = 2000


def script_marks_share(texts: Sequence[str]) -> float:
    """Share of characters (NFD, on a sample) that are non-spacing marks outside the accent blocks."""
    import unicodedata

    marks = chars = 0
    for text in texts[:_SAMPLE_TEXTS]:
        for c in unicodedata.normalize("NFD", text):
            chars += 1
            if unicodedata.category(c) == "Mn" and not any(lo <= ord(c) <= hi for lo, hi in _DIACRITIC_BLOCKS):
                marks += 1
    return marks / chars if chars else 0.0


def strips_accents(tok: Tokenizer) -> bool:
    """Whether the tokenizer's normalizer strips accents."""
    spec = json.loads(tok.to_str()).get("normalizer") or {}
    return bool(spec.get("strip_accents")) if spec.get("type") == "BertNormalizer" else False


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a ``tokenizer.json``; refuse one without a padding token."""
    src = Path(path)
    try:
        tok = Tokenizer.from_file(str(src))
    except Exception as exc:  # the Rust side raises plain Exception
        raise TokenizerError(f"{src}: not a readable tokenizer.json ({exc})") from exc
    pad_id(tok)  # fail now, not at export
    tok.no_truncation()
    tok.no_padding()
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    """Write the bare tokenizer (no truncation or padding) to ``path``."""
    bare = Tokenizer.from_str(tok.to_str())
    bare.no_truncation()
    bare.no_padding()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    bare.save(str(out))
    return out


def pad_id(tok: Tokenizer) -> int:
    """The id of the padding token ([PAD] or <pad>)."""
    for token in PAD_TOKENS:
        idx = tok.token_to_id(token)
        if idx is not None:
            return idx
    raise TokenizerError(f"the tokenizer has none of the padding tokens {PAD_TOKENS}; add one")


def pad_token(tok: Tokenizer) -> str:
    for token in PAD_TOKENS:
        if tok.token_to_id(token) is not None:
            return token
    raise TokenizerError(f"the tokenizer has none of the padding tokens {PAD_TOKENS}; add one")


def lowercases(tok: Tokenizer) -> bool:
    """Whether the tokenizer's normalizer lowercases text (recorded in the bundle)."""
    spec = json.loads(tok.to_str()).get("normalizer")

    def walk(node: Any) -> bool:
        if not isinstance(node, dict):
            return False
        if node.get("type") == "Lowercase":
            return True
        if node.get("type") == "BertNormalizer":
            return bool(node.get("lowercase", False))
        return any(walk(child) for child in node.get("normalizers", []) or [])

    return walk(spec)


def prepare(tok: Tokenizer, max_length: int) -> Tokenizer:
    """A copy that truncates to ``max_length`` tokens (specials included) and pads to the
    longest text of each batch."""
    ready = Tokenizer.from_str(tok.to_str())
    ready.enable_truncation(max_length=max_length)
    ready.enable_padding(pad_id=pad_id(tok), pad_token=pad_token(tok))
    return ready


def encode(tok: Tokenizer, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, int64 (B, T), padded to the longest text in the batch.

    ``tok`` must come from :func:`prepare` (otherwise rows of different lengths cannot stack).
    """
    encodings = tok.encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
    return ids, mask


def encode_unpadded(tok: Tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Each text's token ids, truncated to ``max_length``, without padding (for bucketing).

    Encoded a chunk at a time (``model.truncation.ENCODE_CHUNK``): one call on a whole set of
    long texts holds every Encoding, overflowing remainder included, until it returns.
    """
    from model.truncation import Windower

    return [ws[0] for ws in Windower(tok, max_length).windows(texts)]
