"""``tagstream-train distill``: a small student trained on a teacher bundle's soft predictions.

    tagstream-train distill --teacher BUNDLE --train FILE [--unlabeled FILE ...] [--test FILE] --out DIR

The steps, one function each below:
  1. load and verify the teacher; read the data; its labels must be the teacher's;
  2. the teacher labels the training split, the unlabeled files, any augmented copies and the
     test file, each once: cached in DIR/teacher-cache/ (or --teacher-cache) by teacher version
     and texts checksum, so epochs never run it and re-runs only read the cache;
  3. build the student: a from-scratch preset (`small` by default) and its tokenizer;
  4. train it on the mixed loss of ``model/distill.py`` through ``model.train.fit``'s loss hook;
  5. train the same student without the teacher (the scratch baseline), unless told not to;
  6. score student, teacher and baseline on the test file, export the student bundle (its
     config records the teacher and the settings), write the report with the comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from model.cli import _data_options, _given, _report_bad_rows, _small
from model.config import PRESET_NAMES, Preset, TrainConfig, preset
from model.distill import AUGMENT_KINDS, TEACHER_DTYPES, DistillSettings
from model.errors import CheckpointError, ModelError

log = structlog.get_logger("tagstream-train")

# Where distillation departs from the preset's training defaults, and why (bench/distill_bench.py
# holds the measurements). Flags given on the command line win over these.
DISTILL_TRAIN_DEFAULTS: dict[str, Any] = {}
DEFAULTS = DistillSettings()
TEACHER_CACHE = "teacher-cache"
# Texts timed for the report's model-only speed: a few batches, seconds even for the teacher.
SPEED_TEXTS = 512
SPEED_BATCH = 64

EXAMPLES = """\
examples:
  tagstream-train distill --teacher runs/news-minilm/bundle --train data/train.jsonl \\
      --test data/test.jsonl --out runs/news-student
  tagstream-train distill --teacher runs/news-minilm/bundle --train data/train.jsonl \\
      --unlabeled topic-dump.jsonl --augment-copies 4 --out runs/news-student

output folder (--out DIR): as for train (bundle/, report/, checkpoint.pt, tokenizer.json), plus
  DIR/teacher-cache/   the teacher's probabilities per set of texts (reused by re-runs)
