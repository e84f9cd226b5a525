"""The README says what the failure table says (issue 10, finding 6)."""

from __future__ import annotations

import re
from pathlib import Path

from worker.errors import Failure

README = Path(__file__).resolve().parents[3] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ )", text, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def test_the_readme_lists_every_dead_letter_reason_and_skip():
    """The README's bad-input section names every dead-letter reason (tombstones, whitespace text...) and skip."""
    text = section("Bad input and failures")
    per_record = [f for f in Failure if f.action.value in ("dead_letter", "skip")]
    missing = [f.label for f in per_record if f"`{f.label}`" not in text]
    assert missing == [], f"README's 'Bad input and failures' does not name {missing}"
    assert "tombstone" in text and "whitespace" in text


def test_a_missing_input_topic_is_not_blamed_on_auto_creation():
    """The worker never creates its inputs, whatever the broker's auto-creation setting says."""
    meaning = Failure.TOPIC_MISSING.meaning
    assert "auto-creation is off" not in meaning and "never creates inputs" in meaning
