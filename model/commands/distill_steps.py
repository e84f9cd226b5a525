"""The steps of ``tagstream-train distill``, in the order ``model/commands/distill.py`` runs them.

State passes from step to step in one ``Run`` (settings, the teacher, the student's tokenizer and
shape) and one ``Sets`` (the texts and the teacher's probabilities for the student's rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.commands.common import given, log, read_options, report_bad_rows
from model.config import TrainConfig, preset
from model.distill import DistillSettings
from model.errors import CheckpointError, ModelError

TEACHER_CACHE = "teacher-cache"
# Texts timed for the report's model-only speed: a few batches, seconds even for the teacher.
SPEED_TEXTS = 512
SPEED_BATCH = 64
# What --tokenizer accepts besides a file.
TOKENIZER_CHOICES = ("auto", "teacher", "trained")


@dataclass
class Run:
    """What the steps share."""

    out: Path
    device: Any  # torch.device
    progress: bool
    stored: dict[str, Any] | None  # the checkpoint being resumed
    preset_name: str
    settings: DistillSettings
    student_cfg: TrainConfig
    scratch_cfg: TrainConfig
    teacher: Any = None  # model.bundle.Bundle
    tokenizer: Any = None
    tok_source: str = "trained"  # "trained", "teacher NAME VERSION" or a file
    tok_cfg: Any = None  # the TokenizerConfig a trained tokenizer was trained with
    tok_reason: str = ""  # why --tokenizer auto chose what it chose
    init_embeddings: str = "none"  # resolved: none or teacher
    enc_cfg: Any = None
    init_fn: Any = None  # sets the student's token table (--init-embeddings teacher)
    truncation: Any = None  # the student's: head (model.truncation.Truncation)

    @property
    def multi_label(self) -> bool:
        return bool(self.teacher is not None and self.teacher.multi_label)

    @property
    def task(self) -> str:
        return "multi_label" if self.multi_label else "single_label"


@dataclass
class Sets:
    """The texts of one run, and the teacher's probabilities for the student's training rows."""

    train: Any  # LabeledData: labeled split + teacher-labeled + augmented rows, in fit's order
    labeled: Any  # LabeledData: the labeled split alone (the scratch baseline trains on it)
    val: Any
    test: Any | None
    probs: np.ndarray  # (len(train), n_labels)
    rows: dict[str, int]
    unlabeled_files: list[str] = field(default_factory=list)
    teacher_seconds: float = 0.0


# ------------------------------------------------------------------------------- 1. start


def start(args: argparse.Namespace) -> Run:
    """Settings: the preset's, the flags given, or the checkpoint's on --resume."""
    from model import train as train_lib
    from model.commands.train_steps import set_threads
    from model.truncation import Truncation

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ModelError("distill runs in one process: start it without torchrun")
    set_threads(args.threads)
    device = train_lib.resolve_device(args.device)
    ckpt = args.out / "checkpoint.pt"
    stored = _stored_run(ckpt) if args.resume else None
    preset_name = stored["extra"]["preset"] if stored is not None else args.preset
    chosen = preset(preset_name)
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
        student_cfg = scratch_cfg
    truncation = Truncation.from_dict(stored["extra"].get("truncation")) if stored else Truncation()
    return Run(out=args.out, device=device, progress=not args.no_progress and sys.stderr.isatty(),
               stored=stored, preset_name=preset_name, settings=settings, student_cfg=student_cfg,
               scratch_cfg=scratch_cfg, truncation=truncation)


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
    changes = given(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, schedule=args.schedule, label_smoothing=args.label_smoothing,
        token_dropout=args.token_dropout, patience=args.patience, seed=args.seed,
    )
    if args.class_weights:
        changes["class_weights"] = True
    return changes


# ------------------------------------------------------------------------------ 2. teacher


def load_teacher(args: argparse.Namespace, run: Run) -> None:
    from model import distill
    from model.bundle import Bundle

    # int8 bundles have CPU kernels only.
    teacher = Bundle.load(args.teacher, device="cpu" if _is_int8(args.teacher) else run.device)
    if run.stored is not None and run.stored["extra"]["teacher"]["version"] != teacher.version:
        raise CheckpointError(
            f"{run.out / 'checkpoint.pt'} was distilled from {run.stored['extra']['teacher']['name']} version"
            f" {run.stored['extra']['teacher']['version']}, --teacher is version {teacher.version};"
            " resume with that teacher, or start over without --resume"
        )
    if teacher.multi_label and args.class_weights:
        raise ModelError("--class-weights is for single-label teachers; a multi-label teacher takes --pos-weight")
    if not teacher.multi_label and args.pos_weight:
        raise ModelError("--pos-weight is for multi-label teachers; a single-label teacher takes --class-weights")
    headline = {k: teacher.metrics.get(k) for k in ("accuracy", "micro_f1", "macro_f1") if k in teacher.metrics}
    log.info("teacher", name=teacher.name, version=teacher.version, task=teacher.task,
             labels=teacher.labels, precision=teacher.precision, **headline)
    # An int8 teacher is already the fast path; autocast does not apply to its quantized layers.
    auto_dtype = "fp32" if teacher.precision == "int8" else run.settings.teacher_dtype
    run.settings = dataclasses.replace(
        run.settings, teacher_dtype=distill.resolve_teacher_dtype(auto_dtype, teacher.device))
    run.teacher = teacher


def _is_int8(path: Path) -> bool:
    import json

    try:
        return json.loads((path / "config.json").read_text()).get("precision") == "int8"
    except (OSError, ValueError):
        return False  # Bundle.load says what is wrong with it


# --------------------------------------------------------------------- 3. the soft targets


def teacher_labeled_sets(args: argparse.Namespace, run: Run) -> Sets:
    """Read the data, check its labels, and have the teacher label every set of texts once."""
    from model import data as data_lib
    from model import distill
    from model.unlabeled import read_texts

    teacher = run.teacher
    multi = run.multi_label
    read = read_options(args)
    full = data_lib.read_labeled(args.train, multi_label=multi, **read)
    report_bad_rows(full)
    distill.check_labels(_label_rows(full), teacher.labels, str(args.train))
    missing = sorted(set(teacher.labels) - set(full.label_counts()))
    if missing:
        log.warning("labels_without_examples", labels=missing,
                    note="the student learns them from the teacher's probabilities only")
    seed = run.student_cfg.seed
    if args.val:
        labeled, val = full, data_lib.read_labeled(args.val, multi_label=multi, **read)
        report_bad_rows(val)
        distill.check_labels(_label_rows(val), teacher.labels, str(args.val))
    else:
        labeled, val = data_lib.stratified_split(full, args.val_fraction, seed)
    test = None
    if args.test:
        test = data_lib.read_labeled(args.test, multi_label=multi, **read)
        report_bad_rows(test)
        distill.check_labels(_label_rows(test), teacher.labels, str(args.test))

    seconds = 0.0

    def label(texts: list[str], what: str) -> np.ndarray:
        nonlocal seconds
        out = _teacher_probs(args, run, texts, what)
        seconds += out.seconds
        return out.probs

    texts, rows = list(labeled.texts), _label_rows(labeled)
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
        rows += distill.pseudo_labels(p, teacher.labels, run.task, teacher.thresholds or None)  # type: ignore[arg-type]
        probs.append(p)
        unlabeled_files.append(str(path))
        n_unlabeled += len(extra)
    n_augmented = 0
    settings = run.settings
    if settings.augment_copies:
        copies, source = distill.augment_texts(texts, settings.augment_copies, settings.augment,
                                               settings.augment_rate, seed)
        probs.append(label(copies, f"{settings.augment_copies} augmented copies"))
        rows += [rows[i] for i in source]
        texts += copies
        n_augmented = len(copies)
    where = f"{args.train} + teacher-labeled rows"
    train = (data_lib.LabeledData(texts, [], source=where, tag_sets=rows) if multi
             else data_lib.LabeledData(texts, rows, source=where))
    counts = {"labeled": len(labeled), "unlabeled": n_unlabeled, "augmented": n_augmented,
              "validation": len(val), "test": len(test) if test else 0}
    log.info("data", **counts, task=run.task, labels=teacher.labels)
    return Sets(train, labeled, val, test, np.concatenate(probs), counts, unlabeled_files, seconds)


def _label_rows(data: Any) -> list[Any]:
    """Each row's label, or (multi-label) its list of tags."""
    return [list(t) for t in data.tag_sets] if data.tag_sets is not None else list(data.labels)