"""


def add_distill(sub: Any) -> None:
    """Register the ``distill`` subcommand on ``tagstream-train``'s subparsers."""
    p = sub.add_parser(
        "distill",
        help="train a small, fast student on a fine-tuned teacher bundle's predictions",
        description=(
            "Knowledge distillation: train a from-scratch student (the small preset by default) on"
            " a mix of cross-entropy with the gold labels and KL divergence to the teacher bundle's"
            " temperature-softened probabilities:\n"
            "  loss = (1 - alpha) * CE(student, gold) + alpha * T^2 * KL(teacher_T || student_T)\n"
            "The teacher runs once per set of texts (cached), labels --unlabeled texts and any"
            " augmented copies, and is scored beside the student and a student trained without it."
            " The student is an ordinary bundle, served by the same worker."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    p.add_argument("--teacher", required=True, type=Path, metavar="BUNDLE", help="the teacher bundle (e.g. one fine-tuned with train --init minilm)")
    p.add_argument("--train", required=True, type=Path, metavar="FILE", help="labeled training data (JSONL or CSV); labels must be the teacher's")
    p.add_argument("--unlabeled", type=Path, metavar="FILE", nargs="+", action="extend", default=[],
                   help="texts without labels for the teacher to label (JSONL/CSV with --text-field, or .txt one per line); may repeat")
    p.add_argument("--test", type=Path, metavar="FILE", help="labeled test data for the final report")
    p.add_argument("--val", type=Path, metavar="FILE", help="labeled validation data (default: a split of --train)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of --train held out for validation when no --val (default: %(default)s; the same split as train makes with the same seed)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--name", help="bundle name (default: the --out folder's name)")
    _data_options(p)

    g = p.add_argument_group("distillation")
    g.add_argument("--temperature", type=float, default=DEFAULTS.temperature, help="softens the teacher's and the student's distributions in the KL term (default: %(default)s)")
    g.add_argument("--alpha", type=float, default=DEFAULTS.alpha, help="weight of the teacher term, 0..1; 1 - alpha weights the gold labels (default: %(default)s)")
    g.add_argument("--augment-copies", type=int, default=DEFAULTS.augment_copies, help="noisy copies of every training text, labeled by the teacher (default: %(default)s)")
    g.add_argument("--augment", choices=AUGMENT_KINDS, default=DEFAULTS.augment, help="how a copy is made: drop words, mask words, delete a span, or a mix (default: %(default)s)")
    g.add_argument("--augment-rate", type=float, default=DEFAULTS.augment_rate, help="share of words a copy loses or masks (default: %(default)s)")
    g.add_argument("--teacher-dtype", choices=TEACHER_DTYPES, default=DEFAULTS.teacher_dtype, help="teacher precision when labeling: auto is bf16 on GPUs and on CPUs with native bf16 (AMX/AVX512-BF16; ~3x faster, same labels), else fp32 (default: %(default)s)")
    g.add_argument("--teacher-batch-size", type=int, default=64, help="texts per teacher call (default: %(default)s)")
    g.add_argument("--teacher-cache", type=Path, metavar="DIR", help=f"where the teacher's outputs are cached (default: DIR/{TEACHER_CACHE})")
    g.add_argument("--no-scratch-baseline", action="store_true", help="skip training the same student without the teacher for the comparison")

    g = p.add_argument_group("student (a from-scratch encoder)")
    g.add_argument("--preset", choices=[n for n in PRESET_NAMES], default="small", help="student size and training defaults (default: %(default)s)")
    g.add_argument("--layers", type=int, help="encoder blocks (default: the preset's, " + _small("encoder", "n_layers") + ")")
    g.add_argument("--d-model", type=int, help="width of token vectors (default: the preset's, " + _small("encoder", "d_model") + ")")
    g.add_argument("--max-length", type=int, help="tokens per text (default: the preset's; " + _small("encoder", "max_length") + ")")
    g.add_argument("--pooling", choices=["mean", "cls"], help="default: the preset's; " + _small("encoder", "pooling"))
    g.add_argument("--dropout", type=float, help="default: the preset's; " + _small("encoder", "dropout"))
    g.add_argument("--tokenizer", metavar="FILE|teacher", help="reuse a tokenizer.json, or the teacher's own tokenizer, instead of training one")
    g.add_argument("--init-embeddings", choices=["none", "teacher"], default="none",
                   help="teacher: start the student's token embeddings from the teacher's, reduced by PCA"
                        " (needs --tokenizer teacher) (default: %(default)s)")
    g.add_argument("--tokenizer-kind", choices=["wordpiece", "bpe"], help="default: the preset's; " + _small("tokenizer", "kind"))
    g.add_argument("--vocab-size", type=int, help="default: the preset's; " + _small("tokenizer", "vocab_size"))
    g.add_argument("--cased", action="store_true", help="keep case (default: lowercase)")

    g = p.add_argument_group("training (defaults: the preset's)")
    g.add_argument("--epochs", type=int, help=_small("train", "epochs"))
    g.add_argument("--batch-size", type=int, help=_small("train", "batch_size"))
    g.add_argument("--lr", type=float, help=_small("train", "lr"))
    g.add_argument("--weight-decay", type=float, help=_small("train", "weight_decay"))
    g.add_argument("--warmup-ratio", type=float, help=_small("train", "warmup_ratio"))
    g.add_argument("--schedule", choices=["linear", "cosine"], help=_small("train", "schedule"))
    g.add_argument("--label-smoothing", type=float, help=_small("train", "label_smoothing"))
    g.add_argument("--token-dropout", type=float, help="share of tokens hidden as [UNK] in training; " + _small("train", "token_dropout"))
    g.add_argument("--class-weights", action="store_true", help="weight the gold-label term by inverse class frequency (imbalanced data)")
    g.add_argument("--patience", type=int, help="epochs without validation macro-F1 gain before stopping; " + _small("train", "patience"))
    g.add_argument("--seed", type=int, help="seed for the split, initialisation, batches and augmentation; " + _small("train", "seed"))

    g = p.add_argument_group("runtime and export")
    g.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda:N (default: %(default)s)")
    g.add_argument("--threads", type=int, default=0, help="CPU threads for torch; 0 = torch's default (default: %(default)s)")
    g.add_argument("--precision", choices=["fp32", "int8"], default="fp32", help="student bundle precision (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt with its stored settings (the teacher's outputs come from the cache)")
    p.set_defaults(func=cmd_distill)


@dataclasses.dataclass
class _Sets:
    """The texts of one run, and the teacher's probabilities for the student's training rows."""

    train: Any  # LabeledData: labeled split + teacher-labeled + augmented rows, in fit's order
    labeled: Any  # LabeledData: the labeled split alone (the scratch baseline trains on it)
    val: Any
    test: Any | None
    probs: np.ndarray  # (len(train), n_labels)
    rows: dict[str, int]
    unlabeled_files: list[str]
    teacher_seconds: float


def cmd_distill(args: argparse.Namespace) -> int:
    import torch

    from model import distill
    from model import train as train_lib

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ModelError("distill runs in one process: start it without torchrun")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = train_lib.resolve_device(args.device)
    progress = not args.no_progress and sys.stderr.isatty()
    ckpt = args.out / "checkpoint.pt"
    stored = _stored_run(ckpt) if args.resume else None
    if stored is not None:
        args.preset = stored["extra"]["preset"]
        args.init_embeddings = stored["extra"].get("init_embeddings", "none")
    chosen = preset(args.preset)
    flags = _training_flags(args)
    scratch_cfg = dataclasses.replace(chosen.train, **flags)
    if stored is not None:
        settings = DistillSettings(**stored["extra"]["distillation"])
        student_cfg = TrainConfig(**stored["train_config"])
        log.info("resume", checkpoint=str(ckpt), note="using the checkpoint's settings")
    else:
        settings = DistillSettings(
            temperature=args.temperature, alpha=args.alpha, augment=args.augment,
            augment_copies=args.augment_copies, augment_rate=args.augment_rate,
            teacher_dtype=args.teacher_dtype,
        )
        student_cfg = dataclasses.replace(chosen.train, **{**DISTILL_TRAIN_DEFAULTS, **flags})

    teacher = _load_teacher(args.teacher, device)
    if stored is not None and stored["extra"]["teacher"]["version"] != teacher.version:
        raise CheckpointError(
            f"{ckpt} was distilled from {stored['extra']['teacher']['name']} version"
            f" {stored['extra']['teacher']['version']}, --teacher is version {teacher.version};"
            " resume with that teacher, or start over without --resume"
        )
    # An int8 teacher is already the fast path; autocast does not apply to its quantized layers.
    auto_dtype = "fp32" if teacher.precision == "int8" else settings.teacher_dtype
    settings = dataclasses.replace(
        settings, teacher_dtype=distill.resolve_teacher_dtype(auto_dtype, teacher.device))
    sets = _teacher_labeled_sets(args, teacher, settings, student_cfg.seed, progress)
    if stored is not None:
        from tokenizers import Tokenizer

        from model.config import EncoderConfig

        tokenizer = Tokenizer.from_str(stored["tokenizer"])
        tok_source, tok_cfg = stored["extra"]["tokenizer_source"], None
        enc_cfg = EncoderConfig.from_dict(stored["encoder_config"])
    else:
        tokenizer, tok_source, tok_cfg = _student_tokenizer(args, chosen, teacher, sets)
        enc_cfg = _student_config(args, chosen, tokenizer, len(teacher.labels))

    init_fn = _embedding_init(args, teacher, enc_cfg, tok_source) if stored is None else None
    student = _train_student(args, enc_cfg, tokenizer, tok_source, sets, teacher, settings,
                             student_cfg, device, progress, resume=stored is not None,
                             init_fn=init_fn)
    scratch = None
    if not args.no_scratch_baseline:
        log.info("scratch_baseline", note="the same student trained without the teacher, for the report")
        scratch = _fit(enc_cfg, tokenizer, sets.labeled, sets.val, teacher.labels, scratch_cfg,
                       device, progress, loss_fn=None, checkpoint=None)
    return _evaluate_and_export(args, teacher, sets, settings, student, scratch, tokenizer,
                                tok_source, tok_cfg, student_cfg, scratch_cfg, progress)


def _embedding_init(args: argparse.Namespace, teacher: Any, enc_cfg: Any, tok_source: str) -> Any:
    """For --init-embeddings teacher: a function that loads the teacher's reduced token table."""
    if args.init_embeddings == "none":
        return None
    if args.tokenizer != "teacher":
        raise ModelError("--init-embeddings teacher needs --tokenizer teacher (the rows of the teacher's"
                         " table are its own vocabulary)")
    import torch

    from model.distill import teacher_token_embeddings

    table = teacher_token_embeddings(teacher, enc_cfg.d_model)

    def init(model: Any) -> None:
        with torch.no_grad():
            model.embeddings.tokens.weight.copy_(table)
            model.embeddings.tokens.weight[enc_cfg.pad_id].zero_()

    log.info("student_embeddings", source=f"teacher {teacher.name} {teacher.version}",
             rows=table.shape[0], dims=table.shape[1])
    return init


def _stored_run(path: Path) -> dict[str, Any]:
    """The checkpoint of an earlier distill run into the same folder (for --resume)."""
    from model import train as train_lib

    if not path.is_file():
        raise CheckpointError(f"cannot resume: no checkpoint at {path}")
    stored = train_lib.read_checkpoint(path)
    if "distillation" not in stored.get("extra", {}):
        raise CheckpointError(f"{path} is not from a distill run; resume it with tagstream-train train --resume")
    return stored


def _training_flags(args: argparse.Namespace) -> dict[str, Any]:
    changes = _given(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, schedule=args.schedule, label_smoothing=args.label_smoothing,
        token_dropout=args.token_dropout, patience=args.patience, seed=args.seed,
    )
    if args.class_weights:
        changes["class_weights"] = True
    return changes


def _load_teacher(path: Path, device: Any) -> Any:
    from model.bundle import Bundle
    from model.distill import bundle_task

    # int8 bundles have CPU kernels only.
    teacher = Bundle.load(path, device="cpu" if _is_int8(path) else device)
    if bundle_task(teacher) == "multi_label":
        raise ModelError(
            f"teacher {path} is a multi-label bundle: distilling multi-label teachers needs"
            " multi-label training, which this build does not have yet"
        )
    log.info("teacher", name=teacher.name, version=teacher.version, labels=teacher.labels,
             precision=teacher.precision, accuracy=teacher.metrics.get("accuracy"))
    return teacher


def _is_int8(path: Path) -> bool:
    import json

    try:
        return json.loads((path / "config.json").read_text()).get("precision") == "int8"
    except (OSError, ValueError):
        return False  # Bundle.load says what is wrong with it


def _teacher_labeled_sets(
    args: argparse.Namespace, teacher: Any, settings: DistillSettings, seed: int, progress: bool
) -> _Sets:
    """Read the data, check its labels, and have the teacher label every set of texts once."""
    from model import data as data_lib
    from model import distill
    from model.unlabeled import read_texts

    read = dict(text_field=args.text_field, label_field=args.label_field,
                on_bad=args.on_bad_row, file_format=args.file_format)
    full = data_lib.read_labeled(args.train, **read)
    _report_bad_rows(full)
    distill.check_labels(full.labels, teacher.labels, str(args.train))
    missing = sorted(set(teacher.labels) - set(full.labels))
    if missing:
        log.warning("labels_without_examples", labels=missing,
                    note="the student learns them from the teacher's probabilities only")
    if args.val:
        labeled, val = full, data_lib.read_labeled(args.val, **read)
        _report_bad_rows(val)
        distill.check_labels(val.labels, teacher.labels, str(args.val))
    else:
        labeled, val = data_lib.stratified_split(full, args.val_fraction, seed)
    test = None
    if args.test:
        test = data_lib.read_labeled(args.test, **read)
        _report_bad_rows(test)
        distill.check_labels(test.labels, teacher.labels, str(args.test))

    cache = args.teacher_cache or args.out / TEACHER_CACHE
    label_kw = dict(cache_dir=cache, dtype=settings.teacher_dtype,
                    batch_size=args.teacher_batch_size, progress=progress)
    seconds = 0.0

    def label(texts: list[str], what: str) -> np.ndarray:
        nonlocal seconds
        out = distill.teacher_probs(teacher, texts, what=what, **label_kw)  # type: ignore[arg-type]
        seconds += out.seconds
        return out.probs

    texts, labels = list(labeled.texts), list(labeled.labels)
    probs = [label(texts, f"{args.train.name} (training split)")]
    unlabeled_files = []
    n_unlabeled = 0
    for path in args.unlabeled:
        extra = read_texts(path, text_field=args.text_field, on_bad=args.on_bad_row)
        if extra.bad_rows:
            log.warning("bad_rows", file=extra.source, skipped=len(extra.bad_rows),
                        detail=data_lib.describe_bad_rows(extra.bad_rows))
        p = label(extra.texts, path.name)
        texts += extra.texts
        labels += distill.pseudo_labels(p, teacher.labels)
        probs.append(p)
        unlabeled_files.append(str(path))
        n_unlabeled += len(extra)
    n_augmented = 0
    if settings.augment_copies:
        copies, source = distill.augment_texts(texts, settings.augment_copies, settings.augment,
                                               settings.augment_rate, seed)
        probs.append(label(copies, f"{settings.augment_copies} augmented copies"))
        labels += [labels[i] for i in source]
        texts += copies
        n_augmented = len(copies)
    train = data_lib.LabeledData(texts, labels, source=f"{args.train} + teacher-labeled rows")
    rows = {"labeled": len(labeled), "unlabeled": n_unlabeled, "augmented": n_augmented,
            "validation": len(val), "test": len(test) if test else 0}
    log.info("data", **rows, labels=teacher.labels)
    return _Sets(train, labeled, val, test, np.concatenate(probs), rows, unlabeled_files, seconds)


def _student_tokenizer(args: argparse.Namespace, chosen: Preset, teacher: Any,
                       sets: _Sets) -> tuple[Any, str, Any]:
    """(tokenizer, where it came from, the config it was trained with or None)."""
    from tokenizers import Tokenizer

    from model import tokenizer as tok_lib

    if args.tokenizer == "teacher":
        if args.vocab_size or args.tokenizer_kind or args.cased:
            raise ModelError("--vocab-size, --tokenizer-kind and --cased apply to a trained tokenizer,"
                             " not --tokenizer teacher")
        tok = Tokenizer.from_str(teacher.tokenizer.to_str())
        tok.no_truncation()
        tok.no_padding()
        tok_lib.pad_id(tok)
        return tok, f"teacher {teacher.name} {teacher.version}", None
    if args.tokenizer:
        return tok_lib.load_tokenizer(args.tokenizer), str(args.tokenizer), None
    changes = _given(kind=args.tokenizer_kind, vocab_size=args.vocab_size)
    if args.cased:
        changes["lowercase"] = False
    tok_cfg = dataclasses.replace(chosen.tokenizer, **changes)
    # The labeled split and the unlabeled texts: the augmented copies add no new words.
    n_original = sets.rows["labeled"] + sets.rows["unlabeled"]
    return tok_lib.train_tokenizer(sets.train.texts[:n_original], tok_cfg), "trained", tok_cfg


def _student_config(args: argparse.Namespace, chosen: Preset, tokenizer: Any, n_labels: int) -> Any:
    from model import tokenizer as tok_lib

    shape = _given(max_length=args.max_length, pooling=args.pooling, dropout=args.dropout,
                   n_layers=args.layers, d_model=args.d_model)
    if args.d_model:
        shape["d_ff"] = 4 * args.d_model  # the usual 4x feed-forward width
    try:
        return dataclasses.replace(chosen.encoder, vocab_size=tokenizer.get_vocab_size(),
                                   n_classes=n_labels, pad_id=tok_lib.pad_id(tokenizer), **shape)
    except ValueError as exc:  # e.g. --d-model not divisible by the preset's heads
        raise ModelError(f"invalid student shape: {exc}") from exc


def _train_student(args: argparse.Namespace, enc_cfg: Any, tokenizer: Any, tok_source: str,
                   sets: _Sets, teacher: Any, settings: DistillSettings, cfg: TrainConfig,
                   device: Any, progress: bool, *, resume: bool, init_fn: Any = None) -> Any:
    from model import tokenizer as tok_lib
    from model import train as train_lib
    from model.distill import DistillLoss

    index = {label: i for i, label in enumerate(teacher.labels)}
    weights = (train_lib.class_weights([index[x] for x in sets.train.labels], len(teacher.labels))
               if cfg.class_weights else None)
    loss = DistillLoss(sets.probs, settings, class_weights=weights,
                       label_smoothing=cfg.label_smoothing, device=device)
    tok_lib.save_tokenizer(tokenizer, args.out / "tokenizer.json")
    log.info("distilling", temperature=settings.temperature, alpha=settings.alpha,
             rows=len(sets.train), epochs=cfg.epochs)
    return _fit(enc_cfg, tokenizer, sets.train, sets.val, teacher.labels, cfg, device, progress,
                loss_fn=loss, checkpoint=args.out / "checkpoint.pt", resume=resume, init_fn=init_fn,
                extra={"init": "scratch", "preset": args.preset, "distillation": settings.to_dict(),
                       "teacher": {"name": teacher.name, "version": teacher.version},
                       "tokenizer_source": tok_source, "init_embeddings": args.init_embeddings})


def _fit(enc_cfg: Any, tokenizer: Any, train: Any, val: Any, labels: list[str], cfg: TrainConfig,
         device: Any, progress: bool, *, loss_fn: Any, checkpoint: Path | None,
         extra: dict[str, Any] | None = None, resume: bool = False, init_fn: Any = None) -> Any:
    from model import train as train_lib
    from model.encoder import EncoderClassifier

    train_lib.seed_everything(cfg.seed)
    model = EncoderClassifier(enc_cfg)
    if init_fn is not None:
        init_fn(model)
    return train_lib.fit(model, tokenizer, train, val, labels, cfg, checkpoint_path=checkpoint,
                         resume=resume, device=device, progress=progress, extra_checkpoint=extra,
                         loss_fn=loss_fn)


def _evaluate_and_export(args: argparse.Namespace, teacher: Any, sets: _Sets,
                         settings: DistillSettings, student: Any, scratch: Any, tokenizer: Any,
                         tok_source: str, tok_cfg: Any, student_cfg: TrainConfig,
                         scratch_cfg: TrainConfig, progress: bool) -> int:
    from model import distill
    from model import evaluate as eval_lib
    from model import export as export_lib
    from model.bundle import Bundle

    labels = teacher.labels
    final = sets.test or sets.val
    final_name = "test" if sets.test else "validation"
    model = student.model.cpu()
    max_length = model.config.max_length

    def score(prob_fn: Any) -> tuple[dict[str, Any], np.ndarray]:
        probs = eval_lib.predict_probs(prob_fn, tokenizer, final.texts, max_length=max_length)
        return eval_lib.compute_metrics(final.labels, [labels[i] for i in probs.argmax(1)], labels), probs

    metrics, student_probs = score(export_lib.eager_probability_model(model, args.precision))
    teacher_out = distill.teacher_probs(
        teacher, final.texts, what=f"{final_name} set", cache_dir=args.teacher_cache or args.out / TEACHER_CACHE,
        dtype=settings.teacher_dtype, batch_size=args.teacher_batch_size, progress=progress)
    teacher_metrics = eval_lib.compute_metrics(
        final.labels, [labels[i] for i in teacher_out.probs.argmax(1)], labels)
    scratch_scored = (score(export_lib.eager_probability_model(scratch.model.cpu(), args.precision))
                      if scratch is not None else None)
    agreement = float((student_probs.argmax(1) == teacher_out.probs.argmax(1)).mean())

    name = args.name or args.out.resolve().name
    teacher_info = {"name": teacher.name, "version": teacher.version, "path": str(teacher.path),
                    "precision": teacher.precision, "init": teacher.config.get("training", {}).get("init"),
                    "metrics": {k: v for k, v in teacher.metrics.items() if not isinstance(v, dict)}}
    distillation = {"teacher": teacher_info, "settings": settings.to_dict(), "rows": sets.rows,
                    "unlabeled_files": sets.unlabeled_files,
                    "teacher_seconds": round(sets.teacher_seconds, 1),
                    "agreement_with_teacher": agreement}
    summary: dict[str, Any] = {
        "evaluated_on": final_name, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
        "per_class_f1": {k: v["f1"] for k, v in metrics["per_class"].items()},
        "validation_macro_f1": student.best_val_macro_f1, "precision": args.precision,
        "teacher_accuracy": teacher_metrics["accuracy"], "teacher_macro_f1": teacher_metrics["macro_f1"],
        "agreement_with_teacher": agreement,
    }
    if scratch_scored is not None:
        summary["scratch_accuracy"] = scratch_scored[0]["accuracy"]
        summary["scratch_macro_f1"] = scratch_scored[0]["macro_f1"]
    training = {
        "preset": args.preset, "init": "scratch", "tokenizer": tok_source,
        "init_embeddings": args.init_embeddings,
        "train_config": dataclasses.asdict(student_cfg),
        "tokenizer_config": dataclasses.asdict(tok_cfg) if tok_cfg is not None else None,
        "rows": {"train": len(sets.train), "validation": len(sets.val), "test": sets.rows["test"]},
        "epochs_run": len(student.history), "best_epoch": student.best_epoch,
        "stopped_early": student.stopped_early, "train_seconds": round(student.train_seconds, 1),
        "device": student.device, "world_size": 1, "distillation": distillation,
    }
    exported = export_lib.export_bundle(model, tokenizer, labels, args.out / "bundle",
                                        parity_texts=sets.val.texts, name=name,
                                        precision=args.precision, metrics=summary, training=training)

    speed_texts = final.texts[:SPEED_TEXTS]
    rows = [
        _row("student (distilled)", metrics, Bundle.load(exported.path), speed_texts, agreement),
        _row(f"teacher ({teacher.name})", teacher_metrics, teacher, speed_texts, 1.0),
    ]
    if scratch_scored is not None:
        # The same shape and tokenizer as the student: the same speed and size.
        same = float((scratch_scored[1].argmax(1) == teacher_out.probs.argmax(1)).mean())
        rows.append(_row("scratch student (no teacher)", scratch_scored[0], None, speed_texts, same,
                         params=rows[0]["parameters"], speed=rows[0]["texts_per_s"]))
    comparison = {"rows": rows, "scratch_train_config": dataclasses.asdict(scratch_cfg) if scratch else None}
    paths = eval_lib.write_report(
        args.out / "report", metrics,
        title=f"{name}: distilled from {teacher.name} {teacher.version}, {final_name} set ({final.source})",
        history=student.history,
        extra={"summary": summary,
               "training": {k: v for k, v in training.items() if not isinstance(v, dict)},
               "distillation": {**settings.to_dict(), "teacher": f"{teacher.name} {teacher.version}",
                                **{f"rows_{k}": v for k, v in sets.rows.items()},
                                "teacher_seconds": round(sets.teacher_seconds, 1)},
               "comparison": comparison,
               "export": {"bundle": str(exported.path), "precision": exported.precision,
                          "parity_max_abs_diff": exported.parity_max_abs_diff}},
    )
    with paths["markdown"].open("a", encoding="utf-8") as f:
        f.write(_comparison_markdown(rows, final_name, len(final)))
    for r in rows:
        print(f"{r['model']:<34} accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}"
              f"  agreement with teacher {r['agreement_with_teacher']:.1%}"
              f"  {r['texts_per_s']:,.0f} texts/s")
    print(f"({final_name} set, {len(final)} texts; model-only texts/s on {len(speed_texts)} texts,"
          f" batch {SPEED_BATCH}, this process)")
    print(f"bundle: {exported.path}")
    print(f"report: {paths['markdown']}")
    return 0


def _row(what: str, metrics: dict[str, Any], bundle: Any, texts: list[str], agreement: float,
         *, params: int | None = None, speed: float | None = None) -> dict[str, Any]:
    if bundle is not None:
        speed = model_texts_per_s(bundle, texts)
        params = sum(p.numel() for p in bundle.model.parameters())
    return {"model": what, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "per_class_f1": {k: v["f1"] for k, v in metrics["per_class"].items()},
            "agreement_with_teacher": agreement, "parameters": params, "texts_per_s": speed}


def model_texts_per_s(bundle: Any, texts: list[str], batch_size: int = SPEED_BATCH) -> float:
    """Model-only texts/s of a bundle: pre-tokenized, length-sorted batches, after a warm-up pass."""
    import torch

    from model import tokenizer as tok_lib
    from model.batching import pad_batch, sorted_batches

    sequences = tok_lib.encode_unpadded(bundle.tokenizer, texts, bundle.max_length)
    batches = [pad_batch([sequences[i] for i in b], bundle.pad_id)
               for b in sorted_batches([len(s) for s in sequences], batch_size)]
    with torch.inference_mode():
        for ids, mask in batches:  # warm-up: TorchScript specialises on its first calls
            bundle.model(ids, mask)
        started = time.perf_counter()
        for ids, mask in batches:
            bundle.model(ids, mask)
        return len(texts) / max(time.perf_counter() - started, 1e-9)


def _comparison_markdown(rows: list[dict[str, Any]], final_name: str, n: int) -> str:
    lines = ["", "## Student, teacher and scratch student", "",
             f"On the {final_name} set ({n} texts). Speed: model only, pre-tokenized texts, batch"
             f" {SPEED_BATCH}, measured in this run (compare within the table, not across machines).",
             "", "| model | accuracy | macro-F1 | agrees with teacher | parameters | texts/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} |"
                     f" {r['agreement_with_teacher']:.1%} | {r['parameters']:,} | {r['texts_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"
