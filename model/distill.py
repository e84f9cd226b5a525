"""Knowledge distillation: a fine-tuned teacher bundle's soft predictions train a small student.

    teacher_probs(bundle, texts, ...) -> TeacherOutput    the teacher's probabilities, computed once
                                                          (batched, progress bar) and cached on disk
    soften(probs, T, task)                                temperature-softened targets
    teacher_term(logits, soft, T, task)                   T^2 * KL to the softened teacher
    distill_loss(logits, target, soft, ...)               the mixed loss (below), one window a text
    DistillLoss(teacher_probs, settings, ...)             that loss as the training loop's hook
    augment_texts(texts, copies, kind, rate, seed)        noisy copies of texts for the teacher to label
    pseudo_labels(probs, labels, task, thresholds)        the teacher's labels for unlabeled text

The loss per example, with student logits z, gold label y, teacher probabilities p, temperature
T and mix alpha:

    single-label:  (1 - alpha) * CE(z, y)  + alpha * T^2 * KL(soften(p, T) || softmax(z / T))
    multi-label:   (1 - alpha) * BCE(z, y) + alpha * T^2 * mean over labels of
                                             KL(soften(p, T) || sigmoid(z / T))   (binary KL)

A bundle's model returns probabilities, not logits. For softmax, log p equals the teacher's
logits minus a per-row constant, which softmax ignores, so ``softmax(log p / T)`` is exactly the
teacher's logits softened by T. For sigmoids each label has its own logit, ``log(p / (1 - p))``.
T^2 keeps the soft term's gradients on the hard term's scale as T grows (Hinton et al. 2015).

The teacher's outputs are cached as ``<cache>/<teacher version>-<dtype>-<texts sha256>.npy``:
the bundle version changes with any change to the teacher and the checksum with any change to
the texts (or their order), so a stale cache is never read, and a re-run (or another student
of the same teacher and data) never runs the teacher again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model import tokenizer as tok_lib
from model.bundle import Bundle
from model.errors import DataError, ModelError
from model.objectives import Objective, document_loss

log = structlog.get_logger(__name__)

Task = Literal["single_label", "multi_label"]
AUGMENT_KINDS: tuple[str, ...] = ("drop", "mask", "span", "mix")
TEACHER_DTYPES: tuple[str, ...] = ("auto", "fp32", "bf16")

# Probabilities are clamped here before taking logs: a confident fp32 softmax can round a
# class to exactly 0, and log 0 would poison the targets with -inf. At any T used in practice
# (1 to 10) this floor softens to < 1e-3 of the mass and changes no ranking.
PROB_FLOOR = 1e-12
# Texts per teacher call: fills the matrix kernels on a CPU, bounds memory at 128 tokens.
TEACHER_BATCH = 64
# Texts per progress-bar step (each is sorted by length into batches of TEACHER_BATCH).
TEACHER_CHUNK = 2048
MASK_TOKEN = tok_lib.MASK  # what "mask" augmentation writes in place of a word


@dataclass(frozen=True)
class DistillSettings:
    """How the student learns from the teacher; recorded in the student bundle."""

    temperature: float = 2.0  # > 1 spreads the teacher's mass over the runner-up classes
    alpha: float = 0.5  # weight of the teacher term; 1 - alpha goes to the gold labels
    augment: str = "drop"  # how augmented copies are made (AUGMENT_KINDS)
    augment_copies: int = 0  # noisy copies of every labeled training text, teacher-labeled
    augment_rate: float = 0.15  # share of words a copy loses (or masks)
    teacher_dtype: str = "auto"  # the teacher's precision when labeling (resolve_teacher_dtype)

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ModelError(f"--temperature must be above 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ModelError(f"--alpha must be between 0 and 1, got {self.alpha}")
        if self.augment not in AUGMENT_KINDS:
            raise ModelError(f"--augment {self.augment!r}: expected one of {AUGMENT_KINDS}")
        if self.augment_copies < 0:
            raise ModelError(f"--augment-copies must be 0 or more, got {self.augment_copies}")
        if not 0.0 < self.augment_rate < 1.0:
            raise ModelError(f"--augment-rate must be between 0 and 1, got {self.augment_rate}")
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise ModelError(f"--teacher-dtype {self.teacher_dtype!r}: expected one of {TEACHER_DTYPES}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------- the teacher


def resolve_teacher_dtype(requested: str, device: torch.device | str) -> str:
    """``auto``: bf16 on a GPU with bf16 and on CPUs with native bf16 (AVX512-BF16 or AMX), else fp32.

    The teacher only labels: under bf16 autocast its probabilities moved by at most 0.012 and
    not one AG News label changed, while it ran ~3x faster on the AMX development machine
    (see bench/distill_bench.py). Without native bf16, CPU bf16 is emulated and slower.
    """
    if requested != "auto":
        return requested
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if _cpu_has_native_bf16() else "fp32"


def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def texts_checksum(texts: Sequence[str]) -> str:
    """sha256 over the texts in order (length-prefixed, so no two lists collide by joining)."""
    digest = hashlib.sha256()
    for text in texts:
        raw = text.encode("utf-8")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


@dataclass
class TeacherOutput:
    """The teacher's probabilities for some texts, and where they came from."""

    probs: np.ndarray  # float32 (N, n_labels), in the order of the texts
    cached: bool  # read from the cache (the teacher did not run)
    path: Path | None  # the cache file (None when caching is off)
    seconds: float  # teacher time (0 when cached)


