"""Reading unlabeled text, for a teacher to label (``tagstream-train distill --unlabeled``).

    read_texts(path, text_field=...) -> TextData

Accepted: JSON Lines with the text in ``text_field`` (any label field is ignored), CSV/TSV with
a header and that column, or plain text (``.txt``), one text per line. Blank texts are skipped
silently in plain text (they are just empty lines) and counted as bad rows elsewhere, with
``file:line: reason`` as in ``model/data.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from model.data import BadRow, OnBad, _csv_rows, _jsonl_rows, detect_format
from model.errors import DataError


@dataclass
class TextData:
    """Texts in file order, and the rows that could not be used."""

    texts: list[str]
    source: str
    bad_rows: list[BadRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def read_texts(
    path: str | Path, *, text_field: str = "text", on_bad: OnBad = "skip"
) -> TextData:
    """Every usable text of ``path`` (JSONL, CSV/TSV, or .txt one per line)."""
    src = Path(path)
    if not src.is_file():
        raise DataError(f"{src}: no such file")
    if src.suffix.lower() == ".txt":
        try:
            lines = src.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"{src}: not UTF-8 text ({exc})") from exc
        texts = [line for line in lines if line.strip()]
        if not texts:
            raise DataError(f"{src}: no texts (one text per line expected)")
        return TextData(texts, str(src))
    rows = _jsonl_rows(src) if detect_format(src) == "jsonl" else _csv_rows(src)
    texts = []
    bad: list[BadRow] = []
    for line, record, parse_error in rows:
        reason = parse_error
        if reason is None:
            value = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(record, dict):
                reason = f"expected an object with a field {text_field!r}"
            elif not isinstance(value, str) or not value.strip():
                reason = f"no text in field {text_field!r}"
            else:
                texts.append(value)
                continue
        row = BadRow(str(src), line, reason)
        if on_bad == "stop":
            raise DataError(f"bad row at {row} (pass --on-bad-row skip to skip such rows)")
        bad.append(row)
    if not texts:
        raise DataError(f"{src}: no usable texts in field {text_field!r}")
    return TextData(texts, str(src), bad)
