"""Fixtures for the model/ unit tests: synthetic texts, a tokenizer, tiny models, a bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_support import TOPICS, synthetic_rows, tiny_config

from model.config import TokenizerConfig
from model.encoder import EncoderClassifier
from model.tokenizer import train_tokenizer


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine (CI, or beside
    other jobs) spinning OpenMP threads of several processes slow everything down ~10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def rows() -> list[dict[str, str]]:
    return synthetic_rows(240)


@pytest.fixture(scope="session")
def tokenizer(rows):
    return train_tokenizer([r["text"] for r in rows], TokenizerConfig(vocab_size=200, min_frequency=1))


@pytest.fixture
def make_model():
    """Factory: a seeded tiny EncoderClassifier in eval mode, with config overrides."""

    def make(vocab_size: int = 200, seed: int = 0, **changes) -> EncoderClassifier:
        torch.manual_seed(seed)
        return EncoderClassifier(tiny_config(vocab_size, **changes)).eval()

    return make


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory, tokenizer, rows) -> Path:
    """A bundle exported from an untrained tiny model (read-only: copy it before changing it)."""
    from model.export import export_bundle

    torch.manual_seed(0)
    model = EncoderClassifier(tiny_config(tokenizer.get_vocab_size())).eval()
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(model, tokenizer, sorted(TOPICS), out,
                  parity_texts=[r["text"] for r in rows[:16]], name="tiny-test")
    return out
