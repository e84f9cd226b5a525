"""Fine-tuning benchmark: all-MiniLM-L6-v2 on AG News and SMS spam, beside a TF-IDF baseline.

    .venv/bin/python bench/finetune_bench.py            # full run: ~25-40 min per dataset, 2 quiet cores
    .venv/bin/python bench/finetune_bench.py --quick    # smoke: 400/200-row slices, 1 epoch, ~3 min

For each dataset, in a child process of its own (so that its peak memory is its own):
  1. fine-tune through the real `tagstream-train train --init minilm` path with its defaults
     (plus DATASET_FLAGS and any flags given after --), exporting the fp32 bundle and scoring
     it on the full test file;
  2. export an int8 bundle from the same weights and score it too;
  3. train TF-IDF (word 1-2-grams) + logistic regression on the *same* training split (C picked
     on the same validation split; bench/train_bench.py's baseline), scored on the same test file;
  4. time the exported bundles end to end (tokenize + TorchScript forward, `Bundle.predict_proba`)
     on test texts in arrival order at batch 1, 8, 32 and 128, after one warm-up call per batch.

It prints accuracy / spam-class F1 beside the baseline, time per epoch, the fine-tuning wall
time, the peak resident memory (RSS) of the fine-tuning process, and texts/s per batch size.
Targets (issue #4), on a 2-core CPU: AG News accuracy >= 0.90 and >= 3 points above the
baseline; SMS spam F1 >= 0.96 and above the baseline; < 45 min per dataset.

On a shared machine, torch's OpenMP threads spin while waiting for a core another process
holds: here a training step took 5-6 s with 2 spinning threads and ~1.4 s with
`OMP_WAIT_POLICY=PASSIVE` (or `--threads 1`). Prefix the command with OMP_WAIT_POLICY=PASSIVE
when the machine is not quiet; the child processes inherit it.

Datasets come from ../shared/datasets (or --datasets / $TAGSTREAM_DATASETS) and are never
copied into the repository; without them the script says so and exits 0. The machine load is
printed with the table: timings are only as good as the quiet they were taken in.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

DEFAULT_DATASETS = ROOT.parent / "shared" / "datasets"
DATASETS = ("ag_news", "sms_spam")
SPEED_BATCH_SIZES = (1, 8, 32, 128)
SPEED_TEXTS = 512  # texts timed per batch size (each size sees the same texts)
QUICK_ROWS = {"train": 400, "test": 200}
QUICK_SPEED_TEXTS = 128  # one batch at the largest size
TARGET_MINUTES = 45.0

# Per-dataset flags on top of the fine-tuning defaults (3 epochs, lr 5e-5, 6% warmup, linear
# decay, batch 32, max length 128). SMS spam has 3.7k training texts, so 3 epochs are only ~350
# steps: on one GPU run over three seeds, spam F1 was 0.955-0.964 with 3 epochs and
# 0.964-0.968 with 4 (4 epochs of spam cost about 1.5 AG News epochs).
DATASET_FLAGS = {"ag_news": [], "sms_spam": ["--epochs", "4"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path,
                        default=Path(os.environ.get("TAGSTREAM_DATASETS", DEFAULT_DATASETS)),
                        help="folder holding ag_news/ and sms_spam/ (default: %(default)s)")
    parser.add_argument("--only", choices=DATASETS, help="run one dataset only")
    parser.add_argument("--init", default="minilm",
                        help="pretrained checkpoint: minilm or a folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_ROWS['train']} training / {QUICK_ROWS['test']} test"
                             " rows, 1 epoch, max length 64")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads; 0 = torch's default, all cores (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="training device (default: %(default)s)")
    parser.add_argument("--no-speed", action="store_true", help="skip the inference-speed table")
    parser.add_argument("--out", type=Path, help="keep runs and bundles here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("train_flags", nargs=argparse.REMAINDER,
                        help="after --: extra `tagstream-train train` flags, e.g. -- --epochs 2 --lr 3e-5")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one dataset, in-process
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    extra = [f for f in args.train_flags if f != "--"]
    if args.child:
        return run_child(args, extra)

    names = [args.only] if args.only else list(DATASETS)
    present = [n for n in names if (args.datasets / n / "train.jsonl").is_file()]
    for n in sorted(set(names) - set(present)):
        print(f"SKIPPED {n}: {args.datasets / n}/train.jsonl not found"
              " (see ../shared/datasets/README.md; pass --datasets DIR)")
    if not present:
        return 0
    load_before = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.2f} {load_before[1]:.2f}"
          f" {load_before[2]:.2f}; init {args.init}; quick {args.quick}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="tagstream-finetune-bench-") as tmp:
        work = (args.out or Path(tmp)).resolve()
        for name in present:
            result_file = work / f"{name}.result.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--child", name,
                       "--child-out", str(result_file), "--datasets", str(args.datasets),
                       "--init", args.init, "--threads", str(args.threads), "--device", args.device,
                       "--out", str(work)]
            command += ["--quick"] if args.quick else []
            command += ["--no-speed"] if args.no_speed else []
            command += ["--", *extra] if extra else []
            code = subprocess.call(command)
            if code != 0 or not result_file.is_file():
                print(f"[{name}] FAILED (exit code {code}); see the output above", flush=True)
                continue
            results.append(json.loads(result_file.read_text()))
    load_after = os.getloadavg()
    print_table(results, args, load_before, load_after)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "quick": args.quick, "init": args.init,
                                         "load_before": load_before, "load_after": load_after},
                                        indent=2))
    return 0 if len(results) == len(present) else 1


def run_child(args: argparse.Namespace, extra: list[str]) -> int:
    """One dataset: fine-tune, int8 export, baseline, speed; results as JSON to --child-out."""
    import torch

    from bench.train_bench import headline, sample_rows, tfidf_baseline
    from model import data as data_lib
    from model import evaluate as eval_lib
    from model import export as export_lib
    from model import train as train_lib
    from model.bundle import Bundle
    from model.cli import main as cli_main

    warnings.filterwarnings("ignore")  # torch.ao / TorchScript deprecation notices
    if args.threads:
        torch.set_num_threads(args.threads)
    name: str = args.child
    folder, work = args.datasets / name, args.out / name
    train_file, test_file = folder / "train.jsonl", folder / "test.jsonl"
    if args.quick:
        train_file = sample_rows(train_file, work / "train.jsonl", QUICK_ROWS["train"])
        test_file = sample_rows(test_file, work / "test.jsonl", QUICK_ROWS["test"])
        extra = ["--epochs", "1", "--max-length", "64", *extra]
    extra = [*DATASET_FLAGS[name], *extra]  # later flags win: --quick and the caller's override
    run_dir = work / "run"
    argv = ["--log-level", "warning", "train", "--train", str(train_file), "--test", str(test_file),
            "--out", str(run_dir), "--init", args.init, "--device", args.device,
            "--threads", str(args.threads), "--name", f"{name}-minilm", *extra]
    print(f"[{name}] tagstream-train {' '.join(argv[2:])}", flush=True)
    started = time.perf_counter()
    code = cli_main(argv)
    wall = time.perf_counter() - started
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    if code != 0:
        return code
    report = json.loads((run_dir / "report" / "report.json").read_text())
    training = json.loads((run_dir / "bundle" / "config.json").read_text())["training"]
    labels = json.loads((run_dir / "bundle" / "labels.json").read_text())

    # The same split the CLI made (same seed and fraction), for the baseline and int8 parity.
    seed = training["train_config"]["seed"]
    train_split, val_split = data_lib.stratified_split(data_lib.read_labeled(train_file), 0.1, seed)
    test = data_lib.read_labeled(test_file, labels=labels)

    model, tokenizer, _ = train_lib.load_trained(run_dir / "checkpoint.pt")
    int8 = export_lib.export_bundle(model, tokenizer, labels, run_dir / "bundle-int8",
                                    parity_texts=val_split.texts, name=f"{name}-minilm-int8",
                                    precision="int8")
    int8_bundle = Bundle.load(int8.path)
    int8_probs = eval_lib.predict_probs(int8_bundle.model, int8_bundle.tokenizer, test.texts,
                                        max_length=int8_bundle.max_length)
    int8_metrics = eval_lib.compute_metrics(test.labels, [labels[i] for i in int8_probs.argmax(1)],
                                            labels)
    baseline = tfidf_baseline(name, train_split, val_split, test, labels)

    speed = {}
    if not args.no_speed:
        texts = test.texts[: QUICK_SPEED_TEXTS if args.quick else SPEED_TEXTS]
        for key, path in (("fp32", run_dir / "bundle"), ("int8", int8.path)):
            speed[key] = bundle_speed(Bundle.load(path), texts)
            print(f"[{name}] {key} bundle texts/s by batch size: {speed[key]}", flush=True)

    history = report["history"]
    result = {
        "dataset": name,
        "argv": argv[2:],
        "rows": {"train": len(train_split), "validation": len(val_split), "test": len(test)},
        "model": headline(name, report["metrics"]),
        "model_int8": headline(name, int8_metrics),
        "baseline": baseline,
        "epoch_seconds": [round(h["seconds"], 1) for h in history],
        "epochs_run": len(history),
        "best_epoch": training["best_epoch"],
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak_rss_mb),
        "peak_gpu_mb": round(peak_gpu_mb) if peak_gpu_mb is not None else None,
        "device": training["device"],
        "max_length": json.loads((run_dir / "bundle" / "config.json").read_text())["tokenizer"]["max_length"],
        "train_config": training["train_config"],
        "speed_texts_per_s": speed,
    }
    print(f"[{name}] model {result['model']}  int8 {result['model_int8']}  baseline {baseline}"
          f"  epochs {result['epoch_seconds']}s  wall {result['wall_seconds']}s"
          f"  peak RSS {result['peak_rss_mb']} MB", flush=True)
    args.child_out.write_text(json.dumps(result, indent=2))
    return 0


def bundle_speed(bundle: Any, texts: list[str]) -> dict[str, float]:
    """End-to-end texts/s of ``Bundle.predict_proba`` at each batch size, texts in arrival order."""
    out = {}
    for size in SPEED_BATCH_SIZES:
        batches = [texts[i:i + size] for i in range(0, len(texts) - size + 1, size)]
        if not batches:
            continue
        bundle.predict_proba(batches[0])  # warm-up: TorchScript specialises on its first calls
        started = time.perf_counter()
        for batch in batches:
            bundle.predict_proba(batch)
        elapsed = time.perf_counter() - started
        out[str(size)] = round(sum(len(b) for b in batches) / elapsed, 1)  # str: JSON keys
    return out


def print_table(results: list[dict[str, Any]], args: argparse.Namespace,
                load_before: tuple[float, ...], load_after: tuple[float, ...]) -> None:
    print()
    print(f"## tagstream fine-tuning benchmark: --init {args.init}{' (QUICK: not the real figures)' if args.quick else ''}")
    print()
    print("| dataset | metric | ours fp32 | ours int8 | TF-IDF+LR | target | s/epoch | wall min | peak RSS MB |")
    print("|---|---|---:|---:|---:|---|---|---:|---:|")
    for r in results:
        spam = r["dataset"] == "sms_spam"
        key = "spam_f1" if spam else "accuracy"
        ours, base = r["model"][key], r["baseline"][key]
        ok = (ours >= 0.96 and ours > base) if spam else (ours >= 0.90 and ours - base >= 0.03)
        target = ">= 0.96 and > baseline" if spam else ">= 0.90 and >= baseline + 0.03"
        minutes = r["wall_seconds"] / 60
        print(f"| {r['dataset']} | {'spam F1' if spam else 'accuracy'} | {ours:.4f} | {r['model_int8'][key]:.4f} |"
              f" {base:.4f} | {target} ({'ok' if ok else 'MISSED'}) |"
              f" {', '.join(f'{s:.0f}' for s in r['epoch_seconds'])} |"
              f" {minutes:.1f} ({'ok' if minutes < TARGET_MINUTES else 'MISSED'}) | {r['peak_rss_mb']} |")
    speeds = [(r["dataset"], p, r["speed_texts_per_s"][p]) for r in results
              for p in ("fp32", "int8") if r["speed_texts_per_s"].get(p)]
    if speeds:
        print()
        print("Exported bundle, end to end (tokenize + model), test texts in arrival order, texts/s:")
        print()
        print("| bundle | " + " | ".join(f"batch {b}" for b in SPEED_BATCH_SIZES) + " |")
        print("|---|" + "---:|" * len(SPEED_BATCH_SIZES))
        for dataset, precision, by_size in speeds:
            cells = [f"{by_size[str(b)]:,.1f}" if str(b) in by_size else "-" for b in SPEED_BATCH_SIZES]
            print(f"| {dataset} {precision} | " + " | ".join(cells) + " |")
    print()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1-minute);"
          f" {os.cpu_count()} CPUs; device {results[0]['device'] if results else '?'}")


if __name__ == "__main__":
    sys.exit(main())
