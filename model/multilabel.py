"""Multi-label tagging: targets, per-label thresholds, metrics and the per-label chart.

    multi_hot(tag_sets, labels) -> (N, L) float32     1 where a text carries a label
    positive_weights(targets) -> (L,) float32         BCE pos_weight for rare tags (--pos-weight)
    tune_thresholds(probs, targets) -> thresholds     per label, the grid value with the best F1
    multilabel_metrics(probs, targets, thresholds, labels) -> dict
    plot_per_label(metrics, path) -> path             horizontal bars: P, R, F1 per label

A multi-label model scores each label independently (a sigmoid each); a text carries every
label whose probability reaches that label's threshold. Thresholds are tuned on the validation
split: for each label, the value on ``THRESHOLD_GRID`` (0.05 .. 0.95) that maximises that
label's F1 there (ties go to the value nearest 0.5); a label with no validation positives, or
whose F1 is 0 at every threshold, keeps ``FALLBACK_THRESHOLD``. The grid's floor (0.05) keeps
a rare tag from being assigned to nearly every text because one validation example scored low.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)
FALLBACK_THRESHOLD = 0.5
# pos_weight = negatives / positives is capped: an uncapped weight on a tag seen 10 times in
# 20k texts (~2000) makes its gradient dominate and its probabilities useless.
MAX_POS_WEIGHT = 10.0
PER_LABEL_PNG = "per_label_f1.png"


def multi_hot(tag_sets: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """(N, L) float32: 1.0 where text n carries label l. Tags outside ``labels`` are an error."""
    index = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(tag_sets), len(labels)), dtype=np.float32)
    for row, tags in enumerate(tag_sets):
        for tag in tags:
            out[row, index[tag]] = 1.0
    return out


def positive_weights(targets: np.ndarray, cap: float = MAX_POS_WEIGHT) -> np.ndarray:
    """Per label: negatives / positives, between 1 and ``cap`` (1 for a label never seen)."""
    pos = targets.sum(axis=0)
    neg = targets.shape[0] - pos
    ratio = np.divide(neg, pos, out=np.ones_like(pos), where=pos > 0)
    return np.clip(ratio, 1.0, cap).astype(np.float32)


def _f1_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label (last axis): true positives, predicted positives, actual positives."""
    tp = (pred & truth).sum(axis=0).astype(np.float64)
    return tp, pred.sum(axis=0).astype(np.float64), truth.sum(axis=0).astype(np.float64)


def _f1(tp: np.ndarray, predicted: np.ndarray, support: np.ndarray) -> np.ndarray:
    denom = predicted + support
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def tune_thresholds(
    probs: np.ndarray, targets: np.ndarray, grid: np.ndarray = THRESHOLD_GRID
) -> list[float]:
    """Per label, the grid threshold with the best F1 on (probs, targets); see the docstring."""
    probs = np.asarray(probs, dtype=np.float32)
    truth = np.asarray(targets) > 0.5
    best = np.full(probs.shape[1], FALLBACK_THRESHOLD)
    best_f1 = np.zeros(probs.shape[1])
    # Visit the grid from 0.5 outwards so that, among equal F1s, the one nearest 0.5 stays.
    for t in sorted(grid, key=lambda v: (abs(v - 0.5), v)):
        f1 = _f1(*_f1_counts(probs >= t, truth))
        better = f1 > best_f1 + 1e-12
        best[better] = t
        best_f1[better] = f1[better]
    return [float(t) for t in best]


def multilabel_metrics(
    probs: np.ndarray, targets: np.ndarray, thresholds: Sequence[float], labels: Sequence[str]
) -> dict[str, Any]:
    """Micro/macro P/R/F1, exact match, per-label P/R/F1/support/threshold.

    Macro averages are over every label, including labels absent from ``targets`` (whose F1
    is 0 unless nothing was predicted for them either), as scikit-learn does with zero_division=0.
    """
    truth = np.asarray(targets) > 0.5
    pred = np.asarray(probs, dtype=np.float32) >= np.asarray(thresholds, dtype=np.float32)[None, :]
    tp, predicted, support = _f1_counts(pred, truth)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = _f1(tp, predicted, support)
    micro_p = float(tp.sum() / predicted.sum()) if predicted.sum() else 0.0
    micro_r = float(tp.sum() / support.sum()) if support.sum() else 0.0
    micro_f1 = 2 * micro_p * micro_r / (micro_p + micro_r) if micro_p + micro_r else 0.0
    n = int(truth.shape[0])
    return {
        "task": "multi_label",
        "n": n,
        "micro_f1": float(micro_f1),
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "macro_f1": float(f1.mean()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "exact_match": float((pred == truth).all(axis=1).mean()) if n else 0.0,
        "hamming_loss": float((pred != truth).mean()) if n else 0.0,
        "tags_per_text": float(pred.sum() / n) if n else 0.0,
        "no_tag_share": float((~pred.any(axis=1)).mean()) if n else 0.0,
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "threshold": float(thresholds[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": list(labels),
        "thresholds": [float(t) for t in thresholds],
    }


def render_markdown_body(metrics: dict[str, Any]) -> list[str]:
    """Summary and per-label table of a multi-label report (report.md)."""
    lines = [
        f"- examples: {metrics['n']}",
        f"- micro-F1: **{metrics['micro_f1']:.4f}** (precision {metrics['micro_precision']:.4f},"
        f" recall {metrics['micro_recall']:.4f})",
        f"- macro-F1: **{metrics['macro_f1']:.4f}**",
        f"- exact match: {metrics['exact_match']:.4f}",
        f"- tags per text: {metrics['tags_per_text']:.2f}; texts with no tag: {metrics['no_tag_share']:.1%}",
        "",
        "## Per label (thresholds tuned on the validation split)",
        "",
        "| label | precision | recall | F1 | support | threshold |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label in metrics["labels"]:
        c = metrics["per_class"][label]
        lines.append(
            f"| {label} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']}"
            f" | {c['threshold']:.2f} |"
        )
    lines += ["", f"![per-label scores]({PER_LABEL_PNG})", ""]
    return lines


def plot_per_label(metrics: dict[str, Any], path: Path) -> Path:
    """Horizontal bars of precision, recall and F1 per label, most frequent label on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted(metrics["labels"], key=lambda x: (-metrics["per_class"][x]["support"], x))
    n = len(labels)
    y = np.arange(n)
    fig, ax = plt.subplots(figsize=(8.0, 1.5 + 0.32 * n))
    height = 0.27
    for offset, key, color in ((-height, "precision", "#9ecae1"), (0.0, "recall", "#fdae6b"),
                               (height, "f1", "#31a354")):
        ax.barh(y + offset, [metrics["per_class"][x][key] for x in labels], height=height,
                color=color, label=key if key != "f1" else "F1")
    ax.set_yticks(y, [f"{x} ({metrics['per_class'][x]['support']})" for x in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (label (support) on the left)")
    ax.set_title(f"Per label: micro-F1 {metrics['micro_f1']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
