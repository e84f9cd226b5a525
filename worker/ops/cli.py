"""``tagstream-worker dlq stats|redrive`` and ``tagstream-worker rewind``: argparse and output.

Exit codes: 0 done, 2 a wrong argument or setting, 4 Kafka (unreachable, refused, a topic
missing, a record not acknowledged), 5 refused because the group has active members,
130 interrupted (a redrive resumes when run again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_GROUP_ACTIVE = 5
EXIT_INTERRUPTED = 130

_EPILOG = (
    "Settings: the worker's own (TAGSTREAM_* variables or --config FILE): brokers, credentials,"
    " group, input topics and input parsing; TAGSTREAM_BUNDLE_PATH is not needed.\n"
    "exit codes: 0 done, 2 argument or setting, 4 Kafka, 5 group has active members, 130 interrupted"
)


def add_ops_commands(sub: argparse._SubParsersAction) -> None:
    """Register `dlq` (stats, redrive) and `rewind` on the tagstream-worker parser."""
    _add_dlq(sub)
    _add_rewind(sub)


def _parser(sub: Any, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=description, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="YAML or JSON settings file (or TAGSTREAM_CONFIG_FILE)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object instead of text")
    return p


def _add_dlq(sub: argparse._SubParsersAction) -> None:
    dlq = sub.add_parser(
        "dlq", help="dead letters: count them, re-publish them once the cause is fixed",
        description="Inspect and redrive dead-letter topics.",
    )
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    stats = _parser(
        dlq_sub, "stats", "count a dead-letter topic's records by reason, source partition and age",
        "Read a dead-letter topic from its start to its current end (no consumer group, nothing"
        " changes) and print counts by reason, by source topic and partition, the oldest and newest,"
        " and how many are truncated copies of oversized inputs.",
    )
    stats.add_argument("--from", dest="dlq_topics", metavar="TOPIC", action="append", required=True,
                       help="dead-letter topic to read (repeatable), e.g. events.dlq")
    stats.set_defaults(func=_dlq_stats)

    redrive = _parser(
        dlq_sub, "redrive", "re-publish dead letters (resumable; skips those that would fail again)",
        "Re-publish dead letters with their original key, bytes and headers (minus tagstream's"
        " dead-letter headers, plus tagstream.redriven_from: TOPIC/PARTITION/OFFSET) to --to, or to"
        " the topic each came from. Progress is committed in a consumer group of its own after each"
        " record is acknowledged: run the same command again to resume an interrupted redrive."
        " Records the worker's parser would dead-letter again (invalid UTF-8, invalid JSON, ...) are"
        " skipped unless --force; truncated copies of oversized inputs are never redriven.",
    )
    redrive.add_argument("--from", dest="dlq_topic", metavar="TOPIC", required=True, help="the dead-letter topic, e.g. events.dlq")
    redrive.add_argument("--to", metavar="TOPIC", help="where to publish (default: each record's source topic, from tagstream.source.topic)")
    redrive.add_argument("--reason", action="append", default=[], metavar="R",
                         help="only dead letters with this reason (repeatable), e.g. inference_failed")
    redrive.add_argument("--since", metavar="T",
                         help="only records dead-lettered at or after T: ISO 8601 (UTC unless a zone is given) or a duration back from now (24h)")
    redrive.add_argument("--limit", type=int, metavar="N", help="stop after re-publishing N records (run again to continue)")
    redrive.add_argument("--dry-run", action="store_true", help="read and count only: nothing is sent or committed")
    redrive.add_argument("--force", action="store_true", help="also re-publish records that would fail again")
    redrive.add_argument("--group", help="consumer group for the progress (default: derived from --from and the selection, printed)")
    redrive.set_defaults(func=_dlq_redrive)


def _add_rewind(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub, "rewind", "move the worker group's offsets back to a time (replay, e.g. after a model update)",
        "Move the worker group's committed offsets back to the first record at or after a time"
        " (the broker's offsets_for_times), so the workers classify those records again with the"
        " model they serve now. Offsets never move forward. Refuses while the group has active"
        " members (--dry-run may preview while they run): stop the workers first (the message says how). Example after promoting a"
        " bundle: tagstream-worker rewind --by 24h",
    )
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--to", metavar="DATETIME", help="ISO 8601, UTC unless a zone is given, e.g. 2026-11-24T08:00")
    when.add_argument("--by", metavar="DURATION", help="this long before now, e.g. 90m, 24h, 7d")
    p.add_argument("--topic", action="append", metavar="T",
                   help="input topic to rewind (repeatable; default: TAGSTREAM_INPUT_TOPICS, or the group's topics matching TAGSTREAM_INPUT_PATTERN)")
    p.add_argument("--group", help="consumer group (default: TAGSTREAM_GROUP_ID)")
    p.add_argument("--dry-run", action="store_true", help="print the plan; commit nothing (allowed while the workers run)")
    p.set_defaults(func=_rewind)


# -- settings ---------------------------------------------------------------------------------


def _given(name: str, config: str | None) -> bool:
    """Whether a setting is set in the environment or the config file."""
    from worker.settings import CONFIG_FILE_ENV, _read_config_file, env_name

    if any(k.upper() == env_name(name) for k in os.environ):
        return True
    path = config or os.environ.get(CONFIG_FILE_ENV)
    return path is not None and name in _read_config_file(Path(path))


def load_ops_settings(config: str | None) -> Any:
    """The worker's settings, without the ones operations never use.

    The bundle path is not needed (nothing loads a model); without input topics or a pattern the
    dead-letter commands still work (rewind then needs --topic).
    """
    from worker.settings import load_settings

    placeholders: dict[str, Any] = {}
    if not _given("bundle_path", config):
        placeholders["bundle_path"] = Path(os.devnull)
    if not (_given("input_topics", config) or _given("input_pattern", config)):
        placeholders["input_pattern"] = "(?!)"  # matches no topic
    return load_settings(config, **placeholders)


def _run(args: argparse.Namespace, body: Any) -> int:
    """Load settings, run ``body(settings)``, map errors to exit codes once."""
    from worker.errors import SettingsError, WorkerError
    from worker.ops.errors import GroupActiveError, UsageError

    prog = f"tagstream-worker {args.command}"
    try:
        settings = load_ops_settings(args.config)
    except SettingsError as exc:
        for line in str(exc).splitlines():
            print(f"{prog}: invalid setting: {line}", file=sys.stderr)
        return 2
    try:
        return int(body(settings))
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except GroupActiveError as exc:
        print(f"{prog}: refused: {exc}", file=sys.stderr)
        return EXIT_GROUP_ACTIVE
    except WorkerError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code


def _emit(args: argparse.Namespace, result: Any) -> None:
    if args.json:
        print(json.dumps(result.as_dict(), indent=None))
    else:
        print(result.render())


def _dlq_stats(args: argparse.Namespace) -> int:
    from worker.ops.dlq import dlq_stats

    def body(settings: Any) -> int:
        for topic in dict.fromkeys(args.dlq_topics):
            _emit(args, dlq_stats(settings, topic, progress=True))
        return 0

    return _run(args, body)


def _dlq_redrive(args: argparse.Namespace) -> int:
    from worker.ops.errors import UsageError
    from worker.ops.redrive import Selection, check_reasons, redrive
    from worker.ops.timespec import parse_since, to_ms

    def body(settings: Any) -> int:
        if args.limit is not None and args.limit < 1:
            raise UsageError("--limit must be at least 1")
        selection = Selection(
            dlq_topic=args.dlq_topic, to_topic=args.to, reasons=check_reasons(args.reason), since=args.since,
            since_ms=to_ms(parse_since(args.since)) if args.since else None, force=args.force,
        )
        report = redrive(settings, selection, limit=args.limit, dry_run=args.dry_run, group=args.group, progress=True)
        _emit(args, report)
        return EXIT_INTERRUPTED if report.interrupted else 0

    return _run(args, body)


def _rewind(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from worker.ops.errors import UsageError
    from worker.ops.rewind import rewind
    from worker.ops.timespec import parse_datetime, parse_duration, to_ms

    def body(settings: Any) -> int:
        when = parse_datetime(args.to) if args.to else datetime.now(UTC) - parse_duration(args.by)
        if when > datetime.now(UTC):
            raise UsageError(f"--to {args.to}: that is in the future; rewind moves offsets back to a past time")
        if not args.topic and not settings.input_topics and settings.input_pattern == "(?!)":
            raise UsageError("which topics? set TAGSTREAM_INPUT_TOPICS (or _INPUT_PATTERN) as for the worker, or give --topic")
        report = rewind(settings, to_ms=to_ms(when), group=args.group, topics=args.topic, dry_run=args.dry_run)
        _emit(args, report)
        return 4 if report.errors else 0

    return _run(args, body)
