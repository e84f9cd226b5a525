"""``tagstream-train predict`` and ``explain``: a bundle on new texts.

predict prints one JSON object per text. Single-label bundles: ``{"text", "label", "score",
"scores"}`` as always. Multi-label bundles: ``{"text", "labels", "scores"}`` where ``labels`` are
the tags at or over their thresholds (possibly none), most probable first. Bundles that read a
text as several windows (``chunks``) add ``"windows"``: how many were read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from model.errors import ModelError

# Lines of stdin handed to the model at once by `predict`: large enough for efficient batches,
# small enough that results stream out while input is still arriving.
PREDICT_CHUNK_LINES = 256


def add_predict_parser(sub: Any) -> None:
    p = sub.add_parser(
        "predict", help="label texts: one JSON line each",
        description="Label texts given as arguments, or one per line on stdin. Prints one JSON object"
                    ' per text: {"text", "label", "score", "scores"}; for a multi-label bundle'
                    ' {"text", "labels", "scores"}, labels being every tag at or over its threshold.',
        epilog="example: echo 'Stocks fall on oil fears' | tagstream-train predict runs/news/bundle",
    )
    p.add_argument("bundle", type=Path, help="bundle folder")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to label (default: read lines from stdin)")
    p.add_argument("--top-k", type=int, default=0, help="keep only the k best scores; 0 = all labels (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per model call (default: %(default)s)")
    p.set_defaults(func=cmd_predict)


def add_explain_parser(sub: Any) -> None:
    p = sub.add_parser(
        "explain", help="which tokens mattered for one text",
        description="Print the prediction (every tag over its threshold for a multi-label bundle) and the"
                    " tokens that mattered most for a label by attention x gradient, with attention rollout"
                    " beside it; draw a heatmap PNG of attention per layer and both scores. Special tokens"
                    " are left out of the scaling and the ranking.",
    )
    p.add_argument("bundle", type=Path, help="bundle folder")
    p.add_argument("text", help="the text to explain")
    p.add_argument("--label", metavar="NAME", help="the label to explain (default: the most probable)")
    p.add_argument("--png", type=Path, default=Path("explain.png"), metavar="FILE", help="heatmap file (default: %(default)s)")
    p.add_argument("--top", type=int, default=10, help="tokens to list (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.set_defaults(func=cmd_explain)


def cmd_predict(args: argparse.Namespace) -> int:
    from model import evaluate as eval_lib
    from model.bundle import Bundle

    bundle = Bundle.load(args.bundle)
    windowed = bundle.truncation.windowed
    chunks: Iterator[list[str]] = iter([args.texts]) if args.texts else _stdin_chunks()
    for texts in chunks:
        probs = eval_lib.predict_probs(bundle.model, bundle.tokenizer, texts, max_length=bundle.max_length,
                                       batch_size=args.batch_size, truncation=bundle.truncation,
                                       multi_label=bundle.multi_label)
        counts = [len(w) for w in bundle.windower.windows(texts)] if windowed else [1] * len(texts)
        tags = bundle.tags(probs) if bundle.multi_label else None
        for i, (text, row) in enumerate(zip(texts, probs, strict=True)):
            ranked = sorted(zip(bundle.labels, row.tolist(), strict=True), key=lambda x: -x[1])
            if args.top_k > 0:
                ranked = ranked[: args.top_k]
            scores = {k: round(v, 6) for k, v in ranked}
            if tags is not None:
                on = sorted(tags[i], key=lambda j: -row[j])
                out: dict[str, Any] = {"text": text, "labels": [bundle.labels[j] for j in on], "scores": scores}
            else:
                out = {"text": text, "label": ranked[0][0], "score": round(ranked[0][1], 6), "scores": scores}
            if windowed:
                out["windows"] = counts[i]
            print(json.dumps(out, ensure_ascii=False), flush=True)
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


def cmd_explain(args: argparse.Namespace) -> int:
    from model.bundle import Bundle
    from model.explain import explain_text, format_explanation, plot_explanation

    bundle = Bundle.load(args.bundle)
    if not hasattr(bundle.model, "explain"):
        raise ModelError(f"bundle {bundle.path} was exported without the explain method; re-export it")
    if args.label is not None and args.label not in bundle.labels:
        raise ModelError(f"--label {args.label}: not one of the bundle's labels {bundle.labels}")
    explanation = explain_text(
        bundle.model.explain, bundle.tokenizer, args.text, bundle.labels,
        max_length=bundle.max_length, pooling=str(bundle.config.get("model", {}).get("pooling", "mean")),
        truncation=bundle.truncation, thresholds=bundle.thresholds if bundle.multi_label else None,
        target=args.label, gradients=bundle.precision != "int8",
    )
    png = plot_explanation(explanation, args.png)
    if args.json:
        print(json.dumps({**explanation.to_dict(), "heatmap": str(png)}, indent=2, ensure_ascii=False))
    else:
        print(format_explanation(explanation, top=args.top))
        print(f"heatmap: {png}")
    return 0
