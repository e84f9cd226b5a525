"""The training loop: an EncoderClassifier and a tokenizer in, the best weights out.

    fit(model, tokenizer, train, val, labels, TrainConfig, ...) -> TrainResult

It takes a model that is already built (from scratch, or a pretrained encoder from
``model/pretrained.py``) and a tokenizer, so every way of initialising goes through the same
loop, export and bundle. One epoch:

    bucketed, shuffled batches of documents -> every window of them through the model
    (bf16 autocast on a GPU) -> loss (model/objectives.py: cross-entropy with optional class
    weights and label smoothing, or for multi-label binary cross-entropy with optional
    pos_weight; several windows of a document pooled first) -> backward -> clip grad norm
    -> AdamW step -> LR schedule step (linear warmup, then linear or cosine decay to 0)

Texts are read by a ``model.truncation.Truncation`` (head by default; head+tail; chunks, where
each document is several windows); validation pools window probabilities with the very
function the worker uses. Multi-label validation tunes a threshold per label
(``model/multilabel.py``) and scores macro-F1 at those thresholds.

then validation macro-F1; the best epoch's weights are kept (a macro-F1 tie goes to the lower
validation loss: small validation sets saturate, e.g. 1 error in 412 SMS texts for several
epochs), and training stops after ``patience`` epochs without improvement. After each epoch a checkpoint (weights, optimiser,
schedule, RNG, history, configs, labels, tokenizer) is written atomically, so ``resume``
continues where a killed run stopped.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same code runs data-parallel (DDP): each process
takes every ``world_size``-th batch, gradients are averaged, validation is sharded and its
confusion matrices summed, and only rank 0 logs, shows progress and writes files. The
backend is NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
import torch.distributed as dist
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from model import tokenizer as tok_lib
from model.batching import pad_batch, sorted_batches, training_batches
from model.config import EncoderConfig, TrainConfig
from model.data import LabeledData
from model.encoder import EncoderClassifier
from model.errors import CheckpointError, DataError
from model.evaluate import confusion_matrix, metrics_from_confusion
from model.multilabel import multi_hot, multilabel_metrics, positive_weights, tune_thresholds
from model.objectives import Objective, document_loss
from model.progress import DEFAULT_INTERVAL_S, ProgressLog
from model.truncation import Truncation, Windower, pool

log = structlog.get_logger(__name__)

CHECKPOINT_FORMAT = 1
# Validation batches are larger than training ones: no activations are kept for backward.
EVAL_BATCH_MULTIPLIER = 2

# A training loss in place of the objective's (e.g. distillation, model/distill.py):
# (logits float32 (W, n_labels) for every window of the batch, windows per document, the
# batch's row indices into ``train``, targets, the Objective) -> scalar.
LossFn = Callable[[torch.Tensor, list[int], list[int], torch.Tensor, Objective], torch.Tensor]


@dataclass
class TrainResult:
    """What training produced: the best weights (loaded into ``model``) and how it went."""

    model: EncoderClassifier
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_macro_f1: float
    best_val_metrics: dict[str, Any]
    train_seconds: float  # wall time of this run's epochs (a resumed run adds to the earlier)
    stopped_early: bool
    device: str
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    thresholds: list[float] | None = None  # multi-label: tuned on validation at the best epoch


@dataclass
class DistContext:
    """Where this process sits in a (possibly one-process) training job."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` means this process's GPU when there is one (``LOCAL_RANK`` under torchrun), else CPU."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_distributed(device: str | torch.device = "auto") -> DistContext:
    """Join the torchrun process group when launched by torchrun; otherwise a single process."""
    dev = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=dev)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=dev)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, so the same seed builds the same model and batches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class EncodedSet:
    """Each document's windows of token ids (unpadded) and its target.

    ``targets``: class indices (single-label) or a multi-hot float32 array (N, L).
    Windows are int32 arrays: a fifth of the memory of lists of Python ints.
    """

    windows: list[list[np.ndarray]]
    targets: Any

    @property
    def lengths(self) -> list[int]:
        """Tokens per document, all windows together (what a batch of it costs)."""
        return [sum(len(w) for w in ws) for ws in self.windows]

    @property
    def n_windows(self) -> int:
        return sum(len(ws) for ws in self.windows)


