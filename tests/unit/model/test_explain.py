"""Attention-based explanations: rollout maths, token importance, the heatmap."""

from __future__ import annotations

import numpy as np
import pytest

from model.explain import attention_rollout, explain_text, format_explanation, plot_explanation
from model.export import eager_probability_model


def test_rollout_rows_are_distributions_and_follow_attention():
    """Rollout rows sum to 1, and a token everybody attends to collects the most."""
    T = 4
    focused = np.zeros((2, T, T))
    focused[:, :, 2] = 1.0  # every head, every query looks at token 2
    rollout = attention_rollout([focused, focused])
    assert np.allclose(rollout.sum(axis=1), 1.0)
    assert rollout.mean(axis=0).argmax() == 2


def test_explain_text_scores_every_token(make_model, tokenizer):
    """Every token gets an importance, they sum to 1, and specials are flagged."""
    model = eager_probability_model(make_model(vocab_size=tokenizer.get_vocab_size(), n_layers=2))
    e = explain_text(model.explain, tokenizer, "Heavy rain and storm today", ["a", "b", "c"],
                     max_length=64)
    assert e.tokens[0] == "[CLS]" and e.tokens[-1] == "[SEP]"
    assert e.special[0] and e.special[-1] and not any(e.special[1:-1])
    assert sum(e.importance) == pytest.approx(1.0)
    assert len(e.layer_attention) == 2 and all(len(r) == len(e.tokens) for r in e.layer_attention)
    assert all(not t.startswith("[") for t, _ in e.ranked())
    assert e.label in ("a", "b", "c")
    text = format_explanation(e, top=3)
    assert text.startswith(f"prediction: {e.label}") and text.count("#") >= 3


def test_heatmap_png_is_written(make_model, tokenizer, tmp_path):
    """plot_explanation writes a PNG file."""
    model = eager_probability_model(make_model(vocab_size=tokenizer.get_vocab_size()))
    e = explain_text(model.explain, tokenizer, "market shares fall", ["a", "b", "c"], max_length=64)
    path = plot_explanation(e, tmp_path / "sub" / "x.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
