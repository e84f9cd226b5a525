"""A small labeled ham/spam set that tagstream writes itself, for demos on machines without
``../shared/datasets``. Texts are built from templates with a seeded generator, so every run
writes the same files; nothing is copied from any dataset.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

_SPAM = [
    "Congratulations! You have won a {prize}. Call {phone} now to claim it",
    "URGENT: your {account} account is suspended. Reply with your PIN to restore it",
    "FREE entry to win {cash} cash! Text WIN to {short} now",
    "You have been selected for a free {prize}. Txt YES to {short} to accept",
    "Claim your guaranteed {cash} loan today, no credit check, call {phone}",
    "Final notice: your {prize} is waiting. Visit {site} before midnight",
    "Hot singles in your area want to chat! Text CHAT to {short}. {cash} credit free",
    "Your {account} payment failed. Update your card at {site} to avoid charges",
]
_HAM = [
    "Are we still on for {meal} {day}?",
    "Running {minutes} minutes late, start without me",
    "Can you pick up {item} on the way home?",
    "Happy birthday {name}! Hope you have a great day",
    "The meeting moved to {time} in room {room}",
    "Thanks for {meal} {day}, it was lovely to see you",
    "Did you see the {team} game last night?",
    "I left the {item} on the kitchen table, {name}",
    "Call me when you get this, it's about {day}",
    "{name} says hi. We're at the {place} if you want to join",
]
_FILL = {
    "prize": ["cruise", "iPhone", "holiday for two", "gift card", "mobile upgrade", "laptop"],
    "phone": ["0800 123 456", "09061 701 461", "0871 277 810", "08712 300 220"],
    "account": ["bank", "PayPal", "mobile", "email", "Netflix"],
    "cash": ["£1000", "$500", "£250", "$2000", "£5000"],
    "short": ["80086", "87121", "85233", "69669"],
    "site": ["www.claim-now.biz", "bit.ly/win-now", "secure-update.co"],
    "meal": ["lunch", "dinner", "coffee", "breakfast", "drinks"],
    "day": ["tomorrow", "tonight", "on Friday", "this weekend", "next week", "on Sunday"],
    "minutes": ["5", "10", "15", "20"],
    "item": ["milk", "the keys", "bread", "my charger", "the parcel", "eggs"],
    "name": ["Sam", "Alex", "Priya", "Tom", "Maria", "Jo", "Chen"],
    "time": ["3pm", "10am", "noon", "4:30"],
    "room": ["B", "4", "12", "the big one"],
    "team": ["football", "rugby", "cricket", "basketball"],
    "place": ["pub", "park", "cafe", "cinema"],
}


def _fill(template: str, rng: random.Random) -> str:
    return template.format(**{key: rng.choice(values) for key, values in _FILL.items()})


def write_sample(folder: Path, n_train: int = 480, n_test: int = 160, seed: int = 7) -> Path:
    """Write ``train.jsonl`` and ``test.jsonl`` (about 1 in 4 spam) into ``folder``; return it."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train.jsonl", n_train), ("test.jsonl", n_test)):
        with (folder / name).open("w", encoding="utf-8") as out:
            for _ in range(count):
                label = "spam" if rng.random() < 0.25 else "ham"
                text = _fill(rng.choice(_SPAM if label == "spam" else _HAM), rng)
                out.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    return folder