def encode_labeled(
    tokenizer: Tokenizer, data: LabeledData, labels: Sequence[str], max_length: int,
    truncation: Truncation | None = None,
) -> EncodedSet:
    """Tokenize once up front, by ``truncation``; a label outside ``labels`` is a DataError."""
    index = {label: i for i, label in enumerate(labels)}
    seen = set(data.label_counts())
    unknown = sorted(seen - set(index))
    if unknown:
        raise DataError(
            f"{data.source}: labels {unknown} are not among the model's labels {list(labels)}"
        )
    windower = Windower(tokenizer, max_length, truncation)
    windows = [
        [np.asarray(w, dtype=np.int32) for w in ws] for ws in windower.windows(data.texts)
    ]
    if data.tag_sets is not None:
        return EncodedSet(windows, multi_hot(data.tag_sets, labels))
    return EncodedSet(windows, [index[label] for label in data.labels])


def class_weights(targets: Sequence[int], n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, float32 (n_classes,), averaging 1 over the examples."""
    counts = Counter(targets)
    total = len(targets)
    return torch.tensor(
        [total / (n_classes * counts[c]) if counts[c] else 0.0 for c in range(n_classes)],
        dtype=torch.float32,
    )


def parameter_groups(model: EncoderClassifier, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only; layer-wise LR decay when asked.

    Depth 0 is the embeddings, 1..L the blocks, L+1 the final norm and head; a parameter at
    depth d gets ``lr * layer_lr_decay ** (L + 1 - d)``, so the head learns fastest.
    """
    n_layers = len(model.blocks)
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("embeddings."):
            depth = 0
        elif name.startswith("blocks."):
            depth = int(name.split(".")[1]) + 1
        else:
            depth = n_layers + 1
        decay = param.dim() >= 2
        groups.setdefault((depth, decay), []).append(param)
    return [
        {
            "params": params,
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "lr": cfg.lr * cfg.layer_lr_decay ** (n_layers + 1 - depth),
        }
        for (depth, decay), params in sorted(groups.items())
    ]


def lr_lambda(total_steps: int, warmup_ratio: float, schedule: str):  # type: ignore[no-untyped-def]
    """Multiplier of the peak LR at a step: linear warmup, then linear or cosine decay to 0."""
    warmup = max(1, round(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def fit(
    model: EncoderClassifier,
    tokenizer: Tokenizer,
    train: LabeledData,
    val: LabeledData,
    labels: Sequence[str],
    cfg: TrainConfig,
    *,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
    extra_checkpoint: dict[str, Any] | None = None,
    truncation: Truncation | None = None,
    pos_weight: bool = False,
    log_every_s: float = DEFAULT_INTERVAL_S,
    loss_fn: LossFn | None = None,
) -> TrainResult:
    """Train ``model`` on ``train``, select the best epoch on ``val``, return the result.

    ``checkpoint_path``: where each epoch's checkpoint goes (none written when None).
    ``resume``: continue from that checkpoint (it must exist and match model and labels).
    ``extra_checkpoint``: JSON-able facts stored in the checkpoint (e.g. how the model was
    initialised), handed back in ``TrainResult.extra`` on resume.
    ``truncation``: how texts are read (default: the first ``max_length`` tokens).
    Multi-label training is chosen by the data (``train.tag_sets``); ``pos_weight`` then
    weighs each label's positives by its negatives/positives ratio (capped).
    ``log_every_s``: seconds between progress lines in the log (0: none).
    ``loss_fn``: the training loss instead of the objective's (validation always scores the
    gold labels); it gets each batch's row indices into ``train``.
    """
    labels = list(labels)
    if model.config.n_classes != len(labels):
        raise DataError(
            f"the model has {model.config.n_classes} outputs but there are {len(labels)} labels"
        )
    multi_label = train.multi_label
    if val.multi_label != multi_label:
        raise DataError(f"{train.source} and {val.source}: one is multi-label, the other is not")
    truncation = truncation or Truncation()
    ctx = init_distributed(device)
    max_length = model.config.max_length
    train_set = encode_labeled(tokenizer, train, labels, max_length, truncation)
    val_set = encode_labeled(tokenizer, val, labels, max_length, truncation)
    pad = tok_lib.pad_id(tokenizer)
    if pad != model.config.pad_id:
        raise DataError(
            f"the tokenizer pads with id {pad} but the model's pad_id is {model.config.pad_id}"
        )

    model.to(ctx.device)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.98), fused=ctx.device.type in ("cpu", "cuda")
    )
    steps_per_epoch = len(training_batches(train_set.lengths, cfg.batch_size, 0)) // ctx.world_size
    if steps_per_epoch == 0:
        raise DataError(
            f"{len(train)} training rows make no full batch for {ctx.world_size} process(es);"
            " lower --batch-size or add data"
        )
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, cfg.warmup_ratio, cfg.schedule)
    )
    objective = Objective(multi_label=multi_label, pooling=truncation.pooling)
    if multi_label:
        if pos_weight:
            objective.pos_weight = torch.from_numpy(positive_weights(train_set.targets)).to(ctx.device)
    else:
        objective.label_smoothing = cfg.label_smoothing
        if cfg.class_weights:
            objective.class_weight = class_weights(train_set.targets, len(labels)).to(ctx.device)

    state = _LoopState()
    ckpt_path = Path(checkpoint_path) if checkpoint_path else None
    extra = dict(extra_checkpoint or {})
    if resume:
        if ckpt_path is None or not ckpt_path.is_file():
            raise CheckpointError(f"cannot resume: no checkpoint at {ckpt_path}")
        extra = _load_checkpoint(ckpt_path, model, optimizer, scheduler, state, labels, cfg)
        log.info("resumed", checkpoint=str(ckpt_path), next_epoch=state.epoch + 1)
    else:
        seed_everything(cfg.seed)

    net: nn.Module = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    autocast = ctx.device.type == "cuda" and cfg.bf16_on_gpu
    if ctx.is_main:
        log.info(
            "training",
            examples=len(train), validation=len(val), labels=labels,
            task="multi_label" if multi_label else "single_label",
            truncation=truncation.strategy, windows=train_set.n_windows,
            epochs=cfg.epochs, batch_size=cfg.batch_size, steps_per_epoch=steps_per_epoch,
            device=str(ctx.device), world_size=ctx.world_size, bf16=autocast,
            parameters=sum(p.numel() for p in model.parameters()),
        )
    ticker = ProgressLog(log, interval_s=log_every_s if ctx.is_main else 0.0,
                         steps_per_epoch=steps_per_epoch, epochs=cfg.epochs)

    while state.epoch < cfg.epochs and not state.stopped_early:
        epoch = state.epoch + 1
        started = time.perf_counter()
        ticker.start_epoch(epoch)
        batches = training_batches(train_set.lengths, cfg.batch_size, cfg.seed + epoch)
        mine = batches[: steps_per_epoch * ctx.world_size][ctx.rank :: ctx.world_size]
        net.train()
        loss_sum, seen = 0.0, 0
        bar = tqdm(
            mine, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
            disable=not (progress and ctx.is_main), dynamic_ncols=True,
        )
        for step, batch in enumerate(bar, start=1):
            ids, mask, counts = _window_batch(train_set, batch, pad)
            target = _targets(train_set, batch, ctx.device)
            ids, mask = ids.to(ctx.device), mask.to(ctx.device)
            with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = net(_drop_tokens(ids, mask, cfg.token_dropout, tokenizer), mask)
            if loss_fn is not None:
                loss = loss_fn(logits.float(), counts, list(batch), target, objective)
            else:
                loss = document_loss(logits, counts, target, objective)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(batch)
            seen += len(batch)
            elapsed = time.perf_counter() - started
            bar.set_postfix(
                loss=f"{loss_sum / seen:.4f}",
                ex_s=f"{seen * ctx.world_size / max(elapsed, 1e-9):.0f}",
                lr=f"{scheduler.get_last_lr()[-1]:.2e}",
            )
            if ticker.interval_s > 0 and bar.disable:
                ticker.step(step, seen * ctx.world_size, loss_sum / seen)
            elif ticker.interval_s > 0:
                with tqdm.external_write_mode():
                    ticker.step(step, seen * ctx.world_size, loss_sum / seen)
        bar.close()
        train_loss = _mean_across(loss_sum, seen, ctx)
        train_seconds = time.perf_counter() - started
        val_metrics, val_loss = _validate(model, val_set, labels, pad, cfg, ctx, autocast,
                                          objective, truncation)
        seconds = time.perf_counter() - started
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            **{f"val_{k}": val_metrics[k] for k in _HISTORY_METRICS if k in val_metrics},
            "lr": scheduler.get_last_lr()[-1],
            "seconds": seconds,
            "examples_per_s": seen * ctx.world_size / max(train_seconds, 1e-9),
        }
        state.history.append(record)
        state.epoch = epoch
        improved = improves(val_metrics["macro_f1"], val_loss, state.best_score, state.best_val_loss)
        if improved:
            state.best_score = val_metrics["macro_f1"]
            state.best_val_loss = val_loss
            state.best_epoch = epoch
            state.best_metrics = val_metrics
            state.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            state.stale = 0
        else:
            state.stale += 1
            # Stopping early means skipping epochs: after the last one there is nothing to skip.
            if cfg.patience and state.stale >= cfg.patience and epoch < cfg.epochs:
                state.stopped_early = True
        state.seconds += seconds
        if ctx.is_main:
            log.info(
                "epoch",
                **{k: round(v, 5) if isinstance(v, float) else v for k, v in record.items()},
                best_epoch=state.best_epoch, improved=improved,
                stopping=state.stopped_early,
            )
            if ckpt_path is not None:
                _save_checkpoint(ckpt_path, model, optimizer, scheduler, state, labels, cfg,
                                 tokenizer, extra)
    if state.stopped_early and ctx.is_main:
        log.info("early_stop", epoch=state.epoch, of_epochs=cfg.epochs,
                 best_epoch=state.best_epoch, patience=cfg.patience)

    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    model.eval()
    return TrainResult(
        model=model,
        history=state.history,
        best_epoch=state.best_epoch,
        best_val_macro_f1=state.best_score,
        best_val_metrics=state.best_metrics,
        train_seconds=state.seconds,
        stopped_early=state.stopped_early,
        device=str(ctx.device),
        world_size=ctx.world_size,
        extra=extra,
        thresholds=state.best_metrics.get("thresholds") if multi_label else None,
    )


