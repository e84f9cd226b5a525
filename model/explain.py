"""Which tokens did the model look at? Attention-based token importance, printed and drawn.

    explain_text(explain_fn, tokenizer, text, ...) -> Explanation
    format_explanation(explanation) -> str        a ranked list with bars, for a terminal
    plot_explanation(explanation, path) -> path   heatmap PNG: per-layer attention + rollout

Importance is *attention rollout* (Abnar & Zuidema, 2020): each layer's attention, averaged
over heads, is mixed with the identity for the residual connection (0.5 A + 0.5 I), and the
layers are multiplied from the bottom up, giving how much each input token flows into each
final position. The pooled vector is the mean over real tokens (or the first token, for CLS
pooling), so a token's importance is the matching average of its rollout column. It shows
where information was routed, not a causal attribution: read it as a hint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from model import tokenizer as tok_lib

ExplainFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]


@dataclass
class Explanation:
    text: str
    tokens: list[str]  # as the model saw them, specials included, after truncation
    special: list[bool]  # True for [CLS], [SEP] and other special tokens
    labels: list[str]
    probabilities: list[float]  # one per label
    importance: list[float]  # rollout importance per token; sums to 1
    layer_attention: list[list[float]]  # (n_layers, T): attention each token receives per layer

    @property
    def label(self) -> str:
        return self.labels[int(np.argmax(self.probabilities))]

    def ranked(self, top: int = 10) -> list[tuple[str, float]]:
        """The ``top`` non-special tokens by importance, highest first."""
        pairs = [
            (t, s) for t, s, sp in zip(self.tokens, self.importance, self.special, strict=True)
            if not sp
        ]
        return sorted(pairs, key=lambda p: -p[1])[:top]

    def to_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "label": self.label,
            "scores": dict(zip(self.labels, self.probabilities, strict=True)),
            "tokens": [
                {"token": t, "importance": s, "special": sp}
                for t, s, sp in zip(self.tokens, self.importance, self.special, strict=True)
            ],
        }


def attention_rollout(attentions: Sequence[np.ndarray]) -> np.ndarray:
    """(T, T) rollout from per-layer attention (nh, T, T): row i = where position i's state came from."""
    rollout: np.ndarray | None = None
    for layer in attentions:
        a = layer.mean(axis=0)  # (T, T), heads averaged
        a = 0.5 * a + 0.5 * np.eye(a.shape[0])  # residual connection
        a = a / a.sum(axis=-1, keepdims=True)
        rollout = a if rollout is None else a @ rollout
    if rollout is None:
        raise ValueError("no attention layers to roll out")
    return rollout


@torch.inference_mode()
def explain_text(
    explain_fn: ExplainFn,
    tokenizer: Tokenizer,
    text: str,
    labels: Sequence[str],
    *,
    max_length: int,
    pooling: str = "mean",
) -> Explanation:
    """Run one text through ``explain_fn`` (a bundle's ``model.explain``) and score its tokens."""
    ready = tok_lib.prepare(tokenizer, max_length)
    encoding = ready.encode(text)
    ids = torch.tensor([encoding.ids], dtype=torch.long)
    mask = torch.tensor([encoding.attention_mask], dtype=torch.long)
    probs, attentions = explain_fn(ids, mask)
    layers = [a[0].float().cpu().numpy() for a in attentions]  # each (nh, T, T)
    rollout = attention_rollout(layers)
    importance = rollout[0] if pooling == "cls" else rollout.mean(axis=0)
    importance = importance / importance.sum()
    received = [layer.mean(axis=0).mean(axis=0) for layer in layers]  # each (T,)
    return Explanation(
        text=text,
        tokens=list(encoding.tokens),
        special=[bool(s) for s in encoding.special_tokens_mask],
        labels=list(labels),
        probabilities=[float(p) for p in probs[0]],
        importance=[float(s) for s in importance],
        layer_attention=[[float(v) for v in r] for r in received],
    )


def format_explanation(explanation: Explanation, top: int = 10, width: int = 30) -> str:
    """Prediction, scores and the top tokens with a bar each, ready to print."""
    lines = [f"prediction: {explanation.label}"]
    for label, p in sorted(
        zip(explanation.labels, explanation.probabilities, strict=True), key=lambda x: -x[1]
    ):
        lines.append(f"  {label:<20} {p:.4f}")
    ranked = explanation.ranked(top)
    lines.append(f"tokens the model attended to most (attention rollout, top {len(ranked)}):")
    peak = max((s for _, s in ranked), default=1.0) or 1.0
    for token, score in ranked:
        bar = "#" * max(1, round(width * score / peak))
        lines.append(f"  {token:<20} {score:.3f} {bar}")
    return "\n".join(lines)


def plot_explanation(explanation: Explanation, path: str | Path) -> Path:
    """Heatmap PNG: one row per layer (attention received) and a last row for the rollout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = np.array(
        [_normalise(r) for r in explanation.layer_attention] + [_normalise(explanation.importance)]
    )
    names = [f"layer {i + 1}" for i in range(len(explanation.layer_attention))] + ["rollout"]
    n = len(explanation.tokens)
    fig, ax = plt.subplots(figsize=(min(24.0, 2.0 + 0.45 * n), 1.2 + 0.45 * len(names)))
    image = ax.imshow(rows, cmap="viridis", aspect="auto", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), explanation.tokens, rotation=70, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.set_title(
        f"{explanation.label} ({max(explanation.probabilities):.2f}): attention received per token"
    )
    fig.colorbar(image, ax=ax, label="relative within the row (min 0, max 1)")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _normalise(row: Sequence[float]) -> np.ndarray:
    """Stretch a row to [0, 1] (min to max): attention is spread thin, so contrast matters."""
    values = np.asarray(row, dtype=np.float64)
    if not values.size:
        return values
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.ones_like(values)
