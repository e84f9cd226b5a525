"""Distillation benchmark: teacher, scratch student and distilled student, beside TF-IDF, in one run.

    .venv/bin/python bench/distill_bench.py --teacher-dir ~/tagstream-teachers      # full run
    .venv/bin/python bench/distill_bench.py --quick                                 # smoke, ~3 min
    .venv/bin/python bench/distill_bench.py --only ag_news -- --temperature 4       # flags for distill
    .venv/bin/python bench/distill_bench.py --only ag_news --no-unlabeled \
        --variant "T2=--temperature 2" --variant "T4=--temperature 4"              # a sweep, one table

For AG News and SMS spam, all through the real `tagstream-train` commands:
  1. the teacher: all-MiniLM-L6-v2 fine-tuned with `train --init minilm` (finetune_bench's flags),
     kept in --teacher-dir and reused by later runs (a fine-tune is ~17 min on 2 idle cores;
     the teacher's outputs are cached there too, so a re-run does not run it on the same texts);
  2. the scratch student: `train --preset small`, the same as bench/train_bench.py;
  3. the distilled student: `distill --preset small` from that teacher (+ flags after --), or
     one per --variant NAME=FLAGS (a sweep: every variant beside the same baseline and teacher);
     by default it shares the teacher's tokenizer and starts from its PCA-reduced token table
     (`--variant "trained=--tokenizer trained"` adds the student on a tokenizer of its own);
  4. TF-IDF + logistic regression on the same training split (train_bench's baseline);
  5. model-only texts/s of the bundles on the dataset's test texts (pre-tokenized, batch 64,
     the students measured alternately, best of three rounds).
Then, on AG News, whether unlabeled text helps: the labels of a share of the training file are
held back (--unlabeled-share, default 0.5), a teacher is fine-tuned on the labeled rows alone
(so it has never seen the held-back labels), and a student distilled from the labeled rows is
compared with one that also gets the held-back texts as --unlabeled.

Targets (issue #12): AG News distilled small >= 0.87 accuracy and above the same-run TF-IDF, at
>= 90% of the scratch small bundle's model-only texts/s; SMS spam-class F1 >= 0.955.
The machine and its load are printed with the tables: speed is only comparable within a run.

Datasets come from ../shared/datasets (or --datasets / $TAGSTREAM_DATASETS) and are never
copied into the repository; without them the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench.train_bench import headline, sample_rows, tfidf_baseline  # noqa: E402
from model import data as data_lib  # noqa: E402
from model import tokenizer as tok_lib  # noqa: E402
from model.batching import pad_batch, sorted_batches, training_batches  # noqa: E402
from model.bundle import Bundle  # noqa: E402
from model.cli import main as cli_main  # noqa: E402

DEFAULT_DATASETS = ROOT.parent / "shared" / "datasets"
DATASETS = ("ag_news", "sms_spam")
SPEED_BATCH = 64  # the worker's default max_batch_size
SPEED_TEXTS = 2000  # test texts timed per student bundle
TEACHER_SPEED_TEXTS = 512  # the teacher is ~20x slower: fewer texts, one round
SPEED_ROUNDS = 3
QUICK_ROWS = {"train": 1200, "test": 600}

# The teacher's fine-tuning flags: bench/finetune_bench.py's (SMS spam gains from a 4th epoch).
TEACHER_FLAGS = {"ag_news": [], "sms_spam": ["--epochs", "4"]}
# Student flags, for the scratch and the distilled student alike: spam is 12% of SMS.
STUDENT_FLAGS = {"ag_news": [], "sms_spam": ["--class-weights"]}
TARGETS = {"ag_news": ("accuracy", 0.87), "sms_spam": ("spam_f1", 0.955)}
SPEED_TARGET = 0.90  # distilled / scratch model-only texts/s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path,
                        default=Path(os.environ.get("TAGSTREAM_DATASETS", DEFAULT_DATASETS)),
                        help="folder holding ag_news/ and sms_spam/ (default: %(default)s)")
    parser.add_argument("--teacher-dir", type=Path,
                        help="keep and reuse fine-tuned teachers (and their cached outputs) here"
                             " (default: inside --out; a temporary folder without --out)")
    parser.add_argument("--out", type=Path, help="keep runs here (default: a temporary folder)")
    parser.add_argument("--only", choices=DATASETS, help="run one dataset only")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_ROWS['train']}/{QUICK_ROWS['test']}-row slices,"
                             " 1-epoch teachers, tiny students (not the real figures)")
    parser.add_argument("--unlabeled-share", type=float, default=0.5,
                        help="AG News: share of the training file whose labels are held back (default: %(default)s)")
    parser.add_argument("--no-unlabeled", action="store_true", help="skip the unlabeled-text experiment")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                        help="a distilled student with these extra distill flags, e.g."
                             " 'T4=--temperature 4 --alpha 0.9'; may repeat (default: one, 'distilled')")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("distill_flags", nargs=argparse.REMAINDER,
                        help="after --: extra `tagstream-train distill` flags for every distilled student")
    args = parser.parse_args(argv)
    extra = [f for f in args.distill_flags if f != "--"]
    variants = parse_variants(args.variant)

    names = [args.only] if args.only else list(DATASETS)
    missing = [n for n in names if not (args.datasets / n / "train.jsonl").is_file()]
    if missing:
        print(f"SKIPPED: datasets {missing} not found under {args.datasets} "
              "(expected <name>/train.jsonl and test.jsonl; see ../shared/datasets/README.md)")
        return 0
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # torch.ao / TorchScript deprecation notices
    load_before = os.getloadavg()
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()},"
          f" load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tagstream-distill-bench-") as tmp:
        work = (args.out or Path(tmp)).resolve()
        teachers = (args.teacher_dir or work / "teachers").resolve()
        results = [bench_dataset(name, args, work / name, teachers, extra, variants) for name in names]
        unlabeled = None
        if "ag_news" in names and not args.no_unlabeled:
            unlabeled = bench_unlabeled(args, work / "ag_news-unlabeled", teachers, extra)
    load_after = os.getloadavg()
    print_tables(results, unlabeled, args, load_before, load_after, time.perf_counter() - started)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "unlabeled": unlabeled, "quick": args.quick,
                                         "distill_flags": extra, "cpu": cpu_name(),
                                         "load_before": load_before, "load_after": load_after},
                                        indent=2, default=str))
    return 0


def parse_variants(specs: list[str]) -> list[tuple[str, list[str]]]:
    """[(name, distill flags)] from NAME=FLAGS strings; one plain 'distilled' when none."""
    if not specs:
        return [("distilled", [])]
    out = []
    for spec in specs:
        name, sep, flags = spec.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--variant {spec!r}: expected NAME=FLAGS, e.g. 'T4=--temperature 4'")
        out.append((name.strip(), shlex.split(flags)))
    return out


def bench_dataset(name: str, args: argparse.Namespace, work: Path, teachers: Path,
                  extra: list[str], variants: list[tuple[str, list[str]]]) -> dict[str, Any]:
    """Teacher (built or reused), scratch and distilled students, TF-IDF, and their speeds."""
    train_file, test_file = dataset_files(args, name, work)
    teacher = ensure_teacher(name, name + ("-quick" if args.quick else ""), train_file, test_file,
                             teachers, args.quick)
    scratch = run_cli(name, "scratch", work, [
        "train", "--train", str(train_file), "--test", str(test_file), "--out", str(work / "scratch"),
        "--preset", "tiny" if args.quick else "small", "--name", f"{name}-small", "--no-progress",
        *STUDENT_FLAGS[name], *(["--epochs", "1"] if args.quick else [])])
    runs = {vname: run_distill(name, vname, work, teacher, train_file, test_file, args, [*extra, *flags])
            for vname, flags in variants}

    labels = json.loads((scratch["bundle"] / "labels.json").read_text())
    seed = scratch["config"]["training"]["train_config"]["seed"]
    train_split, val_split = data_lib.stratified_split(data_lib.read_labeled(train_file), 0.1, seed)
    test = data_lib.read_labeled(test_file, labels=labels)
    baseline = tfidf_baseline(name, train_split, val_split, test, labels)
    speed = bench_speed(name, test.texts, scratch["bundle"],
                        {v: r["bundle"] for v, r in runs.items()}, teacher["bundle"])
    first = next(iter(runs.values()))
    result = {
        "dataset": name,
        "rows": {"train": len(train_split), "validation": len(val_split), "test": len(test)},
        "teacher": {**teacher_headline(name, first["report"]), "reused": teacher["reused"],
                    "train_seconds": teacher["train_seconds"]},
        "scratch": {**headline(name, scratch["report"]["metrics"]),
                    "train_seconds": scratch["config"]["training"]["train_seconds"],
                    "epochs": epochs(scratch)},
        "variants": [variant_result(name, vname, run) for vname, run in runs.items()],
        "baseline": baseline,
        "speed": speed,
    }
    print(f"[{name}] teacher {result['teacher']}  scratch {result['scratch']}  TF-IDF {baseline}",
          flush=True)
    for v in result["variants"]:
        print(f"[{name}] {v['variant']}: {v['metrics']}  {v['distillation']}  rows {v['rows']}", flush=True)
    return result


def variant_result(name: str, variant: str, run: dict[str, Any]) -> dict[str, Any]:
    training = run["config"]["training"]
    return {"variant": variant, "metrics": headline(name, run["report"]["metrics"]),
            "train_seconds": training["train_seconds"], "epochs": epochs(run),
            "agreement_with_teacher": round(run["report"]["summary"]["agreement_with_teacher"], 4),
            "distillation": training["distillation"]["settings"],
            "tokenizer": training.get("tokenizer"), "rows": training["distillation"]["rows"],
            "teacher_seconds": training["distillation"]["teacher_seconds"], "argv": run["argv"]}


def epochs(run: dict[str, Any]) -> str:
    training = run["config"]["training"]
    return f"{training['best_epoch']}/{training['epochs_run']}"


def bench_unlabeled(args: argparse.Namespace, work: Path, teachers: Path,
                    extra: list[str]) -> dict[str, Any]:
    """AG News with a share of the labels held back: labeled-only vs labeled + --unlabeled."""
    name = "ag_news"
    train_file, test_file = dataset_files(args, name, work)
    rows = train_file.read_text(encoding="utf-8").splitlines(keepends=True)
    random.Random(0).shuffle(rows)  # the file may be ordered; a seeded shuffle, same every run
    n_unlabeled = round(len(rows) * args.unlabeled_share)
    labeled_file = work / "labeled.jsonl"
    unlabeled_file = work / "unlabeled.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    labeled_file.write_text("".join(rows[n_unlabeled:]), encoding="utf-8")
    unlabeled_file.write_text("".join(json.dumps({"text": json.loads(r)["text"]}) + "\n"
                                      for r in rows[:n_unlabeled]), encoding="utf-8")
    share = round(100 * (1 - args.unlabeled_share))
    teacher = ensure_teacher(name, f"{name}-labeled{share}" + ("-quick" if args.quick else ""),
                             labeled_file, test_file, teachers, args.quick)
    scratch = run_cli(name, "unlabeled-scratch", work, [
        "train", "--train", str(labeled_file), "--test", str(test_file), "--out", str(work / "scratch"),
        "--preset", "tiny" if args.quick else "small", "--no-progress",
        *(["--epochs", "1"] if args.quick else [])])
    labeled_only = run_distill(name, "labeled-only", work, teacher, labeled_file, test_file, args, extra)
    with_unlabeled = run_distill(name, "with-unlabeled", work, teacher, labeled_file, test_file, args,
                                 [*extra, "--unlabeled", str(unlabeled_file)])
    labels = json.loads((scratch["bundle"] / "labels.json").read_text())
    seed = scratch["config"]["training"]["train_config"]["seed"]
    train_split, val_split = data_lib.stratified_split(data_lib.read_labeled(labeled_file), 0.1, seed)
    test = data_lib.read_labeled(test_file, labels=labels)
    out = {
        "labeled_rows": len(rows) - n_unlabeled, "unlabeled_rows": n_unlabeled,
        "teacher": {**teacher_headline(name, labeled_only["report"]), "reused": teacher["reused"]},
        "scratch": headline(name, scratch["report"]["metrics"]),
        "labeled_only": headline(name, labeled_only["report"]["metrics"]),
        "with_unlabeled": headline(name, with_unlabeled["report"]["metrics"]),
        "baseline": tfidf_baseline(name, train_split, val_split, test, labels),
    }
    print(f"[unlabeled] {out}", flush=True)
    return out


def dataset_files(args: argparse.Namespace, name: str, work: Path) -> tuple[Path, Path]:
    folder = args.datasets / name
    train_file, test_file = folder / "train.jsonl", folder / "test.jsonl"
    if args.quick:
        train_file = sample_rows(train_file, work / "train.jsonl", QUICK_ROWS["train"])
        test_file = sample_rows(test_file, work / "test.jsonl", QUICK_ROWS["test"])
    return train_file, test_file


def ensure_teacher(name: str, key: str, train_file: Path, test_file: Path, teachers: Path,
                   quick: bool) -> dict[str, Any]:
    """The fine-tuned teacher for ``train_file``: reused from ``teachers/key`` when it was trained
    on the same file, else fine-tuned there now (minutes: the run logs to teachers/key.log)."""
    folder = teachers / key
    stamp = folder / "trained_on.json"
    digest = hashlib.sha256(train_file.read_bytes()).hexdigest()
    bundle = folder / "bundle"
    if (bundle / "manifest.json").is_file():
        if stamp.is_file() and json.loads(stamp.read_text())["sha256"] != digest:
            raise SystemExit(f"{folder} holds a teacher trained on other data than {train_file};"
                             " remove it or pass another --teacher-dir")
        stamp.write_text(json.dumps({"train": str(train_file), "sha256": digest}) + "\n")
        config = json.loads((bundle / "config.json").read_text())
        print(f"[{name}] teacher reused: {bundle}", flush=True)
        return {"bundle": bundle, "reused": True, "train_seconds": config["training"].get("train_seconds")}
    argv = ["train", "--init", "minilm", "--train", str(train_file), "--test", str(test_file),
            "--out", str(folder), "--name", f"{key}-minilm", "--no-progress", *TEACHER_FLAGS[name]]
    if quick:
        argv += ["--epochs", "1", "--max-length", "64"]
    run = run_cli(name, f"fine-tuning the teacher {key} (minutes)", teachers / f"{key}-log", argv)
    stamp.write_text(json.dumps({"train": str(train_file), "sha256": digest}) + "\n")
    return {"bundle": run["bundle"], "reused": False,
            "train_seconds": run["config"]["training"]["train_seconds"]}


def run_distill(name: str, what: str, work: Path, teacher: dict[str, Any], train_file: Path,
                test_file: Path, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    argv = ["distill", "--teacher", str(teacher["bundle"]), "--train", str(train_file),
            "--test", str(test_file), "--out", str(work / what), "--name", f"{name}-{what}",
            "--teacher-cache", str(Path(teacher["bundle"]).parent / "cache"), "--no-scratch-baseline",
            "--no-progress", *STUDENT_FLAGS[name]]
    if args.quick:
        argv += ["--preset", "tiny", "--epochs", "1"]
    return run_cli(name, what, work, [*argv, *extra])


def run_cli(name: str, what: str, work: Path, argv: list[str]) -> dict[str, Any]:
    """One `tagstream-train` command in this process, its output in a log; its report and config."""
    out = Path(argv[argv.index("--out") + 1])
    work.mkdir(parents=True, exist_ok=True)
    log_file = work / f"{what.split(' (')[0].replace(' ', '-')}.log"
    print(f"[{name}] {what}: tagstream-train {' '.join(argv)}  (log: {log_file})", flush=True)
    with log_file.open("w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = cli_main(["--log-level", "warning", *argv])
    if code != 0:
        raise SystemExit(f"[{name}] {what} failed with exit code {code}; see {log_file}")
    return {"bundle": out / "bundle", "argv": argv,
            "report": json.loads((out / "report" / "report.json").read_text()),
            "config": json.loads((out / "bundle" / "config.json").read_text())}


def teacher_headline(name: str, report: dict[str, Any]) -> dict[str, float]:
    """The teacher's scores on the test file, as the distill report computed them."""
    rows = report["comparison"]["rows"]
    teacher = next(r for r in rows if r["model"].startswith("teacher"))
    out = {"accuracy": round(teacher["accuracy"], 4), "macro_f1": round(teacher["macro_f1"], 4)}
    if name == "sms_spam":
        out["spam_f1"] = round(teacher["per_class_f1"]["spam"], 4)
    return out


