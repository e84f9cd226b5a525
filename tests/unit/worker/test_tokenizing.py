"""The hot path's tokenizer: HF tokenizers' ids always, flash-tokenizer only where it gives them."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import worker.tokenizing as tokenizing
from model.config import TokenizerConfig
from model.tokenizer import train_tokenizer
from tests.worker_support import fixture_texts
from worker.tokenizing import HeadTokenizer, truncating_tokenizer

pytestmark = pytest.mark.skipif(
    tokenizing.FlashBertTokenizer is None, reason="flash-tokenizer has no wheel here"
)

MAX_LENGTH = 24


@pytest.fixture(scope="module")
def tokenizer_json() -> str:
    tok = train_tokenizer(
        [*fixture_texts(300, seed=7), "Café naïve 東京 résumé"],
        TokenizerConfig(vocab_size=300, min_frequency=1),
    )
    return str(tok.to_str())


@pytest.fixture(scope="module")
def shared_head(tokenizer_json: str) -> HeadTokenizer:
    return HeadTokenizer(tokenizer_json, MAX_LENGTH)


def reference(tokenizer_json: str, texts: list[str]) -> list[list[int]]:
    hf = truncating_tokenizer(tokenizer_json, MAX_LENGTH)
    return [enc.ids for enc in hf.encode_batch(texts)]


def record_flash_calls(head: HeadTokenizer) -> list[list[str]]:
    """Wrap ``head``'s flash-tokenizer; returns the list of texts of each call it gets from now on."""
    calls: list[list[str]] = []
    flash = head._flash

    class Recording:
        def batch_encode(self, texts: list[str], *args: object) -> list[list[int]]:
            calls.append(list(texts))
            return flash.batch_encode(texts, *args)

    head._flash = Recording()
    return calls


# Texts that stress both engines: ASCII with control characters and punctuation runs, Unicode
# (accents, CJK, emoji, zero-width and odd spaces), added tokens written as text, over-long words.
_ascii = st.text(alphabet=st.characters(max_codepoint=127), max_size=120)
_unicode = st.text(max_size=60)
_specials = st.sampled_from(
    ["[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]", "[cls]", "##ing", "[ CLS ]"]
)
_words = st.sampled_from(
    ["market", "shares", "rose", "FELL", "oil", "x" * 100, "y" * 101, "z" * 140, "tonight"]
)
_pieces = st.lists(st.one_of(_ascii, _unicode, _specials, _words), max_size=8).map(" ".join)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=st.lists(_pieces, min_size=1, max_size=12))
def test_head_tokenizer_gives_hf_tokenizers_ids_for_any_texts(
    tokenizer_json: str, shared_head: HeadTokenizer, texts: list[str]
) -> None:
    """Whatever the texts (ASCII, Unicode, special tokens written out, words past WordPiece's limit,
    texts past max_length), the fast path's ids are exactly HF tokenizers' with the same truncation."""
    assert shared_head.engine.startswith("flash-tokenizer")
    assert shared_head.encode(texts) == reference(tokenizer_json, texts)


def test_bert_layout_tokenizer_uses_flash_tokenizer_for_plain_ascii_texts(
    tokenizer_json: str,
) -> None:
    """A BERT-layout tokenizer passes the load-time self-check, and plain ASCII texts go to
    flash-tokenizer in one call."""
    head = HeadTokenizer(tokenizer_json, MAX_LENGTH)
    assert head.engine.startswith("flash-tokenizer") and head.why_not_flash == ""
    seen = record_flash_calls(head)
    texts = fixture_texts(50, seed=3)
    assert head.encode(texts) == reference(tokenizer_json, texts)
    assert seen == [texts]


def test_texts_flash_tokenizer_would_get_wrong_go_to_hf_in_the_same_call(
    tokenizer_json: str,
) -> None:
    """Non-ASCII texts, texts holding an added token and texts with a word past
    max_input_chars_per_word are tokenized by HF; the others still by flash-tokenizer; order kept."""
    head = HeadTokenizer(tokenizer_json, MAX_LENGTH)
    calls = record_flash_calls(head)
    plain = ["oil prices rose", "shares fell tonight", "call me later!"]
    tricky = ["café au lait", "see [CLS] you", "a " + "w" * 101 + " b"]
    texts = [plain[0], tricky[0], plain[1], tricky[1], tricky[2], plain[2]]
    assert head.encode(texts) == reference(tokenizer_json, texts)
    assert [text for call in calls for text in call] == plain


