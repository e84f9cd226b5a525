"""The encoder's configuration and the named presets.

The config travels with every checkpoint and bundle (as JSON), so loading a model never
guesses its shape. Field comments say what each knob trades off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Pooling = Literal["mean", "cls"]
Positional = Literal["learned", "sinusoidal"]
NormPlacement = Literal["pre", "post"]
Activation = Literal["gelu", "relu"]


@dataclass
class EncoderConfig:
    """Shape of the Transformer encoder classifier (see ``model/encoder.py``)."""

    vocab_size: int = 8000  # rows of the token embedding; set from the tokenizer
    max_length: int = 128  # positions the model can see; longer texts are truncated
    d_model: int = 128  # width of every token vector; cost grows ~quadratically
    n_heads: int = 4  # attention heads; d_model must divide evenly
    n_layers: int = 2  # encoder blocks; cost grows linearly
    d_ff: int = 512  # hidden width of each feed-forward block (usually 4 x d_model)
    dropout: float = 0.1  # on embeddings, residual branches and the pooled vector
    attn_dropout: float = 0.1  # on attention probabilities (training only)
    n_classes: int = 2  # size of the softmax head; set from the label list
    pooling: Pooling = "mean"  # "mean" over real tokens, or the first ([CLS]) token
    positional: Positional = "learned"  # learned table, or fixed sinusoids (no parameters)
    norm: NormPlacement = "pre"  # pre-LN trains stably from scratch; BERT checkpoints are post-LN
    activation: Activation = "gelu"
    type_vocab_size: int = 0  # BERT token-type (segment) embeddings; 0 = none
    embedding_norm: bool = False  # LayerNorm after summing embeddings (BERT does)
    final_norm: bool = True  # LayerNorm after the last block (pre-LN stacks need it)
    layer_norm_eps: float = 1e-5  # BERT uses 1e-12
    pad_id: int = 0  # id of [PAD]; its embedding row gets no gradient

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
            )
        for name in ("pooling", "positional", "norm", "activation"):
            allowed = _ALLOWED[name]
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {allowed}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown encoder config keys: {unknown}")
        return cls(**data)


_ALLOWED = {
    "pooling": ("mean", "cls"),
    "positional": ("learned", "sinusoidal"),
    "norm": ("pre", "post"),
    "activation": ("gelu", "relu"),
}


@dataclass
class TrainConfig:
    """How to train: optimiser, schedule and stopping. Defaults suit the `small` preset."""

    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3  # peak learning rate after warmup
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06  # fraction of all steps spent warming up linearly
    schedule: Literal["linear", "cosine"] = "linear"  # decay after warmup
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    label_smoothing: float = 0.0
    class_weights: bool = False  # weight the loss by inverse class frequency (imbalanced data)
    patience: int = 3  # epochs without validation macro-F1 gain before stopping; 0 = never
    layer_lr_decay: float = 1.0  # <1 gives lower blocks smaller learning rates (fine-tuning)
    token_dropout: float = 0.0  # share of input tokens hidden as [UNK] while training (regulariser)
    bf16_on_gpu: bool = True  # bf16 autocast when training on a GPU (ignored on CPU: slower there)
    seed: int = 13


@dataclass
class TokenizerConfig:
    """How to build a tokenizer when none is given."""

    kind: Literal["wordpiece", "bpe"] = "wordpiece"
    vocab_size: int = 8000
    lowercase: bool = True
    strip_accents: bool = True
    min_frequency: int = 2


@dataclass
class Preset:
    encoder: EncoderConfig
    train: TrainConfig
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


def preset(name: str) -> Preset:
    """A fresh copy of a named preset: ``tiny`` (tests), ``small`` (default, CPU) or ``base``."""
    try:
        return _PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(_PRESETS)}") from None


_PRESETS = {
    # Seconds on a laptop CPU: for tests and smoke runs, not for accuracy.
    "tiny": lambda: Preset(
        encoder=EncoderConfig(max_length=64, d_model=32, n_heads=2, n_layers=1, d_ff=64),
        train=TrainConfig(epochs=3, batch_size=32, lr=3e-3, patience=0),
        tokenizer=TokenizerConfig(vocab_size=1000, min_frequency=1),
    ),
    # Minutes on a 2-core CPU; the default. On a few thousand labels a from-scratch encoder
    # overfits within 2-3 epochs: dropout 0.2 and hiding a quarter of the input tokens
    # (token_dropout) were worth ~1-2 points of AG News accuracy, a 16k vocabulary splits
    # fewer words (shorter sequences: faster, and slightly better). See bench/train_bench.py.
    "small": lambda: Preset(
        encoder=EncoderConfig(
            max_length=128, d_model=128, n_heads=4, n_layers=2, d_ff=512, dropout=0.2
        ),
        train=TrainConfig(token_dropout=0.25),
        tokenizer=TokenizerConfig(vocab_size=16000),
    ),
    # Wants a GPU.
    "base": lambda: Preset(
        encoder=EncoderConfig(max_length=256, d_model=384, n_heads=6, n_layers=6, d_ff=1536),
        train=TrainConfig(epochs=10, lr=3e-4),
        tokenizer=TokenizerConfig(vocab_size=16000),
    ),
}

PRESET_NAMES = tuple(_PRESETS)


def finetune_train_config(multi_label: bool = False) -> TrainConfig:
    """Training defaults for a pretrained encoder (``--init minilm|PATH``).

    The usual BERT fine-tuning recipe: a learning rate ~20x below from-scratch training, a
    short linear warmup, then linear decay over 3 epochs. Measured with all-MiniLM-L6-v2
    through this code (bench/finetune_bench.py, one GPU run, bf16): AG News 0.905 accuracy
    (TF-IDF baseline 0.866), SMS spam-class F1 0.955-0.964 over four seeds (0.96-0.97 with
    4 epochs). An alternative recipe (lr 8e-5, 10% warmup, layer-wise LR decay 0.9, 4 epochs)
    did no better (AG News 0.906, spam F1 0.952), so layer-wise decay stays opt-in
    (``--layer-lr-decay 0.9``). Three epochs keep AG News-sized sets (10k texts) well under
    45 minutes on 2 CPU cores.
    """
    if multi_label:
        # Each tag's sigmoid learns from its own positives only: a tag seen 15 times in 2k texts
        # gets ~15 positive gradients an epoch, so 3 epochs leave rare tags unlearned.
        return TrainConfig(
            epochs=MULTI_LABEL_FINETUNE_EPOCHS, batch_size=32, lr=MULTI_LABEL_FINETUNE_LR,
            weight_decay=0.01, warmup_ratio=0.06, schedule="linear", patience=3, layer_lr_decay=1.0,
        )
    return TrainConfig(
        epochs=3, batch_size=32, lr=5e-5, weight_decay=0.01, warmup_ratio=0.06,
        schedule="linear", patience=2, layer_lr_decay=1.0,
    )


# Multi-label fine-tuning defaults. NOT yet measured (a MiniLM run on reuters_tags takes hours on
# the 2 shared development cores): more epochs and a higher rate than single-label because each
# tag's sigmoid learns from its own positives only; bench/tagging_bench.py measures them.
MULTI_LABEL_FINETUNE_EPOCHS = 10
MULTI_LABEL_FINETUNE_LR = 1e-4