def cache_path(cache_dir: Path, bundle: Bundle, dtype: str, texts: Sequence[str]) -> Path:
    """Where the teacher's outputs for these texts are cached: keyed by version, dtype, texts."""
    return cache_dir / f"{bundle.version}-{dtype}-{texts_checksum(texts)[:24]}.npy"


def teacher_probs(
    bundle: Bundle,
    texts: Sequence[str],
    *,
    what: str,
    cache_dir: Path | None,
    dtype: str = "fp32",
    batch_size: int = TEACHER_BATCH,
    progress: bool = True,
) -> TeacherOutput:
    """The teacher bundle's probabilities for ``texts``: from the cache, else computed and cached.

    ``what`` names the texts in logs and on the progress bar (e.g. "train.jsonl").
    A cache file of the wrong shape (or unreadable) is recomputed and replaced.
    """
    path = cache_path(cache_dir, bundle, dtype, texts) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            probs = np.load(path, allow_pickle=False)
            if probs.shape == (len(texts), len(bundle.labels)) and np.isfinite(probs).all():
                log.info("teacher_cached", texts=what, rows=len(texts), cache=str(path))
                return TeacherOutput(probs.astype(np.float32, copy=False), True, path, 0.0)
            log.warning("teacher_cache_mismatch", cache=str(path), shape=probs.shape,
                        expected=(len(texts), len(bundle.labels)), action="recomputing")
        except (OSError, ValueError) as exc:
            log.warning("teacher_cache_unreadable", cache=str(path), error=str(exc),
                        action="recomputing")
    started = time.perf_counter()
    probs = _run_teacher(bundle, texts, what=what, dtype=dtype, batch_size=batch_size,
                         progress=progress)
    seconds = time.perf_counter() - started
    log.info("teacher_labeled", texts=what, rows=len(texts), seconds=round(seconds, 1),
             texts_per_s=round(len(texts) / max(seconds, 1e-9)), dtype=dtype)
    if path is not None:
        _save_atomic(path, probs, {
            "teacher": bundle.name, "version": bundle.version, "labels": bundle.labels,
            "dtype": dtype, "rows": len(texts), "texts": what,
            "texts_sha256": texts_checksum(texts),
        })
    return TeacherOutput(probs, False, path, seconds)


