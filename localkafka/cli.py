"""``tagstream-worker kafka up|down|status|fetch``: a local development broker from the shell."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

from localkafka import daemon, procs
from localkafka.config import ScramUser
from localkafka.errors import LocalKafkaError
from localkafka.jars import cached_jars, fetch_jars, kafka_version

DESCRIPTION = f"""\
A real Apache Kafka {kafka_version()} broker (KRaft, one node) on 127.0.0.1 for development,
run from jars that Maven fetches once from Maven Central (needs Java 17+; Maven only for the
first fetch). `up` leaves it running in the background; `down` stops it."""


def add_kafka_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``kafka`` and its sub-commands to the ``tagstream-worker`` parser."""
    kafka = sub.add_parser(
        "kafka",
        help="start/stop/show a local single-node Kafka broker (development)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = kafka.add_subparsers(dest="kafka_command", required=True, title="actions")

    p = actions.add_parser(
        "up",
        help="start the broker in the background and wait until it is ready",
        description="Start the broker in the background (fresh data each time) and wait until "
        "it answers. Does nothing when one with the same options is already running. "
        "--tls makes a throwaway CA and a broker certificate for 127.0.0.1/localhost with the "
        "JDK's keytool; clients trust the CA file it prints (TAGSTREAM_SSL_CAFILE).",
    )
    p.add_argument(
        "--port",
        type=int,
        default=daemon.DEFAULT_PORT,
        help="PLAINTEXT client port on 127.0.0.1 (default: %(default)s, the worker's default; 0 picks a free one)",
    )
    p.add_argument(
        "--scram",
        action="store_true",
        help="also open a SASL_PLAINTEXT listener with SCRAM-SHA-256 and SCRAM-SHA-512",
    )
    p.add_argument(
        "--scram-port",
        type=int,
        default=daemon.DEFAULT_SCRAM_PORT,
        help="SCRAM listener port (default: %(default)s)",
    )
    p.add_argument(
        "--scram-user",
        default=daemon.DEFAULT_SCRAM_USER.name,
        help="SCRAM user created at start (default: %(default)s)",
    )
    p.add_argument(
        "--scram-password",
        default=daemon.DEFAULT_SCRAM_USER.password,
        help="its password (default: %(default)s; the broker only listens on loopback)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="also open an SSL listener (and, with --scram, a SASL_SSL one) with throwaway "
        "certificates",
    )
    p.add_argument(
        "--ssl-port",
        type=int,
        default=daemon.DEFAULT_SSL_PORT,
        help="SSL listener port (default: %(default)s)",
    )
    p.add_argument(
        "--sasl-ssl-port",
        type=int,
        default=daemon.DEFAULT_SASL_SSL_PORT,
        help="SASL_SSL listener port, with --tls --scram (default: %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long to wait for the broker to be ready (default: 60)",
    )
    p.set_defaults(func=_reporting_errors(_up))

    p = actions.add_parser(
        "down",
        help="stop the background broker and delete its data",
        description="Stop the background broker (SIGTERM, then SIGKILL after "
        "--timeout) and delete its data; its log is kept.",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=procs.STOP_GRACE_S,
        metavar="SECONDS",
        help="grace period for a clean shutdown (default: %(default)s)",
    )
    p.set_defaults(func=_reporting_errors(_down))

    p = actions.add_parser(
        "status",
        help="show the background broker and whether it answers",
        description="Show the background broker: pid, addresses, log, and "
        "whether it answers a metadata request. Exit status 0 when it answers, "
        "1 otherwise.",
    )
    p.add_argument("--json", action="store_true", help="print the recorded state as JSON")
    p.set_defaults(func=_reporting_errors(_status))

    p = actions.add_parser(
        "fetch",
        help="fetch the Kafka jars into the cache (once)",
        description="Fetch the pinned Kafka jars from Maven Central into the "
        "cache folder (needs Maven). `up` and the tests do this by themselves.",
    )
    p.add_argument("--refresh", action="store_true", help="fetch again even when cached")
    p.set_defaults(func=_reporting_errors(_fetch))


def _reporting_errors(
    action: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """Run ``action``; a LocalKafkaError becomes ``error: <message>`` on stderr and exit 1."""

    def run(args: argparse.Namespace) -> int:
        # kafka-python logs every refused connection; our own messages say what matters.
        kafka_log = logging.getLogger("kafka")
        kafka_log.addHandler(logging.NullHandler())
        kafka_log.propagate = False
        try:
            return action(args)
        except LocalKafkaError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def _progress() -> Callable[[int], None]:
    """Announce a fetch (count 0), then show Maven's download count on one line (on a terminal)."""
    tty = sys.stderr.isatty()

    def show(count: int) -> None:
        if count == 0:
            print(
                f"Fetching the Kafka {kafka_version()} jars from Maven Central (once, about 45 MB)...",
                file=sys.stderr,
            )
        elif tty:
            print(f"\r  {count} files downloaded", end="", file=sys.stderr, flush=True)

    return show


def _end_progress() -> None:
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr, flush=True)  # erase the download count


def _up(args: argparse.Namespace) -> int:
    try:
        user = ScramUser(args.scram_user, args.scram_password)
    except ValueError as exc:
        raise LocalKafkaError(str(exc)) from exc
    began = time.monotonic()
    state, started = daemon.up(
        port=args.port,
        scram=args.scram,
        scram_port=args.scram_port,
        scram_user=user,
        tls=args.tls,
        ssl_port=args.ssl_port,
        sasl_ssl_port=args.sasl_ssl_port,
        ready_timeout_s=args.timeout,
        fetch_progress=_progress(),
    )
    _end_progress()
    if started:
        print(
            f"Kafka {state.kafka_version} broker ready in {time.monotonic() - began:.1f} s "
            f"(JVM start to ready {state.startup_s:.1f} s)"
        )
    else:
        print(f"Kafka {state.kafka_version} broker already running")
    _print_state(state)
    _print_worker_settings(state)
    print("  stop:       tagstream-worker kafka down")
    return 0


def _print_state(state: daemon.BrokerState) -> None:
    print(f"  bootstrap:  {state.bootstrap_servers}   (PLAINTEXT)")
    if state.sasl_bootstrap_servers:
        print(
            f"  SCRAM:      {state.sasl_bootstrap_servers}   (SASL_PLAINTEXT, "
            f"{' or '.join(state.scram_mechanisms)}; user {state.scram_user}, "
            f"password {state.scram_password})"
        )
    if state.ssl_bootstrap_servers:
        print(
            f"  SSL:        {state.ssl_bootstrap_servers}   (SSL; clients trust the CA in "
            f"{state.ssl_cafile})"
        )
    if state.sasl_ssl_bootstrap_servers:
        print(
            f"  SASL_SSL:   {state.sasl_ssl_bootstrap_servers}   (SASL_SSL, "
            f"{' or '.join(state.scram_mechanisms)}; the SCRAM user above, the CA above)"
        )
    print(f"  pid:        {state.pid}")
    print(f"  log:        {state.log_path}")
    print(f"  data:       {state.data_dir}")


def _print_worker_settings(state: daemon.BrokerState) -> None:
    """The worker's settings for the most secure listener, ready to paste into a shell."""
    if state.sasl_ssl_bootstrap_servers:
        protocol, servers = "SASL_SSL", state.sasl_ssl_bootstrap_servers
    elif state.ssl_bootstrap_servers:
        protocol, servers = "SSL", state.ssl_bootstrap_servers
    elif state.sasl_bootstrap_servers:
        protocol, servers = "SASL_PLAINTEXT", state.sasl_bootstrap_servers
    else:
        return  # PLAINTEXT: the worker's defaults already point at 127.0.0.1:9092
    settings = [f"TAGSTREAM_BOOTSTRAP_SERVERS={servers}", f"TAGSTREAM_SECURITY_PROTOCOL={protocol}"]
    if protocol.endswith("SSL"):
        settings.append(f"TAGSTREAM_SSL_CAFILE={state.ssl_cafile}")
    if protocol.startswith("SASL_"):
        settings += [
            f"TAGSTREAM_SASL_MECHANISM={state.scram_mechanisms[-1]}",
            f"TAGSTREAM_SASL_USERNAME={state.scram_user}",
            f"TAGSTREAM_SASL_PASSWORD={state.scram_password}",
        ]
    print(f"  worker ({protocol}):")
    print("    export " + " \\\n      ".join(settings))


def _down(args: argparse.Namespace) -> int:
    state, clean = daemon.down(timeout_s=args.timeout)
    if state is None:
        print("no local broker is recorded: nothing to stop")
    elif clean:
        print(f"stopped the broker (pid {state.pid}); its log stays at {state.log_path}")
    else:
        print(
            f"killed the broker (pid {state.pid}) after it ignored SIGTERM for "
            f"{args.timeout:.0f} s; its log: {state.log_path}"
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    state = daemon.read_state()
    if state is None or not state.running:
        if args.json:
            print("null")
        else:
            gone = f" (pid {state.pid} has exited; log: {state.log_path})" if state else ""
            print(f"no local broker is running{gone}: start one with `tagstream-worker kafka up`")
        return 1
    answers = state.answers()
    if args.json:
        print(state.to_json())
    else:
        verdict = "answers" if answers else f"does NOT answer (see {state.log_path})"
        print(
            f"Kafka {state.kafka_version} broker running since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(state.started_at))}; {verdict}"
        )
        _print_state(state)
    return 0 if answers else 1


def _fetch(args: argparse.Namespace) -> int:
    cached = None if args.refresh else cached_jars()
    if cached is None:
        began = time.monotonic()
        jars = fetch_jars(progress=_progress(), refresh=args.refresh)
        _end_progress()
        print(f"fetched {jars.count} jars in {time.monotonic() - began:.1f} s into {jars.lib_dir}")
    else:
        print(
            f"Kafka {cached.version} jars already cached: {cached.count} jars in {cached.lib_dir}"
        )
    return 0
