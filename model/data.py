"""Reading labeled text: JSON Lines or CSV in, validated (text, label) pairs out.

    read_labeled(path, ...) -> LabeledData      one file; bad rows reported with file:line
    stratified_split(data, fraction, seed)       (train, validation), class proportions kept

Single- or multi-label: a row carries one label (``"label": "sports"``), or a set of tags
(``"labels": ["earn", "acq"]`` in JSONL, a delimited column ``earn|acq`` in CSV; an empty list or
cell is a row with no tags). ``multi_label=None`` detects which from the data: a JSON list, or a
CSV value containing the delimiter, makes the file multi-label; when the label field is the
default ``label`` and rows have none but have ``labels``, that field is used.

A row is *bad* when it cannot be parsed, has no text (missing, not a string, or blank), has no
label, or has a label outside an explicit label list. With ``on_bad="stop"`` the first bad row
raises ``DataError`` naming file and line; with ``on_bad="skip"`` (the default) bad rows are
dropped, counted and kept in ``LabeledData.bad_rows`` so the caller can log them.

Line numbers are 1-based and point at the physical line in the file (for CSV: the line where
the record ends, which is the line for every record without embedded newlines).
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from model.errors import DataError

OnBad = Literal["skip", "stop"]
FileFormat = Literal["jsonl", "csv"]

DEFAULT_LABEL_FIELD = "label"
MULTI_LABEL_FIELD = "labels"  # used for tag sets when rows have no DEFAULT_LABEL_FIELD
DEFAULT_DELIMITER = "|"  # between tags in one CSV cell

# How many bad rows an error message quotes before it says "and N more": enough to see the
# pattern, short enough to read in a terminal.
_QUOTED_BAD_ROWS = 5


@dataclass(frozen=True)
class BadRow:
    """One unusable row: where it is and why it was refused."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class LabeledData:
    """Texts and their labels, in file order, plus what was skipped on the way."""

    texts: list[str]
    labels: list[str]  # single-label: one per text; multi-label: empty (see tag_sets)
    source: str = ""
    bad_rows: list[BadRow] = field(default_factory=list)
    tag_sets: list[list[str]] | None = None  # multi-label: each text's tags (maybe none)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def multi_label(self) -> bool:
        return self.tag_sets is not None

    def label_counts(self) -> dict[str, int]:
        """Texts per label (multi-label: per tag; a text with two tags counts for both)."""
        if self.tag_sets is not None:
            return dict(sorted(Counter(t for tags in self.tag_sets for t in tags).items()))
        return dict(sorted(Counter(self.labels).items()))

    def subset(self, indices: Sequence[int]) -> LabeledData:
        return LabeledData(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices] if self.tag_sets is None else [],
            source=self.source,
            tag_sets=[self.tag_sets[i] for i in indices] if self.tag_sets is not None else None,
        )


