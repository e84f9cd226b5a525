"""``tagstream-train``: train, evaluate, predict, explain and inspect model bundles.

    tagstream-train train    --train FILE [--test FILE] --out DIR    train, evaluate, export
    tagstream-train evaluate BUNDLE --data FILE [--out DIR]          score a bundle on labeled data
    tagstream-train predict  BUNDLE [TEXT ...]                       JSON lines; stdin without TEXT
    tagstream-train explain  BUNDLE TEXT [--png FILE]                tokens the model attended to
    tagstream-train inspect  BUNDLE [--json]                         what a bundle holds
    tagstream-train distill  --teacher BUNDLE --train FILE --out DIR  a fast student (model/distill_cli.py)

Exit status: 0 success, 1 a ModelError (the message says what to fix), 2 bad usage.
Under ``torchrun`` the ``train`` command runs data-parallel with no other change.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog

from model.config import PRESET_NAMES, EncoderConfig, TrainConfig, finetune_train_config, preset
from model.errors import ModelError
from model.pretrained import DEFAULT_MAX_LENGTH

log = structlog.get_logger("tagstream-train")

# Lines of stdin handed to the model at once by `predict`: large enough for efficient batches,
# small enough that results stream out while input is still arriving.
PREDICT_CHUNK_LINES = 256

OUT_LAYOUT = """\
output folder (--out DIR):
  DIR/bundle/          the exported bundle: point the worker's TAGSTREAM_BUNDLE_PATH here
  DIR/report/          report.json, report.md, confusion_matrix.png, training_curves.png
  DIR/checkpoint.pt    last epoch's state, for --resume
  DIR/tokenizer.json   the tokenizer (also inside the bundle)
