"""Reading labeled files: bad rows with file:line, skip or stop, label lists, stratified split."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from model.data import (
    LabeledData,
    describe_bad_rows,
    infer_labels,
    read_labeled,
    stratified_split,
)
from model.errors import DataError

JSONL = "\n".join([
    json.dumps({"text": "good one", "label": "a"}),              # 1
    "{not json",                                                # 2
    json.dumps({"label": "a"}),                                 # 3 no text
    "",                                                         # 4 blank: ignored
    json.dumps({"text": "   ", "label": "b"}),                  # 5 empty text
    json.dumps({"text": "no label"}),                           # 6
    json.dumps({"text": "odd label", "label": "zzz"}),          # 7 outside the list
    json.dumps(["a", "list"]),                                  # 8 not an object
    json.dumps({"text": "numeric label", "label": 1}),          # 9 int -> "1"
    json.dumps({"text": "good two", "label": "b"}),             # 10
]) + "\n"


def test_jsonl_bad_rows_are_reported_with_file_and_line(tmp_path):
    """Each bad JSONL row is skipped and reported with its file, 1-based line and reason."""
    path = tmp_path / "train.jsonl"
    path.write_text(JSONL, encoding="utf-8")
    data = read_labeled(path, labels=["a", "b", "1"])
    assert data.texts == ["good one", "numeric label", "good two"]
    assert data.labels == ["a", "1", "b"]
    assert [(b.line, b.file) for b in data.bad_rows] == [(n, str(path)) for n in (2, 3, 5, 6, 7, 8)]
    reasons = {b.line: b.reason for b in data.bad_rows}
    assert "not valid JSON" in reasons[2]
    assert "missing text" in reasons[3]
    assert "empty" in reasons[5]
    assert "missing label" in reasons[6]
    assert "'zzz' is not in the label list" in reasons[7]
    assert str(data.bad_rows[0]).startswith(f"{path}:2: ")


def test_stop_raises_at_the_first_bad_row(tmp_path):
    """With on_bad='stop' the first bad row raises DataError naming file:line."""
    path = tmp_path / "train.jsonl"
    path.write_text(JSONL, encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON"):
        read_labeled(path, on_bad="stop")


def test_csv_with_custom_fields_and_bad_rows(tmp_path):
    """CSV columns are chosen by name; short rows and empty texts are reported with their line."""
    path = tmp_path / "sms.csv"
    path.write_text(
        'class,message\nham,"hello, there"\nspam\nspam,"WIN cash\nnow"\nham,\nham,ok\n',
        encoding="utf-8",
    )
    data = read_labeled(path, text_field="message", label_field="class")
    assert data.texts == ["hello, there", "WIN cash\nnow", "ok"]
    assert data.labels == ["ham", "spam", "ham"]
    assert [(b.line, "columns" in b.reason or "empty" in b.reason) for b in data.bad_rows] == [
        (3, True), (6, True)
    ]


def test_missing_file_and_unknown_extension(tmp_path):
    """A missing file or an unknown extension is a DataError saying what to do."""
    with pytest.raises(DataError, match="no such file"):
        read_labeled(tmp_path / "nope.jsonl")
    odd = tmp_path / "data.txt"
    odd.write_text("x\n")
    with pytest.raises(DataError, match="--format"):
        read_labeled(odd)


def test_no_usable_rows_is_an_error(tmp_path):
    """A file whose every row is bad raises DataError that quotes the bad rows."""
    path = tmp_path / "bad.jsonl"
    path.write_text("{oops\n{again\n")
    with pytest.raises(DataError, match=r"no usable rows.*bad\.jsonl:1"):
        read_labeled(path)


def test_describe_bad_rows_quotes_a_few_and_counts_the_rest(tmp_path):
    """The summary quotes the first five bad rows and counts the others."""
    path = tmp_path / "t.jsonl"
    path.write_text("".join("{bad\n" for _ in range(8)) + '{"text": "x", "label": "a"}\n')
    text = describe_bad_rows(read_labeled(path).bad_rows)
    assert text.startswith("8 bad row(s) skipped")
    assert "and 3 more" in text


def _data(counts: dict[str, int]) -> LabeledData:
    labels = [label for label, n in counts.items() for _ in range(n)]
    return LabeledData(texts=[f"text {i}" for i in range(len(labels))], labels=labels, source="mem")


def test_stratified_split_keeps_proportions_and_is_seeded():
    """Each label keeps its share in validation (rare ones at least 1); same seed, same split."""
    data = _data({"ham": 880, "spam": 120, "rare": 3})
    train, val = stratified_split(data, 0.1, seed=5)
    assert Counter(val.labels) == {"ham": 88, "spam": 12, "rare": 1}
    assert len(train) + len(val) == len(data)
    assert not set(train.texts) & set(val.texts)
    again_train, again_val = stratified_split(data, 0.1, seed=5)
    assert again_val.texts == val.texts and again_train.texts == train.texts
    _, other_val = stratified_split(data, 0.1, seed=6)
    assert other_val.texts != val.texts


def test_infer_labels_sorted():
    """Without a label list, labels are every one seen, sorted."""
    assert infer_labels(_data({"b": 1, "a": 2})) == ["a", "b"]


# ------------------------------------------------------------------------------ multi-label


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_tag_lists_are_detected_from_the_labels_field(tmp_path):
    """Rows with "labels": [...] (and no "label") read as tag sets; an empty list is a row with no tags."""
    path = _jsonl(tmp_path / "t.jsonl", [
        {"text": "oil and wheat", "labels": ["crude", "grain"]},
        {"text": "nothing to tag", "labels": []},
        {"text": "profit up", "labels": ["earn", "earn"]},
    ])
    data = read_labeled(path)
    assert data.multi_label and data.labels == []
    assert data.tag_sets == [["crude", "grain"], [], ["earn"]]
    assert infer_labels(data) == ["crude", "earn", "grain"]
    assert data.label_counts() == {"crude": 1, "earn": 1, "grain": 1}


def test_csv_delimited_tags_are_detected(tmp_path):
    """A CSV cell with the delimiter makes the file multi-label; other cells become one tag."""
    path = tmp_path / "t.csv"
    path.write_text("body,tags\noil and wheat,crude|grain\nprofit up,earn\n", encoding="utf-8")
    data = read_labeled(path, text_field="body", label_field="tags")
    assert data.tag_sets == [["crude", "grain"], ["earn"]]
    data = read_labeled(path, text_field="body", label_field="tags", label_delimiter=";")
    assert not data.multi_label and data.labels == ["crude|grain", "earn"]


def test_forced_modes_and_bad_tag_rows(tmp_path):
    """--single-label refuses list values; tags outside the label list are bad rows with line numbers."""
    path = _jsonl(tmp_path / "t.jsonl", [
        {"text": "a", "label": ["x", "y"]},
        {"text": "b", "label": ["x", "zzz"]},
        {"text": "c", "label": [True]},
    ])
    with pytest.raises(DataError, match="pass --multi-label"):
        read_labeled(path, multi_label=False, on_bad="stop")
    data = read_labeled(path, labels=["x", "y"])
    assert data.tag_sets == [["x", "y"]]
    assert [(b.line, "zzz" in b.reason or "bool" in b.reason) for b in data.bad_rows] == [(2, True), (3, True)]


def test_tag_split_puts_rare_tags_into_validation(tmp_path):
    """The split stratifies on each text's rarest tag: a tag on only 2 texts reaches validation."""
    rows = [{"text": f"common {i}", "labels": ["common"]} for i in range(60)]
    rows += [{"text": f"rare {i}", "labels": ["common", "rare"]} for i in range(2)]
    data = read_labeled(_jsonl(tmp_path / "t.jsonl", rows))
    train, val = stratified_split(data, 0.1, seed=3)
    assert val.multi_label and "rare" in val.label_counts() and "rare" in train.label_counts()
    assert len(train) + len(val) == 62
