"""``tagstream-train``: train, evaluate, predict, explain and inspect model bundles.

    tagstream-train train    --train FILE [--test FILE] --out DIR    train, evaluate, export
    tagstream-train evaluate BUNDLE --data FILE [--out DIR]          score a bundle on labeled data
    tagstream-train predict  BUNDLE [TEXT ...]                       JSON lines; stdin without TEXT
    tagstream-train explain  BUNDLE TEXT [--png FILE]                tokens that mattered, and why
    tagstream-train inspect  BUNDLE [--json]                         what a bundle holds
    tagstream-train distill  --teacher BUNDLE --train FILE --out DIR a fast student of a fine-tuned bundle

Each command lives in ``model/commands/`` (one module per command group); this module builds
the parser from them, configures logging and maps errors to exit codes.

Exit status: 0 success, 1 a ModelError (the message says what to fix), 2 bad usage.
Under ``torchrun`` the ``train`` command runs data-parallel with no other change.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import structlog

from model.commands import distill, evaluate, inspect, train, use
from model.errors import ModelError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tagstream-train",
        description=(
            "Train a Transformer text classifier or tagger on labeled JSONL/CSV and export it as a"
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
    train.add_parser(sub)
    evaluate.add_parser(sub)
    use.add_predict_parser(sub)
    use.add_explain_parser(sub)
    inspect.add_parser(sub)
    distill.add_parser(sub)
    return parser


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
