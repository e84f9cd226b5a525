"""Benchmark the streaming worker against a real broker; prints a table per bundle (not a test).

    python bench/worker_bench.py runs/agnews-small/bundle [more bundles...] [--bootstrap HOST:PORT]

For each bundle, with AG News + SMS Spam texts from ../shared/datasets (skipped, saying so, when
absent) on a 3-partition input topic:

(a) model-only ceiling: the same bundle, batch limits and threads, texts fed from memory through
    the worker's own tokenizer call, batcher and runner: no Kafka. (a) and (b) alternate
    ``--repeats`` times and the best run of each counts; CPU time per event is shown too, being
    less sensitive than throughput to other work on the machine.
(b) worker end-to-end: ``tagstream-worker run`` as a separate process on the pre-filled topic.
    Throughput = results / (last result's time - first input's read time), from the results'
    own timestamps, so the benchmark's polling costs the worker nothing. Target: >= 85% of (a).
(c) naive worker (separate process): poll one, infer one, produce, flush, commit. Target: the
    worker >= 5x it.
(d) latency: a steady offered load of 50% of (b) from a separate producer process; end-to-end
    latency = result record time - input record time. Target: p99 <= max_wait_ms + 3 x the p99
    inference time of one full batch (measured in (a)).
(e) the worker process's peak RSS (VmHWM) over (b) and (d). Target: < 1.5 GB (MiniLM bundle).

``--processes 1,2`` (feeder processes, TAGSTREAM_PROCESSES) replaces (b)-(e) with a scaling table:
(a), then (b) once per feeder count on a topic of lcm(counts) partitions (at least 4), the counts
alternating ``--repeats`` times in one run. Per count: events/s over the middle 80% of the results
acknowledged once every feeder held partitions (so the start-up rebalance of N > 1, when the first
feeder holds every partition for about 3 s, is not what is compared), that
against N = 1 and against (a), CPU per event summed over every process of the pod, the cores the
pod kept busy over the same window (its CPU seconds over that time: one process cannot pass about
one, its interpreter lock), and the pod's memory (sum of each process's RSS). Target (issue 11): N = 2 on the ``tiny`` bundle >= 1.5x N = 1.

Without ``--bootstrap`` a local broker (localkafka) is started on free ports and stopped at
the end. The machine's load average is printed with each figure: other work on the cores
changes them. Raw figures also go to bench/results/worker_bench.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
RESULTS_DIR = REPO / "bench" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WORKER_START_TIMEOUT_S = 120  # torch import + bundle load + warm-up, on a busy machine
RUN_TIMEOUT_S = 1800  # bounds one phase if the worker stalls
POLL_S = 0.25  # /metrics polling while waiting for the worker
SCALING_SAMPLE_S = 0.2  # --processes mode: how often the pod's CPU and its results are read (from /proc, the broker)


@dataclass
class BundleReport:
    bundle: str
    name: str = ""
    version: str = ""
    labels: int = 0
    max_length: int = 0
    streams: int = 0
    events: int = 0
    ceiling_eps: float = 0.0
    ceiling_runs: list[float] = field(default_factory=list)
    ceiling_cpu_us: float = 0.0
    ceiling_batches: int = 0
    full_batch_p99_s: float = 0.0
    worker_eps: float = 0.0
    worker_runs: list[float] = field(default_factory=list)
    worker_cpu_us: float = 0.0
    worker_results: int = 0
    worker_unique_ids: int = 0
    naive_eps: float = 0.0
    naive_events: int = 0
    offered_eps: float = 0.0
    latency_results: int = 0
    latency_p50_s: float = 0.0
    latency_p99_s: float = 0.0
    latency_target_s: float = 0.0
    peak_rss_mb: float = 0.0
    load: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    windows: str = ""  # how the bundle reads texts, and windows per text on the workload


# -- data ---------------------------------------------------------------------------------------


def load_texts(datasets: Path, which: str = "news_sms") -> list[str] | None:
    """AG News and SMS Spam texts shuffled together, or Reuters newswire stories (``reuters``:
    long texts, for the truncation strategies); None when the datasets are absent."""
    if which == "reuters":
        sources = [datasets / "reuters_tags" / f for f in ("test.jsonl", "train.jsonl")]
    else:
        sources = [datasets / "ag_news" / f for f in ("test.jsonl", "train.jsonl")]
        sources += [datasets / "sms_spam" / f for f in ("test.jsonl", "train.jsonl")]
    if not all(p.is_file() for p in sources):
        return None
    texts = []
    for path in sources:
        with path.open(encoding="utf-8") as handle:
            texts.extend(json.loads(line)["text"] for line in handle if line.strip())
    random.Random(0).shuffle(texts)
    return texts


def take(texts: list[str], n: int) -> list[str]:
    return [texts[i % len(texts)] for i in range(n)]


# -- (a) the model-only ceiling ------------------------------------------------------------------------


def model_ceiling(bundle: Path, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Throughput of tokenizer + batcher + runner on ``texts`` from memory, as the worker uses them:
    this thread tokenizes per 500 texts and forms batches, ``streams`` threads run them."""
    import queue
    import threading

    import torch

    from worker.allocator import tune_allocator
    from worker.batcher import Batcher, BatchLimits
    from worker.runner import ModelRunner, configure_threads, resolve_streams

    tune_allocator()  # as the worker does
    device = torch.device("cpu")
    streams, per_stream = resolve_streams(args.streams, device, args.threads)
    configure_threads(per_stream)
    from worker.runner import resolve_dtype

    runner = ModelRunner.load(
        bundle, device=device, autocast_dtype=resolve_dtype(args.dtype, device), max_batch_size=args.max_batch_size,
        max_batch_tokens=args.max_batch_tokens, top_k=3, fast_tokenizer=getattr(args, "fast_tokenizer", "true") == "true",
    )
    runner.warm_up()
    limits = BatchLimits(args.max_batch_size, args.max_batch_tokens, args.max_wait_ms / 1000)
    batcher: Batcher[list[int]] = Batcher(limits)
    full_batch_s: list[float] = []
    handoff: queue.Queue[Any] = queue.Queue(maxsize=streams)

    def model_thread() -> None:
        while (work := handoff.get()) is not None:
            items, full = work
            seconds = runner.classify(items).seconds
            if full:
                full_batch_s.append(seconds)

    threads = [threading.Thread(target=model_thread) for _ in range(streams)]
    batches = 0
    chunk = 500  # the worker tokenizes one poll (up to 500 records) per call
    cpu_started = time.process_time()  # this process is otherwise idle: all of it is the pipeline
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for i in range(0, len(texts), chunk):
        for one in runner.tokenize(texts[i : i + chunk]):
            batcher.add(one, len(one), 0.0)
        while (batch := batcher.next_batch(0.0, flush=i + chunk >= len(texts))) is not None:
            # Between polls only full batches go out (as under load); the last poll flushes.
            handoff.put((batch.items, batch.reason in ("size", "tokens")))
            batches += 1
    for _ in threads:
        handoff.put(None)
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {
        "eps": len(texts) / elapsed,
        "cpu_us": cpu / len(texts) * 1e6,
        "batches": batches,
        "streams": streams,
        "full_batch_p99_s": percentile(full_batch_s, 0.99) if full_batch_s else 0.0,
        "name": runner.name,
        "version": runner.version,
        "labels": len(runner.labels),
        "max_length": runner.max_length,
    }


