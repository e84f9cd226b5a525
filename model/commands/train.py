"""``tagstream-train train``: its options, and the run as a short list of named steps.

The steps themselves (data, choice of encoder, model, evaluation, export, report) live in
``model/commands/train_steps.py``; this module says in what order they happen.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from model.commands import train_steps as steps
from model.commands.common import data_options, small
from model.config import PRESET_NAMES, finetune_train_config
from model.coverage import DEFAULT_THRESHOLD
from model.pretrained import DEFAULT_MAX_LENGTH
from model.progress import DEFAULT_INTERVAL_S
from model.truncation import POOLINGS, STRATEGIES

OUT_LAYOUT = """\
output folder (--out DIR):
  DIR/bundle/          the exported bundle: point the worker's TAGSTREAM_BUNDLE_PATH here
  DIR/report/          report.json, report.md, confusion_matrix.png (multi-label:
                       per_label_f1.png), training_curves.png
  DIR/checkpoint.pt    last epoch's state, for --resume
  DIR/tokenizer.json   the tokenizer (also inside the bundle)
"""

TRAIN_EXAMPLES = """\
examples:
  tagstream-train train --train data/train.jsonl --test data/test.jsonl --out runs/news
  tagstream-train train --train sms.csv --text-field message --label-field class \\
      --class-weights --out runs/spam
  tagstream-train train --train data/train.jsonl --out runs/news --init minilm --epochs 3
  tagstream-train train --train tags.jsonl --out runs/tags          # rows with "labels": [...]
  tagstream-train train --train tags.csv --label-field tags --multi-label --out runs/tags
  tagstream-train train --train long.jsonl --truncation chunks --out runs/long
  torchrun --nproc_per_node 4 -m model.cli train --train data/train.jsonl --out runs/news
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train, evaluate and export a bundle",
        description=(
            "Train a classifier (single-label, or multi-label tags), evaluate it, and export a bundle."
            " With only --train, a stratified validation split is held out; --test gives the file the"
            " final report is computed on (otherwise the validation split).\n\n" + OUT_LAYOUT
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=TRAIN_EXAMPLES,
    )
    p.add_argument("--train", required=True, type=Path, metavar="FILE", help="labeled training data (JSONL or CSV)")
    p.add_argument("--test", type=Path, metavar="FILE", help="labeled test data for the final report")
    p.add_argument("--val", type=Path, metavar="FILE", help="labeled validation data (default: a split of --train)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (see above)")
    p.add_argument("--name", help="bundle name (default: the --out folder's name)")
    data_options(p)
    g = p.add_argument_group("data (training)")
    g.add_argument("--labels", help="comma-separated label list, in output order; rows with other labels are bad rows (default: every label in --train, sorted)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="share of --train held out for validation when no --val (default: %(default)s)")
    task = g.add_mutually_exclusive_group()
    task.add_argument("--multi-label", action="store_true",
                      help="rows carry a set of tags (a JSON list, or a --label-delimiter separated cell): sigmoid"
                           " outputs, binary cross-entropy, a threshold per label tuned on validation"
                           " (default: detected from the data)")
    task.add_argument("--single-label", action="store_true", help="one label a row, even if values look like tag sets")

    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=PRESET_NAMES,
                   help="train from scratch with this preset: tiny: tests, seconds; small: CPU,"
                        " minutes (the scratch default); base: wants a GPU")
    g.add_argument("--init", default="auto", metavar="auto|scratch|minilm|PATH",
                   help="auto (default): fine-tune all-MiniLM-L6-v2 when its package is installed,"
                        " no scratch-only option (--preset, --layers, --d-model, --tokenizer,"
                        " --tokenizer-kind, --vocab-size, --cased) is given and its vocabulary reads the"
                        " data (see --coverage-threshold), else scratch;"
                        " scratch: train a new encoder and tokenizer; minilm: fine-tune the"
                        " bundled all-MiniLM-L6-v2 (needs the 'pretrained' extra); PATH: a folder with"
                        " config.json, model.safetensors, tokenizer.json (BERT layout)")
    g.add_argument("--coverage-threshold", type=float, default=DEFAULT_THRESHOLD, metavar="SHARE",
                   help="largest share of [UNK] tokens (on a sample of --train) at which --init auto still"
                        " fine-tunes the pretrained encoder; above it, it trains from scratch, and an explicit"
                        " --init minilm|PATH warns (default: %(default)s)")
    g.add_argument("--max-length", type=int, help="tokens per window (specials included); longer texts are read by --truncation (default: the preset's; " + small("encoder", "max_length") + f"; {DEFAULT_MAX_LENGTH} with --init minilm|PATH)")
    g.add_argument("--pooling", choices=["mean", "cls"], help="how token states become one vector (default: the preset's; " + small("encoder", "pooling") + ")")
    g.add_argument("--dropout", type=float, help="dropout on embeddings, residuals and the pooled vector (default: the preset's; " + small("encoder", "dropout") + ")")
    g.add_argument("--layers", type=int, help="encoder blocks (scratch only; default: the preset's, " + small("encoder", "n_layers") + ")")
    g.add_argument("--d-model", type=int, help="width of token vectors (scratch only; default: the preset's, " + small("encoder", "d_model") + ")")

    g = p.add_argument_group(
        "long texts",
        description="How a text longer than --max-length is read, in training, evaluation and by the worker"
                    " (recorded in the bundle). head: its first tokens; head+tail: its first --head-tokens and"
                    " its last tokens; chunks: windows every --stride tokens (at most --max-windows), each"
                    " classified, their probabilities pooled per text (--window-pooling). Cost grows with the"
                    " windows read.",
    )
    g.add_argument("--truncation", choices=(*STRATEGIES, "auto"),
                   help=f"head (default), head+tail, chunks; or auto: {steps.LONG_STRATEGY} when more than"
                        f" {steps.AUTO_LONG_SHARE * 100:.0f}%% of the training texts are longer than one window, else head")
    g.add_argument("--head-tokens", type=int, help="head+tail: tokens kept from the start (default: a quarter of the window)")
    g.add_argument("--stride", type=int, help="chunks: tokens between window starts (default: 3/4 of the window: windows overlap by 1/4)")
    g.add_argument("--max-windows", type=int, help="chunks: windows read per text at most, the first ones (default: 8)")
    g.add_argument("--window-pooling", choices=POOLINGS, help="chunks: mean or max of the window probabilities (default: mean)")

    g = p.add_argument_group("tokenizer (scratch only)")
    g.add_argument("--tokenizer", type=Path, metavar="FILE", help="reuse this tokenizer.json instead of training one (also pins the vocabulary:"
                        " training one is not bit-for-bit reproducible)")
    g.add_argument("--tokenizer-kind", choices=["wordpiece", "bpe"], help="algorithm of a trained tokenizer (default: the preset's; " + small("tokenizer", "kind") + ")")
    g.add_argument("--vocab-size", type=int, help="vocabulary size of a trained tokenizer (default: the preset's; " + small("tokenizer", "vocab_size") + ")")
    g.add_argument("--cased", action="store_true", help="keep case (default: lowercase)")

    ft = finetune_train_config()
    g = p.add_argument_group(
        "training",
        description=(
            "Defaults are the preset's; with --init minilm|PATH they are the fine-tuning ones:"
            f" {ft.epochs} epochs, batch {ft.batch_size}, lr {ft.lr:g}, {ft.warmup_ratio:.0%} warmup"
            f" then {ft.schedule} decay, weight decay {ft.weight_decay:g}, patience {ft.patience},"
            " no layer-wise LR decay (try --layer-lr-decay 0.9); multi-label fine-tuning trains longer"
            f" ({finetune_train_config(multi_label=True).epochs} epochs, lr {finetune_train_config(multi_label=True).lr:g})."
        ),
    )
    g.add_argument("--epochs", type=int, help="passes over the training data (default: the preset's; " + small("train", "epochs") + ")")
    g.add_argument("--batch-size", type=int, help="texts per step and process (default: the preset's; " + small("train", "batch_size") + ")")
    g.add_argument("--lr", type=float, help="peak learning rate after warmup (default: the preset's; " + small("train", "lr") + ")")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay on weight matrices (default: the preset's; " + small("train", "weight_decay") + ")")
    g.add_argument("--warmup-ratio", type=float, help="share of steps with rising LR (default: the preset's; " + small("train", "warmup_ratio") + ")")
    g.add_argument("--schedule", choices=["linear", "cosine"], help="LR decay after warmup (default: the preset's; " + small("train", "schedule") + ")")
    g.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing, single-label (default: the preset's; " + small("train", "label_smoothing") + ")")
    g.add_argument("--token-dropout", type=float, help="share of tokens hidden as [UNK] in training (default: the preset's; " + small("train", "token_dropout") + ")")
    g.add_argument("--layer-lr-decay", type=float, help="LR factor per block going down (fine-tuning; default: the preset's, " + small("train", "layer_lr_decay") + ")")
    g.add_argument("--class-weights", action="store_true", help="weight the loss by inverse class frequency (imbalanced single-label data, e.g. spam)")
    g.add_argument("--pos-weight", action="store_true", help="multi-label: weigh each tag's positives by its negatives/positives ratio (capped at 10): helps rare tags")
    g.add_argument("--patience", type=int, help="epochs without validation macro-F1 gain before stopping; 0 = never (default: the preset's; " + small("train", "patience") + ")")
    g.add_argument("--seed", type=int, help="seed for the split, initialisation and batch order (default: the preset's; " + small("train", "seed") + ")")
    g.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt with its stored settings")

    g = p.add_argument_group("runtime and export")
    g.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:N (default: %(default)s)")
    g.add_argument("--threads", type=int, default=0, help="CPU threads for torch; 0 = the CPUs this process may use: affinity mask and cgroup (container) CPU limit, shared by torchrun's processes on the node (default: %(default)s)")
    g.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                   help="bundle precision: int8 quantizes Linear layers (~2x faster on CPUs, CPU only; the accuracy change is reported) (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown on a terminal)")
    g.add_argument("--log-every", type=float, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
                   help="a progress line in the log this often (steps, examples/s, loss, ETA), bar or not; 0 = never (default: %(default)s)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Read the data, choose the encoder, train, evaluate, export, report: in that order."""
    run = steps.start(args)
    data = steps.read_data(args, run)
    steps.choose_init(args, run, data)
    steps.split_validation(args, run, data)
    steps.build_model(args, run, data)
    result = steps.fit(args, run, data)
    if not run.ctx.is_main:
        steps.finish_distributed(run.ctx)
        return 0
    final = steps.evaluate_final(args, run, data, result)
    exported = steps.export(args, run, data, result, final)
    paths = steps.write_report(args, run, data, result, final, exported)
    steps.print_summary(run, result, final, exported, paths)
    steps.finish_distributed(run.ctx)
    return 0
