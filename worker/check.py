"""``tagstream-worker check``: could the worker start with these settings? Say what to fix if not.

Prints the resolved settings (secrets masked), then runs each start-up step the worker would,
without consuming anything: resolve device and dtype, the feeder processes (TAGSTREAM_PROCESSES)
and their shared memory, verify and load the bundle, check the
settings against it, bind the metrics port, reach the broker with the configured client, look up
the input topics (and report whether each output topic exists yet, and how long each input topic
keeps its records: a group stopped or behind for longer loses inputs). Exit code 0 when every step
passes, else the failing step's exit code.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable
from typing import Any, TextIO

from worker.errors import BrokerError, Failure, SettingsError, WorkerError
from worker.settings import WorkerSettings, check_against_bundle


def run_check(settings: WorkerSettings, out: TextIO = sys.stdout) -> int:
    out.write("settings (secrets masked):\n")
    for name, value in settings.redacted().items():
        out.write(f"  {name:<20} {json.dumps(value)}\n")
    out.write("\n")
    state: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], str]]] = [
        ("device", lambda: _device(settings, state)),
        ("processes", lambda: _processes(settings)),
        ("bundle", lambda: _bundle(settings, state)),
        ("settings vs bundle", lambda: _against_bundle(settings, state)),
        ("metrics port", lambda: _metrics_port(settings)),
        ("broker", lambda: _broker(settings, state)),
        ("topics", lambda: _topics(settings, state)),
        ("input retention", lambda: _retention(settings, state)),
    ]
    code = 0
    for title, step in steps:
        try:
            detail = step()
        except WorkerError as exc:
            out.write(f"FAIL {title}: {exc}\n")
            code = exc.exit_code
            break
        except Exception as exc:  # a bug in a step should still print something useful
            out.write(f"FAIL {title}: {exc!r}\n")
            code = 1
            break
        out.write(f"ok   {title}: {detail}\n")
    for client in (state.get("consumer"), state.get("producer")):
        if client is not None:
            client.close(2.0)
    out.write("\nworker can start\n" if code == 0 else "\nworker would not start (see FAIL above)\n")
    out.flush()
    return code


def _device(settings: WorkerSettings, state: dict[str, Any]) -> str:
    from worker.runner import resolve_device, resolve_dtype

    state["device"] = device = resolve_device(settings.device)
    state["dtype"] = dtype = resolve_dtype(settings.dtype, device)
    return f"{device}, {dtype or 'float32'}"


def _processes(settings: WorkerSettings) -> str:
    """TAGSTREAM_PROCESSES resolved, and whether /dev/shm holds the feeders' slots (worker/procs/)."""
    from worker.procs.plan import check_shared_memory, feeder_count

    feeders = feeder_count(settings)
    if feeders == 1:
        return "1: the model runs in the worker's own process"
    return f"{feeders} feeder processes around 1 model process; shared memory {check_shared_memory(settings, feeders)}"


def _bundle(settings: WorkerSettings, state: dict[str, Any]) -> str:
    from worker.runner import ModelRunner

    runner = ModelRunner.load(
        settings.bundle_path, device=state["device"], autocast_dtype=state["dtype"],
        max_batch_size=settings.max_batch_size, max_batch_tokens=settings.max_batch_tokens, top_k=settings.top_k,
        fast_tokenizer=settings.fast_tokenizer,
    )
    state["runner"] = runner
    tokenizer = runner.head_tokenizer
    engine = tokenizer.engine + (f" ({tokenizer.why_not_flash})" if tokenizer.why_not_flash else "")
    return (
        f"{runner.name} version {runner.version}, labels {runner.labels}, max_length {runner.max_length},"
        f" verified; tokenizer: {engine}"
    )


def _against_bundle(settings: WorkerSettings, state: dict[str, Any]) -> str:
    from worker.local_model import check_pod_serves
    from worker.procs.plan import feeder_count

    runner = state["runner"]
    check_against_bundle(settings, labels=runner.labels, max_length=runner.max_length)
    if feeder_count(settings) > 1:
        check_pod_serves(runner)
    rows, width = runner.warm_up_shapes[0]
    return f"largest batch {rows} x {width} tokens fits max_batch_tokens={settings.max_batch_tokens}"


