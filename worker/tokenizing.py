"""Token ids for texts read by head: the hot path's tokenizer.

HF ``tokenizers`` is the reference: a bundle's ``tokenizer.json`` is its format, and training,
evaluation and the windowed path use it alone. On the hot path its per-text cost was the largest
share of a worker's CPU per event with a fast model (60-80 µs for a news-length text on the
bench machine, most of it in the alignment bookkeeping of its normalizer and pre-tokenizer, which
``encode_batch_fast`` does not skip).

flash-tokenizer implements BERT's WordPiece in C++ at about a seventh of that cost. It is not the
same code, so it tokenizes only the texts where it gives HF's ids, and HF takes every other text
in the same call, in order:

- the ``tokenizer.json`` has BERT's layout (BertNormalizer with clean_text, BertPreTokenizer,
  WordPiece with ``##`` and ``[UNK]``, ``[CLS] $A [SEP]``; ``_bert_layout``);
- the text is ASCII: the two differ on Unicode (accents, CJK, categories of rare characters);
- the text holds no added token: HF reads ``[CLS]`` written in a text as the special token,
  flash-tokenizer as characters;
- no word is longer than WordPiece's ``max_input_chars_per_word``: HF gives ``[UNK]`` for it,
  flash-tokenizer splits it.

Measured over 55,000 ASCII texts (AG News, SMS, Reuters, random ASCII with control characters) for
three bundles, those are the only differences; a self-check at load compares both on probe texts
(``_probes``) and any difference turns flash-tokenizer off for that tokenizer, logged. The
screening runs once over the whole call's texts joined (one C scan each); a call with a text
that fails it screens its ASCII texts joined again, and text by text only when that fails too.
``TAGSTREAM_FAST_TOKENIZER=false`` turns it off.
"""

from __future__ import annotations

import json
import os
import random
import string
import tempfile
import time
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from worker.telemetry import get_logger

log = get_logger("tagstream.worker.tokenizing")

try:  # an optional dependency: wheels for Linux x86_64 and macOS arm64 (pyproject.toml)
    from flash_tokenizer._core import FlashBertTokenizer
except ImportError:  # pragma: no cover - exercised where the wheel is absent
    FlashBertTokenizer = None

# Where BertPreTokenizer splits an ASCII text: whitespace and ASCII punctuation. Control characters
# count as word characters here although HF's normalizer drops them: a word then looks longer than
# it is, which only ever sends a text to HF (the screen errs towards the reference).
_ASCII_SEPARATORS = " \t\n\r\x0b\x0c" + string.punctuation
# Every separator becomes a space, so that splitting at spaces gives BertPreTokenizer's words: a
# C-speed scan (a regular expression for over-long words cost 11 µs a news text, as much as
# tokenizing it).
_TO_SPACES = bytes.maketrans(_ASCII_SEPARATORS[1:].encode(), b" " * (len(_ASCII_SEPARATORS) - 1))
_SPACE = ord(" ")
_NUMPY_SCREEN_BYTES = 4096  # below this, one split costs less than numpy's calls
# Tokens flash-tokenizer reads past max_length, so that the word crossing max_length is whole
# (``_flash_ids``): more pieces than any but a pathological word has.
_FLASH_HEADROOM = 32
# flash-tokenizer holds the GIL while it runs (HF tokenizers release it). A poll's texts go to it in
# chunks of about a millisecond, with the GIL offered to the worker's other threads (model threads
# starting their next batch, the sink) between them, instead of one call of up to 7 ms.
FLASH_CHUNK = 64


