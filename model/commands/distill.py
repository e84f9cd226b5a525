"""``tagstream-train distill``: its options, and the run as a short list of named steps.

    tagstream-train distill --teacher BUNDLE --train FILE [--unlabeled FILE ...] [--test FILE] --out DIR

The steps themselves live in ``model/commands/distill_steps.py``; the loss, the teacher's cached
outputs and the augmentation in ``model/distill.py``. In order:
  1. load and verify the teacher; read the data (single-label or tag sets, as the teacher is);
     its labels must be the teacher's;
  2. the teacher labels the training split, the unlabeled files, any augmented copies and the
     test file, each once: cached in DIR/teacher-cache/ (or --teacher-cache) by teacher version
     and texts checksum, so epochs never run it and re-runs only read the cache;
  3. build the student: a from-scratch preset (`small` by default), on the teacher's tokenizer
     and PCA-reduced token table when the teacher is a fine-tuned pretrained encoder whose
     vocabulary reads the data (``--tokenizer auto``), else on a tokenizer trained on the data;
  4. train it on the mixed loss through ``model.train.fit``'s loss hook;
  5. train the same student without the teacher (the scratch baseline), unless told not to;
  6. score student, teacher and baseline on the test file, export the student bundle (its
     config records the teacher and the settings), write the report with the comparison.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from model.commands import distill_steps as steps
from model.commands.common import data_options, small
from model.config import PRESET_NAMES
from model.coverage import DEFAULT_THRESHOLD
from model.distill import AUGMENT_KINDS, TEACHER_DTYPES, DistillSettings

DEFAULTS = DistillSettings()

EXAMPLES = """\
examples:
  tagstream-train distill --teacher runs/news-minilm/bundle --train data/train.jsonl \\
      --test data/test.jsonl --out runs/news-student
  tagstream-train distill --teacher runs/news-minilm/bundle --train data/train.jsonl \\
      --unlabeled topic-dump.jsonl --augment-copies 4 --out runs/news-student
  tagstream-train distill --teacher runs/tags-minilm/bundle --train tags.jsonl --out runs/tags-student

output folder (--out DIR): as for train (bundle/, report/, checkpoint.pt, tokenizer.json), plus
  DIR/teacher-cache/   the teacher's probabilities per set of texts (reused by re-runs)
