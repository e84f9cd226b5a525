"""Which tokens mattered? Two token-importance scores, printed and drawn.

    explain_text(explain_fn, tokenizer, text, labels, ...) -> Explanation
    format_explanation(explanation) -> str        ranked tokens with bars, for a terminal
    plot_explanation(explanation, path) -> path   heatmap PNG: per-layer attention, rollout,
                                                  attention x gradient

Two scores per token, both from the bundle's own ``model.explain`` (nothing else is needed):

- *attention x gradient* (Chefer et al. 2021, "Generic attention-model explainability"): each
  layer's attention map is weighted by the gradient of the explained label's probability with
  respect to it, negative contributions dropped, heads averaged, and the layers are combined as
  in rollout (``R = R + Ā R``). It is specific to the label explained and says which tokens
  *pushed* the model towards it; the ranking uses it.
- *attention rollout* (Abnar & Zuidema 2020): attention averaged over heads, mixed with the
  identity for the residual connection, multiplied through the layers. It shows where
  information flowed, whatever the label: a hint, not an attribution.

Special tokens ([CLS], [SEP]) are left out of both: they soak up attention (the first token
always takes a row's maximum) and would flatten every other token into the background. Scores
are normalised over the real tokens. int8 bundles have no gradients (their quantized layers do
not differentiate): they get the rollout alone, and say so.

A text read as several windows (``chunks``) is explained in the window that gave the explained
label its highest probability; the output names the window.

Tokens in scripts the default font lacks (Chinese, Japanese, ...) are drawn with an installed
font that has them (any font matplotlib or the system knows: ``make fonts`` installs
WenQuanYi Micro Hei on Debian); when there is none, those characters are drawn as code points
(``U+4E2D``) and the figure says so. The terminal output always prints the tokens as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from model.truncation import Truncation, Windower, pool

ExplainFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]

FONT_HINT = "make fonts (Debian: apt-get install fonts-wqy-microhei)"


@dataclass
class Explanation:
    text: str
    tokens: list[str]  # as the model saw them in the explained window, specials included
    special: list[bool]  # True for [CLS], [SEP] and other special tokens
    labels: list[str]
    probabilities: list[float]  # per label, for the whole text (windows pooled)
    target: int  # index of the label explained
    importance: list[float]  # rollout per token; 0 for specials, the rest sums to 1
    layer_attention: list[list[float]]  # (n_layers, T): attention each token receives per layer
    gradient: list[float] | None = None  # attention x gradient per token, same scaling; None: n/a
    gradient_note: str = ""  # why there is no gradient score
    window: int = 0  # which window was explained (0-based)
    n_windows: int = 1
    thresholds: list[float] | None = None  # multi-label: a tag is on at or over its threshold
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.labels[self.target]

    @property
    def multi_label(self) -> bool:
        return self.thresholds is not None

    @property
    def tags(self) -> list[str]:
        """Multi-label: the labels at or over their thresholds, most probable first."""
        if self.thresholds is None:
            return [self.label]
        on = [i for i, (p, t) in enumerate(zip(self.probabilities, self.thresholds, strict=True)) if p >= t]
        return [self.labels[i] for i in sorted(on, key=lambda i: -self.probabilities[i])]

    def scores(self) -> list[float]:
        """What the ranking uses: attention x gradient where available, else rollout."""
        return self.gradient if self.gradient is not None else self.importance

    def ranked(self, top: int = 10) -> list[tuple[str, float, float]]:
        """The ``top`` real tokens: (token, ranking score, rollout), highest first."""
        rows = [
            (t, s, r) for t, s, r, sp in zip(self.tokens, self.scores(), self.importance, self.special, strict=True)
            if not sp
        ]
        return sorted(rows, key=lambda p: -p[1])[:top]

    def _gradient_or_none(self) -> list[float | None]:
        return list(self.gradient) if self.gradient is not None else [None] * len(self.tokens)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "text": self.text,
            "label": self.label,
            "scores": dict(zip(self.labels, self.probabilities, strict=True)),
            "window": self.window,
            "windows": self.n_windows,
            "tokens": [
                {"token": t, "importance": s, "gradient": g, "special": sp}
                for t, s, g, sp in zip(
                    self.tokens, self.importance, self._gradient_or_none(), self.special,
                    strict=True,
                )
            ],
        }
        if self.thresholds is not None:
            out["labels"] = self.tags
            out["thresholds"] = dict(zip(self.labels, self.thresholds, strict=True))
        if self.gradient_note:
            out["gradient_note"] = self.gradient_note
        return out


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


def gradient_relevance(attentions: Sequence[np.ndarray], gradients: Sequence[np.ndarray]) -> np.ndarray:
    """(T, T) relevance from attention maps and their gradients, each (nh, T, T) (Chefer 2021).

    ``R = I``, then per layer ``R = R + Ā R`` with ``Ā`` the heads' mean of the positive part of
    attention x gradient; the identity (each position's own residual stream, the same for every
    token) is subtracted at the end, leaving what attention moved.
    """
    T = attentions[0].shape[-1]
    relevance = np.eye(T)
    for a, g in zip(attentions, gradients, strict=True):
        weighted = np.clip(a * g, 0.0, None).mean(axis=0)  # (T, T): heads averaged, positives only
        relevance = relevance + weighted @ relevance
    return relevance - np.eye(T)


def explain_text(
    explain_fn: ExplainFn,
    tokenizer: Tokenizer,
    text: str,
    labels: Sequence[str],
    *,
    max_length: int,
    pooling: str = "mean",
    truncation: Truncation | None = None,
    thresholds: Sequence[float] | None = None,
    target: str | None = None,
    gradients: bool = True,
) -> Explanation:
    """Explain one text with ``explain_fn`` (a bundle's ``model.explain``); see the docstring.

    ``pooling`` is the encoder's (mean or cls); ``truncation`` how the bundle reads texts;
    ``thresholds`` make it a multi-label explanation; ``target`` names the label to explain
    (default: the most probable one). ``gradients=False`` (int8 models, whose quantized layers
    have no backward) explains by rollout alone.
    """
    truncation = truncation or Truncation()
    windower = Windower(tokenizer, max_length, truncation)
    windows = windower.windows([text])[0]
    multi_label = thresholds is not None
    with torch.inference_mode():
        batch_ids, batch_mask = _padded(windows, _pad_id(tokenizer))
        window_probs = explain_fn(batch_ids, batch_mask)[0].float().numpy()  # (W, L)
    probs = pool(window_probs, [len(windows)], truncation.pooling, multi_label)[0]
    if target is None:
        index = int(np.argmax(probs))
    elif target in labels:
        index = list(labels).index(target)
    else:
        raise ValueError(f"label {target!r} is not one of the bundle's labels {list(labels)}")
    w = int(np.argmax(window_probs[:, index]))
    ids = torch.tensor([windows[w]], dtype=torch.long)
    mask = torch.ones_like(ids)
    if gradients:
        layers, grads, note = _attention_and_gradients(explain_fn, ids, mask, index)
    else:
        with torch.inference_mode():
            layers = [a[0].float().numpy() for a in explain_fn(ids, mask)[1]]
        grads, note = None, "int8 model: its quantized layers have no gradients (export fp32 to get them)"
    special_ids = set(windower.prefix + windower.suffix)
    special = [i in special_ids for i in windows[w]]
    rollout = attention_rollout(layers)
    importance = rollout[0] if pooling == "cls" else rollout.mean(axis=0)
    gradient = None
    if grads is not None:
        relevance = gradient_relevance(layers, grads)
        gradient = _over_real_tokens(relevance[0] if pooling == "cls" else relevance.mean(axis=0), special)
    received = [layer.mean(axis=0).mean(axis=0) for layer in layers]  # each (T,)
    return Explanation(
        text=text,
        tokens=[tokenizer.id_to_token(i) or "?" for i in windows[w]],
        special=special,
        labels=list(labels),
        probabilities=[float(p) for p in probs],
        target=index,
        importance=_over_real_tokens(importance, special),
        layer_attention=[[float(v) for v in r] for r in received],
        gradient=gradient,
        gradient_note=note,
        window=w,
        n_windows=len(windows),
        thresholds=[float(t) for t in thresholds] if thresholds is not None else None,
    )


def _attention_and_gradients(
    explain_fn: ExplainFn, ids: torch.Tensor, mask: torch.Tensor, index: int
) -> tuple[list[np.ndarray], list[np.ndarray] | None, str]:
    """Per layer (nh, T, T): attention, and its gradient w.r.t. the label's probability."""
    with torch.enable_grad():
        probs, attentions = explain_fn(ids, mask)
        layers = [a[0].detach().float().numpy() for a in attentions]
        try:
            grads = torch.autograd.grad(probs[0, index], attentions, allow_unused=True)
        except RuntimeError as exc:  # e.g. int8: quantized layers have no backward
            return layers, None, f"no gradients through this model ({str(exc).splitlines()[0][:120]})"
    if any(g is None for g in grads):
        return layers, None, "the attention maps are not connected to the output"
    return layers, [g[0].float().numpy() for g in grads if g is not None], ""


def _padded(windows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(w) for w in windows)
    ids = torch.full((len(windows), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(windows), longest), dtype=torch.long)
    for i, w in enumerate(windows):
        ids[i, : len(w)] = torch.tensor(w, dtype=torch.long)
        mask[i, : len(w)] = 1
    return ids, mask


def _pad_id(tokenizer: Tokenizer) -> int:
    for token in ("[PAD]", "<pad>"):
        idx = tokenizer.token_to_id(token)
        if idx is not None:
            return idx
    return 0


def _over_real_tokens(values: np.ndarray, special: Sequence[bool]) -> list[float]:
    """Specials set to 0; the real tokens' values scaled to sum to 1."""
    v = np.asarray(values, dtype=np.float64).copy()
    v[np.asarray(special, dtype=bool)] = 0.0
    v = np.clip(v, 0.0, None)
    total = v.sum()
    return [float(x) for x in (v / total if total > 0 else v)]


def format_explanation(explanation: Explanation, top: int = 10, width: int = 30) -> str:
    """Prediction, scores and the top tokens with a bar each, ready to print."""
    e = explanation
    if e.multi_label:
        lines = [f"tags: {', '.join(e.tags) if e.tags else '(none over its threshold)'}"]
        assert e.thresholds is not None
        order = sorted(range(len(e.labels)), key=lambda i: -e.probabilities[i])
        for i in order[: max(top, len(e.tags))]:
            on = "*" if e.probabilities[i] >= e.thresholds[i] else " "
            lines.append(f" {on}{e.labels[i]:<20} {e.probabilities[i]:.4f}  (threshold {e.thresholds[i]:.2f})")
    else:
        lines = [f"prediction: {e.label}"]
        for label, p in sorted(zip(e.labels, e.probabilities, strict=True), key=lambda x: -x[1]):
            lines.append(f"  {label:<20} {p:.4f}")
    if e.n_windows > 1:
        lines.append(f"explained in window {e.window + 1} of {e.n_windows} (the one scoring {e.label!r} highest)")
    ranked = e.ranked(top)
    method = "attention x gradient" if e.gradient is not None else "attention rollout"
    lines.append(f"tokens that mattered most for {e.label!r} ({method}, top {len(ranked)}; rollout beside it):")
    if e.gradient is None and e.gradient_note:
        lines.append(f"  (attention x gradient unavailable: {e.gradient_note})")
    peak = max((s for _, s, _ in ranked), default=1.0) or 1.0
    for token, score, rollout in ranked:
        bar = "#" * max(1, round(width * score / peak))
        extra = f"  rollout {rollout:.3f}" if e.gradient is not None else ""
        lines.append(f"  {_pad(token, 20)} {score:.3f} {bar:<{width}}{extra}")
    return "\n".join(lines)


def _pad(token: str, width: int) -> str:
    """Left-align in terminal columns: CJK characters take two."""
    import unicodedata

    cols = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in token)
    return token + " " * max(0, width - cols)


