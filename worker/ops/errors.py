"""The operations commands' own errors (Kafka and settings errors are the worker's, worker/errors.py).

    UsageError          an argument cannot be used (a time, a reason, a limit): exit 2
    GroupActiveError    the consumer group has active members, so its offsets stay: exit 5
"""

from __future__ import annotations

from typing import Any


class UsageError(ValueError):
    """A command-line value that cannot be used; the message says what is accepted."""


class GroupActiveError(Exception):
    """The group has active members; the message names them and how to stop them."""

    def __init__(self, group: str, members: list[dict[str, Any]], message: str) -> None:
        self.group = group
        self.members = members
        super().__init__(message)