def bench_speed(name: str, texts: list[str], scratch: Path, students: dict[str, Path],
                teacher: Path) -> dict[str, Any]:
    """Model-only texts/s: length-sorted and arrival-order batches; the students alternate."""
    bundles = {"scratch": Bundle.load(scratch), **{v: Bundle.load(p) for v, p in students.items()}}
    prepared = {key: prepare(b, texts[:SPEED_TEXTS]) for key, b in bundles.items()}
    best: dict[str, dict[str, float]] = {key: {} for key in bundles}
    for _ in range(SPEED_ROUNDS):
        for key, bundle in bundles.items():
            for order, tensors in prepared[key].items():
                best[key][order] = max(best[key].get(order, 0.0), texts_per_second(bundle.model, tensors))
    t = Bundle.load(teacher)
    best["teacher"] = {order: texts_per_second(t.model, tensors)
                       for order, tensors in prepare(t, texts[:TEACHER_SPEED_TEXTS]).items()}
    out: dict[str, Any] = {key: {order: round(v) for order, v in rates.items()} for key, rates in best.items()}
    for key in students:
        out[key]["vs_scratch"] = {order: round(best[key][order] / best["scratch"][order], 3)
                                  for order in best[key]}
    out["texts"] = min(len(texts), SPEED_TEXTS)
    out["teacher_texts"] = min(len(texts), TEACHER_SPEED_TEXTS)
    print(f"[{name}] speed {out}", flush=True)
    return out