def _teacher_probs(args: argparse.Namespace, run: Run, texts: list[str], what: str) -> Any:
    from model import distill

    return distill.teacher_probs(
        run.teacher, texts, what=what, cache_dir=args.teacher_cache or args.out / TEACHER_CACHE,
        dtype=run.settings.teacher_dtype, batch_size=args.teacher_batch_size, progress=run.progress)


# ------------------------------------------------------------------------------- 4. student


def build_student(args: argparse.Namespace, run: Run, sets: Sets) -> None:
    """The student's tokenizer, shape and (maybe) token table: the checkpoint's on --resume."""
    from model import tokenizer as tok_lib
    from model.config import EncoderConfig

    if run.stored is not None:
        from tokenizers import Tokenizer

        run.tokenizer = Tokenizer.from_str(run.stored["tokenizer"])
        run.tok_source = run.stored["extra"]["tokenizer_source"]
        run.init_embeddings = run.stored["extra"].get("init_embeddings", "none")
        run.enc_cfg = EncoderConfig.from_dict(run.stored["encoder_config"])
        return
    chosen = preset(run.preset_name)
    shape = given(max_length=args.max_length, pooling=args.pooling, dropout=args.dropout,
                  n_layers=args.layers, d_model=args.d_model)
    if args.d_model:
        shape["d_ff"] = 4 * args.d_model  # the usual 4x feed-forward width
    d_model = shape.get("d_model", chosen.encoder.d_model)
    _choose_tokenizer(args, run, sets, d_model)
    try:
        run.enc_cfg = dataclasses.replace(chosen.encoder, vocab_size=run.tokenizer.get_vocab_size(),
                                          n_classes=len(run.teacher.labels),
                                          pad_id=tok_lib.pad_id(run.tokenizer), **shape)
    except ValueError as exc:  # e.g. --d-model not divisible by the preset's heads
        raise ModelError(f"invalid student shape: {exc}") from exc
    run.init_fn = _embedding_init(run)


