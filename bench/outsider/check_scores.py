"""The results an outsider run read back, set against the bundle run offline (not a test).

    python bench/outsider/check_scores.py RUN_DIR BUNDLE [SAMPLE]

RUN_DIR is an outsider run's folder (``in/valid.tsv``: the inputs kcat wrote; ``out.jsonl``: the
results kcat read back). For the first SAMPLE input ids (2,000 by default), the result must carry
the label or tags, the top score and (bundles read in windows) the windows that
``model.bundle.Bundle`` gives offline for the same text: what a pod of feeder processes or a single
worker must agree on whatever the bundle. Prints the mismatches and exits 1 if there are any.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from model.bundle import Bundle

SCORE_TOLERANCE = 1e-4  # float32 padding and batching differences only


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print(__doc__)
        return 2
    run, bundle = Path(sys.argv[1]), Bundle.load(sys.argv[2])
    sample = int(sys.argv[3]) if len(sys.argv) == 4 else 2000
    texts = {}
    for line in (run / "in" / "valid.tsv").open(errors="replace"):
        value = json.loads(line.split("\t", 1)[1])
        texts[value["id"]] = value["text"]
    results = {}
    for line in (run / "out.jsonl").open():
        result = json.loads(line)
        results[result["id"]] = result
    ids = sorted(i for i in texts if i in results)[:sample]
    batch = [texts[i] for i in ids]
    probs = bundle.predict_proba(batch).numpy()
    windows = [len(w) for w in bundle.windower.windows(batch)] if bundle.truncation.strategy != "head" else None
    bad = []
    for n, event_id in enumerate(ids):
        result = results[event_id]
        if bundle.multi_label:
            over = [j for j in range(len(bundle.labels)) if probs[n, j] >= bundle.thresholds[j]]
            want = [bundle.labels[j] for j in sorted(over, key=lambda j: -probs[n, j])]
            got = [tag["label"] for tag in result.get("labels", [])]
        else:
            want, got = bundle.labels[int(probs[n].argmax())], result.get("label")
        if got != want or abs(result["top_k"][0]["score"] - float(probs[n].max())) > SCORE_TOLERANCE:
            bad.append(f"{event_id}: got {got}, offline {want}")
        elif windows is not None and result.get("windows") != windows[n]:
            bad.append(f"{event_id}: read as {result.get('windows')} windows, offline {windows[n]}")
    spread = f"; windows an input: {dict(enumerate(np.bincount(windows).tolist()))}" if windows else ""
    tagged = f"; inputs with tags: {sum(bool(results[i]['labels']) for i in ids)}" if bundle.multi_label else ""
    print(f"checked {len(ids)} results against the bundle offline: {len(bad)} mismatches{spread}{tagged}")
    for line in bad[:10]:
        print("  " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
