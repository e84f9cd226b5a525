"""Scoring a classifier: metrics, and the report a person reads.

    confusion_matrix(targets, preds, n)          counts (n, n): rows true, columns predicted
    metrics_from_confusion(cm, labels) -> dict   accuracy, macro-F1, per-class P/R/F1/support
    predict_probs(fn, tokenizer, texts, ...)     probabilities in input order, length-sorted batches
    write_report(out_dir, metrics, history=...)  report.json, report.md, confusion_matrix.png
                                                 (multi-label: per_label_f1.png), training_curves.png
    headline(metrics) -> str                     one line: accuracy and macro-F1, or micro/macro-F1

Metrics come from the confusion matrix alone, so sharded evaluation (DDP) only has to sum
matrices. Plots use matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from model import tokenizer as tok_lib
from model.batching import pad_batch, sorted_batches
from model.multilabel import PER_LABEL_PNG, plot_per_label
from model.multilabel import render_markdown_body as render_multilabel_body
from model.truncation import Truncation, Windower, pool

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curves.png"

# Prediction batch size when the caller gives none: large enough to keep the matrix kernels
# busy on a CPU, small enough that a batch of 512-token texts stays well under a gigabyte.
DEFAULT_PREDICT_BATCH = 64

ProbFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def confusion_matrix(targets: Sequence[int], preds: Sequence[int], n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes), int64: ``cm[true, predicted]``."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(targets, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm


def metrics_from_confusion(cm: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro and per-class precision/recall/F1 (0 where undefined), support."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    total = int(cm.sum())
    return {
        "n": total,
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1.mean()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": list(labels),
        "confusion_matrix": cm.tolist(),
    }


def compute_metrics(
    true_labels: Sequence[str], pred_labels: Sequence[str], labels: Sequence[str]
) -> dict[str, Any]:
    """Metrics from label names; every name must be in ``labels``."""
    index = {label: i for i, label in enumerate(labels)}
    cm = confusion_matrix(
        [index[x] for x in true_labels], [index[x] for x in pred_labels], len(labels)
    )
    return metrics_from_confusion(cm, labels)


@torch.inference_mode()
def predict_probs(
    prob_fn: ProbFn,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int = DEFAULT_PREDICT_BATCH,
    device: torch.device | str = "cpu",
    truncation: Truncation | None = None,
    multi_label: bool = False,
) -> np.ndarray:
    """Probabilities (N, n_labels) float32, in the order of ``texts``.

    Texts are read by ``truncation`` (default head) and their window probabilities pooled
    (``model.truncation.pool``, as the worker does). They are batched by length, so each batch
    pads as little as possible; the encoder is padding-invariant, so this changes speed, never
    answers.
    """
    truncation = truncation or Truncation()
    windows = Windower(tokenizer, max_length, truncation).windows(texts)
    pad = tok_lib.pad_id(tokenizer)
    out: np.ndarray | None = None
    for batch in sorted_batches([sum(len(w) for w in windows[i]) for i in range(len(texts))], batch_size):
        ids, mask = pad_batch([w for i in batch for w in windows[i]], pad)
        window_probs = prob_fn(ids.to(device), mask.to(device)).float().cpu().numpy()
        probs = pool(window_probs, [len(windows[i]) for i in batch], truncation.pooling, multi_label)
        if out is None:
            out = np.zeros((len(texts), probs.shape[1]), dtype=np.float32)
        out[batch] = probs
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def write_report(
    out_dir: str | Path,
    metrics: dict[str, Any],
    *,
    title: str = "tagstream evaluation",
    history: Sequence[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write report.json, report.md and the plots into ``out_dir``; return their paths.

    ``metrics`` is what :func:`metrics_from_confusion` returns; ``history`` the per-epoch
    records of training (drawn as curves when given); ``extra`` any further sections
    (training summary, baseline, validation metrics) stored in report.json as given.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if is_multi_label(metrics):
        paths["per_label"] = plot_per_label(metrics, out / PER_LABEL_PNG)
    else:
        paths["confusion_matrix"] = plot_confusion_matrix(
            np.asarray(metrics["confusion_matrix"]), metrics["labels"], out / CONFUSION_PNG
        )
    if history:
        paths["training_curves"] = plot_training_curves(history, out / CURVES_PNG)
    report = {"title": title, "metrics": metrics, "history": list(history or []), **(extra or {})}
    paths["json"] = out / REPORT_JSON
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths["markdown"] = out / REPORT_MD
    paths["markdown"].write_text(
        render_markdown(title, metrics, history, extra, has_curves="training_curves" in paths),
        encoding="utf-8",
    )
    return paths


def render_markdown(
    title: str,
    metrics: dict[str, Any],
    history: Sequence[dict[str, Any]] | None,
    extra: dict[str, Any] | None,
    *,
    has_curves: bool,
) -> str:
    """The human-readable report: summary, per-class table, confusion matrix, training."""
    labels: list[str] = metrics["labels"]
    lines = [f"# {title}", ""]
    if is_multi_label(metrics):
        lines += render_multilabel_body(metrics)
    else:
        lines += _single_label_body(metrics, labels)
    for key, value in (extra or {}).items():
        lines += [f"## {key.replace('_', ' ').capitalize()}", ""]
        lines += _markdown_value(value)
        lines.append("")
    if history:
        lines += _history_table(history)
        if has_curves:
            lines += ["", f"![training curves]({CURVES_PNG})"]
        lines.append("")
    return "\n".join(lines)


def is_multi_label(metrics: dict[str, Any]) -> bool:
    return metrics.get("task") == "multi_label"


def headline(metrics: dict[str, Any]) -> str:
    """The one-line summary printed after training and evaluation."""
    if is_multi_label(metrics):
        return (f"micro-F1 {metrics['micro_f1']:.4f}  macro-F1 {metrics['macro_f1']:.4f}"
                f"  exact match {metrics['exact_match']:.4f}")
    return f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}"


def _history_table(history: Sequence[dict[str, Any]]) -> list[str]:
    """One row per epoch; the validation columns are those the task records."""
    columns = [k for k in ("val_accuracy", "val_micro_f1", "val_macro_f1", "val_exact_match")
               if k in history[0]]
    names = {"val_accuracy": "val accuracy", "val_micro_f1": "val micro-F1",
             "val_macro_f1": "val macro-F1", "val_exact_match": "val exact match"}
    lines = [
        "## Epochs",
        "",
        "| epoch | train loss | val loss | " + " | ".join(names[c] for c in columns) + " | seconds |",
        "|---:|---:|---:|" + "---:|" * len(columns) + "---:|",
    ]
    for h in history:
        cells = " | ".join(f"{h[c]:.4f}" for c in columns)
        lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | {h['val_loss']:.4f} | {cells} | {h['seconds']:.1f} |")
    return lines


def _single_label_body(metrics: dict[str, Any], labels: list[str]) -> list[str]:
    lines: list[str] = []
    lines += [
        f"- examples: {metrics['n']}",
        f"- accuracy: **{metrics['accuracy']:.4f}**",
        f"- macro-F1: **{metrics['macro_f1']:.4f}**",
        "",
        "## Per class",
        "",
        "| label | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for label in labels:
        c = metrics["per_class"][label]
        lines.append(
            f"| {label} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
        )
    lines += ["", "## Confusion matrix (rows: true label, columns: predicted)", ""]
    lines.append("| true \\ predicted | " + " | ".join(labels) + " |")
    lines.append("|---|" + "---:|" * len(labels))
    for label, row in zip(labels, metrics["confusion_matrix"], strict=True):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", f"![confusion matrix]({CONFUSION_PNG})", ""]
    return lines


def _markdown_value(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [
            f"- {k}: {_fmt(v)}" for k, v in value.items()
            if v is not None and not isinstance(v, dict | list)
        ]
    return [f"- {_fmt(value)}"]


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(cm: np.ndarray, labels: Sequence[str], path: Path) -> Path:
    """A heatmap of row-normalised counts (recall per cell), each cell annotated with its count."""
    plt = _pyplot()
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    size = max(4.0, 0.8 * len(labels) + 2.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    fig.colorbar(image, ax=ax, label="share of true label")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_training_curves(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Loss (train, validation) and validation accuracy / macro-F1 against the epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    left.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    left.set_xlabel("epoch")
    left.set_ylabel("loss (cross-entropy; multi-label: binary)")
    left.legend()
    left.set_title("Loss")
    for key, name in (("val_accuracy", "accuracy"), ("val_micro_f1", "micro-F1"),
                      ("val_macro_f1", "macro-F1"), ("val_exact_match", "exact match")):
        if key in history[0]:
            right.plot(epochs, [h[key] for h in history], marker="o", label=name)
    right.set_xlabel("epoch")
    right.margins(y=0.2)  # scores move by points, not tenths: let the axis zoom in
    right.legend()
    right.set_title("Validation")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
