"""Scoring a classifier: metrics, and the report a person reads.

    confusion_matrix(targets, preds, n)          counts (n, n): rows true, columns predicted
    metrics_from_confusion(cm, labels) -> dict   accuracy, macro-F1, per-class P/R/F1/support
    predict_probs(fn, tokenizer, texts, ...)     probabilities in input order, length-sorted batches
    write_report(out_dir, metrics, history=...)  report.json, report.md, confusion_matrix.png,
                                                 training_curves.png

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
) -> np.ndarray:
    """Probabilities (N, n_labels) float32, in the order of ``texts``.

    Texts are batched by length, so each batch pads as little as possible; the encoder is
    padding-invariant, so this changes speed, never answers.
    """
    sequences = tok_lib.encode_unpadded(tokenizer, texts, max_length)
    pad = tok_lib.pad_id(tokenizer)
    out: np.ndarray | None = None
    for batch in sorted_batches([len(s) for s in sequences], batch_size):
        ids, mask = pad_batch([sequences[i] for i in batch], pad)
        probs = prob_fn(ids.to(device), mask.to(device)).float().cpu().numpy()
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
    for key, value in (extra or {}).items():
        lines += [f"## {key.replace('_', ' ').capitalize()}", ""]
        lines += _markdown_value(value)
        lines.append("")
    if history:
        lines += [
            "## Training",
            "",
            "| epoch | train loss | val loss | val accuracy | val macro-F1 | seconds |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for h in history:
            lines.append(
                f"| {h['epoch']} | {h['train_loss']:.4f} | {h['val_loss']:.4f} |"
                f" {h['val_accuracy']:.4f} | {h['val_macro_f1']:.4f} | {h['seconds']:.1f} |"
            )
        if has_curves:
            lines += ["", f"![training curves]({CURVES_PNG})"]
        lines.append("")
    return "\n".join(lines)


def _markdown_value(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [f"- {k}: {_fmt(v)}" for k, v in value.items() if not isinstance(v, dict | list)]
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
    left.set_ylabel("cross-entropy loss")
    left.legend()
    left.set_title("Loss")
    right.plot(epochs, [h["val_accuracy"] for h in history], marker="o", label="accuracy")
    right.plot(epochs, [h["val_macro_f1"] for h in history], marker="o", label="macro-F1")
    right.set_xlabel("epoch")
    right.set_ylim(0.0, 1.0)
    right.legend()
    right.set_title("Validation")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