@torch.inference_mode()
def _run_teacher(
    bundle: Bundle, texts: Sequence[str], *, what: str, dtype: str, batch_size: int, progress: bool
) -> np.ndarray:
    """The bundle's probabilities, read as the worker reads them (its truncation; a long text's
    windows pooled), in chunks for the progress bar; rows in input order."""
    from model.evaluate import predict_probs

    out = np.zeros((len(texts), len(bundle.labels)), dtype=np.float32)
    bar = tqdm(total=len(texts), desc=f"teacher: {what}", unit="text", leave=False,
               disable=not progress, dynamic_ncols=True)
    for start in range(0, len(texts), TEACHER_CHUNK):
        chunk = texts[start : start + TEACHER_CHUNK]
        with torch.autocast(device_type=bundle.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out[start : start + len(chunk)] = predict_probs(
                bundle.model, bundle.tokenizer, chunk, max_length=bundle.max_length, batch_size=batch_size,
                device=bundle.device, truncation=bundle.truncation, multi_label=bundle.multi_label)
        bar.update(len(chunk))
    bar.close()
    return out


def _save_atomic(path: Path, probs: np.ndarray, meta: dict[str, Any]) -> None:
    """The array, then a JSON sidecar for people; each renamed into place (never half written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, probs, allow_pickle=False)
    os.replace(tmp, path)
    side = path.with_suffix(".json")
    tmp_side = side.with_name(f".{side.name}.tmp")
    tmp_side.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_side, side)


def teacher_token_embeddings(bundle: Bundle, d_model: int) -> torch.Tensor:
    """The teacher's token embedding table, reduced to ``d_model`` dims by PCA: float32 (V, d_model).

    For a student that shares the teacher's tokenizer: words the labeled data never shows still
    start where the teacher's pretraining put them. Centred, then projected on the top
    ``d_model`` principal directions (eigenvectors of the covariance: deterministic), so the
    scale of the teacher's table is kept.
    """
    params = dict(bundle.model.named_parameters())
    table = params.get("classifier.embeddings.tokens.weight")
    if table is None:
        raise ModelError(f"teacher {bundle.path} has no token embedding table to start the student from")
    weights = table.detach().float().cpu()  # (V, C)
    if weights.shape[1] < d_model:
        raise ModelError(f"the teacher's embeddings have {weights.shape[1]} dims, fewer than the"
                         f" student's d_model {d_model}")
    centred = weights - weights.mean(dim=0, keepdim=True)
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues, (C, C)
    return centred @ vectors[:, -d_model:].flip(1)  # (V, d_model), largest variance first


def pseudo_labels(
    probs: np.ndarray, labels: Sequence[str], task: Task = "single_label",
    thresholds: Sequence[float] | None = None,
) -> list[Any]:
    """The teacher's labels: the most probable one, or (multi-label) every one over its threshold."""
    if task == "multi_label":
        cut = np.asarray(thresholds if thresholds is not None else [0.5] * len(labels))
        return [[labels[int(j)] for j in np.flatnonzero(row >= cut)] for row in probs]
    return [labels[int(i)] for i in probs.argmax(axis=1)]


# ---------------------------------------------------------------------------------- the loss


def soften(probs: np.ndarray | torch.Tensor, temperature: float, task: Task = "single_label") -> torch.Tensor:
    """Teacher targets at ``temperature``, float32, from the teacher's probabilities.

    single-label: softmax(log p / T) (= the teacher's logits over T, softmaxed);
    multi-label: sigmoid(logit(p) / T) for each label.
    """
    p = torch.as_tensor(probs, dtype=torch.float32).clamp(PROB_FLOOR, 1.0)
    if task == "multi_label":
        p = p.clamp(max=1.0 - 1e-7)  # fp32 holds 1 - 1e-7, not 1 - 1e-12
        return torch.sigmoid(torch.log(p / (1.0 - p)) / temperature)
    return torch.softmax(torch.log(p) / temperature, dim=-1)


def teacher_term(logits: torch.Tensor, soft: torch.Tensor, temperature: float,
                 task: Task = "single_label") -> torch.Tensor:
    """T^2 * KL(soft || student at T), averaged over rows (and labels, for multi-label)."""
    T = temperature
    if task == "multi_label":
        # Binary KL = BCE(soft targets) - their entropy: the same gradient, and 0 at a match.
        entropy = -(soft * soft.clamp_min(PROB_FLOOR).log()
                    + (1 - soft) * (1 - soft).clamp_min(PROB_FLOOR).log())
        kl = (F.binary_cross_entropy_with_logits(logits / T, soft, reduction="none") - entropy).mean()
    else:
        kl = F.kl_div(F.log_softmax(logits / T, dim=-1), soft, reduction="batchmean")
    return T * T * kl


def distill_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    soft: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    task: Task = "single_label",
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The mixed loss of the module docstring for one window per text, averaged over the batch.

    logits (B, n) float32; target (B,) class indices or (B, n) 0/1 floats for multi-label;
    soft (B, n) from :func:`soften` at the same ``temperature``; ``class_weights`` are the
    per-label positive weights for multi-label.
    """
    if task == "multi_label":
        hard = F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=class_weights)
    else:
        hard = F.cross_entropy(logits, target, weight=class_weights, label_smoothing=label_smoothing)
    return (1.0 - alpha) * hard + alpha * teacher_term(logits, soft, temperature, task)


class DistillLoss:
    """``model.train.LossFn``: the mixed loss against soft targets held for every training row.

    ``teacher_probs`` (N, n) are the teacher's probabilities for the training rows, in the
    order ``fit`` sees them (the batch's indices select them). Softened once, kept on ``device``.
    The gold term is the training objective's own (class weights, label smoothing, pos_weight,
    a long text's windows pooled); the teacher term is taken per window, each window of a text
    matching the teacher's answer for the whole text.
    """

    def __init__(
        self,
        teacher_probs: np.ndarray,
        settings: DistillSettings,
        *,
        task: Task = "single_label",
        device: torch.device | str = "cpu",
    ) -> None:
        self.settings = settings
        self.task = task
        self.soft = soften(teacher_probs, settings.temperature, task).to(device)  # (N, n)

    def __call__(self, logits: torch.Tensor, counts: list[int], batch: list[int], target: torch.Tensor,
                 objective: Objective) -> torch.Tensor:
        soft = self.soft[batch]
        if len(counts) != logits.shape[0]:  # several windows for some texts
            soft = soft.repeat_interleave(torch.tensor(counts, device=soft.device), dim=0)
        alpha = self.settings.alpha
        hard = document_loss(logits, counts, target, objective)
        return (1.0 - alpha) * hard + alpha * teacher_term(logits, soft, self.settings.temperature, self.task)


# -------------------------------------------------------------------------------- augmenting


def augment_texts(
    texts: Sequence[str], copies: int, kind: str, rate: float, seed: int
) -> tuple[list[str], list[int]]:
    """``copies`` noisy versions of every text and, for each, the index of its source text.

    Word-level, on whitespace: ``drop`` deletes each word with probability ``rate``; ``mask``
    replaces it with [MASK]; ``span`` deletes one run of about ``rate`` of the words; ``mix``
    picks one of the three per copy. A copy keeps at least one word. Same seed, same copies.
    """
    if kind not in AUGMENT_KINDS:
        raise ModelError(f"augmentation {kind!r}: expected one of {AUGMENT_KINDS}")
    rng = random.Random(seed)
    out: list[str] = []
    source: list[int] = []
    for _ in range(copies):
        for i, text in enumerate(texts):
            how = rng.choice(("drop", "mask", "span")) if kind == "mix" else kind
            out.append(_augment_one(text.split(), how, rate, rng) or text)
            source.append(i)
    return out, source


def _augment_one(words: list[str], how: str, rate: float, rng: random.Random) -> str:
    if len(words) < 2:
        return " ".join(words)
    if how == "span":
        n = max(1, min(len(words) - 1, round(len(words) * rate)))
        start = rng.randrange(len(words) - n + 1)
        kept = words[:start] + words[start + n:]
    elif how == "mask":
        kept = [MASK_TOKEN if rng.random() < rate else w for w in words]
    else:
        kept = [w for w in words if rng.random() >= rate] or [rng.choice(words)]
    return " ".join(kept)


# ------------------------------------------------------------------------------------ checks


def check_labels(data_labels: Sequence[Any], teacher_labels: Sequence[str], source: str) -> None:
    """DataError unless every label in the data is one of the teacher's (a student can only
    learn the teacher's outputs)."""
    seen: set[str] = set()
    for label in data_labels:
        seen.update(label if isinstance(label, list | tuple) else [label])
    unknown = sorted(seen - set(teacher_labels))
    if unknown:
        raise DataError(
            f"{source}: labels {unknown} are not among the teacher's labels {list(teacher_labels)};"
            " the student learns the teacher's outputs, so distil from a teacher trained on these"
            " labels (or leave those rows out)"
        )


def describe(training: dict[str, Any]) -> str | None:
    """One line for ``inspect``: the teacher and the settings, or None for a non-distilled bundle."""
    info = training.get("distillation")
    if not info:
        return None
    teacher = info.get("teacher", {})
    rows = info.get("rows", {})
    settings = info.get("settings", {})
    return (
        f"teacher  {teacher.get('name')} version {teacher.get('version')}   T {settings.get('temperature')}"
        f"   alpha {settings.get('alpha')}   rows: {rows.get('labeled', 0)} labeled,"
        f" {rows.get('unlabeled', 0)} teacher-labeled, {rows.get('augmented', 0)} augmented"
        f" ({settings.get('augment')}, rate {settings.get('augment_rate')})"
    )
