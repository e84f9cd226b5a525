"""Explanations: rollout and attention x gradient maths, special tokens left out, the heatmap."""

from __future__ import annotations

import numpy as np
import pytest

from model.explain import (
    Explanation,
    attention_rollout,
    drawable_tokens,
    explain_text,
    format_explanation,
    gradient_relevance,
    plot_explanation,
)
from model.export import eager_probability_model


def test_rollout_rows_are_distributions_and_follow_attention():
    """Rollout rows sum to 1, and a token everybody attends to collects the most."""
    T = 4
    focused = np.zeros((2, T, T))
    focused[:, :, 2] = 1.0  # every head, every query looks at token 2
    rollout = attention_rollout([focused, focused])
    assert np.allclose(rollout.sum(axis=1), 1.0)
    assert rollout.mean(axis=0).argmax() == 2


def test_gradient_relevance_keeps_only_attention_that_helped():
    """Attention with a positive gradient adds relevance; attention with a negative one adds none."""
    T = 3
    attention = np.zeros((1, T, T))
    attention[0, :, 1] = 0.5
    attention[0, :, 2] = 0.5
    gradient = np.zeros((1, T, T))
    gradient[0, :, 1] = 1.0  # attending to token 1 raised the probability
    gradient[0, :, 2] = -1.0  # attending to token 2 lowered it
    relevance = gradient_relevance([attention], [gradient]).mean(axis=0)
    assert relevance[1] > relevance[0] and relevance[2] == pytest.approx(relevance[0])


def test_explain_text_scores_real_tokens_and_leaves_specials_out(make_model, tokenizer):
    """Both scores cover every token, specials get 0, the real tokens' scores sum to 1."""
    model = eager_probability_model(make_model(vocab_size=tokenizer.get_vocab_size(), n_layers=2))
    e = explain_text(model.explain, tokenizer, "Heavy rain and storm today", ["a", "b", "c"],
                     max_length=64)
    assert e.tokens[0] == "[CLS]" and e.tokens[-1] == "[SEP]"
    assert e.special[0] and e.special[-1] and not any(e.special[1:-1])
    assert e.gradient is not None and not e.gradient_note
    for scores in (e.importance, e.gradient):
        assert len(scores) == len(e.tokens)
        assert scores[0] == 0.0 and scores[-1] == 0.0
        assert sum(scores) == pytest.approx(1.0)
    assert len(e.layer_attention) == 2 and all(len(r) == len(e.tokens) for r in e.layer_attention)
    assert all(not t.startswith("[") for t, _, _ in e.ranked())
    assert e.label in ("a", "b", "c")
    text = format_explanation(e, top=3)
    assert text.startswith(f"prediction: {e.label}") and "attention x gradient" in text and text.count("#") >= 3


def test_explain_a_chosen_label(make_model, tokenizer):
    """--label explains the label asked for, not the most probable one."""
    model = eager_probability_model(make_model(vocab_size=tokenizer.get_vocab_size()))
    first = explain_text(model.explain, tokenizer, "market shares fall", ["a", "b", "c"], max_length=64)
    other = next(x for x in ("a", "b", "c") if x != first.label)
    e = explain_text(model.explain, tokenizer, "market shares fall", ["a", "b", "c"], max_length=64,
                     target=other)
    assert e.label == other


def test_int8_models_fall_back_to_rollout_and_say_why(make_model, tokenizer):
    """A model without gradients (int8) still explains by rollout and names the reason."""
    model = eager_probability_model(make_model(vocab_size=tokenizer.get_vocab_size()), "int8")
    e = explain_text(model.explain, tokenizer, "storm warning", ["a", "b", "c"], max_length=64,
                     gradients=False)
    assert e.gradient is None and "int8" in e.gradient_note
    assert "unavailable" in format_explanation(e)


def test_heatmap_png_is_written(make_model, tokenizer, tmp_path):
    """plot_explanation writes a PNG file."""
    model = eager_probability_model(make_model(vocab_size=tokenizer.get_vocab_size()))
    e = explain_text(model.explain, tokenizer, "market shares fall", ["a", "b", "c"], max_length=64)
    path = plot_explanation(e, tmp_path / "sub" / "x.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_a_heatmap_of_tokens_and_a_label_no_font_has_draws_no_empty_boxes(monkeypatch, tmp_path):
    """Chinese tokens and a Chinese label without a font for them: every text of the figure (tick labels, title,
    note) names them by code point, so matplotlib has no glyph to miss (it warned once per glyph of the note)."""
    import warnings

    import model.explain as explain_lib

    monkeypatch.setattr(explain_lib, "find_font", lambda chars: None)
    tokens = ["[CLS]", "股", "票", "rain", "[SEP]"]
    e = Explanation(
        text="股票 rain", tokens=tokens, special=[True, False, False, False, True], labels=["财经", "sports"],
        probabilities=[0.9, 0.1], target=0, importance=[0.0, 0.5, 0.3, 0.2, 0.0],
        layer_attention=[[0.1, 0.4, 0.3, 0.2, 0.0]],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = plot_explanation(e, tmp_path / "zh.png")
    glyphs = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert path.read_bytes()[:4] == b"\x89PNG" and glyphs == []


def test_tokens_no_font_can_draw_become_code_points_with_a_note(monkeypatch):
    """Without a font for CJK, such characters are drawn as U+XXXX and the figure says how to fix it."""
    import model.explain as explain_lib

    monkeypatch.setattr(explain_lib, "find_font", lambda chars: None)
    labels, note = drawable_tokens(["[CLS]", "股", "rain", "[SEP]"])
    assert labels == ["[CLS]", "U+80A1", "rain", "[SEP]"]
    assert "make fonts" in note and "U+80A1" in note and "股" not in note  # the note is drawn in the same font
    assert drawable_tokens(["rain", "snow"]) == (["rain", "snow"], "")