def _choose_tokenizer(args: argparse.Namespace, run: Run, sets: Sets, d_model: int) -> None:
    """--tokenizer and --init-embeddings, ``auto`` resolved (the reason is logged and recorded)."""
    from tokenizers import Tokenizer

    from model import tokenizer as tok_lib

    choice = args.tokenizer
    trained_flags = [f for f, v in (("--vocab-size", args.vocab_size), ("--tokenizer-kind", args.tokenizer_kind),
                                    ("--cased", args.cased)) if v]
    if choice == "auto":
        use_teacher, run.tok_reason = _teacher_vocabulary_fits(args, run, sets, d_model, trained_flags)
        choice = "teacher" if use_teacher else "trained"
        log.info("student_tokenizer", tokenizer=choice, reason=run.tok_reason)
    if choice == "teacher":
        if trained_flags:
            raise ModelError(f"{', '.join(trained_flags)} apply to a trained tokenizer, not --tokenizer teacher")
        tok = Tokenizer.from_str(run.teacher.tokenizer.to_str())
        tok.no_truncation()
        tok.no_padding()
        tok_lib.pad_id(tok)
        run.tokenizer, run.tok_source = tok, f"teacher {run.teacher.name} {run.teacher.version}"
    elif choice == "trained":
        changes = given(kind=args.tokenizer_kind, vocab_size=args.vocab_size)
        if args.cased:
            changes["lowercase"] = False
        run.tok_cfg = dataclasses.replace(preset(run.preset_name).tokenizer, **changes)
        # The labeled split and the unlabeled texts: the augmented copies add no new words.
        n_original = sets.rows["labeled"] + sets.rows["unlabeled"]
        run.tokenizer = tok_lib.train_tokenizer(sets.train.texts[:n_original], run.tok_cfg)
        run.tok_source = "trained"
    else:
        run.tokenizer, run.tok_source = tok_lib.load_tokenizer(Path(choice)), str(choice)
    wanted = args.init_embeddings
    if wanted == "auto":
        wanted = "teacher" if choice == "teacher" else "none"
    elif wanted == "teacher" and choice != "teacher":
        raise ModelError("--init-embeddings teacher needs the teacher's tokenizer (--tokenizer teacher or"
                         " auto): the rows of the teacher's table are its own vocabulary")
    run.init_embeddings = wanted


