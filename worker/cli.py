"""``tagstream-worker``: the streaming worker and the local development broker.

tagstream-worker run      consume, classify, publish (the long-running worker)
tagstream-worker check    print resolved settings, reach the broker, verify the bundle
tagstream-worker kafka    start/stop/show a local single-node Kafka broker (development)
tagstream-worker dlq      dead letters: stats, redrive (worker/ops/)
tagstream-worker rewind   move the worker group's offsets back to a time (worker/ops/)
"""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tagstream-worker",
        description="Classify text events from Kafka with a tagstream model bundle.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_commands(sub)
    _add_kafka_commands(sub)
    _add_ops_commands(sub)
    return parser


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    # `run` and `check` (issue 5). Heavy imports (torch, kafka) stay inside the commands.
    epilog = _settings_help()
    commands = (
        ("run", _run, "consume, classify and publish until stopped (SIGTERM/SIGINT drain and exit 0)",
         "Consume text events from Kafka, classify them in micro-batches with the model"
         " bundle, and publish one result per input. Settings come from TAGSTREAM_* environment"
         " variables and an optional config file (environment wins)."),
        ("check", _check,
         "print the resolved settings, reach the broker, verify the bundle; exit 0 when all is well",
         "Print the resolved settings (secrets masked), verify and load the bundle, check the"
         " settings against it, connect to the broker and look for the input topics. Exits 0 when"
         " the worker could start, non-zero (with the reason) otherwise."),
    )
    for name, func, help_text, description in commands:
        command = sub.add_parser(
            name, help=help_text, description=description, epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_argument("--config", metavar="FILE", help="YAML or JSON settings file (or TAGSTREAM_CONFIG_FILE)")
        command.set_defaults(func=func)


def _settings_help() -> str:
    from worker.settings import WorkerSettings, env_name

    lines = ["settings (environment variable, default: what it trades off):"]
    for name, field in WorkerSettings.model_fields.items():
        default = "required" if field.is_required() else field.get_default(call_default_factory=True)
        if default in (None, [], {}):
            default = "unset"
        lines.append(f"  {env_name(name)} ({default}): {field.description}")
    lines.append("")
    lines.append("exit codes: 0 stopped cleanly, 1 internal error, 2 settings, 3 model bundle, 4 Kafka")
    return "\n".join(lines)


def _load(args: argparse.Namespace) -> object:
    from worker.errors import SettingsError
    from worker.settings import load_settings

    try:
        return load_settings(args.config)
    except SettingsError as exc:
        for line in str(exc).splitlines():
            print(f"tagstream-worker: invalid setting: {line}", file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    settings = _load(args)
    if settings is None:
        return 2
    # HF tokenizers hands each encode_batch to a pool of threads as large as the machine, which
    # spin before they sleep: for the few texts of a poll that flash-tokenizer leaves to it, that
    # pool cost 2 µs an event in all (the null bundle's Kafka path), more than its work. A worker
    # scales by processes (TAGSTREAM_PROCESSES), so it tokenizes on the calling thread; the feeder
    # and model processes inherit this. Set TOKENIZERS_PARALLELISM=true to have the pool back.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from worker.errors import SettingsError
    from worker.procs.plan import feeder_count

    try:
        feeders = feeder_count(settings)  # type: ignore[arg-type]
    except SettingsError as exc:
        print(f"tagstream-worker: invalid setting: {exc}", file=sys.stderr)
        return 2
    if feeders > 1:  # TAGSTREAM_PROCESSES: feeder processes around one model process (worker/procs/)
        from worker.procs.supervisor import run_pod

        return run_pod(settings, feeders)  # type: ignore[arg-type]
    import signal

    from worker.app import Worker, exit_past_stuck_threads
    from worker.errors import WorkerError
    from worker.telemetry import configure_logging, get_logger

    configure_logging(settings.log_level, settings.log_format)  # type: ignore[attr-defined]
    log = get_logger("tagstream.worker")
    worker = Worker(settings)  # type: ignore[arg-type]
    signals = {"count": 0}

    def on_signal(signum: int, _frame: object) -> None:
        signals["count"] += 1
        if signals["count"] > 1:  # a second signal: stop now (safe: nothing unacknowledged is committed)
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            os._exit(130)
        log.info("signal", signal=signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.start()
    except WorkerError as exc:
        log.error("cannot_start", kind=exc.failure.label, error=str(exc), exit_code=exc.exit_code)
        print(f"tagstream-worker: {exc}", file=sys.stderr)
        return exc.exit_code
    code = worker.wait()
    if worker.fatal is not None:
        print(f"tagstream-worker: {worker.fatal}", file=sys.stderr)
    code = 0 if code is None else code
    exit_past_stuck_threads(code)
    # The last line before the interpreter's own teardown: a stop that took 16-17 s from signal to
    # exit in CI had finished its drain and closes 0.2 s after the signal (see test_lifecycle).
    log.info("exiting", exit_code=code)
    return code


def _check(args: argparse.Namespace) -> int:
    settings = _load(args)
    if settings is None:
        return 2
    from worker.check import run_check

    return run_check(settings)  # type: ignore[arg-type]


def _add_kafka_commands(sub: argparse._SubParsersAction) -> None:
    # `kafka up|down|status|fetch`: the local development broker (localkafka/cli.py).
    from localkafka.cli import add_kafka_commands

    add_kafka_commands(sub)


def _add_ops_commands(sub: argparse._SubParsersAction) -> None:
    # `dlq stats|redrive` and `rewind`: day-2 operations (worker/ops/cli.py).
    from worker.ops.cli import add_ops_commands

    add_ops_commands(sub)


def _not_implemented(args: argparse.Namespace) -> int:
    print(f"tagstream-worker {args.command}: not implemented yet", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
