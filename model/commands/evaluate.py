"""``tagstream-train evaluate``: score a bundle on a labeled file (single- or multi-label)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from model.commands.common import data_options, log, read_options, report_bad_rows


def add_parser(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="score a bundle on a labeled file",
                       description="Score a bundle on a labeled file; print the summary and optionally write a report."
                                   " Texts are read as the bundle says (its truncation strategy); a multi-label"
                                   " bundle is scored at its own thresholds (micro/macro-F1, exact match, per label).")
    p.add_argument("bundle", type=Path, help="bundle folder")
    p.add_argument("--data", required=True, type=Path, metavar="FILE", help="labeled JSONL or CSV")
    p.add_argument("--out", type=Path, metavar="DIR", help="write report.json, report.md and plots here")
    p.add_argument("--batch-size", type=int, default=64, help="texts per model call (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    data_options(p)
    p.set_defaults(func=cmd_evaluate)


def bundle_metrics(bundle: Any, data: Any, probs: Any) -> dict[str, Any]:
    """Metrics of a bundle's probabilities on labeled data, by the bundle's task."""
    from model import evaluate as eval_lib
    from model.multilabel import multi_hot, multilabel_metrics

    if bundle.multi_label:
        return multilabel_metrics(probs, multi_hot(data.tag_sets, bundle.labels), bundle.thresholds,
                                  bundle.labels)
    return eval_lib.compute_metrics(data.labels, [bundle.labels[i] for i in probs.argmax(1)], bundle.labels)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model import data as data_lib
    from model import evaluate as eval_lib
    from model.bundle import Bundle

    bundle = Bundle.load(args.bundle)
    data = data_lib.read_labeled(args.data, labels=bundle.labels, multi_label=bundle.multi_label,
                                 **read_options(args))
    report_bad_rows(data)
    probs = eval_lib.predict_probs(bundle.model, bundle.tokenizer, data.texts, max_length=bundle.max_length,
                                   batch_size=args.batch_size, truncation=bundle.truncation,
                                   multi_label=bundle.multi_label)
    metrics = bundle_metrics(bundle, data, probs)
    if args.out:
        paths = eval_lib.write_report(
            args.out, metrics, title=f"{bundle.name} {bundle.version} on {args.data}",
            extra={"bundle": {"path": str(bundle.path), "name": bundle.name, "version": bundle.version,
                              "precision": bundle.precision, "task": bundle.task,
                              "truncation": bundle.truncation.strategy},
                   "data": {"file": str(args.data), "rows": len(data), "bad_rows": len(data.bad_rows)}},
        )
        log.info("report", markdown=str(paths["markdown"]))
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{bundle.name} {bundle.version} on {args.data}: {eval_lib.headline(metrics)}  ({metrics['n']} texts)")
        print_per_class(metrics)
    return 0


def print_per_class(metrics: dict[str, Any]) -> None:
    for label, c in metrics["per_class"].items():
        threshold = f"  at {c['threshold']:.2f}" if "threshold" in c else ""
        print(f"  {label:<20} P {c['precision']:.3f}  R {c['recall']:.3f}  F1 {c['f1']:.3f}  n {c['support']}{threshold}")