def prepare(bundle: Bundle, texts: list[str]) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Padded batches of pre-tokenized texts: sorted by length, and in arrival order."""
    sequences = tok_lib.encode_unpadded(bundle.tokenizer, texts, bundle.max_length)
    lengths = [len(s) for s in sequences]
    orders = {"sorted": sorted_batches(lengths, SPEED_BATCH),
              "arrival": training_batches(lengths, SPEED_BATCH, 0, bucket=False)}
    return {order: [pad_batch([sequences[i] for i in b], bundle.pad_id) for b in batches]
            for order, batches in orders.items()}


@torch.inference_mode()
def texts_per_second(model: Any, tensors: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    for ids, mask in tensors:  # warm-up: TorchScript specialises on its first calls per shape
        model(ids, mask)
    started = time.perf_counter()
    for ids, mask in tensors:
        model(ids, mask)
    return sum(int(ids.shape[0]) for ids, _ in tensors) / (time.perf_counter() - started)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def print_tables(results: list[dict[str, Any]], unlabeled: dict[str, Any] | None,
                 args: argparse.Namespace, load_before: tuple[float, ...],
                 load_after: tuple[float, ...], seconds: float) -> None:
    quick = " (QUICK: not the real figures)" if args.quick else ""
    print()
    print(f"## tagstream distillation benchmark{quick}")
    print()
    print("| dataset | metric | TF-IDF+LR | scratch small | student | distilled | teacher MiniLM | target | agreement | train s (scratch / distilled) |")
    print("|---|---|---:|---:|---|---:|---:|---|---:|---|")
    for r in results:
        key, target = TARGETS[r["dataset"]]
        for v in r["variants"]:
            ours = v["metrics"][key]
            ok = ours >= target and (key != "accuracy" or ours > r["baseline"][key])
            goal = f">= {target}" + (" and > TF-IDF" if key == "accuracy" else "")
            print(f"| {r['dataset']} | {key} | {r['baseline'][key]:.4f} | {r['scratch'][key]:.4f} |"
                  f" {v['variant']} | **{ours:.4f}** | {r['teacher'][key]:.4f} |"
                  f" {goal} ({'ok' if ok else 'MISSED'}) | {v['agreement_with_teacher']:.1%} |"
                  f" {r['scratch']['train_seconds']:.0f} / {v['train_seconds']:.0f} |")
    print()
    print("Students' settings:")
    for r in results:
        for v in r["variants"]:
            print(f"- {r['dataset']} {v['variant']}: {v['distillation']}, tokenizer {v['tokenizer']},"
                  f" rows {v['rows']}, epochs {v['epochs']}, flags {' '.join(v['argv'][v['argv'].index('--no-progress') + 1:])}")
    print()
    print(f"Model-only texts/s (pre-tokenized test texts, batch {SPEED_BATCH}; students best of"
          f" {SPEED_ROUNDS} alternating rounds on {SPEED_TEXTS} texts, teacher one round on"
          f" {TEACHER_SPEED_TEXTS}):")
    print()
    print("| dataset | order | scratch small | student | texts/s | student / scratch | teacher MiniLM |")
    print("|---|---|---:|---|---:|---:|---:|")
    for r in results:
        s = r["speed"]
        for v in r["variants"]:
            for order in ("sorted", "arrival"):
                ratio = s[v["variant"]]["vs_scratch"][order]
                print(f"| {r['dataset']} | {order} | {s['scratch'][order]:,} | {v['variant']} |"
                      f" {s[v['variant']][order]:,} | {ratio:.0%} ({'ok' if ratio >= SPEED_TARGET else 'MISSED'}"
                      f" >= {SPEED_TARGET:.0%}) | {s['teacher'][order]:,} |")
    if unlabeled:
        u = unlabeled
        print()
        print(f"Unlabeled text, AG News: {u['labeled_rows']} labeled rows, {u['unlabeled_rows']} rows"
              " with their labels held back; teacher fine-tuned on the labeled rows only:")
        print()
        print("| student | accuracy | macro-F1 |")
        print("|---|---:|---:|")
        for label, key in (("TF-IDF+LR (labeled rows)", "baseline"), ("scratch small (labeled rows)", "scratch"),
                           ("distilled, labeled rows only", "labeled_only"),
                           ("distilled, + held-back texts as --unlabeled", "with_unlabeled"),
                           ("teacher (labeled rows)", "teacher")):
            print(f"| {label} | {u[key]['accuracy']:.4f} | {u[key]['macro_f1']:.4f} |")
    print()
    print(f"{cpu_name()}, {os.cpu_count()} CPUs; load average before {load_before[0]:.2f}, after"
          f" {load_after[0]:.2f} (1-minute); {seconds / 60:.1f} min in all")


if __name__ == "__main__":
    sys.exit(main())
