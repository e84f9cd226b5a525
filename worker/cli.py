"""``tagstream-worker``: the streaming worker and the local development broker.

    tagstream-worker run      consume, classify, publish (the long-running worker)
    tagstream-worker check    print resolved settings, reach the broker, verify the bundle
    tagstream-worker kafka    start/stop/show a local single-node Kafka broker (development)
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tagstream-worker",
        description="Classify text events from Kafka with a tagstream model bundle.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_commands(sub)
    _add_kafka_commands(sub)
    return parser


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    # Filled in by the worker (issue 5): `run` and `check`.
    for name, text in (
        ("run", "consume, classify and publish until stopped (not implemented yet)"),
        ("check", "validate settings, reach the broker and verify the bundle (not implemented yet)"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(func=_not_implemented)


def _add_kafka_commands(sub: argparse._SubParsersAction) -> None:
    # `kafka up|down|status|fetch`: the local development broker (worker/localkafka/cli.py).
    from worker.localkafka.cli import add_kafka_commands

    add_kafka_commands(sub)


def _not_implemented(args: argparse.Namespace) -> int:
    print(f"tagstream-worker {args.command}: not implemented yet", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
