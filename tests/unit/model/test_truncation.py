"""Long texts: the windows each strategy reads, and pooling window probabilities per text."""

from __future__ import annotations

import numpy as np
import pytest

from model import truncation as trunc
from model.truncation import Truncation, TruncationError, Windower, pool, resolve

LONG = " ".join(f"word{i % 50} rain storm" for i in range(60))  # far over 16 tokens


def _content(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False).ids


def test_head_is_exactly_the_tokenizer_truncation(tokenizer):
    """head gives what the tokenizer's own truncation gives: what every bundle read before."""
    w = Windower(tokenizer, 16)
    tokenizer_copy = tokenizer.__class__.from_str(tokenizer.to_str())
    tokenizer_copy.enable_truncation(max_length=16)
    assert w.windows([LONG, "rain"]) == [[tokenizer_copy.encode(LONG).ids], [tokenizer_copy.encode("rain").ids]]


def test_short_texts_read_the_same_under_every_strategy(tokenizer):
    """A text that fits one window is that one window, whatever the strategy."""
    windows = {s: Windower(tokenizer, 32, resolve(s, 32)).windows(["heavy rain today"]) for s in trunc.STRATEGIES}
    assert windows["head"] == windows["head+tail"] == windows["chunks"]
    assert len(windows["chunks"][0]) == 1


def test_head_tail_keeps_the_start_and_the_end(tokenizer):
    """head+tail reads the first head_tokens and the last (budget - head_tokens) tokens."""
    w = Windower(tokenizer, 16, Truncation(strategy="head+tail", head_tokens=4))
    content = _content(tokenizer, LONG)
    [[window]] = w.windows([LONG])
    assert len(window) == 16
    assert window[1:-1] == content[:4] + content[-10:]
    assert window[0] == tokenizer.token_to_id("[CLS]") and window[-1] == tokenizer.token_to_id("[SEP]")


def test_chunks_cover_the_text_with_overlapping_windows(tokenizer):
    """chunks: windows every stride tokens, each <= max_length with specials, the last one at the end."""
    content = _content(tokenizer, LONG)
    w = Windower(tokenizer, 16, Truncation(strategy="chunks", stride=10, max_windows=100))
    [windows] = w.windows([LONG])
    assert all(len(x) <= 16 and x[0] == tokenizer.token_to_id("[CLS]") for x in windows)
    assert windows[0][1:-1] == content[:14] and windows[1][1:-1] == content[10:24]
    assert windows[-1][1:-1] == content[-14:]


def test_chunks_stop_at_max_windows(tokenizer):
    """No text is read as more than max_windows windows: the first ones."""
    w = Windower(tokenizer, 16, Truncation(strategy="chunks", stride=14, max_windows=3))
    [windows] = w.windows([LONG])
    assert len(windows) == 3
    assert windows[0][1:-1] == _content(tokenizer, LONG)[:14]


def test_texts_are_encoded_a_chunk_at_a_time(tokenizer, monkeypatch):
    """The tokenizer never holds more than ENCODE_CHUNK texts' encodings at once (memory bound)."""
    monkeypatch.setattr(trunc, "ENCODE_CHUNK", 4)
    w = Windower(tokenizer, 16, resolve("chunks", 16))
    sizes = []
    real = w._bare.encode_batch

    class Spy:
        def encode_batch(self, texts, add_special_tokens=True):
            sizes.append(len(texts))
            return real(texts, add_special_tokens=add_special_tokens)

    w._bare = Spy()  # type: ignore[assignment]
    assert len(w.windows([LONG] * 10)) == 10
    assert sizes == [4, 4, 2]


def test_settings_are_checked():
    """Unknown strategies, poolings and impossible sizes are refused with the setting named."""
    with pytest.raises(TruncationError, match="strategy"):
        Truncation(strategy="middle")
    with pytest.raises(TruncationError, match="pooling"):
        Truncation(strategy="chunks", stride=4, pooling="median")
    with pytest.raises(TruncationError, match="stride"):
        resolve("chunks", 16, stride=99)
    with pytest.raises(TruncationError, match="head-tokens"):
        resolve("head+tail", 16, head_tokens=50)


def test_bundles_without_the_key_read_head():
    """from_dict(None) and from_dict({}) are head: what bundles before strategies meant."""
    assert Truncation.from_dict(None) == Truncation.from_dict({}) == Truncation()
    t = resolve("chunks", 128)
    assert Truncation.from_dict(t.to_dict()) == t and t.stride == 94 and t.max_windows == 8


def test_pooling_per_text():
    """mean averages a text's windows, max takes each label's best (renormalised if single-label)."""
    probs = np.array([[0.6, 0.4], [0.2, 0.8], [0.9, 0.1]], dtype=np.float32)  # text 0: 2 windows
    assert np.allclose(pool(probs, [2, 1], "mean"), [[0.4, 0.6], [0.9, 0.1]])
    assert np.allclose(pool(probs, [2, 1], "max"), [[0.6 / 1.4, 0.8 / 1.4], [0.9, 0.1]])
    assert np.allclose(pool(probs, [2, 1], "max", multi_label=True), [[0.6, 0.8], [0.9, 0.1]])
    assert pool(probs, [1, 1, 1], "max") is not None and np.array_equal(pool(probs, [1, 1, 1], "max"), probs)
