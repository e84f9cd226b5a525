"""Training losses for one batch of documents, single- or multi-label, one window or several.

    document_loss(logits, counts, targets, Objective) -> scalar loss (mean over documents)

``logits`` are the classifier's outputs for every window of the batch (W, L), the windows of
each document in a row, ``counts`` how many windows each document has. With one window per
document this is the plain loss: cross-entropy (class weights, label smoothing) or binary
cross-entropy with logits (per-label ``pos_weight``). With several, the window scores are
pooled per document *in probability space, exactly as* ``model.truncation.pool`` *pools them at
serving time*, computed in log space for stability:

    single-label  mean: log p = logsumexp_w(log_softmax z_w) - log n
                  max:  m = max_w log_softmax z_w;  log p = m - logsumexp(m)   (renormalised)
    multi-label   mean: log p = logsumexp_w(logsigmoid z_w) - log n,
                        log (1-p) = logsumexp_w(logsigmoid -z_w) - log n
                  max:  z = max_w z_w;  plain BCE on z (sigmoid is monotone)

so a model is trained on the very document scores it will be judged and served by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence


@dataclass
class Objective:
    multi_label: bool = False
    pooling: str = "mean"  # over a document's windows
    class_weight: torch.Tensor | None = None  # single-label: (L,) loss weight per class
    label_smoothing: float = 0.0  # single-label
    pos_weight: torch.Tensor | None = None  # multi-label: (L,) weight of each label's positives


def document_loss(
    logits: torch.Tensor, counts: Sequence[int], targets: torch.Tensor, objective: Objective,
    reduction: str = "mean",
) -> torch.Tensor:
    """The loss of a batch of documents; see the module docstring. ``targets``: class indices
    (N,) int64, or multi-hot (N, L) float32."""
    logits = logits.float()
    one_window = len(counts) == logits.shape[0]
    if not objective.multi_label:
        if one_window:
            return F.cross_entropy(
                logits, targets, weight=objective.class_weight,
                label_smoothing=objective.label_smoothing, reduction=reduction,
            )
        log_p = _pooled_log_softmax(logits, counts, objective.pooling)
        # log_p is already normalised, so cross_entropy's own log_softmax leaves it unchanged.
        return F.cross_entropy(
            log_p, targets, weight=objective.class_weight,
            label_smoothing=objective.label_smoothing, reduction=reduction,
        )
    if one_window or objective.pooling == "max":
        z = logits if one_window else _grouped(logits, counts, float("-inf")).amax(dim=1)  # (N, L)
        return F.binary_cross_entropy_with_logits(
            z, targets, pos_weight=objective.pos_weight, reduction=reduction
        )
    log_n = torch.log(torch.tensor(list(counts), dtype=logits.dtype, device=logits.device))[:, None]
    log_p = _grouped(F.logsigmoid(logits), counts, float("-inf")).logsumexp(dim=1) - log_n  # (N, L)
    log_q = _grouped(F.logsigmoid(-logits), counts, float("-inf")).logsumexp(dim=1) - log_n
    pos = targets * log_p
    if objective.pos_weight is not None:
        pos = pos * objective.pos_weight
    loss = -(pos + (1 - targets) * log_q)  # (N, L)
    return loss.mean() if reduction == "mean" else loss.sum()


def _grouped(x: torch.Tensor, counts: Sequence[int], fill: float) -> torch.Tensor:
    """(W, L) rows -> (N, max windows, L), documents' windows side by side, ``fill`` beyond."""
    return pad_sequence(list(torch.split(x, list(counts))), batch_first=True, padding_value=fill)


def _pooled_log_softmax(logits: torch.Tensor, counts: Sequence[int], pooling: str) -> torch.Tensor:
    """(N, L) log-probabilities of the pooled single-label distribution of each document."""
    grouped = _grouped(F.log_softmax(logits, dim=-1), counts, float("-inf"))  # (N, Wmax, L)
    if pooling == "max":
        m = grouped.amax(dim=1)
        return m - m.logsumexp(dim=-1, keepdim=True)
    log_n = torch.tensor([math.log(c) for c in counts], dtype=logits.dtype, device=logits.device)
    return grouped.logsumexp(dim=1) - log_n[:, None]
