"""Multi-label pieces: thresholds, metrics, positive weights, and losses that match serving."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.multilabel import (
    FALLBACK_THRESHOLD,
    multi_hot,
    multilabel_metrics,
    plot_per_label,
    positive_weights,
    tune_thresholds,
)
from model.objectives import Objective, document_loss
from model.truncation import pool


def test_thresholds_maximise_each_labels_f1_and_fall_back_without_positives():
    """Each label gets the grid threshold with its best F1; a label with no positives keeps 0.5."""
    probs = np.array([[0.30, 0.9], [0.25, 0.8], [0.10, 0.7], [0.05, 0.1]], dtype=np.float32)
    targets = np.array([[1, 0], [1, 0], [0, 0], [0, 0]], dtype=np.float32)
    thresholds = tune_thresholds(probs, targets)
    assert 0.1 < thresholds[0] <= 0.25  # separates 0.25/0.30 from 0.10
    assert thresholds[1] == FALLBACK_THRESHOLD


def test_metrics_match_their_definitions():
    """Micro/macro F1, exact match and per-label support agree with counts done by hand."""
    labels = ["a", "b", "c"]
    targets = multi_hot([["a"], ["a", "b"], [], ["c"]], labels)
    probs = np.array([[0.9, 0.1, 0.1], [0.9, 0.2, 0.1], [0.1, 0.1, 0.1], [0.6, 0.1, 0.9]], dtype=np.float32)
    m = multilabel_metrics(probs, targets, [0.5, 0.5, 0.5], labels)
    # predicted: {a}, {a}, {}, {a, c}; tp = 3 (a, a, c), predicted 4, actual 4
    assert m["micro_precision"] == pytest.approx(0.75) and m["micro_recall"] == pytest.approx(0.75)
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.8) and m["per_class"]["b"]["f1"] == 0.0
    assert m["per_class"]["c"]["support"] == 1 and m["exact_match"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.0 + 1.0) / 3)


def test_positive_weights_are_capped_ratios():
    """pos_weight = negatives/positives, at least 1, at most the cap; unseen labels weigh 1."""
    targets = multi_hot([["a"]] * 2 + [["b"]] * 98 + [[]] * 100, ["a", "b", "c"])
    assert positive_weights(targets, cap=10.0).tolist() == [10.0, pytest.approx(102 / 98), 1.0]


def test_per_label_chart_is_written(tmp_path):
    """plot_per_label writes a PNG."""
    labels = ["a", "b"]
    m = multilabel_metrics(np.array([[0.9, 0.1]]), multi_hot([["a"]], labels), [0.5, 0.5], labels)
    assert plot_per_label(m, tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_windowed_loss_is_the_loss_of_the_pooled_probabilities(multi_label, pooling):
    """Training scores a long text by exactly the pooled probabilities the worker will serve."""
    torch.manual_seed(0)
    logits = torch.randn(5, 3, dtype=torch.float64)
    counts = [3, 2]
    probs = (logits.sigmoid() if multi_label else logits.softmax(-1)).numpy()
    pooled = torch.from_numpy(pool(probs, counts, pooling, multi_label).astype(np.float64))
    if multi_label:
        targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
        expected = F.binary_cross_entropy(pooled, targets)
    else:
        targets = torch.tensor([2, 0])
        expected = F.nll_loss(pooled.log(), targets)
    got = document_loss(logits, counts, targets, Objective(multi_label=multi_label, pooling=pooling))
    assert float(got) == pytest.approx(float(expected), rel=1e-4)


def test_one_window_per_text_is_the_plain_loss():
    """With one window a text, the loss is plain cross-entropy (weights, smoothing) or BCE."""
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    weight = torch.tensor([1.0, 2.0, 0.5])
    target = torch.tensor([0, 1, 2, 1])
    objective = Objective(class_weight=weight, label_smoothing=0.1)
    assert torch.equal(document_loss(logits, [1] * 4, target, objective),
                       F.cross_entropy(logits, target, weight=weight, label_smoothing=0.1))
    tags = torch.tensor([[1.0, 0, 0]] * 4)
    pw = torch.tensor([3.0, 1.0, 1.0])
    assert torch.equal(document_loss(logits, [1] * 4, tags, Objective(multi_label=True, pos_weight=pw)),
                       F.binary_cross_entropy_with_logits(logits, tags, pos_weight=pw))