def _teacher_vocabulary_fits(args: argparse.Namespace, run: Run, sets: Sets, d_model: int,
                             trained_flags: list[str]) -> tuple[bool, str]:
    """Whether --tokenizer auto takes the teacher's tokenizer (and token table), and why."""
    from model.coverage import measure

    teacher = run.teacher
    if trained_flags:
        return False, f"{', '.join(trained_flags)} given: a tokenizer trained on the data"
    init = str(teacher.config.get("training", {}).get("init", "scratch"))
    if init == "scratch":
        return False, "the teacher was trained from scratch: its vocabulary carries no pretraining"
    width = int(teacher.config.get("model", {}).get("d_model", 0))
    if width < d_model:
        return False, f"the teacher's token vectors ({width} dims) are narrower than the student's ({d_model})"
    check = measure(teacher.tokenizer, sets.labeled.texts, name=teacher.name, threshold=args.coverage_threshold)
    if check.too_low:
        return False, (f"the teacher's vocabulary reads {check.unk_share:.1%} of --train's tokens as [UNK]"
                       f" (above {check.threshold:.0%}): a tokenizer trained on the data")
    return True, (f"the teacher is a fine-tuned pretrained encoder whose vocabulary reads --train"
                  f" ({check.unk_share:.2%} [UNK]); its tokenizer and token table gave the best student"
                  " measured (README)")


def _embedding_init(run: Run) -> Any:
    """For --init-embeddings teacher: a function that loads the teacher's reduced token table."""
    if run.init_embeddings != "teacher":
        return None
    import torch

    from model.distill import teacher_token_embeddings

    table = teacher_token_embeddings(run.teacher, run.enc_cfg.d_model)
    pad = run.enc_cfg.pad_id

    def init(model: Any) -> None:
        with torch.no_grad():
            model.embeddings.tokens.weight.copy_(table)
            model.embeddings.tokens.weight[pad].zero_()

    log.info("student_embeddings", source=f"teacher {run.teacher.name} {run.teacher.version}",
             rows=table.shape[0], dims=table.shape[1])
    return init


# ------------------------------------------------------------------------------ 5. training


def train_student(args: argparse.Namespace, run: Run, sets: Sets) -> Any:
    from model import tokenizer as tok_lib
    from model.distill import DistillLoss

    loss = DistillLoss(sets.probs, run.settings, task=run.task, device=run.device)  # type: ignore[arg-type]
    tok_lib.save_tokenizer(run.tokenizer, args.out / "tokenizer.json")
    log.info("distilling", temperature=run.settings.temperature, alpha=run.settings.alpha,
             rows=len(sets.train), epochs=run.student_cfg.epochs, tokenizer=run.tok_source,
             init_embeddings=run.init_embeddings)
    return _fit(args, run, sets.train, sets.val, run.student_cfg, loss_fn=loss,
                checkpoint=args.out / "checkpoint.pt", resume=run.stored is not None,
                init_fn=run.init_fn if run.stored is None else None,
                extra={"init": "scratch", "preset": run.preset_name, "task": run.task,
                       "distillation": run.settings.to_dict(),
                       "teacher": {"name": run.teacher.name, "version": run.teacher.version},
                       "tokenizer_source": run.tok_source, "init_embeddings": run.init_embeddings,
                       "truncation": run.truncation.to_dict()})


def train_scratch(args: argparse.Namespace, run: Run, sets: Sets) -> Any:
    """The same student shape and tokenizer trained without the teacher (None when skipped)."""
    if args.no_scratch_baseline:
        return None
    log.info("scratch_baseline", note="the same student trained without the teacher, for the report")
    return _fit(args, run, sets.labeled, sets.val, run.scratch_cfg, loss_fn=None, checkpoint=None)


def _fit(args: argparse.Namespace, run: Run, train: Any, val: Any, cfg: TrainConfig, *, loss_fn: Any,
         checkpoint: Path | None, extra: dict[str, Any] | None = None, resume: bool = False,
         init_fn: Any = None) -> Any:
    from model import train as train_lib
    from model.encoder import EncoderClassifier

    train_lib.seed_everything(cfg.seed)
    model = EncoderClassifier(run.enc_cfg)
    if init_fn is not None:
        init_fn(model)
    return train_lib.fit(model, run.tokenizer, train, val, run.teacher.labels, cfg,
                         checkpoint_path=checkpoint, resume=resume, device=run.device,
                         progress=run.progress, extra_checkpoint=extra, loss_fn=loss_fn,
                         truncation=run.truncation, pos_weight=args.pos_weight)