def truncating_tokenizer(tokenizer_json: str, max_length: int) -> Tokenizer:
    """A private HF tokenizer from its JSON that truncates to ``max_length`` and never pads (a batch
    pads itself)."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


class HeadTokenizer:
    """Token ids per text, truncated to ``max_length``, unpadded: HF's ids, computed by
    flash-tokenizer where that gives the same (module docstring)."""

    def __init__(self, tokenizer_json: str, max_length: int, *, fast: bool = True) -> None:
        self.max_length = max_length
        self._hf = truncating_tokenizer(tokenizer_json, max_length)
        self._hf_encode = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)
        self._flash: Any = None
        self._added_token_chars: list[str] = []
        self._max_word_chars = 0  # WordPiece's max_input_chars_per_word; set by _try_flash
        self.engine = "huggingface"
        self.why_not_flash = "off (TAGSTREAM_FAST_TOKENIZER=false)" if not fast else ""
        if fast:
            self._try_flash(json.loads(tokenizer_json))

    # -- the hot path --------------------------------------------------------------------------
    def encode(self, texts: list[str]) -> list[list[int]]:
        if self._flash is None or not texts:
            return self._hf_ids(texts)
        if self._passes("\n".join(texts)):  # the usual case: one scan, one call for all the texts
            rows = self._flash_ids(texts)
        else:
            rows = [None] * len(texts)
            # A text that is not ASCII goes to HF, known in O(1) (the string records it): the ASCII
            # ones are screened together again, one by one only when that fails too. A poll mixing
            # in a single non-ASCII text (most polls of SMS or web text) was screened text by text,
            # 3.5 µs a text.
            fast = [i for i, text in enumerate(texts) if text.isascii()]
            if not self._passes("\n".join(texts[i] for i in fast)):
                fast = [i for i in fast if self._passes(texts[i])]
            for i, ids in zip(fast, self._flash_ids([texts[i] for i in fast]), strict=True):
                rows[i] = ids
        slow = [i for i, ids in enumerate(rows) if ids is None]  # HF for what flash-tokenizer may not do
        for i, ids in zip(slow, self._hf_ids([texts[i] for i in slow]), strict=True):
            rows[i] = ids
        return rows  # type: ignore[return-value]  # every slot filled above

    def _hf_ids(self, texts: list[str]) -> list[list[int]]:
        return [enc.ids for enc in self._hf_encode(texts)] if texts else []

    def _flash_ids(self, texts: list[str]) -> list[list[int] | None]:
        """flash-tokenizer's ids cut to max_length as HF cuts them; None where that is unknowable.

        The two differ on the word that crosses flash-tokenizer's own length limit (it may give
        [UNK] for that word, or its first piece, where HF gives the pieces that fit), so it runs
        with ``_FLASH_HEADROOM`` more tokens than max_length and the ids are cut here: a row that
        ended below its limit is every piece of the text; a row that reached it is exact up to the
        last word start (the word that crossed), which must leave max_length - 2 pieces.
        """
        rows: list[list[int] | None] = []
        for start in range(0, len(texts), FLASH_CHUNK):
            if start:
                time.sleep(0)  # lets the worker's other threads take the GIL (module docstring)
            rows.extend(self._flash.batch_encode(texts[start : start + FLASH_CHUNK], "longest", self._flash_length, False))
        if max(map(len, rows), default=0) <= self.max_length:  # type: ignore[arg-type]
            return rows
        keep, sep, starts = self.max_length - 1, self._sep_id, self._word_start
        for i, ids in enumerate(rows):
            assert ids is not None
            if len(ids) <= self.max_length:
                continue
            if len(ids) < self._flash_length:
                rows[i] = [*ids[:keep], sep]
                continue
            end = len(ids) - 2  # the last piece before [SEP]
            while end > 0 and not starts[ids[end]]:
                end -= 1
            rows[i] = [*ids[:keep], sep] if end >= keep else None
        return rows

    def _passes(self, text: str) -> bool:
        """Whether flash-tokenizer gives HF's ids for ``text`` (module docstring)."""
        return (
            text.isascii()  # O(1) in CPython: the string object records it
            and not any(c in text for c in self._added_token_chars)
            and _longest_word(text.encode("ascii").translate(_TO_SPACES)) <= self._max_word_chars
        )

    # -- choosing the engine -------------------------------------------------------------------
    def _try_flash(self, spec: dict[str, Any]) -> None:
        if FlashBertTokenizer is None:
            self.why_not_flash = "flash-tokenizer is not installed"
            return
        layout = _bert_layout(spec)
        if isinstance(layout, str):
            self.why_not_flash = layout
            return
        vocab, lowercase, longest_word = layout
        self._sep_id = vocab.index("[SEP]")
        self._word_start = [not token.startswith("##") for token in vocab]
        # flash-tokenizer also gives [UNK] for a word longer than its length limit less one (not
        # WordPiece's limit): the limit must pass every word the screen lets through.
        self._flash_length = max(self.max_length, longest_word + 1) + _FLASH_HEADROOM
        # BertPreTokenizer cannot split an added token's text such as "[CLS]" when that text is one
        # word, so checking its first character (both cases: normalized tokens match after
        # lowercasing) is enough and stays one scan.
        self._added_token_chars = sorted(
            {
                c
                for token in spec.get("added_tokens") or ()
                for c in (token["content"][:1].lower(), token["content"][:1].upper())
                if c
            }
        )
        self._max_word_chars = longest_word
        with tempfile.TemporaryDirectory(prefix="tagstream-vocab-") as tmp:
            path = os.path.join(tmp, "vocab.txt")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write("\n".join(vocab) + "\n")
            self._flash = FlashBertTokenizer(path, lowercase, self._flash_length, True)
        probes = [text for text in _probes() if self._passes(text)]
        expected = self._hf_ids(probes)
        got = self._flash_ids(probes)
        differ = [
            text
            for text, a, b in zip(probes, expected, got, strict=True)
            if b is not None and a != b
        ]
        if differ:
            self._flash = None
            self.why_not_flash = (
                f"its ids differ from HF tokenizers' on {len(differ)} of {len(probes)} probe texts"
            )
            log.warning("fast_tokenizer_off", reason=self.why_not_flash, example=differ[0][:80])
            return
        self.engine = "flash-tokenizer for ASCII texts, huggingface otherwise"