def _metrics_port(settings: WorkerSettings) -> str:
    """The worker serves /metrics, /healthz and /readyz here: a taken port would stop it at start."""
    port = settings.metrics_port
    try:
        with socket.create_server(("0.0.0.0", port)) as server:
            bound = server.getsockname()[1]
    except OSError as exc:
        raise SettingsError(
            f"TAGSTREAM_METRICS_PORT={port}: cannot listen ({exc.strerror}); pick a free port, or 0 for any"
        ) from exc
    return f"{bound} is free" if port else "0: any free port"


def _broker(settings: WorkerSettings, state: dict[str, Any]) -> str:
    from worker.kafka.base import open_clients
    from worker.kafka.tls import check_tls

    check_tls(settings)  # at once, with its reason, rather than a bootstrap timeout later
    state["consumer"], state["producer"] = open_clients(settings)
    return f"connected to {settings.bootstrap_servers} ({settings.security_protocol}, {settings.kafka_client})"


def _topics(settings: WorkerSettings, state: dict[str, Any]) -> str:
    consumer = state["consumer"]
    existing = consumer.topics()
    if settings.input_pattern is not None:
        import re

        pattern = re.compile(settings.subscription_pattern() or "")
        inputs = sorted(t for t in existing if pattern.match(t))
        if not inputs:
            state["inputs"] = []
            return f"no topic matches {settings.input_pattern!r} yet (the worker waits for one)"
    else:
        missing = [t for t in settings.input_topics if t not in existing]
        if missing:
            raise BrokerError(
                f"input topic(s) {missing} do not exist (TAGSTREAM_INPUT_TOPICS); create them or fix the names",
                Failure.TOPIC_MISSING,
            )
        inputs = list(settings.input_topics)
    state["inputs"] = inputs
    outputs = sorted(
        {settings.output_topic_for(t) for t in inputs}
        | {settings.dlq_topic_for(t) for t in inputs}
        | {settings.route_topic_for(t, label) for t in inputs for label in settings.routes}
    )
    absent = [t for t in outputs if t not in existing]
    note = f"; not created yet (needs broker auto-creation, or create them): {absent}" if absent else ""
    return f"inputs {inputs}; outputs {outputs}{note}"



def _retention(settings: WorkerSettings, state: dict[str, Any]) -> str:
    """How long each input topic keeps its records: a group stopped or behind for longer loses
    inputs to deletion (worker/retention.py counts them). Informational: a broker that refuses
    DescribeConfigs (ACLs) does not stop the check."""
    from kafka.admin import ConfigResource, ConfigResourceType

    from worker.ops.kafka import admin_client, kafka_call

    inputs = state.get("inputs") or []
    if not inputs:
        return "no input topic yet"
    names = ["retention.ms", "retention.bytes", "cleanup.policy"]
    resources = [ConfigResource(ConfigResourceType.TOPIC, topic, names) for topic in inputs]
    try:
        with admin_client(settings) as admin:
            found = kafka_call(
                "describing the input topics", lambda: admin.describe_configs(resources, config_filter="all")
            )["topic"]
    except BrokerError as exc:  # e.g. no DescribeConfigs permission: say so, carry on
        return f"not known ({exc}); a group stopped or behind longer than the inputs' retention loses inputs"
    kept = "; ".join(f"{topic} {_kept(found.get(topic) or {})}" for topic in inputs)
    return f"{kept}: a group stopped or behind longer than that loses inputs (tagstream_inputs_deleted_unread_total)"


def _kept(configs: dict[str, Any]) -> str:
    """``retention.ms``, ``retention.bytes`` and ``cleanup.policy`` of one topic, in words."""
    def value(name: str) -> str | None:
        entry = configs.get(name)
        return entry.get("value") if isinstance(entry, dict) else None

    policy = value("cleanup.policy") or "delete"
    if "delete" not in policy:
        return f"compacted ({policy}): no time limit, older values of a key are dropped"
    parts = []
    ms = value("retention.ms")
    if ms is not None:
        parts.append("no time limit" if int(ms) < 0 else _duration(int(ms)))
    size = value("retention.bytes")
    if size is not None and int(size) >= 0:
        parts.append(f"at most {int(size) / 2**20:,.0f} MiB a partition")
    return ", ".join(parts) or "retention unknown"


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms >= size:
            return f"{ms / size:.3g} {unit}"
    return f"{ms} ms"
