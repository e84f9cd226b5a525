"""End to end: train `tiny` on a fixture written here, export, and reload the bundle in a fresh
process that has only torch and tokenizers (no project code) to get the same predictions."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from model.bundle import Bundle
from model.cli import main

TOPICS = {
    "sports": ["match", "goal", "team", "coach", "league", "score", "season", "player", "cup", "referee", "striker", "win"],
    "finance": ["stocks", "market", "bank", "shares", "profit", "investors", "rates", "earnings", "bond", "trade", "fund"],
    "weather": ["rain", "storm", "forecast", "sunny", "wind", "snow", "cloudy", "temperature", "flood", "heat", "frost"],
}
FILLER = ["the", "a", "today", "after", "before", "new", "report", "says", "with", "on", "in", "big", "local", "said"]


def write_fixture(path: Path, n: int, seed: int) -> Path:
    """``n`` JSON lines of topical sentences: a labeled set nobody has to download."""
    rng = random.Random(seed)
    labels = sorted(TOPICS)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            label = labels[i % len(labels)]
            words = [rng.choice(TOPICS[label] if rng.random() < 0.5 else FILLER)
                     for _ in range(rng.randint(4, 24))]
            f.write(json.dumps({"text": " ".join(words).capitalize() + ".", "label": label}) + "\n")
    return path


# Runs with `python -I` in a fresh process: standard library, torch and tokenizers only.
STANDALONE_READER = textwrap.dedent('''
    import hashlib, json, sys
    from pathlib import Path

    import torch
    from tokenizers import Tokenizer

    root, texts = Path(sys.argv[1]), json.loads(sys.argv[2])
    manifest = json.loads((root / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name
    labels = json.loads((root / "labels.json").read_text())
    tok_cfg = json.loads((root / "config.json").read_text())["tokenizer"]
    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    tok.enable_truncation(max_length=tok_cfg["max_length"])
    tok.enable_padding(pad_id=tok_cfg["pad_id"], pad_token=tok_cfg["pad_token"])
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
    model = torch.jit.load(str(root / "model.ts"), map_location="cpu").eval()
    with torch.inference_mode():
        probs = model(ids, mask)
    project = sorted(m for m in sys.modules if m == "model" or m.startswith(("model.", "worker")))
    print(json.dumps({"labels": labels, "probs": probs.tolist(), "project_modules": project}))
''')

TEXTS = [
    "Heavy rain and a storm forecast for the weekend.",
    "The striker scored a late goal to win the cup.",
    "Bank shares fell as investors sold stocks.",
    "Local report says frost and snow after the heat.",
    "",  # empty text: the model must still answer
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    train = write_fixture(root / "train.jsonl", 300, seed=1)
    test = write_fixture(root / "test.jsonl", 90, seed=2)
    before = torch.get_num_threads()
    code = main(["--log-level", "warning", "train", "--train", str(train), "--test", str(test),
                 "--out", str(root / "run"), "--preset", "tiny", "--no-progress", "--threads", "1"])
    torch.set_num_threads(before)
    assert code == 0
    return root / "run"


def test_train_writes_bundle_report_and_checkpoint(trained):
    """`train` leaves the bundle, the report with plots, the checkpoint and the tokenizer."""
    for rel in ("bundle/model.ts", "bundle/manifest.json", "report/report.md",
                "report/report.json", "report/confusion_matrix.png", "report/training_curves.png",
                "checkpoint.pt", "tokenizer.json"):
        assert (trained / rel).is_file(), rel
    report = json.loads((trained / "report" / "report.json").read_text())
    assert report["metrics"]["n"] == 90
    assert report["metrics"]["accuracy"] > 0.8  # topics are easy; tiny must learn them


def test_fresh_process_without_project_code_gets_the_same_predictions(trained, tmp_path):
    """A `python -I` process reading the bundle files with torch+tokenizers agrees within 1e-5."""
    bundle = Bundle.load(trained / "bundle")
    expected = bundle.predict_proba(TEXTS)
    script = tmp_path / "read_bundle.py"
    script.write_text(STANDALONE_READER)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    proc = subprocess.run(
        [sys.executable, "-I", str(script), str(trained / "bundle"), json.dumps(TEXTS)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["project_modules"] == []
    assert result["labels"] == bundle.labels
    got = torch.tensor(result["probs"])
    assert (got - expected).abs().max() <= 1e-5
    assert got.argmax(1).tolist() == expected.argmax(1).tolist()
    assert [bundle.labels[i] for i in got.argmax(1)[:3]] == ["weather", "sports", "finance"]


@pytest.mark.slow
def test_torchrun_ddp_on_cpu_trains_and_exports(tmp_path):
    """`torchrun --nproc_per_node 2` runs the unchanged CLI data-parallel (gloo) and exports once."""
    train = write_fixture(tmp_path / "train.jsonl", 300, seed=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "model.cli", "--log-level", "warning", "train", "--train", str(train),
         "--out", str(tmp_path / "run"), "--preset", "tiny", "--device", "cpu", "--no-progress"],
        capture_output=True, text=True, timeout=240, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = Bundle.load(tmp_path / "run" / "bundle")
    assert bundle.config["training"]["world_size"] == 2
    assert "validation accuracy" in proc.stdout
    assert proc.stdout.count("bundle: ") == 1  # only rank 0 reports and exports
