"""The Transformer encoder classifier, small enough to read on one screen.

    input_ids, attention_mask (B, T)
      -> token + position (+ token-type) embeddings        (B, T, C)
      -> n_layers x [multi-head self-attention, feed-forward], residuals, LayerNorm
      -> pooling over real tokens (mean) or the first token (CLS)   (B, C)
      -> linear head -> logits (B, n_classes); softmax gives probabilities

Padding never changes a result: padded keys are masked out of every attention row and out
of the mean pool, so a text alone and the same text padded inside a batch give the same
probabilities. The modules are TorchScript-friendly (plain attributes, no dataclasses inside
forward) so ``model/export.py`` can script them.

B batch, T sequence length, C d_model, nh heads, hs head size (C // nh).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import EncoderConfig


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention with a key-padding mask."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_size = cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # q, k, v in one matmul
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_dropout = cfg.attn_dropout

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, C); key_mask (B, 1, 1, T) bool, True where a key may be attended to."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        weights: torch.Tensor | None = None
        if need_weights:
            # The explicit path: slower, but hands back the attention probabilities.
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_size)  # (B, nh, T, T)
            scores = scores.masked_fill(~key_mask, float("-inf"))  # every row keeps >= 1 real key
            weights = scores.softmax(dim=-1)
            y = weights @ v  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=key_mask,
                dropout_p=self.attn_dropout if self.training else 0.0,
            )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y), weights


class FeedForward(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model)
        self.act = nn.GELU() if cfg.activation == "gelu" else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class Block(nn.Module):
    """One encoder block. Pre-LN (``x + f(LN(x))``) or post-LN (``LN(x + f(x))``, BERT)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attn = SelfAttention(cfg)
        self.ln_attn = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg)
        self.ln_ffn = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pre_norm:
            a, weights = self.attn(self.ln_attn(x), key_mask, need_weights)
            x = x + self.dropout(a)
            x = x + self.dropout(self.ffn(self.ln_ffn(x)))
        else:
            a, weights = self.attn(x, key_mask, need_weights)
            x = self.ln_attn(x + self.dropout(a))
            x = self.ln_ffn(x + self.dropout(self.ffn(x)))
        return x, weights


def sinusoidal_table(n_positions: int, d_model: int) -> torch.Tensor:
    """Fixed sine/cosine position codes (Vaswani et al. 2017), shape (n_positions, d_model)."""
    position = torch.arange(n_positions, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div[: d_model // 2])
    return table


class SinusoidalPositions(nn.Module):
    """Fixed position codes held as a non-trainable ``weight``, like an nn.Embedding table."""

    def __init__(self, n_positions: int, d_model: int) -> None:
        super().__init__()
        # Not persistent: recomputed from the config, so checkpoints stay small and exact.
        self.register_buffer("weight", sinusoidal_table(n_positions, d_model), persistent=False)


class Embeddings(nn.Module):
    """Token + position (+ token-type 0) embeddings, optional LayerNorm, dropout."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        # Both kinds expose ``.weight`` (max_length, C), so forward has a single code path.
        self.positions: nn.Module = (
            nn.Embedding(cfg.max_length, cfg.d_model)
            if cfg.positional == "learned"
            else SinusoidalPositions(cfg.max_length, cfg.d_model)
        )
        # Single-segment inputs only ever use token type 0, so one row is all we keep.
        self.has_token_type = cfg.type_vocab_size > 0
        self.token_type = nn.Parameter(torch.zeros(cfg.d_model)) if self.has_token_type else None
        self.norm = (
            nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.embedding_norm else nn.Identity()
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.size(1)
        x = self.tokens(input_ids)  # (B, T, C)
        # getattr: the same line for both kinds, and a plain Tensor for the type checker.
        table: torch.Tensor = getattr(self.positions, "weight")  # noqa: B009  # (max_length, C)
        x = x + table[:T]  # (T, C), broadcast over B
        token_type = self.token_type
        if token_type is not None:
            x = x + token_type
        return self.dropout(self.norm(x))


class EncoderClassifier(nn.Module):
    """Transformer encoder + pooling + linear head. ``forward`` returns logits (B, n_classes)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.max_length = cfg.max_length
        self.pool_cls = cfg.pooling == "cls"
        self.embeddings = Embeddings(cfg)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = (
            nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.final_norm else nn.Identity()
        )
        self.head_dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Token states (B, T, C) and, when asked, each layer's attention (B, nh, T, T)."""
        key_mask = (attention_mask != 0)[:, None, None, :]  # (B, 1, 1, T)
        x = self.embeddings(input_ids)
        attentions: list[torch.Tensor] = []
        for block in self.blocks:
            x, weights = block(x, key_mask, need_weights)
            if weights is not None:
                attentions.append(weights)
        return self.final_norm(x), attentions

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, C): the first token, or the mean over real (unpadded) tokens."""
        if self.pool_cls:
            return states[:, 0]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states, _ = self.encode(input_ids, attention_mask)
        return self.head(self.head_dropout(self.pool(states, attention_mask)))

    def forward_with_attention(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and every layer's attention probabilities, for ``explain``."""
        states, attentions = self.encode(input_ids, attention_mask, need_weights=True)
        return self.head(self.head_dropout(self.pool(states, attention_mask))), attentions


class ProbabilityModel(nn.Module):
    """What the bundle compiles: ids and mask in, probabilities out (float32).

    Softmax over the labels for a single-label classifier; an independent sigmoid per label
    for a multi-label one (``multi_label=True``), whose thresholds live in the bundle's config.
    """

    def __init__(self, classifier: EncoderClassifier, multi_label: bool = False) -> None:
        super().__init__()
        self.classifier = classifier
        self.multi_label = multi_label

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return logits.float().sigmoid()
        return logits.float().softmax(dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.probabilities(self.classifier(input_ids, attention_mask))

    @torch.jit.export
    def explain(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Probabilities (B, n_classes) and each layer's attention (B, nh, T, T).

        Compiled into the bundle beside ``forward`` so ``tagstream-train explain`` works from
        the bundle alone; the worker never calls it. Differentiable (outside inference mode),
        so ``explain`` can weight each attention map by its gradient.
        """
        logits, attentions = self.classifier.forward_with_attention(input_ids, attention_mask)
        return self.probabilities(logits), attentions
