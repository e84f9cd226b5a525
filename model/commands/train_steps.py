"""The steps of ``tagstream-train train``, in the order ``model/commands/train.py`` runs them.

State passes from step to step in one ``Run`` (settings, the chosen encoder, the model) and
one ``Data`` (the labeled sets): each step reads what the earlier ones left and adds its part.
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

from model.commands.common import given, log, read_options, report_bad_rows, split_labels
from model.config import EncoderConfig, TrainConfig, finetune_train_config, preset
from model.errors import ModelError

# The strategy when --truncation is not given, from bench/tagging_bench.py on reuters_tags (46%
# of its stories are longer than 128 tokens; README "Benchmarks"): with the small preset, chunks
# gained 1.8 points of micro-F1 over head and lost 6.1 of macro-F1, head+tail lost both. No
# strategy beat head clearly, so head stays the default (and data that fits one window reads the
# same under all of them). --truncation auto chooses LONG_STRATEGY when more than
# AUTO_LONG_SHARE of the training texts are longer than one window, else head.
DEFAULT_STRATEGY = "head"
LONG_STRATEGY = "chunks"
AUTO_LONG_SHARE = 0.05

_SCRATCH_ONLY = ("preset", "layers", "d_model", "tokenizer", "tokenizer_kind", "vocab_size", "cased")


@dataclass
class Run:
    """What the steps share: settings and what the earlier steps chose or built."""

    out: Path
    ctx: Any  # model.train.DistContext
    stored: dict[str, Any] | None  # the checkpoint being resumed
    preset_name: str
    init: str = "scratch"
    init_source: str = "scratch"
    train_cfg: TrainConfig = field(default_factory=TrainConfig)
    tok_cfg: Any = None
    coverage: dict[str, Any] | None = None  # vocab_coverage, as recorded in report and bundle
    pretrained_check: Any = None  # model.coverage.Coverage of the pretrained vocabulary, if measured
    truncation: Any = None  # model.truncation.Truncation
    model: Any = None
    tokenizer: Any = None
    training: dict[str, Any] = field(default_factory=dict)  # what the bundle records of the run
    train_texts: list[str] = field(default_factory=list)  # for data-driven defaults (truncation auto)

    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"


@dataclass
class Data:
    train: Any  # model.data.LabeledData
    val: Any  # None until split_validation when no --val is given
    test: Any  # None without --test
    labels: list[str]

    @property
    def multi_label(self) -> bool:
        return bool(self.train.multi_label)


@dataclass
class Final:
    """The final evaluation: metrics on the test (or validation) set and the bundle summary."""

    name: str
    data: Any
    metrics: dict[str, Any]
    summary: dict[str, Any]
    seconds: float


def set_threads(requested: int) -> None:
    """torch's CPU threads: ``--threads``, else the CPUs this process may use.

    torch's own default is the node's core count, which in a container with a CPU limit starts
    far more threads than the quota feeds (see model/cpus.py). Under torchrun the processes on
    one node share those CPUs.
    """
    import torch

    from model.cpus import available_cpus

    if requested:
        torch.set_num_threads(requested)
        return
    budget = available_cpus()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    threads = max(1, budget.count // local)
    torch.set_num_threads(threads)
    shared = f"; shared by {local} processes on this node" if local > 1 else ""
    log.info("cpu_threads", threads=threads, reason=budget.reason + shared)


def start(args: argparse.Namespace) -> Run:
    from model import train as train_lib

    set_threads(args.threads)
    out: Path = args.out
    ctx = train_lib.init_distributed(args.device)
    ckpt_path = out / "checkpoint.pt"
    stored = train_lib.read_checkpoint(ckpt_path) if args.resume else None
    if stored is None and ckpt_path.exists() and ctx.is_main:
        log.info("starting_over", checkpoint=str(ckpt_path), hint="pass --resume to continue that run instead")
    preset_name = stored["extra"].get("preset", args.preset) if stored else (args.preset or "small")
    return Run(out=out, ctx=ctx, stored=stored, preset_name=preset_name)


def read_data(args: argparse.Namespace, run: Run) -> Data:
    """--train, --val and --test; single- or multi-label as asked, stored or detected."""
    from model import data as data_lib

    stored = run.stored
    label_list = stored["labels"] if stored else split_labels(args.labels)
    multi: bool | None = True if args.multi_label else (False if args.single_label else None)
    if stored is not None:
        multi = stored["extra"].get("task") == "multi_label"
    train = data_lib.read_labeled(args.train, labels=label_list, multi_label=multi, **read_options(args))
    report_bad_rows(train)
    labels = label_list or data_lib.infer_labels(train)
    if len(labels) < 2 and not train.multi_label:
        raise ModelError(f"{args.train}: found only the label(s) {labels}; a classifier needs two or more")
    if not labels:
        raise ModelError(f"{args.train}: no row carries a tag; a tagger needs at least one")
    if train.multi_label and multi is None and run.ctx.is_main:
        log.info("multi_label", detected_from=str(args.train), labels=len(labels),
                 note="rows carry tag sets; --single-label to read them otherwise")
    others: dict[str, Any] = {}
    for name in ("val", "test"):
        path = getattr(args, name)
        others[name] = None
        if path:
            others[name] = data_lib.read_labeled(path, labels=labels, multi_label=train.multi_label,
                                                 **read_options(args))
            report_bad_rows(others[name])
    return Data(train=train, val=others["val"], test=others["test"], labels=labels)


def choose_init(args: argparse.Namespace, run: Run, data: Data) -> None:
    """Scratch or a pretrained encoder (measuring its vocabulary's coverage), and the defaults."""
    if run.stored is not None:
        extra = run.stored["extra"]
        run.init = extra.get("init", "scratch")
        run.coverage = extra.get("vocab_coverage")
        run.train_cfg = TrainConfig(**run.stored["train_config"])
        log.info("resume", checkpoint=str(run.ckpt_path), note="using the checkpoint's settings")
        return
    run.init = resolve_init(args, data.train.texts, run)
    base = preset(run.preset_name).train if run.init == "scratch" else finetune_train_config(data.multi_label)
    run.train_cfg = train_config(args, base)


def resolve_init(args: argparse.Namespace, texts: list[str] | None = None, run: Run | None = None) -> str:
    """``--init auto``: fine-tune the built-in MiniLM when it is installed, nothing asks for
    scratch, and its vocabulary reads ``texts`` (at most ``--coverage-threshold`` [UNK]).

    A pretrained encoder fine-tuned on a few thousand labels beats a from-scratch model (and
    TF-IDF) by several points on text its vocabulary covers, so it is the default there; on text
    it cannot read (e.g. Chinese with an English vocabulary) it loses to both.
    """
    if args.init != "auto":
        if args.init != "scratch" and texts is not None:
            check = _pretrained_coverage(args, str(args.init), texts)
            if run is not None:
                run.pretrained_check = check
            if check is not None and check.too_low:
                log.warning("vocab_coverage", init=str(args.init), **check.to_dict(),
                            note=f"this vocabulary cannot read much of the data ({check.summary()});"
                                 " --init scratch trains a tokenizer on it")
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
    if texts is not None:
        check = _pretrained_coverage(args, "minilm", texts)
        if run is not None:
            run.pretrained_check = check
        if check is not None and check.too_low:
            log.info("init", init="scratch",
                     reason=f"all-MiniLM-L6-v2's vocabulary reads {check.unk_share:.1%} of this data's tokens as"
                            f" [UNK] (above {check.threshold:.0%}; {check.mostly_unknown_share:.0%} of texts mostly"
                            " unknown): training a tokenizer and model from scratch instead")
            return "scratch"
    log.info("init", init="minilm", note="fine-tuning all-MiniLM-L6-v2; --init scratch trains a small model from scratch instead")
    return "minilm"


def _pretrained_coverage(args: argparse.Namespace, source: str, texts: list[str]) -> Any:
    """Coverage of a pretrained checkpoint's vocabulary on a sample of ``texts`` (None if unreadable)."""
    from tokenizers import Tokenizer

    from model.coverage import measure
    from model.pretrained import TOKENIZER_FILE, resolve_source

    try:
        folder = resolve_source(source)
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    except Exception:  # the real error comes, worded for the user, when the encoder is loaded
        return None
    return measure(tokenizer, texts, name=source, threshold=args.coverage_threshold)


def train_config(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    changes = given(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, schedule=args.schedule, label_smoothing=args.label_smoothing,
        token_dropout=args.token_dropout, layer_lr_decay=args.layer_lr_decay, patience=args.patience,
        seed=args.seed,
    )
    if args.class_weights:
        changes["class_weights"] = True
    return dataclasses.replace(base, **changes)


def split_validation(args: argparse.Namespace, run: Run, data: Data) -> None:
    from model import data as data_lib

    if data.val is None:
        data.train, data.val = data_lib.stratified_split(data.train, args.val_fraction, run.train_cfg.seed)
    if run.ctx.is_main:
        log.info("data", train=len(data.train), validation=len(data.val),
                 test=len(data.test) if data.test else None, labels=data.labels,
                 train_counts=data.train.label_counts())


def build_model(args: argparse.Namespace, run: Run, data: Data) -> None:
    """The tokenizer and model (new, pretrained, or from the checkpoint), coverage, truncation."""
    from model import tokenizer as tok_lib
    from model import train as train_lib
    from model.encoder import EncoderClassifier

    train_lib.seed_everything(run.train_cfg.seed)
    run.tok_cfg = preset(run.preset_name).tokenizer
    if run.stored is not None:
        from tokenizers import Tokenizer

        run.tokenizer = Tokenizer.from_str(run.stored["tokenizer"])
        run.model = EncoderClassifier(EncoderConfig.from_dict(run.stored["encoder_config"]))
        run.init_source = run.stored["extra"].get("init_source", run.init)
    elif run.init == "scratch":
        tok_changes = given(kind=args.tokenizer_kind, vocab_size=args.vocab_size)
        if args.cased:
            tok_changes["lowercase"] = False
        run.tok_cfg = dataclasses.replace(run.tok_cfg, **tok_changes)
        run.tokenizer = scratch_tokenizer(args, data.train.texts, run.tok_cfg, run.out, run.ctx)
        shape = given(max_length=args.max_length, pooling=args.pooling, dropout=args.dropout,
                      n_layers=args.layers, d_model=args.d_model)
        if args.d_model:
            shape["d_ff"] = 4 * args.d_model  # keep the usual 4x feed-forward width
        try:
            enc_cfg = dataclasses.replace(
                preset(run.preset_name).encoder, vocab_size=run.tokenizer.get_vocab_size(),
                n_classes=len(data.labels), pad_id=tok_lib.pad_id(run.tokenizer), **shape,
            )
        except ValueError as exc:  # e.g. --d-model not divisible by the preset's heads
            raise ModelError(f"invalid model shape: {exc}") from exc
        run.model = EncoderClassifier(enc_cfg)
        run.init_source = "scratch"
    else:
        run.model, run.tokenizer, run.init_source = pretrained(args, run.init, len(data.labels))
    if run.ctx.is_main:
        tok_lib.save_tokenizer(run.tokenizer, run.out / "tokenizer.json")
    if run.coverage is None:
        run.coverage = _record_coverage(args, run, data)
    run.train_texts = data.train.texts
    run.truncation = truncation(args, run)


def _record_coverage(args: argparse.Namespace, run: Run, data: Data) -> dict[str, Any]:
    """The coverage of the tokenizer the model uses, and of the pretrained one checked, if any."""
    from model.coverage import measure

    name = "scratch" if run.init == "scratch" else run.init
    final = measure(run.tokenizer, data.train.texts, name=name, threshold=args.coverage_threshold)
    record = final.to_dict()
    check = run.pretrained_check
    if check is not None:
        record["pretrained_check"] = check.to_dict()
        if run.init == "scratch":
            record["decision"] = f"trained from scratch: {check.tokenizer} read {check.unk_share:.1%} as [UNK]"
        elif check.too_low:
            record["decision"] = f"fine-tuned {check.tokenizer} as asked, above the threshold"
        else:
            record["decision"] = f"fine-tuned {check.tokenizer}"
    if run.ctx.is_main:
        log.info("vocab_coverage", tokenizer=name, unk_share=record["unk_share"],
                 mostly_unknown_share=record["mostly_unknown_share"], sample=record["sample"])
    return record


def truncation(args: argparse.Namespace, run: Run) -> Any:
    from model.truncation import Truncation, TruncationError, Windower, resolve

    if run.stored is not None:
        return Truncation.from_dict(run.stored["extra"].get("truncation"))
    max_length = run.model.config.max_length
    try:
        n_special = sum(len(a) for a in _affixes(run.tokenizer))
        strategy = args.truncation or DEFAULT_STRATEGY
        if strategy == "auto":
            strategy = _auto_strategy(run, run.train_texts, max_length - n_special)
        chosen = resolve(strategy, max_length, n_special=n_special,
                         stride=args.stride, max_windows=args.max_windows, pooling=args.window_pooling,
                         head_tokens=args.head_tokens)
        Windower(run.tokenizer, max_length, chosen)  # checks it against this tokenizer
    except TruncationError as exc:
        raise ModelError(str(exc)) from exc
    return chosen


def _auto_strategy(run: Run, texts: list[str], budget: int) -> str:
    """LONG_STRATEGY when many training texts are longer than one window, else head; says why."""
    import random

    sample = texts if len(texts) <= 2000 else random.Random(0).sample(texts, 2000)
    bare = run.tokenizer.__class__.from_str(run.tokenizer.to_str())
    bare.no_truncation()
    bare.no_padding()
    lengths = [len(e.ids) for e in bare.encode_batch(sample, add_special_tokens=False)]
    share = sum(n > budget for n in lengths) / max(1, len(lengths))
    strategy = LONG_STRATEGY if share > AUTO_LONG_SHARE else "head"
    if run.ctx.is_main:
        log.info("truncation", strategy=strategy,
                 reason=f"{share:.1%} of training texts are longer than one window ({budget} tokens);"
                        f" {LONG_STRATEGY} above {AUTO_LONG_SHARE:.0%}, else head (--truncation to choose)")
    return strategy


def _affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    from model.truncation import special_affixes

    return special_affixes(tokenizer)


def scratch_tokenizer(args: argparse.Namespace, texts: list[str], cfg: Any, out: Path, ctx: Any) -> Any:
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


def pretrained(args: argparse.Namespace, source: str, n_classes: int) -> tuple[Any, Any, str]:
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


def fit(args: argparse.Namespace, run: Run, data: Data) -> Any:
    from model import train as train_lib

    return train_lib.fit(
        run.model, run.tokenizer, data.train, data.val, data.labels, run.train_cfg,
        checkpoint_path=run.ckpt_path, resume=run.stored is not None, device=run.ctx.device,
        progress=not args.no_progress and sys.stderr.isatty(),
        extra_checkpoint={"init": run.init, "init_source": run.init_source, "preset": run.preset_name,
                          "task": "multi_label" if data.multi_label else "single_label",
                          "truncation": run.truncation.to_dict(), "vocab_coverage": run.coverage},
        truncation=run.truncation, pos_weight=args.pos_weight, log_every_s=args.log_every,
    )


def evaluate_final(args: argparse.Namespace, run: Run, data: Data, result: Any) -> Final:
    """Score the test set (else validation) eagerly, at the bundle's precision (export proves
    compiled and eager agree)."""
    from model import evaluate as eval_lib
    from model import export as export_lib
    from model.multilabel import multi_hot, multilabel_metrics

    model = result.model.cpu()
    final_data = data.test or data.val
    name = "test" if data.test else "validation"
    multi = data.multi_label

    def score(prob_model: Any) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        probs = eval_lib.predict_probs(prob_model, run.tokenizer, final_data.texts,
                                       max_length=model.config.max_length, truncation=run.truncation,
                                       multi_label=multi)
        seconds = time.perf_counter() - started
        if multi:
            return multilabel_metrics(probs, multi_hot(final_data.tag_sets, data.labels), result.thresholds,
                                      data.labels), seconds
        return eval_lib.compute_metrics(final_data.labels, [data.labels[i] for i in probs.argmax(1)],
                                        data.labels), seconds

    metrics, seconds = score(export_lib.eager_probability_model(model, args.precision, multi))
    headline_key = "micro_f1" if multi else "accuracy"
    summary: dict[str, Any] = {"evaluated_on": name}
    if multi:
        summary.update(task="multi_label", micro_f1=metrics["micro_f1"], macro_f1=metrics["macro_f1"],
                       exact_match=metrics["exact_match"])
    else:
        summary.update(accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"])
    summary.update(per_class_f1={k: v["f1"] for k, v in metrics["per_class"].items()},
                   validation_macro_f1=result.best_val_macro_f1, precision=args.precision)
    if multi or run.truncation.strategy != "head":
        summary["truncation"] = run.truncation.strategy
    if args.precision == "int8":
        fp32, _ = score(export_lib.eager_probability_model(model, "fp32", multi))
        summary[f"fp32_{headline_key}"] = fp32[headline_key]
        summary["fp32_macro_f1"] = fp32["macro_f1"]
        summary[f"int8_{headline_key}_change"] = metrics[headline_key] - fp32[headline_key]
    return Final(name=name, data=final_data, metrics=metrics, summary=summary, seconds=seconds)


def training_record(args: argparse.Namespace, run: Run, data: Data, result: Any) -> dict[str, Any]:
    return {
        # A pretrained encoder brings its own shape; its training defaults are the fine-tuning ones.
        "preset": run.preset_name if run.init == "scratch" else "finetune",
        "init": run.init_source,
        "task": "multi_label" if data.multi_label else "single_label",
        "train_config": dataclasses.asdict(run.train_cfg),
        "tokenizer_config": dataclasses.asdict(run.tok_cfg) if run.init == "scratch" and not args.tokenizer else None,
        "rows": {"train": len(data.train), "validation": len(data.val),
                 "test": len(data.test) if data.test else 0},
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.train_seconds, 1),
        "device": result.device,
        "world_size": result.world_size,
        **({"pos_weight": True} if args.pos_weight and data.multi_label else {}),
    }


def export(args: argparse.Namespace, run: Run, data: Data, result: Any, final: Final) -> Any:
    from model import export as export_lib

    run.training = training_record(args, run, data, result)
    return export_lib.export_bundle(
        result.model.cpu(), run.tokenizer, data.labels, run.out / "bundle",
        parity_texts=data.val.texts, name=args.name or run.out.resolve().name,
        precision=args.precision, metrics=final.summary, training=run.training,
        thresholds=result.thresholds if data.multi_label else None, truncation=run.truncation,
        extra_config={"vocab_coverage": run.coverage} if run.coverage else None,
    )


def write_report(args: argparse.Namespace, run: Run, data: Data, result: Any, final: Final, exported: Any) -> dict[str, Path]:
    from model import evaluate as eval_lib

    training = run.training
    validation = {k: result.best_val_metrics.get(k) for k in ("accuracy", "micro_f1", "exact_match")
                  if k in result.best_val_metrics}
    validation.update(macro_f1=result.best_val_macro_f1, best_epoch=result.best_epoch)
    extra: dict[str, Any] = {
        "summary": final.summary,
        "training": {k: v for k, v in training.items() if not isinstance(v, dict)},
        "validation": validation,
        "reading": {"truncation": run.truncation.strategy, **{k: v for k, v in run.truncation.to_dict().items()
                                                             if k != "strategy"}},
    }
    if run.coverage:
        extra["vocab_coverage"] = {k: v for k, v in run.coverage.items() if k != "pretrained_check"}
        check = run.coverage.get("pretrained_check")
        if check:
            extra["vocab_coverage"].update({f"pretrained_{k}": v for k, v in check.items()
                                            if k in ("tokenizer", "unk_share", "mostly_unknown_share")})
    extra["export"] = {"bundle": str(exported.path), "precision": exported.precision,
                       "parity_max_abs_diff": exported.parity_max_abs_diff,
                       "bundle_max_abs_diff": exported.bundle_max_abs_diff,
                       "int8_vs_fp32_max_abs_diff": exported.int8_vs_fp32_max_abs_diff,
                       "eval_texts_per_s": round(len(final.data) / max(final.seconds, 1e-9), 1)}
    if not data.multi_label and run.truncation.strategy == "head":
        extra.pop("reading")  # single-label head runs keep the report they always had
    return eval_lib.write_report(
        run.out / "report", final.metrics,
        title=f"{args.name or run.out.resolve().name}: {final.name} set ({final.data.source})",
        history=result.history, extra=extra,
    )


def print_summary(run: Run, result: Any, final: Final, exported: Any, paths: dict[str, Path]) -> None:
    from model import evaluate as eval_lib
    from model.commands.evaluate import print_per_class

    metrics = final.metrics
    print(f"{final.name} {eval_lib.headline(metrics)}"
          f"  ({len(final.data)} texts; best epoch {result.best_epoch}/{len(result.history)},"
          f" {result.train_seconds:.0f}s training)")
    print_per_class(metrics)
    for key in ("int8_accuracy_change", "int8_micro_f1_change"):
        if key in final.summary:
            what = key.removeprefix("int8_").removesuffix("_change")
            print(f"int8 vs fp32 {what}: {final.summary[key]:+.4f} (fp32 {final.summary['fp32_' + what]:.4f})")
    print(f"bundle: {exported.path}")
    print(f"report: {paths['markdown']}")


def finish_distributed(ctx: Any) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