# -- Kafka helpers --------------------------------------------------------------------------------------


def create_topic(bootstrap: str, prefix: str, partitions: int = 3) -> str:
    from kafka import KafkaAdminClient

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics({name: {"num_partitions": partitions, "replication_factor": -1}})
        admin.wait_for_topics([name], timeout_ms=30_000)
    finally:
        admin.close()
    return name


def prefill(bootstrap: str, topic: str, texts: list[str], prefix: str) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024, metrics_enabled=False)
    for i, text in enumerate(texts):
        event_id = f"{prefix}{i}"
        producer.send(topic, json.dumps({"id": event_id, "text": text}).encode(), key=event_id.encode())
    producer.flush(120)
    producer.close()


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 300) -> list[Any]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", metrics_enabled=False,
        max_poll_records=5000,
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    idle_since = time.monotonic()
    try:
        while len(records) < expected and time.monotonic() < deadline:
            got = consumer.poll(timeout_ms=500)
            for batch in got.values():
                records.extend(batch)
            if got:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 15:
                break
    finally:
        consumer.close()
    return records


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(port: int, name: str, labels: str = "") -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return -1.0
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_map() -> dict[int, list[int]]:
    """Every process's children, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """``pid`` and its descendants (a pod's supervisor, model process and feeders)."""
    children = child_map() if children is None else children
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_cpu_seconds(pid: int, children: dict[int, list[int]] | None = None) -> float:
    total = 0.0
    for member in process_tree(pid, children):
        with contextlib.suppress(OSError, IndexError, ValueError):  # exited meanwhile
            total += cpu_seconds(member)
    return total


def tree_cpu_by_role(pid: int, children: dict[int, list[int]] | None = None) -> dict[str, float]:
    """CPU seconds of a pod's processes by role, told apart by their names (worker/stages.py
    name_process): the model process, the feeders, the rest (the supervisor)."""
    roles: dict[str, float] = {}
    for member in process_tree(pid, children):
        with contextlib.suppress(OSError, IndexError, ValueError):  # exited meanwhile
            name = Path(f"/proc/{member}/comm").read_text().strip()
            role = ("model process" if name == "tagstream-model"
                    else "feeders" if name.startswith("tagstream-fdr") else "supervisor")
            roles[role] = roles.get(role, 0.0) + cpu_seconds(member)
    return roles


def machine_busy_seconds() -> float:
    """CPU seconds every process on this machine has used (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def tree_rss_mb(pid: int) -> float:
    total = 0.0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def load_avg() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f} (1/5 min) on {os.cpu_count()} cores"


class WorkerProcess:
    """``tagstream-worker run`` in its own process, with its log in bench/results/logs/."""

    def __init__(
        self, bootstrap: str, topic: str, bundle: Path, args: argparse.Namespace, label: str,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.topic = topic
        self.bootstrap = bootstrap
        logs = RESULTS_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"{label}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSTREAM_")}
        env.update(
            TAGSTREAM_BOOTSTRAP_SERVERS=bootstrap, TAGSTREAM_INPUT_TOPICS=topic, TAGSTREAM_BUNDLE_PATH=str(bundle),
            TAGSTREAM_GROUP_ID=f"bench-{uuid.uuid4().hex[:8]}", TAGSTREAM_METRICS_PORT=str(self.port),
            TAGSTREAM_MAX_BATCH_SIZE=str(args.max_batch_size), TAGSTREAM_MAX_BATCH_TOKENS=str(args.max_batch_tokens),
            TAGSTREAM_MAX_WAIT_MS=str(args.max_wait_ms), TAGSTREAM_THREADS=str(args.threads),
            TAGSTREAM_INFERENCE_STREAMS=str(args.streams), TAGSTREAM_DTYPE=args.dtype,
            TAGSTREAM_RELOAD_INTERVAL_S="0", TAGSTREAM_LOG_LEVEL="INFO",
            TAGSTREAM_FAST_TOKENIZER=getattr(args, "fast_tokenizer", "true"),
            TAGSTREAM_KAFKA_CLIENT=getattr(args, "kafka_client", "kafka-python"),
            TAGSTREAM_CPU_PINNING=getattr(args, "cpu_pinning", "auto"),
        )
        env.update(extra_env or {})
        # Transactional outputs: end offsets count commit markers and aborted records too.
        self.by_metrics = env.get("TAGSTREAM_PROCESSING_GUARANTEE") == "exactly_once"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "run"], cwd=REPO, env=env,
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
        )

    def wait_ready(self, feeders: int = 1) -> None:
        """Until /readyz answers 200 (and, for a pod of feeders, every feeder answers too)."""
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the worker exited ({self.proc.returncode}); see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as response:
                    body = json.loads(response.read() or b"{}")
                    if response.status == 200 and body.get("feeders_up", 1) >= feeders:
                        return
            except (OSError, ValueError):
                pass
            time.sleep(POLL_S)
        raise SystemExit(f"the worker was not ready within {WORKER_START_TIMEOUT_S} s; see {self.log_path}")

    def wait_out(self, count: int, poll_s: float = POLL_S, on_poll: Callable[[int], None] | None = None) -> None:
        """Until ``count`` outputs are in the result topic (``<input>.labels``), by its end offsets
        read from the broker. Scraping the worker's /metrics four times a second, as this did
        before, cost the worker ~10 ms of CPU a scrape (the Python client's exposition, in a thread
        of its own): 4% of the null bundle's CPU per event, where Prometheus scrapes every 15-30 s.
        Exactly-once workers are still waited for by their metrics (commit markers are offsets too).
        ``on_poll`` gets the output count at each poll (at-least-once only)."""
        if self.by_metrics:
            self._wait_out_by_metrics(count, poll_s)
            return
        from kafka import KafkaConsumer
        from kafka.structs import TopicPartition as KafkaTopicPartition

        deadline = time.monotonic() + RUN_TIMEOUT_S
        output = f"{self.topic}.labels"
        reader = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, metrics_enabled=False)
        try:
            while True:
                partitions = reader.partitions_for_topic(output) or set()
                ends = reader.end_offsets([KafkaTopicPartition(output, p) for p in partitions]) if partitions else {}
                if on_poll is not None:
                    on_poll(sum(ends.values()))
                if sum(ends.values()) >= count:
                    return
                if self.proc.poll() is not None:
                    raise SystemExit(f"the worker exited ({self.proc.returncode}); see {self.log_path}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"the worker did not finish within {RUN_TIMEOUT_S} s; see {self.log_path}")
                time.sleep(poll_s)
                if not partitions:
                    reader.close()  # a topic created since is only seen by a fresh client's metadata
                    reader = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, metrics_enabled=False)
        finally:
            reader.close()

    def _wait_out_by_metrics(self, count: int, poll_s: float) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while metric(self.port, "tagstream_events_out_total", f'topic="{self.topic}"') < count:
            if self.proc.poll() is not None:
                raise SystemExit(f"the worker exited ({self.proc.returncode}); see {self.log_path}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the worker did not finish within {RUN_TIMEOUT_S} s; see {self.log_path}")
            time.sleep(poll_s)

    def stop(self) -> float:
        """SIGTERM, wait; returns the peak RSS in MB (read before it exits)."""
        rss = peak_rss_mb(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return rss


# -- (b) end-to-end throughput ----------------------------------------------------------------------------


def worker_throughput(bootstrap: str, bundle: Path, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    topic = create_topic(bootstrap, "bench-in")
    prefill(bootstrap, topic, texts, "t")
    worker = WorkerProcess(bootstrap, topic, bundle, args, f"throughput-{topic}")
    try:
        worker.wait_ready()
        cpu_started = cpu_seconds(worker.proc.pid)
        worker.wait_out(len(texts))
        cpu = cpu_seconds(worker.proc.pid) - cpu_started
    finally:
        rss = worker.stop()
    records = read_all(bootstrap, f"{topic}.labels", len(texts))
    results = [(r.timestamp, json.loads(r.value)) for r in records]
    first_read_ms = min(ts - res["latency_ms"] for ts, res in results)
    last_ms = max(ts for ts, _ in results)
    return {
        "eps": len(results) / max(1e-3, (last_ms - first_read_ms) / 1000),
        "results": len(results),
        "unique": len({res["id"] for _, res in results}),
        "cpu_us": cpu / len(texts) * 1e6,
        "rss_mb": rss,
        "topic": topic,
    }


# -- (b) per feeder count: TAGSTREAM_PROCESSES ------------------------------------------------------------------


def steady_window(times_ms: list[int], since_ms: float = 0.0) -> tuple[float, float, int]:
    """(start ms, end ms, results between) over the middle 80% of the results acknowledged after
    ``since_ms``, by their acknowledgement times."""
    times = sorted(t for t in times_ms if t >= since_ms)
    if len(times) < 10:
        return 0.0, 0.0, 0
    lo, hi = len(times) // 10, (len(times) * 9) // 10
    return times[lo], times[hi], hi - lo


def last_assignment_ms(log_path: Path) -> float:
    """When the last member of a pod got its partitions (its log's last non-empty
    ``partitions_assigned``, epoch ms): from then on every feeder is working. A pod's feeders join
    the group one after another, and the first holds every partition until the others are in; the
    rebalance that ends this waits for the first one's next heartbeat (TAGSTREAM_HEARTBEAT_INTERVAL_MS,
    1 s; the clients' default, 3 s, was most of a short run)."""
    from datetime import datetime

    last = 0.0
    for line in log_path.read_text(errors="replace").splitlines():
        if '"partitions_assigned"' not in line:
            continue
        with contextlib.suppress(ValueError, KeyError, TypeError):
            event = json.loads(line)
            if event["partitions"]:
                when = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
                last = max(last, when.timestamp() * 1000)
    return last


@dataclass
class PodSample:
    """The pod and the machine at one poll of the results topic."""

    at: float  # time.time()
    outputs: int
    roles: dict[str, float]  # CPU seconds so far of the pod's processes, by role
    machine: float
    broker: float

    @property
    def cpu(self) -> float:
        """The whole pod's CPU seconds so far."""
        return sum(self.roles.values())


def pod_throughput(
    bootstrap: str, bundle: Path, texts: list[str], args: argparse.Namespace, processes: int, partitions: int
) -> dict[str, Any]:
    """(b) with TAGSTREAM_PROCESSES=processes on a pre-filled topic of ``partitions`` partitions.

    Every figure but the CPU per event covers the steady part of the run only: the middle 80% of
    the results acknowledged once every feeder held its partitions. Counted over the whole run, as
    before, a pod of two read what its first feeder did alone during the rebalance (about 3 s), and
    the cores, from readiness to the last poll, took in the group join and idle time as well."""
    topic = create_topic(bootstrap, "bench-in", partitions=partitions)
    prefill(bootstrap, topic, texts, "t")
    worker = WorkerProcess(bootstrap, topic, bundle, args, f"scaling-n{processes}-{topic}",
                           extra_env={"TAGSTREAM_PROCESSES": str(processes)})
    broker_pid = getattr(args, "broker_pid", None)
    samples: list[PodSample] = []

    def sample(outputs: int) -> None:  # one scan of /proc: about 2 ms of the bench's CPU each time
        children = child_map()
        samples.append(PodSample(
            time.time(), outputs, tree_cpu_by_role(worker.proc.pid, children), machine_busy_seconds(),
            tree_cpu_seconds(broker_pid, children) if broker_pid else 0.0,
        ))

    try:
        worker.wait_ready(feeders=processes)
        sample(0)
        # The results topic's end offsets are read from the broker: polling costs the pod nothing.
        worker.wait_out(len(texts), poll_s=SCALING_SAMPLE_S, on_poll=sample)
        sample(len(texts))  # exactly-once runs wait by metrics, without on_poll
        rss = tree_rss_mb(worker.proc.pid)
        batch_requests = metric(worker.port, "tagstream_model_batch_requests_sum")
        model_batches = metric(worker.port, "tagstream_model_batches_total")
    finally:
        worker.stop()
    records = read_all(bootstrap, f"{topic}.labels", len(texts))
    results = [(r.timestamp, json.loads(r.value)) for r in records]
    first_read_ms = min(ts - res["latency_ms"] for ts, res in results)
    last_ms = max(ts for ts, _ in results)
    joined_ms = last_assignment_ms(worker.log_path)
    start_ms, end_ms, steady_count = steady_window([ts for ts, _ in results], joined_ms)
    first, last = samples[0], samples[-1]
    inside = [s for s in samples if start_ms / 1000 <= s.at <= end_ms / 1000]
    start, end = (inside[0], inside[-1]) if len(inside) >= 4 else (first, last)  # else too short to read
    wall = max(end.at - start.at, 1e-3)
    roles = {role: (seconds - start.roles.get(role, 0.0)) / wall for role, seconds in end.roles.items()}
    return {
        "eps": steady_count / max(1e-3, (end_ms - start_ms) / 1000) if steady_count else 0.0,
        "steady_share": steady_count / 0.8 / len(texts),  # of the results, acknowledged with every feeder in
        "overall_eps": len(results) / max(1e-3, (last_ms - first_read_ms) / 1000),
        "results": len(results),
        "unique": len({res["id"] for _, res in results}),
        "cpu_us": (last.cpu - first.cpu) / len(texts) * 1e6,
        "cores": (end.cpu - start.cpu) / wall,
        "machine_cores": (end.machine - start.machine) / wall,
        "cores_by_role": roles,
        "broker_cores": (end.broker - start.broker) / wall if broker_pid else None,
        "window_s": wall,
        "whole_run_cores": len(inside) < 4,  # the steady window was too short to read the cores in
        "rss_mb": rss,
        "merged": batch_requests / model_batches if model_batches > 0 else 0.0,
    }


@dataclass
class ScalingRow:
    processes: int
    runs: list[float] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    load: str = ""


@dataclass
class ScalingReport:
    bundle: str
    name: str = ""
    events: int = 0
    partitions: int = 0
    ceiling_eps: float = 0.0
    ceiling_runs: list[float] = field(default_factory=list)
    ceiling_load: str = ""
    rows: list[ScalingRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def scaling_partitions(counts: list[int]) -> int:
    lcm = 1
    for n in counts:
        lcm = lcm * n // math.gcd(lcm, n)
    return lcm * -(-4 // lcm)  # a multiple of every count, at least 4


def bench_scaling(bundle: Path, bootstrap: str, texts: list[str], args: argparse.Namespace) -> ScalingReport:
    counts = args.processes
    report = ScalingReport(bundle=str(bundle), partitions=scaling_partitions(counts))
    step = lambda text: print(f"[{time.strftime('%H:%M:%S')}] {bundle.name}: {text}", file=sys.stderr, flush=True)  # noqa: E731
    step("(a) model-only ceiling (probe)")
    probe = model_ceiling(bundle, take(texts, min(2000, len(texts))), args)
    report.name = probe["name"]
    # More than (b)'s 60,000 at most: the window starts only once every feeder holds partitions.
    events = args.events or int(min(max(probe["eps"] * args.target_seconds, 4000), 200_000))
    report.events = events
    workload = take(texts, events)
    report.rows = [ScalingRow(n) for n in counts]
    for run in range(args.repeats):
        step(f"(a) model-only ceiling on {events} events, run {run + 1}/{args.repeats}")
        load = load_avg()
        ceiling = model_ceiling(bundle, workload, args)
        report.ceiling_runs.append(ceiling["eps"])
        if ceiling["eps"] >= max(report.ceiling_runs):
            report.ceiling_eps, report.ceiling_load = ceiling["eps"], load
        order = report.rows if run % 2 == 0 else list(reversed(report.rows))  # neither count always goes first
        for row in order:
            step(f"(b) pod of {row.processes} feeder(s) on {events} events, {report.partitions} partitions,"
                 f" run {run + 1}/{args.repeats}")
            load = load_avg()
            got = pod_throughput(bootstrap, bundle, workload, args, row.processes, report.partitions)
            row.runs.append(got["eps"])
            if got["unique"] != events:
                report.notes.append(f"N={row.processes} run {run + 1}: {got['unique']} distinct ids for {events} inputs")
            if got["whole_run_cores"]:
                report.notes.append(f"N={row.processes} run {run + 1}: the steady window held under 4 CPU samples; its"
                                    " cores are read over the whole run (join and idle time included): give more --events")
            if got["steady_share"] < 0.5:
                report.notes.append(f"N={row.processes} run {run + 1}: only {got['steady_share']:.0%} of the results came"
                                    " once every feeder held partitions: give more --events")
            if got["eps"] >= max(row.runs):
                row.best, row.load = got, load
    return report


def print_scaling(r: ScalingReport, args: argparse.Namespace) -> None:
    print(f"\n## {r.name}: feeder processes (TAGSTREAM_PROCESSES), {r.bundle}")
    print(
        f"load: {r.events} events (AG News + SMS texts) pre-filled on {r.partitions} partitions; batch limits"
        f" {args.max_batch_size} / {args.max_batch_tokens} / {args.max_wait_ms} ms; dtype {args.dtype}; {os.cpu_count()}"
        f" cores. Best of {args.repeats} alternating runs; events/s and cores over the middle 80% of the results"
        f" acknowledged once every feeder held partitions (CPU read every {SCALING_SAMPLE_S:g} s)."
    )
    print(f"model-only ceiling (a): {r.ceiling_eps:,.0f} events/s (runs: {_runs(r.ceiling_runs)}; load {r.ceiling_load})")
    base = r.rows[0].best.get("eps", 0.0) if r.rows else 0.0
    print("| feeders | events/s (runs) | vs N=1 | of ceiling | overall events/s | CPU us/event (all processes)"
          " | cores used (steady window) | broker cores | machine cores busy | feeder batches per model batch | pod RSS MB"
          " | load avg during |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in r.rows:
        b = row.best
        if not b:
            continue
        ratio = b["eps"] / base if base else 0.0
        merged = f"{b['merged']:.2f}" if row.processes > 1 else "(one process)"
        print(
            f"| {row.processes} | {b['eps']:,.0f} ({_runs(row.runs)}) | {ratio:.2f}x | {b['eps'] / r.ceiling_eps:.0%} |"
            f" {b['overall_eps']:,.0f} | {b['cpu_us']:,.0f} | {b['cores']:.2f} | {_cores(b.get('broker_cores'))} |"
            f" {b['machine_cores']:.2f} of {os.cpu_count()} | {merged} | {b['rss_mb']:,.0f} |"
            f" {row.load} |"
        )
    for row in r.rows:
        if row.best.get("cores_by_role"):
            split = ", ".join(f"{role} {cores:.2f}" for role, cores in sorted(row.best["cores_by_role"].items()))
            print(f"N={row.processes}: cores by process: {split}")
    for note in r.notes:
        print(f"note: {note}")


def _cores(value: float | None) -> str:
    return "(not ours)" if value is None else f"{value:.2f}"


# -- (c) the naive worker ------------------------------------------------------------------------------------


def naive_worker_main(argv: list[str]) -> int:
    """Subprocess entry: poll one, infer one, produce, flush, commit; prints JSON timings."""
    parser = argparse.ArgumentParser()
    for flag in ("--bootstrap", "--topic", "--bundle", "--group"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)

    import torch
    from kafka import KafkaConsumer, KafkaProducer

    from model.bundle import Bundle
    from worker.runner import resolve_dtype

    # The same compute precision as the worker, so (c) measures batching, not arithmetic.
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    bundle = Bundle.load(args.bundle)
    consumer = KafkaConsumer(
        args.topic, bootstrap_servers=args.bootstrap, group_id=args.group, enable_auto_commit=False,
        auto_offset_reset="earliest", max_poll_records=1,
    )
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    done, started = 0, None
    while done < args.count:
        for batch in consumer.poll(timeout_ms=1000, max_records=1).values():
            for record in batch:
                if started is None:
                    started = time.perf_counter()
                event = json.loads(record.value)
                with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
                    probs = bundle.predict_proba([event["text"]])[0]
                best = int(probs.argmax())
                value = {"id": event["id"], "label": bundle.labels[best], "score": float(probs[best])}
                producer.send(f"{args.topic}.naive", json.dumps(value).encode(), key=record.key)
                producer.flush()
                consumer.commit()
                done += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    producer.close()
    print(json.dumps({"count": done, "seconds": elapsed}))
    return 0


def naive_throughput(bootstrap: str, bundle: Path, topic: str, args: argparse.Namespace) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "_naive", "--bootstrap", bootstrap, "--topic", topic, "--bundle", str(bundle),
         "--group", f"naive-{uuid.uuid4().hex[:8]}", "--count", str(args.naive_events), "--threads",
         str(args.threads), "--dtype", args.dtype],
        cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=True,
    )
    timing = json.loads(out.stdout.strip().splitlines()[-1])
    return {"eps": timing["count"] / max(timing["seconds"], 1e-9), "events": timing["count"]}


# -- (d) latency under a steady load -----------------------------------------------------------------------


def latency_at(bootstrap: str, bundle: Path, texts: list[str], rate: float, args: argparse.Namespace) -> dict:
    topic = create_topic(bootstrap, "bench-lat")
    worker = WorkerProcess(bootstrap, topic, bundle, args, f"latency-{topic}")
    count = max(200, int(rate * args.latency_seconds))
    data = RESULTS_DIR / f"latency-texts-{topic}.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in take(texts, count)), encoding="utf-8")
    try:
        worker.wait_ready()
        subprocess.run(
            [sys.executable, str(REPO / "demo" / "stream_events.py"), "--bootstrap", bootstrap, "--topic", topic,
             "--data", str(data), "--rate", f"{rate:.3f}", "--count", str(count), "--quiet"],
            cwd=REPO, check=True, timeout=RUN_TIMEOUT_S,
        )
        worker.wait_out(count)
    finally:
        rss = worker.stop()
        data.unlink(missing_ok=True)
    records = read_all(bootstrap, f"{topic}.labels", count)
    samples = sorted(
        (json.loads(r.value)["source"]["timestamp_ms"], (r.timestamp - json.loads(r.value)["source"]["timestamp_ms"]))
        for r in records
    )
    steady = [lat / 1000 for _, lat in samples[len(samples) // 10 :]]  # the first 10% warm the pipe up
    span_s = (samples[-1][0] - samples[0][0]) / 1000 if len(samples) > 1 else 1.0
    return {
        "offered_eps": len(samples) / max(span_s, 1e-3),
        "results": len(records),
        "p50_s": percentile(steady, 0.5),
        "p99_s": percentile(steady, 0.99),
        "rss_mb": rss,
    }


# -- report -----------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def resolved_dtype_name(requested: str) -> str:
    import torch

    from worker.runner import resolve_dtype

    dtype = resolve_dtype(requested, torch.device("cpu"))
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def reading(bundle: Path, texts: list[str]) -> str:
    """The bundle's truncation and the windows per text it reads on ``texts`` (a sample)."""
    from model.bundle import Bundle

    b = Bundle.load(bundle)
    sample = texts[:2000]
    windows = [len(w) for w in b.windower.windows(sample)]
    return (f"{b.truncation.strategy} (max_length {b.max_length}), {sum(windows) / len(windows):.2f} windows"
            f" per text on {len(sample)} texts of the workload")


def print_report(r: BundleReport, args: argparse.Namespace) -> None:
    print(f"\n## {r.name} (version {r.version}, {r.labels} labels, max_length {r.max_length}): {r.bundle}")
    print(
        f"load: {r.events} events ({'Reuters stories' if args.texts == 'reuters' else 'AG News + SMS texts'})"
        f" on a 3-partition topic; batch limits"
        f" {args.max_batch_size} inputs / {args.max_batch_tokens} padded tokens / {args.max_wait_ms} ms;"
        f" threads {args.threads or os.cpu_count()}, inference streams {r.streams or 'auto'}, dtype {args.dtype}"
        f" ({resolved_dtype_name(args.dtype)} here)"
    )
    ratio = r.worker_eps / r.ceiling_eps if r.ceiling_eps else 0.0
    speedup = r.worker_eps / r.naive_eps if r.naive_eps else 0.0
    if r.windows:
        print(f"reading: {r.windows}")
    rows = [
        ("(a) model-only ceiling", f"{r.ceiling_eps:,.0f} events/s, {r.ceiling_cpu_us:,.0f} us CPU/event (runs:"
         f" {_runs(r.ceiling_runs)}; p99 full batch {r.full_batch_p99_s * 1000:.1f} ms)", "", "", r.load.get("a", "")),
        ("(b) worker end-to-end", f"{r.worker_eps:,.0f} events/s = {ratio:.0%} of (a), {r.worker_cpu_us:,.0f} us"
         f" CPU/event (runs: {_runs(r.worker_runs)}); {r.worker_results} results, {r.worker_unique_ids} ids",
         ">= 85% of (a)", verdict(ratio >= 0.85), r.load.get("b", "")),
        ("(c) naive worker", f"{r.naive_eps:,.1f} events/s ({r.naive_events} events); worker is {speedup:.1f}x",
         ">= 5x", verdict(speedup >= 5), r.load.get("c", "")),
        ("(d) latency at 50% load", f"p50 {r.latency_p50_s * 1000:.0f} ms, p99 {r.latency_p99_s * 1000:.0f} ms at"
         f" {r.offered_eps:,.0f} events/s offered", f"p99 <= {r.latency_target_s * 1000:.0f} ms",
         verdict(r.latency_p99_s <= r.latency_target_s), r.load.get("d", "")),
        ("(e) peak worker RSS", f"{r.peak_rss_mb:,.0f} MB", "< 1536 MB", verdict(r.peak_rss_mb < 1536), ""),
    ]
    if args.throughput_only:
        rows = rows[:2]
    print("| measure | figure | target | met | load avg during |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for note in r.notes:
        print(f"note: {note}")


def bench_bundle(bundle: Path, bootstrap: str, texts: list[str], args: argparse.Namespace) -> BundleReport:
    report = BundleReport(bundle=str(bundle))
    step = lambda text: print(f"[{time.strftime('%H:%M:%S')}] {bundle.name}: {text}", file=sys.stderr, flush=True)  # noqa: E731

    step("(a) model-only ceiling (probe)")
    probe = model_ceiling(bundle, take(texts, min(2000, len(texts))), args)
    events = args.events or int(min(max(probe["eps"] * args.target_seconds, 2000), 40_000))
    report.events = events
    workload = take(texts, events)
    report.windows = reading(bundle, workload)
    report.load["a"] = report.load["b"] = ""
    # (a) and (b) alternate; the best run of each counts: other work on a shared machine only
    # ever slows a run down, so the fastest is the least disturbed.
    for run in range(args.repeats):
        step(f"(a) model-only ceiling on {events} events, run {run + 1}/{args.repeats}")
        load = load_avg()
        ceiling = model_ceiling(bundle, workload, args)
        report.ceiling_runs.append(ceiling["eps"])
        if ceiling["eps"] >= max(report.ceiling_runs):
            report.ceiling_eps, report.ceiling_cpu_us, report.load["a"] = ceiling["eps"], ceiling["cpu_us"], load
            report.name, report.version = ceiling["name"], ceiling["version"]
            report.labels, report.max_length = ceiling["labels"], ceiling["max_length"]
            report.ceiling_batches, report.streams = ceiling["batches"], ceiling["streams"]
            report.full_batch_p99_s = ceiling["full_batch_p99_s"]
        step(f"(b) worker end-to-end on {events} events, run {run + 1}/{args.repeats}")
        load = load_avg()
        e2e = worker_throughput(bootstrap, bundle, workload, args)
        report.worker_runs.append(e2e["eps"])
        if e2e["unique"] != events:
            report.notes.append(f"run {run + 1}: the worker produced {e2e['unique']} distinct ids for {events} inputs")
        if e2e["eps"] >= max(report.worker_runs):
            report.worker_eps, report.worker_cpu_us, report.load["b"] = e2e["eps"], e2e["cpu_us"], load
            report.worker_results, report.worker_unique_ids = e2e["results"], e2e["unique"]
            report.peak_rss_mb = max(report.peak_rss_mb, e2e["rss_mb"])
            topic = e2e["topic"]
    report.latency_target_s = args.max_wait_ms / 1000 + 3 * report.full_batch_p99_s
    if args.throughput_only:
        return report

    step(f"(c) naive worker on {args.naive_events} events")
    report.load["c"] = load_avg()
    naive = naive_throughput(bootstrap, bundle, topic, args)
    report.naive_eps, report.naive_events = naive["eps"], naive["events"]

    rate = report.worker_eps * 0.5
    step(f"(d) latency at {rate:.0f} events/s for {args.latency_seconds:.0f} s")
    report.load["d"] = load_avg()
    lat = latency_at(bootstrap, bundle, texts, rate, args)
    report.offered_eps, report.latency_results = lat["offered_eps"], lat["results"]
    report.latency_p50_s, report.latency_p99_s = lat["p50_s"], lat["p99_s"]
    report.peak_rss_mb = max(report.peak_rss_mb, lat["rss_mb"])
    return report


def _counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or any(not 1 <= n <= 64 for n in counts):
        raise argparse.ArgumentTypeError("give feeder counts from 1 to 64, comma-separated, e.g. 1,2")
    return counts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_naive"]:
        return naive_worker_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", type=Path, nargs="+", help="bundle folders to benchmark")
    parser.add_argument("--bootstrap", help="an existing broker (default: start a local one)")
    parser.add_argument("--datasets", type=Path, default=DATASETS, help="folder with ag_news/ and sms_spam/")
    parser.add_argument("--events", type=int, default=0,
                        help="events for (a) and (b); 0 = enough for --target-seconds at the ceiling")
    parser.add_argument("--target-seconds", type=float, default=20.0, help="aimed length of (b) when --events 0")
    parser.add_argument("--naive-events", type=int, default=300, help="events for the naive worker (c)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of (a) and (b); the best counts")
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="length of the steady load in (d)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--max-wait-ms", type=float, default=20)
    parser.add_argument("--threads", type=int, default=0, help="model threads (0 = all cores), worker and ceiling")
    parser.add_argument("--streams", type=int, default=0, help="inference streams (0 = auto), worker and ceiling")
    parser.add_argument("--texts", choices=["news_sms", "reuters"], default="news_sms",
                        help="news_sms: AG News + SMS spam (short); reuters: reuters_tags stories (long: what"
                             " the truncation strategies change) (default: %(default)s)")
    parser.add_argument("--throughput-only", action="store_true",
                        help="only (a) the ceiling and (b) the worker: to compare bundles' cost, e.g. strategies")
    parser.add_argument("--processes", type=_counts, default=None, metavar="N,N,...",
                        help="feeder counts to compare (TAGSTREAM_PROCESSES), e.g. 1,2: a scaling table instead of"
                        " (b)-(e)")
    parser.add_argument("--kafka-client", default="kafka-python", choices=["kafka-python", "confluent"],
                        help="TAGSTREAM_KAFKA_CLIENT of the worker")
    parser.add_argument("--cpu-pinning", default="auto", choices=["auto", "on", "off"],
                        help="the worker's TAGSTREAM_CPU_PINNING (worker/affinity.py); auto pins only where the"
                             " process owns its CPUs, which a development machine without a CPU limit does not")
    parser.add_argument("--fast-tokenizer", default="true", choices=["true", "false"],
                        help="TAGSTREAM_FAST_TOKENIZER for the worker and the ceiling (false: HF tokenizers for every"
                        " text, as before flash-tokenizer was used)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="compute precision of the worker, the ceiling and the naive worker (auto:"
                        " bf16 on CPUs with native bf16, else float32)")
    args = parser.parse_args(argv)

    texts = load_texts(args.datasets, args.texts)
    if texts is None:
        print(f"skipped: the datasets are not at {args.datasets} (need ag_news/ and sms_spam/ with"
              " train.jsonl and test.jsonl); pass --datasets DIR", file=sys.stderr)
        return 0
    for bundle in args.bundles:
        if not (bundle / "manifest.json").is_file():
            parser.error(f"{bundle} is not a bundle folder (no manifest.json)")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from localkafka import LocalKafka

        print("starting a local Kafka broker ...", file=sys.stderr, flush=True)
        broker = LocalKafka().start()
        bootstrap = broker.bootstrap_servers
        args.broker_pid = broker.pid
    reports: list[Any] = []
    try:
        for bundle in args.bundles:
            if args.processes:
                scaling = bench_scaling(bundle.resolve(), bootstrap, texts, args)
                reports.append(scaling)
                print_scaling(scaling, args)
                continue
            report = bench_bundle(bundle.resolve(), bootstrap, texts, args)
            reports.append(report)
            print_report(report, args)
    finally:
        if broker is not None:
            broker.stop()
        out = RESULTS_DIR / ("worker_bench_scaling.json" if args.processes else "worker_bench.json")
        out.write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
        print(f"\nraw figures: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