"""

TRAIN_EXAMPLES = """\
examples:
  tagstream-train train --train data/train.jsonl --test data/test.jsonl --out runs/news
  tagstream-train train --train sms.csv --text-field message --label-field class \\
      --class-weights --out runs/spam
  tagstream-train train --train data/train.jsonl --out runs/news --init minilm --epochs 3
  torchrun --nproc_per_node 4 -m model.cli train --train data/train.jsonl --out runs/news
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tagstream-train",
        description=(
            "Train a Transformer text classifier on labeled JSONL/CSV and export it as a"
            " tagstream bundle (TorchScript model + tokenizer + labels + metrics, checksummed)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'tagstream-train COMMAND --help' for a command's options.",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="least severe log level shown (default: %(default)s)")
    parser.add_argument("--log-format", default="console", choices=["console", "json"],
                        help="console: readable lines; json: one JSON object a line (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_explain(sub)
    _add_inspect(sub)
    from model.distill_cli import add_distill  # its own module: imports this one's helpers

    add_distill(sub)
    return parser


def _small(part: str, field: str) -> str:
    """The `small` preset's value of a setting, for --help."""
    return f"small: {getattr(getattr(preset('small'), part), field)}"


def _data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--text-field", default="text", help="field (JSONL) or column (CSV) holding the text (default: %(default)s)")
    g.add_argument("--label-field", default="label", help="field or column holding the label (default: %(default)s)")
    g.add_argument("--format", dest="file_format", choices=["jsonl", "csv"],
                   help="file format (default: from the extension: .jsonl/.json/.ndjson or .csv/.tsv)")
    g.add_argument("--on-bad-row", choices=["skip", "stop"], default="skip",
                   help="skip (and count, and log with file:line) or stop at the first bad row (default: %(default)s)")


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train, evaluate and export a bundle",
        description=(
            "Train a classifier, evaluate it, and export a bundle. With only --train, a stratified"
            " validation split is held out; --test gives the file the final report is computed on"
            " (otherwise the validation split).\n\n" + OUT_LAYOUT
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=TRAIN_EXAMPLES,
    )
    p.add_argument("--train", required=True, type=Path, metavar="FILE", help="labeled training data (JSONL or CSV)")
    p.add_argument("--test", type=Path, metavar="FILE", help="labeled test data for the final report")
    p.add_argument("--val", type=Path, metavar="FILE", help="labeled validation data (default: a split of --train)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (see above)")
    p.add_argument("--name", help="bundle name (default: the --out folder's name)")
    _data_options(p)
    g = p.add_argument_group("data (training)")
    g.add_argument("--labels", help="comma-separated label list, in output order; rows with other labels are bad rows (default: every label in --train, sorted)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="share of --train held out for validation when no --val (default: %(default)s)")

    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=PRESET_NAMES,
                   help="train from scratch with this preset: tiny: tests, seconds; small: CPU,"
                        " minutes (the scratch default); base: wants a GPU")
    g.add_argument("--init", default="auto", metavar="auto|scratch|minilm|PATH",
                   help="auto (default): fine-tune all-MiniLM-L6-v2 when its package is installed"
                        " and no scratch-only option (--preset, --layers, --d-model, --tokenizer,"
                        " --tokenizer-kind, --vocab-size, --cased) is given, else scratch;"
                        " scratch: train a new encoder and tokenizer; minilm: fine-tune the"
                        " bundled all-MiniLM-L6-v2 (needs the 'pretrained' extra); PATH: a folder with"
                        " config.json, model.safetensors, tokenizer.json (BERT layout)")
    g.add_argument("--max-length", type=int, help="tokens per text, longer texts are truncated (default: the preset's; " + _small("encoder", "max_length") + f"; {DEFAULT_MAX_LENGTH} with --init minilm|PATH)")
    g.add_argument("--pooling", choices=["mean", "cls"], help="how token states become one vector (default: the preset's; " + _small("encoder", "pooling") + ")")
    g.add_argument("--dropout", type=float, help="dropout on embeddings, residuals and the pooled vector (default: the preset's; " + _small("encoder", "dropout") + ")")
    g.add_argument("--layers", type=int, help="encoder blocks (scratch only; default: the preset's, " + _small("encoder", "n_layers") + ")")
    g.add_argument("--d-model", type=int, help="width of token vectors (scratch only; default: the preset's, " + _small("encoder", "d_model") + ")")

    g = p.add_argument_group("tokenizer (scratch only)")
    g.add_argument("--tokenizer", type=Path, metavar="FILE", help="reuse this tokenizer.json instead of training one (also pins the vocabulary:"
                        " training one is not bit-for-bit reproducible)")
    g.add_argument("--tokenizer-kind", choices=["wordpiece", "bpe"], help="algorithm of a trained tokenizer (default: the preset's; " + _small("tokenizer", "kind") + ")")
    g.add_argument("--vocab-size", type=int, help="vocabulary size of a trained tokenizer (default: the preset's; " + _small("tokenizer", "vocab_size") + ")")
    g.add_argument("--cased", action="store_true", help="keep case (default: lowercase)")

    ft = finetune_train_config()
    g = p.add_argument_group(
        "training",
        description=(
            "Defaults are the preset's; with --init minilm|PATH they are the fine-tuning ones:"
            f" {ft.epochs} epochs, batch {ft.batch_size}, lr {ft.lr:g}, {ft.warmup_ratio:.0%} warmup"
            f" then {ft.schedule} decay, weight decay {ft.weight_decay:g}, patience {ft.patience},"
            " no layer-wise LR decay (try --layer-lr-decay 0.9)."
        ),
    )
    g.add_argument("--epochs", type=int, help="passes over the training data (default: the preset's; " + _small("train", "epochs") + ")")
    g.add_argument("--batch-size", type=int, help="texts per step and process (default: the preset's; " + _small("train", "batch_size") + ")")
    g.add_argument("--lr", type=float, help="peak learning rate after warmup (default: the preset's; " + _small("train", "lr") + ")")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay on weight matrices (default: the preset's; " + _small("train", "weight_decay") + ")")
    g.add_argument("--warmup-ratio", type=float, help="share of steps with rising LR (default: the preset's; " + _small("train", "warmup_ratio") + ")")
    g.add_argument("--schedule", choices=["linear", "cosine"], help="LR decay after warmup (default: the preset's; " + _small("train", "schedule") + ")")
    g.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing (default: the preset's; " + _small("train", "label_smoothing") + ")")
    g.add_argument("--token-dropout", type=float, help="share of tokens hidden as [UNK] in training (default: the preset's; " + _small("train", "token_dropout") + ")")
    g.add_argument("--layer-lr-decay", type=float, help="LR factor per block going down (fine-tuning; default: the preset's, " + _small("train", "layer_lr_decay") + ")")
    g.add_argument("--class-weights", action="store_true", help="weight the loss by inverse class frequency (imbalanced data, e.g. spam)")
    g.add_argument("--patience", type=int, help="epochs without validation macro-F1 gain before stopping; 0 = never (default: the preset's; " + _small("train", "patience") + ")")
    g.add_argument("--seed", type=int, help="seed for the split, initialisation and batch order (default: the preset's; " + _small("train", "seed") + ")")
    g.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt with its stored settings")

    g = p.add_argument_group("runtime and export")
    g.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:N (default: %(default)s)")
    g.add_argument("--threads", type=int, default=0, help="CPU threads for torch; 0 = torch's default (default: %(default)s)")
    g.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                   help="bundle precision: int8 quantizes Linear layers (~2x faster on CPUs, CPU only; the accuracy change is reported) (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown on a terminal)")
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="score a bundle on a labeled file",
                       description="Score a bundle on a labeled file; print the summary and optionally write a report.")
    p.add_argument("bundle", type=Path, help="bundle folder")
    p.add_argument("--data", required=True, type=Path, metavar="FILE", help="labeled JSONL or CSV")
    p.add_argument("--out", type=Path, metavar="DIR", help="write report.json, report.md and plots here")
    p.add_argument("--batch-size", type=int, default=64, help="texts per model call (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _data_options(p)
    p.set_defaults(func=cmd_evaluate)


def _add_predict(sub: Any) -> None:
    p = sub.add_parser(
        "predict", help="label texts: one JSON line each",
        description="Label texts given as arguments, or one per line on stdin. Prints one JSON object"
                    ' per text: {"text", "label", "score", "scores"}.',
        epilog="example: echo 'Stocks fall on oil fears' | tagstream-train predict runs/news/bundle",
    )
    p.add_argument("bundle", type=Path, help="bundle folder")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to label (default: read lines from stdin)")
    p.add_argument("--top-k", type=int, default=0, help="keep only the k best scores; 0 = all labels (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per model call (default: %(default)s)")
    p.set_defaults(func=cmd_predict)


def _add_explain(sub: Any) -> None:
    p = sub.add_parser(
        "explain", help="which tokens the model attended to for one text",
        description="Print the prediction and the tokens with the most attention (attention rollout),"
                    " and draw a heatmap PNG of attention per layer.",
    )
    p.add_argument("bundle", type=Path, help="bundle folder")
    p.add_argument("text", help="the text to explain")
    p.add_argument("--png", type=Path, default=Path("explain.png"), metavar="FILE", help="heatmap file (default: %(default)s)")
    p.add_argument("--top", type=int, default=10, help="tokens to list (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.set_defaults(func=cmd_explain)


def _add_inspect(sub: Any) -> None:
    p = sub.add_parser("inspect", help="what a bundle contains",
                       description="Verify a bundle's checksums and print its name, version, labels, model and metrics.")
    p.add_argument("bundle", type=Path, help="bundle folder")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the checksum verification")
    p.set_defaults(func=cmd_inspect)


# ---------------------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from model import data as data_lib
    from model import evaluate as eval_lib
    from model import export as export_lib
    from model import tokenizer as tok_lib
    from model import train as train_lib
    from model.encoder import EncoderClassifier, ProbabilityModel

    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    ckpt_path = out / "checkpoint.pt"
    ctx = train_lib.init_distributed(args.device)
    stored: dict[str, Any] | None = train_lib.read_checkpoint(ckpt_path) if args.resume else None
    if stored is None and ckpt_path.exists() and ctx.is_main:
        log.info("starting_over", checkpoint=str(ckpt_path),
                 hint="pass --resume to continue that run instead")
    preset_name = stored["extra"].get("preset", args.preset) if stored else (args.preset or "small")

    # ---- configuration: preset, then the flags given, or the checkpoint's settings on resume
    chosen = preset(preset_name)
    init = _resolve_init(args) if stored is None else stored["extra"].get("init", "scratch")
    train_cfg = _train_config(args, chosen.train if init == "scratch" else finetune_train_config())
    if stored is not None:
        train_cfg = TrainConfig(**stored["train_config"])
        log.info("resume", checkpoint=str(ckpt_path), note="using the checkpoint's settings")

    # ---- data
    label_list = stored["labels"] if stored else _split_labels(args.labels)
    read = dict(text_field=args.text_field, label_field=args.label_field,
                on_bad=args.on_bad_row, file_format=args.file_format)
    train_data = data_lib.read_labeled(args.train, labels=label_list, **read)
    _report_bad_rows(train_data)
    labels = label_list or data_lib.infer_labels(train_data)
    if len(labels) < 2:
        raise ModelError(f"{args.train}: found only the label(s) {labels}; a classifier needs two or more")
    if args.val:
        val_data = data_lib.read_labeled(args.val, labels=labels, **read)
        _report_bad_rows(val_data)
    else:
        train_data, val_data = data_lib.stratified_split(train_data, args.val_fraction, train_cfg.seed)
    test_data = None
    if args.test:
        test_data = data_lib.read_labeled(args.test, labels=labels, **read)
        _report_bad_rows(test_data)
    if ctx.is_main:
        log.info("data", train=len(train_data), validation=len(val_data),
                 test=len(test_data) if test_data else None, labels=labels,
                 train_counts=train_data.label_counts())

    # ---- tokenizer and model
    train_lib.seed_everything(train_cfg.seed)
    tok_cfg = chosen.tokenizer
    if stored is not None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(stored["tokenizer"])
        model = EncoderClassifier(EncoderConfig.from_dict(stored["encoder_config"]))
        init_source = stored["extra"].get("init_source", init)
    elif init == "scratch":
        tok_changes = _given(kind=args.tokenizer_kind, vocab_size=args.vocab_size)
        if args.cased:
            tok_changes["lowercase"] = False
        tok_cfg = dataclasses.replace(tok_cfg, **tok_changes)
        tokenizer = _scratch_tokenizer(args, train_data.texts, tok_cfg, out, ctx)
        shape = _given(max_length=args.max_length, pooling=args.pooling, dropout=args.dropout,
                       n_layers=args.layers, d_model=args.d_model)
        if args.d_model:
            shape["d_ff"] = 4 * args.d_model  # keep the usual 4x feed-forward width
        try:
            enc_cfg = dataclasses.replace(
                chosen.encoder, vocab_size=tokenizer.get_vocab_size(), n_classes=len(labels),
                pad_id=tok_lib.pad_id(tokenizer), **shape,
            )
        except ValueError as exc:  # e.g. --d-model not divisible by the preset's heads
            raise ModelError(f"invalid model shape: {exc}") from exc
        model = EncoderClassifier(enc_cfg)
        init_source = "scratch"
    else:
        model, tokenizer, init_source = _pretrained(args, init, len(labels))
    if ctx.is_main:
        tok_lib.save_tokenizer(tokenizer, out / "tokenizer.json")

    # ---- train
    result = train_lib.fit(
        model, tokenizer, train_data, val_data, labels, train_cfg,
        checkpoint_path=ckpt_path, resume=stored is not None, device=ctx.device,
        progress=not args.no_progress and sys.stderr.isatty(),
        extra_checkpoint={"init": init, "init_source": init_source, "preset": preset_name},
    )
    if not ctx.is_main:
        _finish_distributed(ctx)
        return 0

    # ---- evaluate (eager, same precision as the bundle: export proves they agree)
    model = result.model.cpu()
    final_data = test_data or val_data
    final_name = "test" if test_data else "validation"
    eager = export_lib.eager_probability_model(model, args.precision)
    started = time.perf_counter()
    probs = eval_lib.predict_probs(eager, tokenizer, final_data.texts, max_length=model.config.max_length)
    eval_seconds = time.perf_counter() - started
    metrics = eval_lib.compute_metrics(final_data.labels, [labels[i] for i in probs.argmax(1)], labels)
    summary: dict[str, Any] = {
        "evaluated_on": final_name,
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "per_class_f1": {k: v["f1"] for k, v in metrics["per_class"].items()},
        "validation_macro_f1": result.best_val_macro_f1,
        "precision": args.precision,
    }
    if args.precision == "int8":
        fp32_probs = eval_lib.predict_probs(ProbabilityModel(model).eval(), tokenizer, final_data.texts,
                                            max_length=model.config.max_length)
        fp32 = eval_lib.compute_metrics(final_data.labels, [labels[i] for i in fp32_probs.argmax(1)], labels)
        summary["fp32_accuracy"] = fp32["accuracy"]
        summary["fp32_macro_f1"] = fp32["macro_f1"]
        summary["int8_accuracy_change"] = metrics["accuracy"] - fp32["accuracy"]

    training = {
        # A pretrained encoder brings its own shape; its training defaults are the fine-tuning ones.
        "preset": preset_name if init == "scratch" else "finetune",
        "init": init_source,
        "train_config": dataclasses.asdict(train_cfg),
        "tokenizer_config": dataclasses.asdict(tok_cfg) if init == "scratch" and not args.tokenizer else None,
        "rows": {"train": len(train_data), "validation": len(val_data),
                 "test": len(test_data) if test_data else 0},
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.train_seconds, 1),
        "device": result.device,
        "world_size": result.world_size,
    }
    exported = export_lib.export_bundle(
        model, tokenizer, labels, out / "bundle",
        parity_texts=val_data.texts, name=args.name or out.resolve().name,
        precision=args.precision, metrics=summary, training=training,
    )
    paths = eval_lib.write_report(
        out / "report", metrics,
        title=f"{args.name or out.resolve().name}: {final_name} set ({final_data.source})",
        history=result.history,
        extra={
            "summary": summary,
            "training": {k: v for k, v in training.items() if not isinstance(v, dict)},
            "validation": {"accuracy": result.best_val_metrics.get("accuracy"),
                           "macro_f1": result.best_val_macro_f1, "best_epoch": result.best_epoch},
            "export": {"bundle": str(exported.path), "precision": exported.precision,
                       "parity_max_abs_diff": exported.parity_max_abs_diff,
                       "bundle_max_abs_diff": exported.bundle_max_abs_diff,
                       "int8_vs_fp32_max_abs_diff": exported.int8_vs_fp32_max_abs_diff,
                       "eval_texts_per_s": round(len(final_data) / max(eval_seconds, 1e-9), 1)},
        },
    )
    print(f"{final_name} accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}"
          f"  ({len(final_data)} texts; best epoch {result.best_epoch}/{len(result.history)},"
          f" {result.train_seconds:.0f}s training)")
    for label, c in metrics["per_class"].items():
        print(f"  {label:<20} P {c['precision']:.3f}  R {c['recall']:.3f}  F1 {c['f1']:.3f}  n {c['support']}")
    if "int8_accuracy_change" in summary:
        print(f"int8 vs fp32 accuracy: {summary['int8_accuracy_change']:+.4f}"
              f" (fp32 {summary['fp32_accuracy']:.4f})")
    print(f"bundle: {exported.path}")
    print(f"report: {paths['markdown']}")
    _finish_distributed(ctx)
    return 0


def _train_config(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    changes = _given(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, schedule=args.schedule, label_smoothing=args.label_smoothing,
        token_dropout=args.token_dropout, layer_lr_decay=args.layer_lr_decay, patience=args.patience,
        seed=args.seed,
    )
    if args.class_weights:
        changes["class_weights"] = True
    return dataclasses.replace(base, **changes)


def _given(**values: Any) -> dict[str, Any]:
    """Only the options the user set (None means: keep the preset's)."""
    return {k: v for k, v in values.items() if v is not None}


def _split_labels(text: str | None) -> list[str] | None:
    if not text:
        return None
    labels = [x.strip() for x in text.split(",") if x.strip()]
    if len(set(labels)) != len(labels):
        raise ModelError(f"--labels lists a label twice: {text}")
    return labels


def _report_bad_rows(data: Any) -> None:
    from model.data import describe_bad_rows

    if data.bad_rows:
        log.warning("bad_rows", file=data.source, skipped=len(data.bad_rows),
                    detail=describe_bad_rows(data.bad_rows))


def _scratch_tokenizer(args: argparse.Namespace, texts: Sequence[str], cfg: Any, out: Path, ctx: Any) -> Any:
    """Train (or load) the tokenizer; under DDP rank 0 trains it and the others read its file,
    so every process is sure to hold the same vocabulary."""
    from model import tokenizer as tok_lib

    if args.tokenizer:
        return tok_lib.load_tokenizer(args.tokenizer)
    if not ctx.distributed:
        return tok_lib.train_tokenizer(texts, cfg)
    import torch.distributed as dist

    shared = out / "tokenizer.json"
    if ctx.is_main:
        tok_lib.save_tokenizer(tok_lib.train_tokenizer(texts, cfg), shared)
    dist.barrier()
    return tok_lib.load_tokenizer(shared)


_SCRATCH_ONLY = ("preset", "layers", "d_model", "tokenizer", "tokenizer_kind", "vocab_size", "cased")


def _resolve_init(args: argparse.Namespace) -> str:
    """``--init auto``: fine-tune the built-in MiniLM when it is installed and nothing asks for scratch.

    A pretrained encoder fine-tuned on a few thousand labels beats a from-scratch model (and
    TF-IDF) by several points, so it is the default wherever its weights are available.
    """
    if args.init != "auto":
        return str(args.init)
    scratch_flags = [f"--{name.replace('_', '-')}" for name in _SCRATCH_ONLY if getattr(args, name, None)]
    if scratch_flags:
        log.info("init", init="scratch", reason=f"{', '.join(scratch_flags)} given")
        return "scratch"
    try:
        from model.pretrained import builtin_folder

        builtin_folder("minilm")
    except ModelError as exc:
        log.info("init", init="scratch", reason=f"no pretrained encoder installed ({exc})")
        return "scratch"
    log.info("init", init="minilm", note="fine-tuning all-MiniLM-L6-v2; --init scratch trains a small model from scratch instead")
    return "minilm"


def _pretrained(args: argparse.Namespace, source: str, n_classes: int) -> tuple[Any, Any, str]:
    """A pretrained encoder (contract: model.pretrained.load_pretrained), imported only when asked."""
    if args.tokenizer or args.vocab_size or args.tokenizer_kind or args.layers or args.d_model or args.cased:
        raise ModelError("--tokenizer, --vocab-size, --tokenizer-kind, --cased, --layers and --d-model apply to"
                         " --init scratch only: a pretrained encoder brings its own")
    try:
        from model.pretrained import load_pretrained
    except ImportError as exc:
        raise ModelError(f"--init {source}: pretrained encoders are not available in this build ({exc})") from exc
    init = load_pretrained(source, n_classes, max_length=args.max_length, dropout=args.dropout)
    if args.pooling and args.pooling != init.config.pooling:
        raise ModelError(f"--pooling {args.pooling}: the pretrained encoder uses {init.config.pooling}")
    log.info("pretrained", source=str(init.source), layers=init.config.n_layers,
             d_model=init.config.d_model, max_length=init.config.max_length)
    return init.model, init.tokenizer, str(init.source)


def _finish_distributed(ctx: Any) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------- evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model import data as data_lib
    from model import evaluate as eval_lib
    from model.bundle import Bundle

    bundle = Bundle.load(args.bundle)
    data = data_lib.read_labeled(args.data, text_field=args.text_field, label_field=args.label_field,
                                 labels=bundle.labels, on_bad=args.on_bad_row, file_format=args.file_format)
    _report_bad_rows(data)
    probs = eval_lib.predict_probs(bundle.model, bundle.tokenizer, data.texts,
                                   max_length=bundle.max_length, batch_size=args.batch_size)
    metrics = eval_lib.compute_metrics(data.labels, [bundle.labels[i] for i in probs.argmax(1)], bundle.labels)
    if args.out:
        paths = eval_lib.write_report(
            args.out, metrics, title=f"{bundle.name} {bundle.version} on {args.data}",
            extra={"bundle": {"path": str(bundle.path), "name": bundle.name, "version": bundle.version,
                              "precision": bundle.precision},
                   "data": {"file": str(args.data), "rows": len(data), "bad_rows": len(data.bad_rows)}},
        )
        log.info("report", markdown=str(paths["markdown"]))
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{bundle.name} {bundle.version} on {args.data}: accuracy {metrics['accuracy']:.4f}"
              f"  macro-F1 {metrics['macro_f1']:.4f}  ({metrics['n']} texts)")
        for label, c in metrics["per_class"].items():
            print(f"  {label:<20} P {c['precision']:.3f}  R {c['recall']:.3f}  F1 {c['f1']:.3f}  n {c['support']}")
    return 0


# -------------------------------------------------------------------------------------- predict


def cmd_predict(args: argparse.Namespace) -> int:
    from model import evaluate as eval_lib
    from model.bundle import Bundle

    bundle = Bundle.load(args.bundle)
    chunks: Iterator[list[str]] = iter([args.texts]) if args.texts else _stdin_chunks()
    for texts in chunks:
        probs = eval_lib.predict_probs(bundle.model, bundle.tokenizer, texts,
                                       max_length=bundle.max_length, batch_size=args.batch_size)
        for text, row in zip(texts, probs, strict=True):
            ranked = sorted(zip(bundle.labels, row.tolist(), strict=True), key=lambda x: -x[1])
            if args.top_k > 0:
                ranked = ranked[: args.top_k]
            print(json.dumps({"text": text, "label": ranked[0][0], "score": round(ranked[0][1], 6),
                              "scores": {k: round(v, 6) for k, v in ranked}}, ensure_ascii=False),
                  flush=True)
    return 0


def _stdin_chunks() -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in sys.stdin:
        text = line.rstrip("\n")
        if not text.strip():
            continue
        chunk.append(text)
        if len(chunk) >= PREDICT_CHUNK_LINES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -------------------------------------------------------------------------------------- explain


def cmd_explain(args: argparse.Namespace) -> int:
    from model.bundle import Bundle
    from model.explain import explain_text, format_explanation, plot_explanation

    bundle = Bundle.load(args.bundle)
    if not hasattr(bundle.model, "explain"):
        raise ModelError(f"bundle {bundle.path} was exported without the explain method; re-export it")
    explanation = explain_text(
        bundle.model.explain, bundle.tokenizer, args.text, bundle.labels,
        max_length=bundle.max_length, pooling=str(bundle.config.get("model", {}).get("pooling", "mean")),
    )
    png = plot_explanation(explanation, args.png)
    if args.json:
        print(json.dumps({**explanation.to_dict(), "heatmap": str(png)}, indent=2, ensure_ascii=False))
    else:
        print(format_explanation(explanation, top=args.top))
        print(f"heatmap: {png}")
    return 0


# -------------------------------------------------------------------------------------- inspect


def cmd_inspect(args: argparse.Namespace) -> int:
    from model.bundle import MANIFEST_FILE, Bundle, read_manifest

    bundle = Bundle.load(args.bundle, verify=not args.no_verify)
    manifest = read_manifest(bundle.path)
    files = {name: {"sha256": digest, "bytes": (bundle.path / name).stat().st_size}
             for name, digest in manifest["files"].items()}
    info = {
        "path": str(bundle.path),
        "name": bundle.name,
        "version": bundle.version,
        "verified": not args.no_verify,
        "created_at": bundle.config.get("created_at"),
        "precision": bundle.precision,
        "labels": bundle.labels,
        "tokenizer": bundle.config.get("tokenizer", {}),
        "model": bundle.config.get("model", {}),
        "training": bundle.config.get("training", {}),
        "metrics": bundle.metrics,
        "files": files,
    }
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    model = info["model"]
    print(f"bundle   {info['path']}")
    print(f"name     {info['name']}   version {info['version']}   "
          f"({'checksums verified' if info['verified'] else 'NOT verified'})")
    print(f"created  {info['created_at']}   precision {info['precision']}")
    print(f"labels   {', '.join(info['labels'])}")
    print(f"tokens   max_length {info['tokenizer'].get('max_length')}   lowercase {info['tokenizer'].get('lowercase')}"
          f"   vocab {model.get('vocab_size')}")
    if model:
        print(f"model    {model.get('n_layers')} layers x d_model {model.get('d_model')}, {model.get('n_heads')} heads,"
              f" d_ff {model.get('d_ff')}, pooling {model.get('pooling')}, {model.get('norm')}-LN,"
              f" {model.get('positional')} positions")
    training = info["training"]
    if training:
        print(f"training preset {training.get('preset')}   init {training.get('init')}   best epoch"
              f" {training.get('best_epoch')}/{training.get('epochs_run')}   {training.get('train_seconds')}s")
        from model.distill import describe as describe_distillation

        if line := describe_distillation(training):
            print(line)
    if bundle.metrics:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in bundle.metrics.items()
                 if not isinstance(v, dict)}
        print("metrics  " + "   ".join(f"{k} {v}" for k, v in shown.items()))
    print("files")
    for name, f in files.items():
        print(f"  {name:<16} {f['bytes']:>10,} bytes  sha256 {f['sha256'][:16]}…")
    print(f"  {MANIFEST_FILE}")
    return 0


# ----------------------------------------------------------------------------------------- main


class _CurrentStderr:
    """Whatever ``sys.stderr`` is at the time of writing (tests and tools swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """structlog to stderr (stdout stays clean for predictions and JSON)."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso" if fmt == "json" else "%H:%M:%S"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level
    if int(os.environ.get("RANK", "0")) > 0:
        level = "warning"  # under torchrun only rank 0 narrates
    configure_logging(level, args.log_format)
    try:
        return int(args.func(args))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
