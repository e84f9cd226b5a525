"""Input for the outsider runs (single.sh, pod.sh), as kcat reads it (``-K'\\t'``: key, tab, value):

    python bench/outsider/make_input.py EVENTS DATASETS OUT_DIR

valid.tsv   EVENTS AG News texts from DATASETS/ag_news/train.jsonl (cycled), ids e0..e{EVENTS-1}, 97 keys;
            TEXTS=reuters_tags (or any dataset folder's name) takes them from DATASETS/TEXTS/train.jsonl
            instead: Reuters news, long enough to be read in several windows
hostile.tsv 12 records that must become dead letters: 10 hostile JSON values, one that is not UTF-8, and
            one of 200 KB (the runs set TAGSTREAM_MAX_PAYLOAD_BYTES=100000)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HOSTILE = [
    "not json at all",
    '{"id": "h1"}',  # no text
    '{"id": "h2", "text": 5}',  # text not a string
    "[1, 2, 3]",  # not an object
    "null",
    '{"id": "h3", "text": "   "}',  # empty text
    "[" * 5000 + "]" * 5000,  # nested too deeply
    '{"id": "h4", "text": "truncated',
    '{"id": "h5", "text": "a", "x": 1,}',  # trailing comma
    '{"id": "h6", "text": "\\ud800 lone surrogate"}',  # half a UTF-16 pair: JSON syntax, no character
]


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    events, datasets, out = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    name = os.environ.get("TEXTS", "ag_news")
    source = datasets / name / "train.jsonl"
    if not source.is_file():
        print(f"{source} not found: set DATASETS to the folder holding {name}/", file=sys.stderr)
        return 2
    texts = [json.loads(line)["text"] for line in source.open()]
    with (out / "valid.tsv").open("w") as valid:
        for i in range(events):
            valid.write(f"k{i % 97}\t{json.dumps({'id': f'e{i}', 'text': texts[i % len(texts)]})}\n")
    with (out / "hostile.tsv").open("wb") as hostile:
        for i, value in enumerate(HOSTILE):
            hostile.write(f"h{i}\t{value}\n".encode())
        hostile.write(b'bin\t\xff\xfe{"id": "h7", "text": "\xc3\x28"}\n')  # not UTF-8
        hostile.write(("big\t" + json.dumps({"id": "big", "text": "word " * 40_000}) + "\n").encode())
    print(f"{events} valid records, {len(HOSTILE) + 2} hostile ones, in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