def plot_explanation(explanation: Explanation, path: str | Path) -> Path:
    """Heatmap PNG: one row per layer (attention received), rollout, and attention x gradient.

    Each row is stretched to [0, 1] over the real tokens; special tokens are drawn grey.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = explanation
    special = np.asarray(e.special, dtype=bool)
    rows = [_normalise(r, special) for r in e.layer_attention] + [_normalise(e.importance, special)]
    names = [f"layer {i + 1}" for i in range(len(e.layer_attention))] + ["rollout"]
    if e.gradient is not None:
        rows.append(_normalise(e.gradient, special))
        names.append("attention x gradient")
    grid = np.ma.masked_array(np.array(rows), mask=np.broadcast_to(special, (len(rows), special.size)))
    # The label explained is drawn too (the title): a label no installed font has goes by code point.
    texts = [*e.tokens, e.label]
    drawn, note = drawable_tokens(texts)
    labels, title_label = drawn[:-1], drawn[-1]
    n = len(e.tokens)
    with matplotlib.rc_context(font_rc(texts) if not note else None):
        fig, ax = plt.subplots(figsize=(min(24.0, 3.0 + 0.45 * n), 1.6 + 0.45 * len(names)))
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
        image = ax.imshow(grid, cmap=cmap, aspect="auto", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(n), labels, rotation=70, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names)
        where = f", window {e.window + 1}/{e.n_windows}" if e.n_windows > 1 else ""
        ax.set_title(f"{title_label} ({e.probabilities[e.target]:.2f}{where}): token importance"
                     " (grey: special tokens, left out)", fontsize=10)
        fig.colorbar(image, ax=ax, label="relative within the row\n(min 0, max 1)", fraction=0.03, pad=0.02)
        if note:  # as the x axis's label: below the (rotated) token labels, never over them
            ax.set_xlabel(note, fontsize=7, color="#a50f15", loc="left")
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        # bbox "tight": the colour bar's label stays inside the image, however wide the figure.
        fig.savefig(out, dpi=120, bbox_inches="tight")
        plt.close(fig)
    return out


def _normalise(row: Sequence[float], special: np.ndarray) -> np.ndarray:
    """Stretch a row to [0, 1] (min to max over real tokens): attention is thin, contrast matters."""
    values = np.asarray(row, dtype=np.float64)
    real = values[~special] if (~special).any() else values
    if not real.size:
        return values
    lo, span = real.min(), real.max() - real.min()
    return np.clip((values - lo) / span, 0.0, 1.0) if span > 0 else np.ones_like(values)


# --------------------------------------------------------------------------------- fonts

_DEFAULT_FAMILY = "DejaVu Sans"
_coverage_cache: dict[str, set[int]] = {}


def _charmap(path: str) -> set[int]:
    if path not in _coverage_cache:
        from matplotlib.ft2font import FT2Font

        try:
            _coverage_cache[path] = set(FT2Font(path).get_charmap())
        except Exception:  # an unreadable or odd font file: it covers nothing for us
            _coverage_cache[path] = set()
    return _coverage_cache[path]


def _missing_chars(tokens: Sequence[str], covered: set[int]) -> set[str]:
    return {c for t in tokens for c in t if not c.isspace() and ord(c) not in covered}


def find_font(chars: set[str]) -> str | None:
    """The family name of an installed font with glyphs for all ``chars`` (None: none has)."""
    from matplotlib import font_manager

    wanted = {ord(c) for c in chars}
    known = {f.fname for f in font_manager.fontManager.ttflist}
    for entry in font_manager.fontManager.ttflist:
        # matplotlib's "Last Resort" font maps every code point to a placeholder box.
        if "last resort" not in entry.name.lower() and wanted <= _charmap(entry.fname):
            return str(entry.name)
    # Fonts installed after matplotlib built its cache: look at the system's, add the first fit.
    for fname in font_manager.findSystemFonts():
        if fname not in known and wanted <= _charmap(fname):
            font_manager.fontManager.addfont(fname)
            return str(font_manager.FontProperties(fname=fname).get_name())
    return None


def _default_font_chars() -> set[int]:
    from matplotlib import font_manager

    return _charmap(font_manager.findfont(_DEFAULT_FAMILY))


def font_rc(tokens: Sequence[str]) -> Any:
    """matplotlib settings that draw every token: the default font, then one with the rest."""
    missing = _missing_chars(tokens, _default_font_chars())
    family = find_font(missing) if missing else None
    return {"font.family": [_DEFAULT_FAMILY, family]} if family else None


def drawable_tokens(tokens: Sequence[str]) -> tuple[list[str], str]:
    """Tick labels, and a note when characters no installed font has are shown as code points."""
    missing = _missing_chars(tokens, _default_font_chars())
    if not missing or find_font(missing):
        return list(tokens), ""
    shown = ["".join(f"U+{ord(c):04X}" if c in missing else c for c in t) for t in tokens]
    # The note names them by code point too: written as themselves they were the one text of the
    # figure drawn as empty boxes (and matplotlib warned once per missing glyph).
    sample = ", ".join(f"U+{ord(c):04X}" for c in sorted(missing)[:3])
    return shown, (f"No installed font has glyphs for some characters (e.g. {sample}): drawn as code points."
                   f" To draw them: {FONT_HINT}.")
