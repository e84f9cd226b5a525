"""Metrics from a confusion matrix, and the report files a person reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.evaluate import (
    compute_metrics,
    confusion_matrix,
    metrics_from_confusion,
    predict_probs,
    write_report,
)


def test_metrics_match_a_hand_computed_example():
    """Accuracy, per-class P/R/F1 and macro-F1 equal the values worked out by hand."""
    true = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "c", "c"]
    m = compute_metrics(true, pred, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    a, b, c = (m["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((1.0, 2 / 3, 0.8))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((0.5, 1.0, 2 / 3))
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert [a["support"], b["support"], c["support"]] == [3, 2, 1]


def test_a_never_predicted_class_scores_zero_not_nan():
    """A class never predicted has precision 0 (not NaN), so macro-F1 stays defined."""
    m = metrics_from_confusion(confusion_matrix([0, 1], [0, 0], 2), ["x", "y"])
    assert m["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert not np.isnan(m["macro_f1"])


def test_report_files_are_written(tmp_path):
    """write_report leaves report.json, report.md and both PNG plots."""
    m = compute_metrics(["a", "b", "b"], ["a", "b", "a"], ["a", "b"])
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_accuracy": 0.5 + e / 10,
                "val_macro_f1": 0.4 + e / 10, "seconds": 1.0} for e in (1, 2, 3)]
    paths = write_report(tmp_path, m, title="t", history=history, extra={"summary": {"x": 1.5}})
    report = json.loads(paths["json"].read_text())
    assert report["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert report["summary"] == {"x": 1.5}
    md = paths["markdown"].read_text()
    assert "| a | 0.5000 | 1.0000 | 0.6667 | 1 |" in md
    assert "confusion_matrix.png" in md and "training_curves.png" in md
    for key in ("confusion_matrix", "training_curves"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_probs_returns_input_order(tokenizer):
    """Length-sorted batching hands back probabilities in the order the texts came in."""
    import torch

    def fake_model(ids, mask):
        # score = number of real tokens, so each row is recognisable
        n = mask.sum(dim=1, keepdim=True).float()
        return torch.cat([n, -n], dim=1)

    texts = ["rain " * 9, "rain", "rain " * 3, "rain " * 6]
    probs = predict_probs(fake_model, tokenizer, texts, max_length=64, batch_size=2)
    assert probs[:, 0].tolist() == [11, 3, 5, 8]
