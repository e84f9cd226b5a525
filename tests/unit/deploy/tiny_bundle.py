"""A real, tiny model bundle for deployment tests (untrained weights: only the format matters)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from model.bundle import write_bundle
from model.config import preset
from model.encoder import EncoderClassifier, ProbabilityModel

TEXTS = [
    "win a free prize now, call today",
    "are we still meeting for lunch tomorrow",
    "urgent: your account needs verification, click the link",
    "thanks for the notes from yesterday's meeting",
]
LABELS = ["ham", "spam"]


def write_tiny_bundle(out: Path, name: str = "deploy-test", seed: int = 0) -> Path:
    """Train a WordPiece tokenizer on a few lines, script an untrained tiny encoder, export it."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=200, min_frequency=1, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    )
    tokenizer.train_from_iterator(TEXTS, trainer)
    cfg = preset("tiny").encoder
    cfg.vocab_size = tokenizer.get_vocab_size()
    cfg.n_classes = len(LABELS)
    cfg.pad_id = tokenizer.token_to_id("[PAD]")
    torch.manual_seed(seed)
    model = ProbabilityModel(EncoderClassifier(cfg)).eval()
    return write_bundle(
        out,
        scripted_model=torch.jit.script(model),
        tokenizer=tokenizer,
        labels=LABELS,
        name=name,
        max_length=cfg.max_length,
        lowercase=True,
        model_config=cfg.to_dict(),
    )