# What each epoch's record keeps of the validation metrics (those the task has).
_HISTORY_METRICS = ("accuracy", "macro_f1", "micro_f1", "exact_match")


def _window_batch(data: EncodedSet, batch: Sequence[int], pad: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Every window of the batch's documents as one padded batch, and windows per document."""
    rows = [w for i in batch for w in data.windows[i]]
    ids, mask = pad_batch(rows, pad)
    return ids, mask, [len(data.windows[i]) for i in batch]


def _targets(data: EncodedSet, batch: Sequence[int], device: torch.device) -> torch.Tensor:
    if isinstance(data.targets, np.ndarray):
        return torch.from_numpy(data.targets[list(batch)]).to(device)
    return torch.tensor([data.targets[i] for i in batch], device=device)


def _drop_tokens(
    ids: torch.Tensor, mask: torch.Tensor, rate: float, tokenizer: Tokenizer
) -> torch.Tensor:
    """Replace a ``rate`` share of real tokens by [UNK] (word dropout), training only.

    A from-scratch model on a few thousand texts leans on a handful of give-away words;
    hiding some of them forces it to use the rest. Specials and padding are never touched.
    """
    if rate <= 0:
        return ids
    unk = tokenizer.token_to_id(tok_lib.UNK)
    if unk is None:
        return ids
    specials = {i for t in tok_lib.SPECIAL_TOKENS if (i := tokenizer.token_to_id(t)) is not None}
    droppable = mask.bool()
    for special in specials:
        droppable &= ids != special
    drop = droppable & (torch.rand(ids.shape, device=ids.device) < rate)
    return ids.masked_fill(drop, unk)


@torch.inference_mode()
def _validate(
    model: EncoderClassifier,
    data: EncodedSet,
    labels: list[str],
    pad: int,
    cfg: TrainConfig,
    ctx: DistContext,
    autocast: bool,
    objective: Objective,
    truncation: Truncation,
) -> tuple[dict[str, Any], float]:
    """Validation metrics and mean loss per document.

    Single-label: each process scores its share and the confusion matrices are summed.
    Multi-label: every process scores the whole (small) set, since thresholds are tuned on all
    of it; the metrics are those at the tuned thresholds, which are returned with them.
    """
    model.eval()
    batches = sorted_batches(data.lengths, cfg.batch_size * EVAL_BATCH_MULTIPLIER)
    multi_label = objective.multi_label
    shard = batches if multi_label else batches[ctx.rank :: ctx.world_size]
    order: list[int] = []
    doc_probs: list[np.ndarray] = []
    loss_sum = 0.0
    for batch in shard:
        ids, mask, counts = _window_batch(data, batch, pad)
        target = _targets(data, batch, ctx.device)
        with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(ids.to(ctx.device), mask.to(ctx.device)).float()
        eval_objective = Objective(multi_label=multi_label, pooling=objective.pooling)  # unweighted
        loss_sum += document_loss(logits, counts, target, eval_objective, reduction="sum").item()
        window_probs = (logits.sigmoid() if multi_label else logits.softmax(dim=-1)).cpu().numpy()
        doc_probs.append(pool(window_probs, counts, truncation.pooling, multi_label))
        order.extend(batch)
    probs = np.concatenate(doc_probs) if doc_probs else np.zeros((0, len(labels)), np.float32)
    if multi_label:
        targets = data.targets[order]
        thresholds = tune_thresholds(probs, targets)
        # BCE's mean is over every (text, label) pair, as in training.
        return multilabel_metrics(probs, targets, thresholds, labels), loss_sum / max(targets.size, 1)
    cm = confusion_matrix([data.targets[i] for i in order], probs.argmax(axis=1).tolist(), len(labels))
    if ctx.distributed:
        totals = torch.tensor(np.append(cm.ravel(), 0), dtype=torch.float64)
        totals[-1] = loss_sum
        dist.all_reduce(totals)
        cm = totals[:-1].numpy().round().astype(np.int64).reshape(cm.shape)
        loss_sum = float(totals[-1])
    n = int(cm.sum())
    return metrics_from_confusion(cm, labels), loss_sum / max(n, 1)


def _mean_across(total: float, count: int, ctx: DistContext) -> float:
    if ctx.distributed:
        t = torch.tensor([total, float(count)], dtype=torch.float64)
        dist.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / max(count, 1)


# A macro-F1 tie counts as an improvement only when the validation loss drops by this share:
# noise-level loss changes must not keep a plateaued run going.
TIE_LOSS_MIN_DROP = 0.01


def improves(macro_f1: float, loss: float, best_macro_f1: float, best_loss: float) -> bool:
    """Whether an epoch beats the best so far: higher validation macro-F1, or the same macro-F1
    with a validation loss at least TIE_LOSS_MIN_DROP lower."""
    if macro_f1 != best_macro_f1:
        return macro_f1 > best_macro_f1
    return loss < best_loss * (1 - TIE_LOSS_MIN_DROP)


@dataclass
class _LoopState:
    epoch: int = 0  # epochs completed
    best_score: float = -1.0
    best_val_loss: float = float("inf")  # breaks macro-F1 ties
    best_epoch: int = 0
    best_metrics: dict[str, Any] = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0  # epochs since the last improvement
    stopped_early: bool = False
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def _save_checkpoint(
    path: Path,
    model: EncoderClassifier,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: _LoopState,
    labels: list[str],
    cfg: TrainConfig,
    tokenizer: Tokenizer,
    extra: dict[str, Any],
) -> None:
    """Write the checkpoint next to its final path, then rename: a crash never leaves half."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "encoder_config": model.config.to_dict(),
        "train_config": asdict(cfg),
        "labels": labels,
        "tokenizer": tokenizer.to_str(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "loop": {k: v for k, v in asdict(state).items() if k != "best_state"},
        "best_state": state.best_state,
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        },
        "extra": extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dictionary, or a CheckpointError saying why it cannot be used."""
    src = Path(path)
    try:
        payload = torch.load(src, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {src}") from None
    except Exception as exc:
        raise CheckpointError(f"{src}: not a readable training checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{src}: not a tagstream training checkpoint (format mismatch)")
    return payload


def _load_checkpoint(
    path: Path,
    model: EncoderClassifier,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: _LoopState,
    labels: list[str],
    cfg: TrainConfig,
) -> dict[str, Any]:
    payload = read_checkpoint(path)
    if payload["labels"] != labels:
        raise CheckpointError(
            f"{path}: trained for labels {payload['labels']}, this run has {labels}"
        )
    if EncoderConfig.from_dict(payload["encoder_config"]) != model.config:
        raise CheckpointError(f"{path}: the model config differs from this run's")
    if payload["train_config"]["epochs"] != cfg.epochs:
        # The LR schedule is laid out over all epochs; changing their number mid-run would
        # silently bend it.
        raise CheckpointError(
            f"{path}: was started for {payload['train_config']['epochs']} epochs, this run asks"
            f" for {cfg.epochs}; resume with the same --epochs"
        )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    for key, value in payload["loop"].items():
        setattr(state, key, value)
    state.best_state = payload["best_state"]
    torch.set_rng_state(payload["rng"]["torch"])
    random.setstate(payload["rng"]["python"])
    np.random.set_state(payload["rng"]["numpy"])
    return dict(payload.get("extra") or {})


def load_trained(path: str | Path) -> tuple[EncoderClassifier, Tokenizer, list[str]]:
    """The best weights of a training checkpoint as an eval-mode model, with its tokenizer and
    labels: enough to export the run again (e.g. at another precision) without retraining."""
    payload = read_checkpoint(path)
    model = EncoderClassifier(EncoderConfig.from_dict(payload["encoder_config"]))
    state = payload["best_state"] if payload.get("best_state") is not None else payload["model"]
    model.load_state_dict(state)
    return model.eval(), Tokenizer.from_str(payload["tokenizer"]), list(payload["labels"])