# ------------------------------------------------------------------- 6. evaluation, export


def evaluate_and_export(args: argparse.Namespace, run: Run, sets: Sets, student: Any, scratch: Any) -> int:
    from model import evaluate as eval_lib
    from model import export as export_lib
    from model.bundle import Bundle
    from model.multilabel import multi_hot, multilabel_metrics

    teacher = run.teacher
    labels = teacher.labels
    multi = run.multi_label
    final = sets.test or sets.val
    final_name = "test" if sets.test else "validation"
    model = student.model.cpu()
    max_length = model.config.max_length

    def metrics_of(probs: np.ndarray, thresholds: list[float] | None) -> dict[str, Any]:
        if multi:
            return multilabel_metrics(probs, multi_hot(final.tag_sets, labels), thresholds or [0.5] * len(labels), labels)
        return eval_lib.compute_metrics(final.labels, [labels[i] for i in probs.argmax(1)], labels)

    def score(result: Any) -> tuple[dict[str, Any], np.ndarray]:
        prob_model = export_lib.eager_probability_model(result.model.cpu(), args.precision, multi)
        probs = eval_lib.predict_probs(prob_model, run.tokenizer, final.texts, max_length=max_length,
                                       truncation=run.truncation, multi_label=multi)
        return metrics_of(probs, result.thresholds), probs

    metrics, student_probs = score(student)
    teacher_out = _teacher_probs(args, run, list(final.texts), f"{final_name} set")
    teacher_metrics = metrics_of(teacher_out.probs, teacher.thresholds or None)
    teacher_pred = _decisions(teacher_out.probs, teacher.thresholds or None)
    scratch_scored = score(scratch) if scratch is not None else None
    agreement = _agreement(_decisions(student_probs, student.thresholds), teacher_pred)

    headline_key = "micro_f1" if multi else "accuracy"
    name = args.name or args.out.resolve().name
    teacher_info = {"name": teacher.name, "version": teacher.version, "path": str(teacher.path),
                    "precision": teacher.precision, "task": teacher.task,
                    "init": teacher.config.get("training", {}).get("init"),
                    "metrics": {k: v for k, v in teacher.metrics.items() if not isinstance(v, dict | list)}}
    distillation = {"teacher": teacher_info, "settings": run.settings.to_dict(), "rows": sets.rows,
                    "unlabeled_files": sets.unlabeled_files,
                    "teacher_seconds": round(sets.teacher_seconds, 1),
                    "agreement_with_teacher": agreement}
    summary: dict[str, Any] = {"evaluated_on": final_name, headline_key: metrics[headline_key],
                               "macro_f1": metrics["macro_f1"]}
    if multi:
        summary.update(task="multi_label", exact_match=metrics["exact_match"])
    summary.update(
        per_class_f1={k: v["f1"] for k, v in metrics["per_class"].items()},
        validation_macro_f1=student.best_val_macro_f1, precision=args.precision,
        **{f"teacher_{headline_key}": teacher_metrics[headline_key], "teacher_macro_f1": teacher_metrics["macro_f1"]},
        agreement_with_teacher=agreement,
    )
    if scratch_scored is not None:
        summary[f"scratch_{headline_key}"] = scratch_scored[0][headline_key]
        summary["scratch_macro_f1"] = scratch_scored[0]["macro_f1"]
    training = {
        "preset": run.preset_name, "init": "scratch", "task": run.task, "tokenizer": run.tok_source,
        "tokenizer_choice": run.tok_reason or None, "init_embeddings": run.init_embeddings,
        "train_config": dataclasses.asdict(run.student_cfg),
        "tokenizer_config": dataclasses.asdict(run.tok_cfg) if run.tok_cfg is not None else None,
        "rows": {"train": len(sets.train), "validation": len(sets.val), "test": sets.rows["test"]},
        "epochs_run": len(student.history), "best_epoch": student.best_epoch,
        "stopped_early": student.stopped_early, "train_seconds": round(student.train_seconds, 1),
        "device": student.device, "world_size": 1, "distillation": distillation,
        **({"pos_weight": True} if args.pos_weight and multi else {}),
    }
    exported = export_lib.export_bundle(model, run.tokenizer, labels, args.out / "bundle",
                                        parity_texts=sets.val.texts, name=name, precision=args.precision,
                                        metrics=summary, training=training,
                                        thresholds=student.thresholds if multi else None,
                                        truncation=run.truncation)

    speed_texts = list(final.texts[:SPEED_TEXTS])
    rows = [
        _row("student (distilled)", headline_key, metrics, Bundle.load(exported.path), speed_texts, agreement),
        _row(f"teacher ({teacher.name})", headline_key, teacher_metrics, teacher, speed_texts, 1.0),
    ]
    if scratch_scored is not None:
        # The same shape and tokenizer as the student: the same speed and size.
        same = _agreement(_decisions(scratch_scored[1], scratch.thresholds), teacher_pred)
        rows.append(_row("scratch student (no teacher)", headline_key, scratch_scored[0], None, speed_texts,
                         same, params=rows[0]["parameters"], speed=rows[0]["texts_per_s"]))
    comparison = {"rows": rows, "headline": headline_key,
                  "scratch_train_config": dataclasses.asdict(run.scratch_cfg) if scratch else None}
    paths = eval_lib.write_report(
        args.out / "report", metrics,
        title=f"{name}: distilled from {teacher.name} {teacher.version}, {final_name} set ({final.source})",
        history=student.history,
        extra={"summary": summary,
               "training": {k: v for k, v in training.items() if not isinstance(v, dict)},
               "distillation": {**run.settings.to_dict(), "teacher": f"{teacher.name} {teacher.version}",
                                **{f"rows_{k}": v for k, v in sets.rows.items()},
                                "teacher_seconds": round(sets.teacher_seconds, 1)},
               "comparison": comparison,
               "export": {"bundle": str(exported.path), "precision": exported.precision,
                          "parity_max_abs_diff": exported.parity_max_abs_diff}},
    )
    with paths["markdown"].open("a", encoding="utf-8") as f:
        f.write(_comparison_markdown(rows, headline_key, final_name, len(final)))
    what = headline_key.replace("_", "-")
    for r in rows:
        print(f"{r['model']:<34} {what} {r[headline_key]:.4f}  macro-F1 {r['macro_f1']:.4f}"
              f"  agreement with teacher {r['agreement_with_teacher']:.1%}"
              f"  {r['texts_per_s']:,.0f} texts/s")
    print(f"({final_name} set, {len(final)} texts; model-only texts/s on {len(speed_texts)} texts,"
          f" batch {SPEED_BATCH}, this process)")
    print(f"bundle: {exported.path}")
    print(f"report: {paths['markdown']}")
    return 0


