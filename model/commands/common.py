"""Options and small helpers shared by several ``tagstream-train`` commands."""

from __future__ import annotations

import argparse
from typing import Any

import structlog

from model.config import preset
from model.data import DEFAULT_DELIMITER
from model.errors import ModelError

log = structlog.get_logger("tagstream-train")


def small(part: str, field: str) -> str:
    """The `small` preset's value of a setting, for --help."""
    return f"small: {getattr(getattr(preset('small'), part), field)}"


def data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--text-field", default="text", help="field (JSONL) or column (CSV) holding the text (default: %(default)s)")
    g.add_argument("--label-field", default="label",
                   help="field or column holding the label, or the tags of a multi-label row (default: %(default)s;"
                        " rows without it that have 'labels' use that)")
    g.add_argument("--format", dest="file_format", choices=["jsonl", "csv"],
                   help="file format (default: from the extension: .jsonl/.json/.ndjson or .csv/.tsv)")
    g.add_argument("--on-bad-row", choices=["skip", "stop"], default="skip",
                   help="skip (and count, and log with file:line) or stop at the first bad row (default: %(default)s)")
    g.add_argument("--label-delimiter", default=DEFAULT_DELIMITER, metavar="CHAR",
                   help="between the tags of one multi-label CSV cell, e.g. earn|acq (default: %(default)s)")


def read_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``model.data.read_labeled`` that come from data_options."""
    return dict(text_field=args.text_field, label_field=args.label_field, on_bad=args.on_bad_row,
                file_format=args.file_format, label_delimiter=args.label_delimiter)


def given(**values: Any) -> dict[str, Any]:
    """Only the options the user set (None means: keep the preset's)."""
    return {k: v for k, v in values.items() if v is not None}


def split_labels(text: str | None) -> list[str] | None:
    if not text:
        return None
    labels = [x.strip() for x in text.split(",") if x.strip()]
    if len(set(labels)) != len(labels):
        raise ModelError(f"--labels lists a label twice: {text}")
    return labels


def report_bad_rows(data: Any) -> None:
    from model.data import describe_bad_rows

    if data.bad_rows:
        log.warning("bad_rows", file=data.source, skipped=len(data.bad_rows),
                    detail=describe_bad_rows(data.bad_rows))