def _longest_word(spaced: bytes) -> int:
    """The longest run of bytes other than spaces in ``spaced``: one split for a text, and for a
    poll's texts joined (about 120 KB) numpy's scan for spaces, which is five times cheaper than
    splitting it into some 25,000 words."""
    if len(spaced) < _NUMPY_SCREEN_BYTES:
        return max(map(len, spaced.split(b" ")))
    chars = np.frombuffer(spaced, dtype=np.uint8)
    spaces = np.flatnonzero(chars == _SPACE)
    if spaces.size == 0:
        return len(spaced)
    inner = int(np.diff(spaces).max()) - 1 if spaces.size > 1 else 0
    return max(int(spaces[0]), len(spaced) - 1 - int(spaces[-1]), inner)


def _bert_layout(spec: dict[str, Any]) -> tuple[list[str], bool, int] | str:
    """(vocab by id, lowercase, max_input_chars_per_word) when ``spec`` is BERT's uncased or cased
    WordPiece layout that flash-tokenizer implements; otherwise why not."""
    normalizer, pre, model, post = (
        spec.get(k) or {} for k in ("normalizer", "pre_tokenizer", "model", "post_processor")
    )
    if normalizer.get("type") != "BertNormalizer" or not normalizer.get("clean_text", False):
        return f"normalizer {normalizer.get('type')} is not BERT's"
    if pre.get("type") != "BertPreTokenizer":
        return f"pre-tokenizer {pre.get('type')} is not BERT's"
    if (
        model.get("type") != "WordPiece"
        or model.get("unk_token") != "[UNK]"
        or model.get("continuing_subword_prefix") != "##"
    ):
        return f"model {model.get('type')} is not BERT's WordPiece"
    vocab_ids: dict[str, int] = model.get("vocab") or {}
    vocab = sorted(vocab_ids, key=vocab_ids.__getitem__)
    if [vocab_ids[t] for t in vocab] != list(range(len(vocab))):
        return "the vocabulary's ids are not 0..n-1"
    if any(t != t.strip() or not t or "\n" in t for t in vocab):
        return "a vocabulary entry holds whitespace"
    cls, sep = vocab_ids.get("[CLS]"), vocab_ids.get("[SEP]")
    if post.get("type") == "TemplateProcessing":
        single = [next(iter(piece.values()))["id"] for piece in post.get("single") or ()]
        if single != ["[CLS]", "A", "[SEP]"]:
            return "the post-processor is not [CLS] $A [SEP]"
        specials = post.get("special_tokens") or {}
        if any(specials.get(t, {}).get("ids") != [vocab_ids.get(t)] for t in ("[CLS]", "[SEP]")):
            return "[CLS] or [SEP] have other ids than the vocabulary's"
    elif post.get("type") == "BertProcessing":
        if post.get("cls") != ["[CLS]", cls] or post.get("sep") != ["[SEP]", sep]:
            return "[CLS] or [SEP] have other ids than the vocabulary's"
    else:
        return f"post-processor {post.get('type')} is not BERT's"
    return (
        vocab,
        bool(normalizer.get("lowercase", True)),
        int(model.get("max_input_chars_per_word", 100)),
    )


def _probes() -> list[str]:
    """Texts for the self-check: sentences, edge cases and seeded random ASCII (control characters,
    punctuation runs, long words and texts longer than any max_length)."""
    fixed = [
        "",
        " ",
        "\t\n\r",
        "a",
        "A",
        "Hello, World!",
        "can't won't U.S.A. e-mail 3.14 $100 #tag @user",
        "Oil prices rose 3% on Tuesday (Reuters) - OPEC's output cut...",
        "ALL CAPS HEADLINE: Stocks FALL",
        "x" * 99,
        "y" * 100,
        "z" * 100 + " tail",
        "a\x00b\x01c\x7fd\x1ce",
        "email@example.com http://x.y/z?q=1&r=2",
        " ".join(["word"] * 300),
        "--- ... !!! ??? ''' \"\"\" ((( ))) <<< >>>",
        "1234567890 12,345.67 1e10 0x1F",
    ]
    rng = random.Random(20261130)
    letters = string.ascii_letters + string.digits
    chars = [chr(c) for c in range(128)]
    generated = []
    for n in range(400):
        pool = chars if n % 2 else letters + " .,;!?'-\n\t"
        generated.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 600))))
    return fixed + generated