"""

# Why --tokenizer auto / --init-embeddings auto pick the teacher's vocabulary and token table:
# measured on AG News (9,355 training rows, small student, T 2, alpha 0.5; README "A fast
# student"): in one bench/distill_bench.py run 0.8811 accuracy against 0.8628 with a tokenizer
# trained on the data (TF-IDF 0.8659, teacher 0.9054); in an earlier sweep 0.8842, the teacher's
# tokenizer alone 0.8662, a trained tokenizer 0.8587. On SMS spam the two are within a message or
# two of each other. Model-only speed is the same: the table has more rows, the texts as many tokens.
TOKENIZER_HELP = (
    "auto (default): the teacher's own tokenizer when the teacher was fine-tuned from a pretrained"
    " encoder (e.g. MiniLM's WordPiece) whose vocabulary reads --train (at most --coverage-threshold"
    " [UNK]), else one trained on the data; teacher: the teacher's, always; trained: a new one"
    " trained on the data (the behaviour before auto); FILE: this tokenizer.json. On AG News the"
    " teacher's tokenizer with its token table (--init-embeddings) scored 0.8811 against 0.8628"
    " with a trained tokenizer in the same benchmark run (README), at the same model-only speed"
)


def add_parser(sub: Any) -> None:
    """Register the ``distill`` subcommand on ``tagstream-train``'s subparsers."""
    p = sub.add_parser(
        "distill",
        help="train a small, fast student on a fine-tuned teacher bundle's predictions",
        description=(
            "Knowledge distillation: train a from-scratch student (the small preset by default) on"
            " a mix of the gold labels and the teacher bundle's temperature-softened probabilities:\n"
            "  single-label: loss = (1 - alpha) * CE(student, gold) + alpha * T^2 * KL(teacher_T || student_T)\n"
            "  multi-label:  loss = (1 - alpha) * BCE(student, gold tags)\n"
            "                       + alpha * T^2 * mean binary KL(sigmoid(teacher logit / T) || sigmoid(student logit / T))\n"
            "The teacher runs once per set of texts (cached), labels --unlabeled texts and any"
            " augmented copies, and is scored beside the student and a student trained without it."
            " The student is an ordinary bundle (single-label or multi-label, as the teacher),"
            " served by the same worker."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    p.add_argument("--teacher", required=True, type=Path, metavar="BUNDLE", help="the teacher bundle (e.g. one fine-tuned with train --init minilm)")
    p.add_argument("--train", required=True, type=Path, metavar="FILE", help="labeled training data (JSONL or CSV); labels (or tags) must be the teacher's")
    p.add_argument("--unlabeled", type=Path, metavar="FILE", nargs="+", action="extend", default=[],
                   help="texts without labels for the teacher to label (JSONL/CSV with --text-field, or .txt one per line); may repeat")
    p.add_argument("--test", type=Path, metavar="FILE", help="labeled test data for the final report")
    p.add_argument("--val", type=Path, metavar="FILE", help="labeled validation data (default: a split of --train)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of --train held out for validation when no --val (default: %(default)s; the same split as train makes with the same seed)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--name", help="bundle name (default: the --out folder's name)")
    data_options(p)

    g = p.add_argument_group("distillation")
    g.add_argument("--temperature", type=float, default=DEFAULTS.temperature, help="softens the teacher's and the student's outputs in the teacher term (default: %(default)s)")
    g.add_argument("--alpha", type=float, default=DEFAULTS.alpha, help="weight of the teacher term, 0..1; 1 - alpha weights the gold labels (default: %(default)s)")
    g.add_argument("--augment-copies", type=int, default=DEFAULTS.augment_copies, help="noisy copies of every training text, labeled by the teacher (default: %(default)s)")
    g.add_argument("--augment", choices=AUGMENT_KINDS, default=DEFAULTS.augment, help="how a copy is made: drop words, mask words, delete a span, or a mix (default: %(default)s)")
    g.add_argument("--augment-rate", type=float, default=DEFAULTS.augment_rate, help="share of words a copy loses or masks (default: %(default)s)")
    g.add_argument("--teacher-dtype", choices=TEACHER_DTYPES, default=DEFAULTS.teacher_dtype, help="teacher precision when labeling: auto is bf16 on GPUs and on CPUs with native bf16 (AMX/AVX512-BF16; ~3x faster, same labels), else fp32 (default: %(default)s)")
    g.add_argument("--teacher-batch-size", type=int, default=64, help="texts per teacher call (default: %(default)s)")
    g.add_argument("--teacher-cache", type=Path, metavar="DIR", help=f"where the teacher's outputs are cached (default: DIR/{steps.TEACHER_CACHE})")
    g.add_argument("--no-scratch-baseline", action="store_true", help="skip training the same student without the teacher for the comparison")

    g = p.add_argument_group("student (a from-scratch encoder)")
    g.add_argument("--preset", choices=[n for n in PRESET_NAMES], default="small", help="student size and training defaults (default: %(default)s)")
    g.add_argument("--layers", type=int, help="encoder blocks (default: the preset's, " + small("encoder", "n_layers") + ")")
    g.add_argument("--d-model", type=int, help="width of token vectors (default: the preset's, " + small("encoder", "d_model") + ")")
    g.add_argument("--max-length", type=int, help="tokens per text, the first ones (default: the preset's; " + small("encoder", "max_length") + ")")
    g.add_argument("--pooling", choices=["mean", "cls"], help="default: the preset's; " + small("encoder", "pooling"))
    g.add_argument("--dropout", type=float, help="default: the preset's; " + small("encoder", "dropout"))
    g.add_argument("--tokenizer", default="auto", metavar="auto|teacher|trained|FILE", help=TOKENIZER_HELP)
    g.add_argument("--init-embeddings", choices=["auto", "none", "teacher"], default="auto",
                   help="auto (default): teacher when the student uses the teacher's tokenizer, else none;"
                        " teacher: start the student's token embeddings from the teacher's table, reduced to"
                        " --d-model by PCA (words the labeled data never shows start where pretraining put"
                        " them); none: random, as train does")
    g.add_argument("--coverage-threshold", type=float, default=DEFAULT_THRESHOLD, metavar="SHARE",
                   help="largest share of [UNK] tokens of the teacher's vocabulary on a sample of --train at"
                        " which --tokenizer auto still uses it (default: %(default)s)")
    g.add_argument("--tokenizer-kind", choices=["wordpiece", "bpe"], help="a trained tokenizer's algorithm (default: the preset's; " + small("tokenizer", "kind") + ")")
    g.add_argument("--vocab-size", type=int, help="a trained tokenizer's vocabulary (default: the preset's; " + small("tokenizer", "vocab_size") + ")")
    g.add_argument("--cased", action="store_true", help="a trained tokenizer keeps case (default: lowercase)")

    g = p.add_argument_group("training (defaults: the preset's)")
    g.add_argument("--epochs", type=int, help=small("train", "epochs"))
    g.add_argument("--batch-size", type=int, help=small("train", "batch_size"))
    g.add_argument("--lr", type=float, help=small("train", "lr"))
    g.add_argument("--weight-decay", type=float, help=small("train", "weight_decay"))
    g.add_argument("--warmup-ratio", type=float, help=small("train", "warmup_ratio"))
    g.add_argument("--schedule", choices=["linear", "cosine"], help=small("train", "schedule"))
    g.add_argument("--label-smoothing", type=float, help="single-label; " + small("train", "label_smoothing"))
    g.add_argument("--token-dropout", type=float, help="share of tokens hidden as [UNK] in training; " + small("train", "token_dropout"))
    g.add_argument("--class-weights", action="store_true", help="single-label: weight the gold-label term by inverse class frequency (imbalanced data)")
    g.add_argument("--pos-weight", action="store_true", help="multi-label: weigh each tag's positives in the gold-label term by its negatives/positives ratio (capped at 10)")
    g.add_argument("--patience", type=int, help="epochs without validation macro-F1 gain before stopping; " + small("train", "patience"))
    g.add_argument("--seed", type=int, help="seed for the split, initialisation, batches and augmentation; " + small("train", "seed"))

    g = p.add_argument_group("runtime and export")
    g.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda:N (default: %(default)s)")
    g.add_argument("--threads", type=int, default=0, help="CPU threads for torch; 0 = the CPUs this process may use (default: %(default)s)")
    g.add_argument("--precision", choices=["fp32", "int8"], default="fp32", help="student bundle precision (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt with its stored settings (the teacher's outputs come from the cache)")
    p.set_defaults(func=cmd_distill)


def cmd_distill(args: argparse.Namespace) -> int:
    """Teacher, data and its soft targets, student, baseline, evaluation and export: in that order."""
    run = steps.start(args)
    steps.load_teacher(args, run)
    sets = steps.teacher_labeled_sets(args, run)
    steps.build_student(args, run, sets)
    student = steps.train_student(args, run, sets)
    scratch = steps.train_scratch(args, run, sets)
    return steps.evaluate_and_export(args, run, sets, student, scratch)
