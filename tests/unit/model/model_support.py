"""Helpers shared by the model/ unit tests: synthetic labeled texts and tiny configs."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from model.config import EncoderConfig, preset

# Each topic has its own words, plus a shared filler vocabulary, so a tiny model separates
# them in a second or two yet still has to look past the common words.
TOPICS = {
    "sports": ["match", "goal", "team", "coach", "league", "score", "season", "player", "cup", "referee"],
    "finance": ["stocks", "market", "bank", "shares", "profit", "investors", "rates", "earnings", "bond", "trade"],
    "weather": ["rain", "storm", "forecast", "sunny", "wind", "snow", "cloudy", "temperature", "flood", "heat"],
}
FILLER = ["the", "a", "today", "after", "before", "new", "report", "says", "with", "on", "in", "big", "local"]


def synthetic_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` rows {"text", "label"} cycling through TOPICS; texts of 4 to 20 words."""
    rng = random.Random(seed)
    labels = sorted(TOPICS)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = [rng.choice(TOPICS[label] if rng.random() < 0.5 else FILLER)
                 for _ in range(rng.randint(4, 20))]
        rows.append({"text": " ".join(words).capitalize() + ".", "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_config(vocab_size: int, **changes) -> EncoderConfig:
    base = preset("tiny").encoder
    return dataclasses.replace(base, vocab_size=vocab_size, n_classes=3, **changes)