def test_a_poll_with_non_ascii_texts_screens_its_ascii_texts_together(
    tokenizer_json: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Non-ASCII texts among plain ones cost no screening text by text: the ASCII texts are
    screened joined (two scans in all), all of them go to flash-tokenizer in one call, the
    non-ASCII ones to HF, and the ids are HF's, in order."""
    head = HeadTokenizer(tokenizer_json, MAX_LENGTH)
    screened: list[str] = []
    passes = head._passes
    monkeypatch.setattr(head, "_passes", lambda text: screened.append(text) or passes(text))
    seen = record_flash_calls(head)
    plain = fixture_texts(40, seed=11)
    texts = [*plain[:15], "Café naïve", *plain[15:30], "東京 résumé £5", *plain[30:]]
    assert head.encode(texts) == reference(tokenizer_json, texts)
    assert seen == [plain]
    assert len(screened) == 2 and screened[1] == "\n".join(plain)


def test_a_word_of_exactly_the_limit_stays_on_the_fast_path(tokenizer_json: str) -> None:
    """A word of max_input_chars_per_word characters (100) is not over the limit: flash-tokenizer
    tokenizes it, with HF's ids."""
    head = HeadTokenizer(tokenizer_json, MAX_LENGTH)
    text = "the " + "q" * 100 + " end"
    assert head._passes(text) and not head._passes(text.replace("q" * 100, "q" * 101))
    assert head.encode([text]) == reference(tokenizer_json, [text])


def test_other_layouts_and_the_setting_fall_back_to_hf_with_the_reason() -> None:
    """A BPE tokenizer is not BERT's layout and TAGSTREAM_FAST_TOKENIZER=false turns the fast path
    off: both say why and still give HF's ids."""
    bpe = str(
        train_tokenizer(
            fixture_texts(200, seed=5), TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1)
        ).to_str()
    )
    head = HeadTokenizer(bpe, MAX_LENGTH)
    assert head.engine == "huggingface" and "not BERT's WordPiece" in head.why_not_flash
    texts = fixture_texts(20, seed=6)
    assert head.encode(texts) == reference(bpe, texts)
    wordpiece = str(
        train_tokenizer(
            fixture_texts(200, seed=5), TokenizerConfig(vocab_size=300, min_frequency=1)
        ).to_str()
    )
    off = HeadTokenizer(wordpiece, MAX_LENGTH, fast=False)
    assert off.engine == "huggingface" and "TAGSTREAM_FAST_TOKENIZER=false" in off.why_not_flash


def test_a_flash_tokenizer_that_disagrees_at_load_is_turned_off(
    tokenizer_json: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the self-check finds flash-tokenizer's ids differ from HF's on a probe text (a changed
    release, say), the tokenizer uses HF for every text and says so."""
    real = tokenizing.FlashBertTokenizer

    class OffByOne:
        def __init__(self, *args: object) -> None:
            self._inner = real(*args)

        def batch_encode(self, texts: list[str], *args: object) -> list[list[int]]:
            out = self._inner.batch_encode(texts, *args)
            return [
                [*ids[:-1], ids[-1] + 1] if "q" in text else ids
                for text, ids in zip(texts, out, strict=False)
            ]

    monkeypatch.setattr(tokenizing, "FlashBertTokenizer", OffByOne)
    head = HeadTokenizer(tokenizer_json, MAX_LENGTH)
    assert head.engine == "huggingface" and "differ from HF tokenizers'" in head.why_not_flash
    texts = ["quick quiet queue", "oil prices"]
    assert head.encode(texts) == reference(tokenizer_json, texts)


def test_probe_texts_cover_control_characters_long_words_and_long_texts() -> None:
    """The self-check's probes hold what the screen depends on: control characters, punctuation,
    words just under and at WordPiece's limit, and texts longer than any max_length."""
    probes = tokenizing._probes()
    joined = "".join(probes)
    assert any(c in joined for c in "\x00\x01\x7f") and set(string.punctuation) <= set(joined)
    assert "x" * 99 in probes and "y" * 100 in probes
    assert max(len(p.split()) for p in probes) >= 300


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=" ab.", max_size=6000))
def test_the_longest_word_screen_agrees_with_a_split_at_every_size(text):
    """The screen's two ways (one split for a text, numpy for a poll's texts joined) find the same
    longest word, wherever it is: first, last, alone, or none at all."""
    spaced = text.encode("ascii").translate(tokenizing._TO_SPACES)
    assert tokenizing._longest_word(spaced) == max(map(len, spaced.split(b" ")))
    padded = spaced + b" " * tokenizing._NUMPY_SCREEN_BYTES  # forces the numpy path
    assert tokenizing._longest_word(padded) == max(map(len, spaced.split(b" ")))
    word = b"w" * (len(spaced) + 1)  # over every word of the text, at the end of a long input
    assert tokenizing._longest_word(padded + word) == len(word)
    assert tokenizing._longest_word(word + b" " + padded) == len(word)
