"""``tagstream-train``: train, evaluate, predict, explain and inspect model bundles."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tagstream-train",
        description="Train a Transformer text classifier and export it as a tagstream bundle.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("train", "evaluate", "predict", "explain", "inspect"):
        p = sub.add_parser(name, help=f"{name} (not implemented yet)")
        p.set_defaults(func=_not_implemented)
    return parser


def _not_implemented(args: argparse.Namespace) -> int:
    print(f"tagstream-train {args.command}: not implemented yet", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
