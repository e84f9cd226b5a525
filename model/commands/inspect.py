"""``tagstream-train inspect``: what a bundle holds, verified."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("inspect", help="what a bundle contains",
                       description="Verify a bundle's checksums and print its name, version, task, labels,"
                                   " truncation, vocabulary coverage, model and metrics.")
    p.add_argument("bundle", type=Path, help="bundle folder")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the checksum verification")
    p.set_defaults(func=cmd_inspect)


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
        "format": manifest.get("format"),
        "verified": not args.no_verify,
        "created_at": bundle.config.get("created_at"),
        "precision": bundle.precision,
        "task": bundle.task,
        "labels": bundle.labels,
        "thresholds": bundle.thresholds,
        "truncation": bundle.truncation.to_dict(),
        "vocab_coverage": bundle.config.get("vocab_coverage"),
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
    print(f"name     {info['name']}   version {info['version']}   format {info['format']}   "
          f"({'checksums verified' if info['verified'] else 'NOT verified'})")
    print(f"created  {info['created_at']}   precision {info['precision']}")
    print(f"task     {info['task']}")
    if bundle.multi_label:
        print("labels   " + ", ".join(f"{x} (>= {t:.2f})" for x, t in zip(bundle.labels, bundle.thresholds, strict=True)))
    else:
        print(f"labels   {', '.join(info['labels'])}")
    print(f"tokens   max_length {info['tokenizer'].get('max_length')}   lowercase {info['tokenizer'].get('lowercase')}"
          f"   vocab {model.get('vocab_size')}")
    print(f"reading  {describe_truncation(bundle.truncation)}")
    coverage = info["vocab_coverage"]
    if coverage:
        print(f"coverage {coverage_line(coverage)}")
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
                 if not isinstance(v, dict | list)}
        print("metrics  " + "   ".join(f"{k} {v}" for k, v in shown.items()))
    print("files")
    for name, f in files.items():
        print(f"  {name:<16} {f['bytes']:>10,} bytes  sha256 {f['sha256'][:16]}…")
    print(f"  {MANIFEST_FILE}")
    return 0


def describe_truncation(t: Any) -> str:
    if t.strategy == "head":
        return "head: the first max_length tokens of each text"
    if t.strategy == "head+tail":
        return f"head+tail: the first {t.head_tokens} and the last tokens of each text, one window"
    return (f"chunks: windows every {t.stride} tokens, at most {t.max_windows} a text,"
            f" {t.pooling}-pooled probabilities")


def coverage_line(c: dict[str, Any]) -> str:
    line = (f"{c.get('tokenizer')}: {c.get('unk_share', 0):.2%} of tokens unknown,"
            f" {c.get('mostly_unknown_share', 0):.1%} of texts mostly unknown ({c.get('sample')} texts)")
    checked = c.get("pretrained_check")
    if checked:
        line += (f"; {checked.get('tokenizer')} measured {checked.get('unk_share', 0):.2%}"
                 f" (threshold {checked.get('threshold', 0):.0%}): {c.get('decision', '')}")
    return line
