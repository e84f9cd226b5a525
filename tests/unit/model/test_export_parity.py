"""Export: compiled-vs-eager parity, ParityError on disagreement, int8, atomic replacement."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from model_support import TOPICS, tiny_config

from model import export as export_lib
from model.bundle import CONFIG_FILE, Bundle
from model.encoder import EncoderClassifier, ProbabilityModel
from model.errors import BundleError, ParityError
from model.export import check_parity, eager_probability_model, export_bundle, parity_batch, script

LABELS = sorted(TOPICS)


@pytest.fixture
def model(tokenizer):
    torch.manual_seed(3)
    return EncoderClassifier(tiny_config(tokenizer.get_vocab_size(), n_layers=2)).eval()


def _perturbed(model: EncoderClassifier) -> EncoderClassifier:
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.bias[0] += 0.5  # one class only: a uniform shift would cancel in softmax
    return other


def test_parity_is_checked_on_a_padded_validation_batch(model, tokenizer, rows):
    """Compiled and eager agree within 1e-5 on a batch of texts of different lengths."""
    texts = [r["text"] for r in rows[:20]]
    ids, mask = parity_batch(tokenizer, texts, model.config.max_length)
    assert (mask == 0).any()  # padding is exercised
    eager = eager_probability_model(model)
    assert check_parity(eager, script(eager), ids, mask) <= 1e-5


def test_disagreement_raises_parity_error(model, tokenizer, rows):
    """A compiled model that differs from the eager one beyond 1e-5 raises ParityError."""
    ids, mask = parity_batch(tokenizer, [r["text"] for r in rows[:8]], model.config.max_length)
    eager = eager_probability_model(model)
    wrong = script(ProbabilityModel(_perturbed(model)).eval())
    with pytest.raises(ParityError, match="max abs difference"):
        check_parity(eager, wrong, ids, mask)


def test_failed_export_keeps_the_previous_bundle(model, tokenizer, rows, tmp_path, monkeypatch):
    """When parity fails, export raises and the bundle already at out_dir is left as it was."""
    texts = [r["text"] for r in rows[:8]]
    out = tmp_path / "bundle"
    export_bundle(model, tokenizer, LABELS, out, parity_texts=texts, name="good")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_script = export_lib.script
    monkeypatch.setattr(export_lib, "script",
                        lambda m: real_script(ProbabilityModel(_perturbed(model)).eval()))
    with pytest.raises(ParityError):
        export_bundle(model, tokenizer, LABELS, out, parity_texts=texts, name="bad")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging left behind


def test_export_writes_a_bundle_that_matches_eager(model, tokenizer, rows, tmp_path):
    """The written bundle reloads verified and predicts what the eager model predicts."""
    texts = [r["text"] for r in rows[:30]]
    result = export_bundle(model, tokenizer, LABELS, tmp_path / "b", parity_texts=texts,
                           name="n", metrics={"accuracy": 0.5}, training={"preset": "tiny"})
    assert result.parity_max_abs_diff <= 1e-5 and result.bundle_max_abs_diff <= 1e-5
    bundle = Bundle.load(result.path)
    assert bundle.metrics == {"accuracy": 0.5}
    assert bundle.config["model"]["n_layers"] == 2
    assert bundle.config["tokenizer"]["lowercase"] is True
    with torch.inference_mode():
        expected = ProbabilityModel(model)(*bundle.encode(texts))
    assert (bundle.predict_proba(texts) - expected).abs().max() <= 1e-5
    probs, attentions = bundle.model.explain(*bundle.encode(texts[:1]))
    assert probs.shape == (1, 3) and len(attentions) == 2


def test_int8_export_checks_int8_parity_and_records_the_change(model, tokenizer, rows, tmp_path):
    """An int8 bundle is checked against the int8 eager model; the fp32 gap is only recorded;
    loading it for a GPU is refused with a clear message."""
    texts = [r["text"] for r in rows[:30]]
    result = export_bundle(model, tokenizer, LABELS, tmp_path / "q", parity_texts=texts,
                           name="q", precision="int8")
    assert result.parity_max_abs_diff <= 1e-5
    assert result.int8_vs_fp32_max_abs_diff is not None
    assert json.loads((result.path / CONFIG_FILE).read_text())["precision"] == "int8"
    bundle = Bundle.load(result.path)
    assert bundle.precision == "int8"
    int8_eager = eager_probability_model(model, "int8")
    with torch.inference_mode():
        assert (bundle.predict_proba(texts) - int8_eager(*bundle.encode(texts))).abs().max() <= 1e-5
    with pytest.raises(BundleError, match="runs on CPU only"):
        Bundle.load(result.path, device="cuda")  # refused before any CUDA call
    shutil.rmtree(result.path)
