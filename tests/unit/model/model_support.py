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


def tagged_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows {"text", "labels"}: one or two TOPICS per text (their words mixed), a few none."""
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    rows = []
    for i in range(n):
        tags = [] if i % 10 == 9 else sorted(rng.sample(topics, 1 if i % 3 else 2))
        pool = [w for t in tags for w in TOPICS[t]]
        words = [rng.choice(pool if pool and rng.random() < 0.5 else FILLER) for _ in range(rng.randint(6, 24))]
        rows.append({"text": " ".join(words).capitalize() + ".", "labels": tags})
    return rows


# Chinese (unspaced) topic words: the same three topics, written the way Chinese is, no spaces.
ZH_TOPICS = {
    "sports": ["比赛", "球队", "进球", "教练", "联赛", "冠军", "球员", "裁判"],
    "finance": ["股票", "市场", "银行", "投资", "利率", "利润", "债券", "股价"],
    "weather": ["下雨", "暴风", "天气", "预报", "温度", "大雪", "晴朗", "洪水"],
}
ZH_FILLER = ["今天", "我们", "这个", "报道", "新的", "以后", "已经", "非常", "一个"]


def chinese_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` rows {"text", "label"} of unspaced Chinese, cycling through ZH_TOPICS."""
    rng = random.Random(seed)
    labels = sorted(ZH_TOPICS)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = [rng.choice(ZH_TOPICS[label] if rng.random() < 0.5 else ZH_FILLER) for _ in range(rng.randint(4, 16))]
        rows.append({"text": "".join(words) + "。", "label": label})
    return rows