def _decisions(probs: np.ndarray, thresholds: list[float] | None) -> np.ndarray:
    """The predicted label per text, or (multi-label) the 0/1 tag matrix at the thresholds."""
    if thresholds:
        return probs >= np.asarray(thresholds, dtype=np.float32)[None, :]
    return probs.argmax(1)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of texts on which two models decide the same (multi-label: the same tag set)."""
    same = a == b
    return float((same.all(axis=1) if same.ndim == 2 else same).mean())


def _row(what: str, headline_key: str, metrics: dict[str, Any], bundle: Any, texts: list[str],
         agreement: float, *, params: int | None = None, speed: float | None = None) -> dict[str, Any]:
    if bundle is not None:
        speed = model_texts_per_s(bundle, texts)
        params = sum(p.numel() for p in bundle.model.parameters())
    return {"model": what, headline_key: metrics[headline_key], "macro_f1": metrics["macro_f1"],
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


def _comparison_markdown(rows: list[dict[str, Any]], headline_key: str, final_name: str, n: int) -> str:
    what = headline_key.replace("_", "-")
    lines = ["", "## Student, teacher and scratch student", "",
             f"On the {final_name} set ({n} texts). Speed: model only, pre-tokenized texts, batch"
             f" {SPEED_BATCH}, measured in this run (compare within the table, not across machines).",
             "", f"| model | {what} | macro-F1 | agrees with teacher | parameters | texts/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r[headline_key]:.4f} | {r['macro_f1']:.4f} |"
                     f" {r['agreement_with_teacher']:.1%} | {r['parameters']:,} | {r['texts_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"
