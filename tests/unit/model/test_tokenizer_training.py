"""Tokenizers: training, round trip, truncation, padding to the longest, reuse from a file."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models

from model.config import TokenizerConfig
from model.errors import TokenizerError
from model.tokenizer import (
    encode,
    encode_unpadded,
    load_tokenizer,
    lowercases,
    pad_id,
    prepare,
    save_tokenizer,
    train_tokenizer,
)

TEXTS = [
    "Stocks rallied as the Central Bank held rates.",
    "The home team won the cup final in extra time.",
    "Heavy rain and strong wind are forecast for Sunday.",
    "Café owners said prices rose again.",
] * 20


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_round_trip_gives_back_the_normalised_text(kind):
    """Decoding the ids of a text gives the text back, lowercased and without accents."""
    tok = train_tokenizer(TEXTS, TokenizerConfig(kind=kind, vocab_size=300, min_frequency=1))
    for text in ["Stocks rallied as the bank held rates.", "Café prices rose in the final."]:
        ids = tok.encode(text).ids
        expected = text.lower().replace("é", "e")
        decoded = tok.decode(ids)
        assert decoded.replace(" .", ".") == expected


def test_special_tokens_and_pad_id():
    """[PAD] is id 0 and every encoding starts with [CLS] and ends with [SEP]."""
    tok = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=200, min_frequency=1))
    assert pad_id(tok) == 0
    enc = tok.encode("rain today")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"


def test_cased_tokenizer_keeps_case():
    """lowercase=False keeps capitals and is recorded as not lowercasing."""
    tok = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300, min_frequency=1, lowercase=False))
    assert not lowercases(tok)
    assert "Stocks" in tok.decode(tok.encode("Stocks").ids)
    assert lowercases(train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300, min_frequency=1)))


def test_batch_pads_to_longest_and_truncates():
    """A batch is padded to its longest text, never beyond max_length (specials included)."""
    tok = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300, min_frequency=1))
    ready = prepare(tok, max_length=8)
    ids, mask = encode(ready, ["rain", "the home team won the cup final in extra time again"])
    assert ids.shape == (2, 8)
    assert mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert ids[0, 3:].tolist() == [0] * 5
    assert mask[1].sum() == 8
    ids, _ = encode(prepare(tok, 64), ["rain", "heavy rain"])
    assert ids.shape[1] == 4  # [CLS] heavy rain [SEP]
    assert [len(s) for s in encode_unpadded(tok, ["rain", "a b c d e f g h i"], 5)] == [3, 5]


def test_save_and_load_round_trip(tmp_path):
    """A saved tokenizer loads back with the same vocabulary and encodings."""
    tok = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300, min_frequency=1))
    path = save_tokenizer(prepare(tok, 8), tmp_path / "tokenizer.json")
    again = load_tokenizer(path)
    text = "strong wind in the final"
    assert again.encode(text).ids == tok.encode(text).ids
    assert again.truncation is None and again.padding is None


def test_loading_rejects_bad_files(tmp_path):
    """An unreadable file, or a tokenizer without a padding token, is a TokenizerError."""
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    with pytest.raises(TokenizerError, match="not a readable tokenizer"):
        load_tokenizer(junk)
    no_pad = tmp_path / "nopad.json"
    Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(no_pad))
    with pytest.raises(TokenizerError, match="padding token"):
        load_tokenizer(no_pad)
