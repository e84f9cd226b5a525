"""The encoder: shapes, padding invariance (eager and compiled), determinism, parity."""

from __future__ import annotations

import pytest
import torch

from model.encoder import EncoderClassifier, ProbabilityModel
from model.export import script

VARIANTS = [
    {},
    {"pooling": "cls"},
    {"norm": "post", "embedding_norm": True, "final_norm": False, "type_vocab_size": 2,
     "layer_norm_eps": 1e-12},
    {"positional": "sinusoidal", "activation": "relu", "n_layers": 2},
]


def _sharpen(model: EncoderClassifier, seed: int = 0) -> EncoderClassifier:
    """Redraw weights large enough that any leak through padding would move the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def _batch(lengths: list[int], vocab: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded batch whose padded positions hold random (non-pad) ids: masking must hide them."""
    gen = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), T), generator=gen)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return ids, mask


def test_forward_shapes(make_model):
    """Logits are (B, n_classes); with attention, one (B, nh, T, T) map per layer."""
    model = make_model(n_layers=2)
    ids, mask = _batch([5, 9, 3], 200)
    assert model(ids, mask).shape == (3, 3)
    logits, attentions = model.forward_with_attention(ids, mask)
    assert logits.shape == (3, 3)
    assert len(attentions) == 2
    assert all(a.shape == (3, 2, 9, 9) for a in attentions)
    probs = ProbabilityModel(model)(ids, mask)
    assert probs.dtype == torch.float32
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-6)


def test_attention_ignores_padded_keys(make_model):
    """Attention probabilities on padded key positions are exactly zero."""
    model = _sharpen(make_model())
    ids, mask = _batch([4, 9], 200)
    _, attentions = model.forward_with_attention(ids, mask)
    assert torch.all(attentions[0][0, :, :, 4:] == 0)


@pytest.mark.parametrize("variant", VARIANTS, ids=["default", "cls", "bert-like", "sinusoidal-relu"])
def test_padding_never_changes_probabilities(make_model, variant):
    """A text alone and the same text padded inside a batch agree within 1e-5, eager and compiled."""
    model = _sharpen(make_model(**variant))
    eager = ProbabilityModel(model).eval()
    compiled = script(eager)
    lengths = [3, 11, 7, 17]
    ids, mask = _batch(lengths, 200)
    with torch.inference_mode():
        for fn in (eager, compiled):
            batched = fn(ids, mask)
            for i, n in enumerate(lengths):
                alone = fn(ids[i : i + 1, :n], mask[i : i + 1, :n])
                assert (alone - batched[i : i + 1]).abs().max() <= 1e-5


def test_explicit_attention_path_matches_fast_path(make_model):
    """The explain path (explicit softmax) gives the same logits as the SDPA path."""
    model = _sharpen(make_model(n_layers=2))
    ids, mask = _batch([6, 13], 200)
    with torch.inference_mode():
        fast = model(ids, mask)
        explicit, _ = model.forward_with_attention(ids, mask)
    assert (fast - explicit).abs().max() <= 1e-5


def test_compiled_matches_eager(make_model):
    """The TorchScript model's probabilities equal the eager model's within 1e-5."""
    eager = ProbabilityModel(_sharpen(make_model(n_layers=2))).eval()
    compiled = script(eager)
    ids, mask = _batch([2, 8, 15, 30], 200)
    with torch.inference_mode():
        assert (compiled(ids, mask) - eager(ids, mask)).abs().max() <= 1e-5
        p1, a1 = compiled.explain(ids, mask)
        p2, a2 = eager.explain(ids, mask)
    assert (p1 - p2).abs().max() <= 1e-5
    assert len(a1) == len(a2) == 2


def test_same_seed_same_model(make_model):
    """Two models built with the same seed have identical weights; another seed differs."""
    a, b, c = make_model(seed=7), make_model(seed=7), make_model(seed=8)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


def test_pad_embedding_row_is_zero(make_model):
    """The [PAD] embedding starts at zero (and gets no gradient)."""
    model = make_model()
    assert torch.all(model.embeddings.tokens.weight[model.config.pad_id] == 0)