def detect_format(path: Path) -> FileFormat:
    """``jsonl`` for .jsonl/.json/.ndjson, ``csv`` for .csv/.tsv; anything else is an error."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise DataError(
        f"{path}: cannot tell the format from the extension {suffix!r}; "
        "use .jsonl or .csv, or pass the format explicitly (--format jsonl|csv)"
    )


def read_labeled(
    path: str | Path,
    *,
    text_field: str = "text",
    label_field: str = "label",
    labels: Sequence[str] | None = None,
    on_bad: OnBad = "skip",
    file_format: FileFormat | None = None,
    multi_label: bool | None = None,
    label_delimiter: str = DEFAULT_DELIMITER,
) -> LabeledData:
    """Read one labeled file. ``labels``, when given, is the only set of labels accepted.

    ``multi_label``: True reads tag sets, False one label a row, None detects it (module
    docstring). ``label_delimiter`` splits a tag set written as one string (CSV cells).
    """
    src = Path(path)
    if not src.is_file():
        raise DataError(f"{src}: no such file")
    fmt = file_format or detect_format(src)
    allowed = set(labels) if labels is not None else None
    rows = list(_jsonl_rows(src) if fmt == "jsonl" else _csv_rows(src))
    records = [r for _, r, err in rows if err is None and isinstance(r, dict)]
    if label_field == DEFAULT_LABEL_FIELD and records and all(
        DEFAULT_LABEL_FIELD not in r for r in records
    ) and any(MULTI_LABEL_FIELD in r for r in records):
        label_field = MULTI_LABEL_FIELD
    if multi_label is None:
        multi_label = any(_looks_multi(r.get(label_field), label_delimiter) for r in records)

    texts: list[str] = []
    out_labels: list[str] = []
    tag_sets: list[list[str]] = []
    bad: list[BadRow] = []
    for line, record, parse_error in rows:
        if multi_label:
            reason = parse_error or _check_tagged(record, text_field, label_field, allowed, label_delimiter)
        else:
            reason = parse_error or _check_record(record, text_field, label_field, allowed)
        if reason is not None:
            row = BadRow(str(src), line, reason)
            if on_bad == "stop":
                raise DataError(f"bad row at {row} (pass --on-bad-row skip to skip such rows)")
            bad.append(row)
            continue
        assert record is not None
        texts.append(record[text_field])
        if multi_label:
            tag_sets.append(_tags(record[label_field], label_delimiter))
        else:
            out_labels.append(_label_str(record[label_field]))
    if not texts:
        detail = f"; {describe_bad_rows(bad)}" if bad else ""
        raise DataError(f"{src}: no usable rows{detail}")
    return LabeledData(texts=texts, labels=out_labels, source=str(src), bad_rows=bad,
                       tag_sets=tag_sets if multi_label else None)


def describe_bad_rows(bad: Sequence[BadRow]) -> str:
    """A one-paragraph summary: the count and the first few rows with file:line and reason."""
    if not bad:
        return "no bad rows"
    quoted = "; ".join(str(b) for b in bad[:_QUOTED_BAD_ROWS])
    more = f" (and {len(bad) - _QUOTED_BAD_ROWS} more)" if len(bad) > _QUOTED_BAD_ROWS else ""
    return f"{len(bad)} bad row(s) skipped: {quoted}{more}"


def stratified_split(
    data: LabeledData, fraction: float, seed: int
) -> tuple[LabeledData, LabeledData]:
    """Split into (train, validation), keeping each label's share in both.

    Each label contributes ``round(count * fraction)`` rows to validation, at least one when it
    has two or more rows, so rare classes (spam) are always represented. Same seed, same split.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be between 0 and 1, got {fraction}")
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(_strata(data)):
        by_label[label].append(i)
    rng = random.Random(seed)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        n_val = round(len(idx) * fraction)
        n_val = min(max(n_val, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val_idx.extend(idx[:n_val])
        train_idx.extend(idx[n_val:])
    if not val_idx:
        raise DataError(
            f"{data.source}: too few rows ({len(data)}) to hold out a validation split; "
            "give a validation file or more data"
        )
    # File order within each part: stable, and easy to compare between runs.
    return data.subset(sorted(train_idx)), data.subset(sorted(val_idx))


def _strata(data: LabeledData) -> list[str]:
    """What a split keeps proportions of: the label, or for tag sets each text's rarest tag
    (so a rare tag reaches validation whenever it has two or more texts)."""
    if data.tag_sets is None:
        return data.labels
    counts = data.label_counts()
    return [min(tags, key=lambda t: (counts[t], t)) if tags else "" for tags in data.tag_sets]


def infer_labels(data: LabeledData) -> list[str]:
    """The label list when none is given: every label (or tag) seen in training, sorted."""
    if data.tag_sets is not None:
        return sorted({t for tags in data.tag_sets for t in tags})
    return sorted(set(data.labels))


def _looks_multi(value: Any, delimiter: str) -> bool:
    return isinstance(value, list) or (bool(delimiter) and isinstance(value, str) and delimiter in value)


def _tags(value: Any, delimiter: str) -> list[str]:
    """A row's tags, in first-seen order, without repeats or blanks."""
    items = value if isinstance(value, list) else (value.split(delimiter) if delimiter else [value])
    return list(dict.fromkeys(s for s in (_label_str(x).strip() for x in items) if s))


def _check_tagged(
    record: dict[str, Any] | None, text_field: str, label_field: str, allowed: set[str] | None,
    delimiter: str,
) -> str | None:
    """Why this multi-label record cannot be used, or None when it can."""
    if not isinstance(record, dict):
        return f"expected an object with fields {text_field!r} and {label_field!r}"
    reason = _check_text(record, text_field)
    if reason is not None:
        return reason
    if label_field not in record or record[label_field] is None:
        return f"missing label field {label_field!r} (a list of tags; [] for none)"
    value = record[label_field]
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            return f"label field {label_field!r} holds a {type(item).__name__}, not a string or integer"
    if allowed is not None:
        unknown = [t for t in _tags(value, delimiter) if t not in allowed]
        if unknown:
            return f"tags {unknown} are not in the label list {sorted(allowed)}"
    return None


def _check_text(record: dict[str, Any], text_field: str) -> str | None:
    if text_field not in record or record[text_field] is None:
        return f"missing text field {text_field!r}"
    text = record[text_field]
    if not isinstance(text, str):
        return f"text field {text_field!r} is a {type(text).__name__}, not a string"
    if not text.strip():
        return f"text field {text_field!r} is empty"
    return None


def _label_str(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _check_record(
    record: dict[str, Any] | None, text_field: str, label_field: str, allowed: set[str] | None
) -> str | None:
    """Why this record cannot be used, or None when it can."""
    if not isinstance(record, dict):
        return f"expected an object with fields {text_field!r} and {label_field!r}"
    reason = _check_text(record, text_field)
    if reason is not None:
        return reason
    if label_field not in record or record[label_field] in (None, ""):
        return f"missing label field {label_field!r}"
    label = record[label_field]
    if isinstance(label, list):
        return f"label field {label_field!r} is a list: pass --multi-label for tag sets"
    # bool is an int subclass; true/false labels are almost always a wrong field.
    if isinstance(label, bool) or not isinstance(label, str | int):
        return f"label field {label_field!r} is a {type(label).__name__}, not a string or integer"
    if allowed is not None and _label_str(label) not in allowed:
        return f"label {_label_str(label)!r} is not in the label list {sorted(allowed)}"
    return None


RowIter = Iterator[tuple[int, dict[str, Any] | None, str | None]]


def _jsonl_rows(path: Path) -> RowIter:
    """(line number, record or None, parse error or None) for every non-blank line."""
    try:
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line), None
                except json.JSONDecodeError as exc:
                    yield line_no, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc


def _csv_rows(path: Path) -> RowIter:
    """(line number, record or None, parse error or None) for every CSV record after the header."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            try:
                header = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(f"{path}:1: cannot read the CSV header ({exc})") from exc
            header = [h.strip() for h in header]
            while True:
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield reader.line_num, None, f"not valid CSV ({exc})"
                    continue
                if not values or all(not v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    yield (
                        reader.line_num,
                        None,
                        f"has {len(values)} columns, the header has {len(header)}",
                    )
                    continue
                yield reader.line_num, dict(zip(header, values, strict=True)), None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc
