"""Where the worker's CPU goes when the model costs nothing: the Kafka path, stage by stage (not a test).

    python bench/kafka_path_bench.py [--events 100000] [--partitions 3] [--repeats 2]
                                     [--tokenizer-from BUNDLE] [--client kafka-python,confluent] [--profile]

On a pre-filled topic of AG News texts (../shared/datasets, else fixture sentences), for each client
named by ``--client`` (TAGSTREAM_KAFKA_CLIENT values, comma-separated; default both), in the same run:

floor   a bare loop with the same Kafka client, in its own process: poll (500 at a time: kafka-python's
        ``poll(max_records=500)``, confluent-kafka's ``consume(num_messages=500)``), json-decode each
        value, produce one small JSON result per record, flush at the end. What any consumer of this
        client pays per event.
worker  ``tagstream-worker run`` with a *null* bundle (a real bundle and tokenizer whose TorchScript
        model returns fixed probabilities at once), with TAGSTREAM_STAGE_TIMING on, in its own
        process: CPU per event in all, and per stage (worker/stages.py), plus the client's own
        threads read from /proc (network I/O, delivery callbacks). ``--untimed`` adds a run with the
        stage timing off (its brackets read the thread's CPU clock, a system call each): the figure
        a production worker pays, to set beside the floor, which has no such instrumentation.

The worker runs once per tokenizer engine named by ``--tokenizers`` (TAGSTREAM_FAST_TOKENIZER:
``fast``, the default, tokenizes ASCII texts with flash-tokenizer where it gives HF tokenizers' ids;
``huggingface`` uses HF tokenizers for every text, as before it existed); the table's stages and
threads are the first engine's.

floor and worker alternate ``--repeats`` times, each client in turn on a topic of its own; the best
run of each counts. CPU per event is the process's user+system time over the events, every thread
included (librdkafka's C threads too).

tokenize  the bundle's tokenizer alone (``ModelRunner.tokenize``, what the source calls once per
        poll) on the same texts in poll-sized chunks, in its own process, every thread counted: HF
        tokenizers encode on a thread pool of their own, so the worker's ``tokenize`` stage (the
        calling thread only) shows a fraction of it. "worker minus tokenizing" subtracts this: what
        the Kafka path and the pipeline cost apart from the tokenizer, which any bundle pays; "floor +
        tokenizing alone" is what any consumer that feeds a Transformer pays.

``--profile`` records the worker with py-spy, sampling only threads that hold the GIL (the Python
work itself, not the waits for the GIL), as speedscope JSON in bench/results/. Figures also go to
bench/results/kafka_path_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench", REPO / "tests"):
    sys.path.insert(0, str(path))

import worker_bench as wb  # noqa: E402  (broker, topic, worker-process helpers)

ENGINES = ("fast", "huggingface")  # TAGSTREAM_FAST_TOKENIZER true / false
STAGE_ORDER = ("fetch", "parse", "tokenize", "track", "commit", "batch", "inference", "result_build", "produce")


# -- the floor: a bare consume -> produce loop ------------------------------------------------------------
POLL_RECORDS = 500  # records per poll in both floors: the worker's own poll size (worker/source.py)


# A bare loop that has read nothing by then gives up (exit NO_RECORDS) and floor() starts another: once,
# a kafka-python 3.0.12 consumer never found its group coordinator (the broker answered a new consumer at
# once) and polled for 10 minutes at 90% of a core, where the bench waited up to RUN_TIMEOUT_S.
FIRST_RECORD_S = 60
NO_RECORDS = 3


def _no_records(args: argparse.Namespace) -> int:
    print(f"the {args.client} bare loop read no record of {args.topic} in {FIRST_RECORD_S} s", file=sys.stderr)
    return NO_RECORDS


def bare_loop_main(argv: list[str]) -> int:
    """Child process: consume ``--count`` records, decode, produce a small result each; print figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--client", default="kafka-python")
    parser.add_argument("--tokenizer", help="also tokenize each poll's texts with this tokenizer.json")
    args = parser.parse_args(argv)
    if args.client == "confluent":
        return bare_loop_confluent(args)
    from kafka import KafkaConsumer, KafkaProducer

    encode = None
    if args.tokenizer:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(args.tokenizer)
        tokenizer.enable_truncation(max_length=128)
        encode = tokenizer.encode_batch_fast

    consumer = KafkaConsumer(
        args.topic, bootstrap_servers=args.bootstrap, group_id=f"floor-{os.getpid()}", auto_offset_reset="earliest",
        enable_auto_commit=False, max_poll_records=POLL_RECORDS, metrics_enabled=False,
    )
    producer = KafkaProducer(
        bootstrap_servers=args.bootstrap, linger_ms=5, batch_size=256 * 1024, metrics_enabled=False,
        enable_idempotence=False,
    )
    out = f"{args.topic}.floor"
    seen = 0
    started = cpu_started = None
    first_by = time.monotonic() + FIRST_RECORD_S
    while seen < args.count:
        batches = consumer.poll(timeout_ms=200, max_records=POLL_RECORDS)
        if batches and started is None:
            started, cpu_started = time.monotonic(), _cpu()
        elif started is None and time.monotonic() > first_by:
            return _no_records(args)
        for records in batches.values():
            objs = [json.loads(record.value) for record in records]
            if encode is not None:
                [e.ids for e in encode([obj["text"] for obj in objs])]
            for record, obj in zip(records, objs, strict=True):
                producer.send(out, json.dumps({"id": obj["id"], "label": "x", "score": 0.5}).encode(), key=record.key)
            seen += len(records)
    producer.flush(120)
    wall, cpu = time.monotonic() - (started or 0.0), _cpu() - (cpu_started or 0.0)
    consumer.close()
    producer.close()
    print(json.dumps({"events": seen, "eps": seen / wall, "cpu_us": cpu / seen * 1e6}))
    return 0


def bare_loop_confluent(args: argparse.Namespace) -> int:
    """The same loop with confluent-kafka: consume(num_messages=...) in bulk, produce, flush."""
    from confluent_kafka import Consumer, Producer

    consumer = Consumer({
        "bootstrap.servers": args.bootstrap, "group.id": f"floor-{os.getpid()}", "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5, "batch.size": 256 * 1024})
    consumer.subscribe([args.topic])
    out = f"{args.topic}.floor"
    seen = 0
    started = cpu_started = None
    first_by = time.monotonic() + FIRST_RECORD_S
    while seen < args.count:
        messages = consumer.consume(num_messages=POLL_RECORDS, timeout=0.2)
        if messages and started is None:
            started, cpu_started = time.monotonic(), _cpu()
        elif started is None and time.monotonic() > first_by:
            return _no_records(args)
        for m in messages:
            if m.error() is not None:
                continue
            obj = json.loads(m.value())
            value = json.dumps({"id": obj["id"], "label": "x", "score": 0.5}).encode()
            while True:
                try:
                    producer.produce(out, value, key=m.key())
                    break
                except BufferError:
                    producer.poll(0.05)  # the local queue is full: let deliveries drain it
            seen += 1
        producer.poll(0)  # serve delivery reports
    producer.flush(120)
    wall, cpu = time.monotonic() - (started or 0.0), _cpu() - (cpu_started or 0.0)
    consumer.close()
    print(json.dumps({"events": seen, "eps": seen / wall, "cpu_us": cpu / seen * 1e6}))
    return 0


def tokenize_main(argv: list[str]) -> int:
    """Child process: tokenize the texts as the worker's source does; print CPU per text (all threads)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--texts", type=Path, required=True)
    parser.add_argument("--engine", choices=ENGINES, default="fast")
    args = parser.parse_args(argv)
    import torch

    from worker.runner import ModelRunner

    texts = json.loads(args.texts.read_text())
    runner = ModelRunner.load(args.bundle, device=torch.device("cpu"), autocast_dtype=None, max_batch_size=64,
                              max_batch_tokens=8192, top_k=3, fast_tokenizer=args.engine == "fast")
    runner.tokenize(texts[:POLL_RECORDS])  # warm
    began, cpu_began = time.monotonic(), _cpu()
    for i in range(0, len(texts), POLL_RECORDS):
        runner.tokenize(texts[i: i + POLL_RECORDS])
    wall, cpu = time.monotonic() - began, _cpu() - cpu_began
    print(json.dumps({"texts": len(texts), "cpu_us": cpu / len(texts) * 1e6, "eps": len(texts) / wall}))
    return 0


def tokenize_alone(bundle: Path, texts: list[str], engine: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(texts, handle)
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--tokenize", "--bundle", str(bundle), "--texts", handle.name,
             "--engine", engine],
            capture_output=True, text=True, timeout=wb.RUN_TIMEOUT_S, cwd=REPO,
        )
    finally:
        os.unlink(handle.name)
    if proc.returncode != 0:
        raise SystemExit(f"tokenizing alone failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def floor(bootstrap: str, topic: str, count: int, client: str, tokenizer: Path | None = None) -> dict[str, Any]:
    for attempt in (1, 2):
        proc = subprocess.run(
            [sys.executable, __file__, "--bare-loop", "--bootstrap", bootstrap, "--topic", topic, "--count", str(count),
             "--client", client, *(["--tokenizer", str(tokenizer)] if tokenizer else [])],
            capture_output=True, text=True, timeout=wb.RUN_TIMEOUT_S, cwd=REPO,
        )
        if proc.returncode != NO_RECORDS:
            break
        print(f"{proc.stderr.strip().splitlines()[-1]}: {'starting another' if attempt == 1 else 'giving up'}",
              file=sys.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"the bare loop failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# -- the worker with a null bundle --------------------------------------------------------------------------
_SWITCH_FIELDS = ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")


def thread_figures(pid: int) -> dict[str, tuple[float, int]]:
    """CPU seconds and context switches (voluntary and not) per thread name of a process
    (threads of one name summed): which thread waits, e.g. for the GIL, how often."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, tuple[float, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
        except OSError:
            continue
        switches = sum(int(line.split()[1]) for line in status.splitlines() if line.split(":")[0] in _SWITCH_FIELDS)
        cpu, before = out.get(name, (0.0, 0))
        out[name] = (cpu + (int(fields[11]) + int(fields[12])) / ticks, before + switches)
    return out


def kernel_figures(pid: int) -> dict[str, float]:
    """System CPU seconds and context switches (voluntary: waits, e.g. for the GIL; involuntary:
    preempted), every thread of a process summed: what handing the GIL between threads costs."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {"system_s": 0.0, "voluntary": 0.0, "involuntary": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
        except OSError:
            continue
        out["system_s"] += int(fields[12]) / ticks
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                out["voluntary"] += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                out["involuntary"] += int(line.split()[1])
    return out


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def stage_figures(text: str) -> dict[str, tuple[float, float]]:
    cpu: dict[str, float] = {}
    events: dict[str, float] = {}
    for line in text.splitlines():
        for name, into in (("tagstream_stage_cpu_seconds_total", cpu), ("tagstream_stage_events_total", events)):
            if line.startswith(name + "{"):
                stage = line.split('stage="', 1)[1].split('"', 1)[0]
                into[stage] = float(line.rsplit(" ", 1)[1])
    return {stage: (cpu.get(stage, 0.0), events.get(stage, 0.0)) for stage in cpu}


def mean_batch(text: str) -> float:
    """Inputs per model call on average (``tagstream_batch_size``): per-batch costs divide by it."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f"tagstream_batch_size_{part} "):
                totals[part] = float(line.rsplit(" ", 1)[1])
    return totals.get("sum", 0.0) / max(1.0, totals.get("count", 0.0))


def worker_run(
    bootstrap: str, topic: str, bundle: Path, count: int, args: argparse.Namespace, client: str, engine: str,
    *, timed: bool = True,
) -> dict[str, Any]:
    extra = {"TAGSTREAM_STAGE_TIMING": str(timed).lower(), "TAGSTREAM_KAFKA_CLIENT": client,
             "TAGSTREAM_FAST_TOKENIZER": str(engine == "fast").lower()}
    worker = wb.WorkerProcess(bootstrap, topic, bundle, args, f"path-{topic}", extra_env=extra)
    profiler = None
    try:
        worker.wait_ready()
        threads_before = thread_figures(worker.proc.pid)
        kernel_before = kernel_figures(worker.proc.pid)
        cpu_started = wb.cpu_seconds(worker.proc.pid)
        if args.profile and timed:
            wb.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            profile_path = wb.RESULTS_DIR / f"kafka_path_profile-{args.label}-{client}-{engine}.speedscope.json"
            py_spy = _py_spy()
            if py_spy is None:
                print("py-spy not found (make install puts it in .venv/bin): no profile", file=sys.stderr)
            else:
                profiler = subprocess.Popen(
                    [py_spy, "record", "--pid", str(worker.proc.pid), "--format", "speedscope",
                     "--output", str(profile_path), "--threads", "--gil", "--rate", "250", "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
        worker.wait_out(count)
        cpu = wb.cpu_seconds(worker.proc.pid) - cpu_started
        threads_after = thread_figures(worker.proc.pid)
        threads = {k: v[0] - threads_before.get(k, (0.0, 0))[0] for k, v in threads_after.items()}
        thread_switches = {k: v[1] - threads_before.get(k, (0.0, 0))[1] for k, v in threads_after.items()}
        kernel = {k: v - kernel_before[k] for k, v in kernel_figures(worker.proc.pid).items()}
        exposition = scrape(worker.port)
        stages = stage_figures(exposition)
    finally:
        if profiler is not None:
            profiler.send_signal(2)  # SIGINT: py-spy writes its file
            profiler.wait(60)
        worker.stop()
    records = wb.read_all(bootstrap, f"{topic}.labels", count)
    results = [(r.timestamp, json.loads(r.value)) for r in records]
    first_read_ms = min(ts - res["latency_ms"] for ts, res in results)
    last_ms = max(ts for ts, _ in results)
    return {
        "events": len(results),
        "eps": len(results) / max(1e-3, (last_ms - first_read_ms) / 1000),
        "cpu_us": cpu / count * 1e6,
        "stages": {k: {"cpu_us": c / max(1.0, n) * 1e6 if n else c / count * 1e6, "events": n}
                   for k, (c, n) in stages.items()},
        "mean_batch": mean_batch(exposition),
        "system_us": kernel["system_s"] / count * 1e6,
        "switches_per_event": (kernel["voluntary"] + kernel["involuntary"]) / count,
        "threads_us": {k: v / count * 1e6 for k, v in sorted(threads.items(), key=lambda kv: -kv[1]) if v > 0},
        "threads_switches": {k: v / count for k, v in thread_switches.items()},
    }


# Threads of the Kafka clients (Linux names, 15 characters): kafka-python's consumer I/O thread and
# producer sender thread (named after its client id "tagstream-<host>-<pid>", the prefix dropped),
# librdkafka's "rdk:*" threads and the confluent backend's delivery-report thread.
CLIENT_THREADS = ("kafka-io", "rdk:", "kafka-dr", f"{socket.gethostname()}-")


def _switches(per_event: float | None) -> str:
    return "" if per_event is None else f"{per_event:.2f} context switches/event"


def client_share(run: dict[str, Any]) -> float:
    """CPU us per event spent in the Kafka client: its stages on the pipeline's threads, and its own threads."""
    stages = sum(run["stages"].get(s, {}).get("cpu_us", 0.0) for s in ("fetch", "produce"))
    return stages + sum(us for name, us in run["threads_us"].items() if name.startswith(CLIENT_THREADS))


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


UNPINNED_TOKENIZER = (
    "note: no --tokenizer-from: this run's null bundle has a tokenizer trained for it, which differs from run"
    " to run (its vocabulary, so its token counts); compare these figures only with this run's own baselines, or"
    " give every run the same --tokenizer-from"
)


# -- main -----------------------------------------------------------------------------------------------------
def build_null_bundle(tokenizer_from: Path | None, out: Path) -> Path:
    from worker_support import make_null_bundle  # type: ignore[import-not-found]

    is_bundle = tokenizer_from is not None and tokenizer_from.is_dir()
    return make_null_bundle(out, tokenizer_from=tokenizer_from, labels=None if is_bundle else ["a", "b", "c", "d"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--bare-loop":
        return bare_loop_main(argv[1:])
    if argv and argv[0] == "--tokenize":
        return tokenize_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="an existing broker (default: start a local one)")
    parser.add_argument("--datasets", type=Path, default=wb.DATASETS)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--client", default="kafka-python,confluent",
                        help="TAGSTREAM_KAFKA_CLIENT values to measure, comma-separated (floor and worker each)")
    parser.add_argument("--tokenizers", default=",".join(ENGINES),
                        help="worker tokenizer engines to measure, comma-separated: fast (TAGSTREAM_FAST_TOKENIZER=true,"
                             " the default) and/or huggingface (false)")
    parser.add_argument("--tokenizer-from", type=Path,
                        help="a bundle (or tokenizer.json) whose tokenizer the null bundle uses; without it a small"
                             " WordPiece is trained for the run, a different one each run (HF's trainer is not"
                             " deterministic): give the same one to compare runs, e.g. of two checkouts")
    parser.add_argument("--profile", action="store_true", help="record the worker with py-spy")
    parser.add_argument("--untimed", action="store_true",
                        help="also run the worker with TAGSTREAM_STAGE_TIMING off (first tokenizer engine), alternating"
                             " with the timed runs: what a production worker pays, since the floor is not instrumented")
    parser.add_argument("--label", default="run", help="names the profile file")
    parser.add_argument("--max-batch-size", type=int, default=64,
                        help="the worker's TAGSTREAM_MAX_BATCH_SIZE: 64 is its default; the GPU overlay's 256 (with"
                             " --max-batch-tokens 65536) is what a worker feeding a GPU runs with")
    parser.add_argument("--max-batch-tokens", type=int, default=8192, help="the worker's TAGSTREAM_MAX_BATCH_TOKENS")
    parser.add_argument("--max-wait-ms", type=float, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--cpu-pinning", default="auto", choices=["auto", "on", "off"],
                        help="the worker's TAGSTREAM_CPU_PINNING (worker/affinity.py); auto pins only where the"
                             " process owns its CPUs, which a development machine without a CPU limit does not")
    args = parser.parse_args(argv)

    texts = wb.load_texts(args.datasets)
    # Said in the table's title too: fixture sentences tokenize in half the time of AG News and SMS,
    # so a run on them is no baseline for a run on the datasets (a git worktree elsewhere than the
    # main checkout has no ../shared beside it: give it --datasets).
    source = f"AG News + SMS texts from {args.datasets}"
    if texts is None:
        from worker_support import fixture_texts

        source = f"FIXTURE SENTENCES (no datasets at {args.datasets}: --datasets)"
        print(f"no datasets at {args.datasets}: using fixture sentences", file=sys.stderr)
        texts = fixture_texts(args.events, seed=5, max_words=40)
    texts = wb.take(texts, args.events)
    tmp = Path(tempfile.mkdtemp(prefix="null-bundle-"))
    bundle = build_null_bundle(args.tokenizer_from, tmp / "bundle")
    if args.tokenizer_from is None:
        print(UNPINNED_TOKENIZER, file=sys.stderr)

    clients = [c.strip() for c in args.client.split(",") if c.strip()]
    unknown = sorted(set(clients) - {"kafka-python", "confluent"})
    if unknown:
        raise SystemExit(f"--client: unknown {unknown}; use kafka-python and/or confluent")
    engines = [e.strip() for e in args.tokenizers.split(",") if e.strip()]
    if not engines or set(engines) - set(ENGINES):
        raise SystemExit(f"--tokenizers: use {' and/or '.join(ENGINES)}")
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from localkafka import LocalKafka

        broker = LocalKafka().start()
        bootstrap = broker.bootstrap_servers
    floors: dict[str, list[dict[str, Any]]] = {c: [] for c in clients}
    workers: dict[tuple[str, str], list[dict[str, Any]]] = {(c, e): [] for c in clients for e in engines}
    tokenizing: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    untimed: dict[str, list[dict[str, Any]]] = {c: [] for c in clients}
    try:
        for round_ in range(args.repeats):
            for client in clients:
                topic = wb.create_topic(bootstrap, "path-in", partitions=args.partitions)
                wb.prefill(bootstrap, topic, texts, "p")
                floors[client].append(floor(bootstrap, topic, len(texts), client))
                f = floors[client][-1]
                print(f"round {round_ + 1}, {client}: floor {f['eps']:,.0f} ev/s {f['cpu_us']:.0f} us/ev", file=sys.stderr)
                for engine in engines:
                    topic = wb.create_topic(bootstrap, "path-in", partitions=args.partitions)
                    wb.prefill(bootstrap, topic, texts, "p")
                    workers[client, engine].append(worker_run(bootstrap, topic, bundle, len(texts), args, client, engine))
                    w = workers[client, engine][-1]
                    print(f"round {round_ + 1}, {client}, {engine} tokenizer: worker {w['eps']:,.0f} ev/s"
                          f" {w['cpu_us']:.0f} us/ev (system {w['system_us']:.0f}, {w['switches_per_event']:.2f}"
                          f" context switches/ev; {w['mean_batch']:.1f} inputs a batch); load {wb.load_avg()}",
                          file=sys.stderr, flush=True)
                if args.untimed:
                    topic = wb.create_topic(bootstrap, "path-in", partitions=args.partitions)
                    wb.prefill(bootstrap, topic, texts, "p")
                    untimed[client].append(worker_run(bootstrap, topic, bundle, len(texts), args, client, engines[0], timed=False))
                    w = untimed[client][-1]
                    print(f"round {round_ + 1}, {client}, {engines[0]} tokenizer, stage timing off: worker {w['eps']:,.0f}"
                          f" ev/s {w['cpu_us']:.0f} us/ev (system {w['system_us']:.0f}, {w['switches_per_event']:.2f}"
                          f" context switches/ev); load {wb.load_avg()}", file=sys.stderr, flush=True)
            # Last in the round, with the broker idle: first, it ran beside a broker that had just
            # started (its JVM compiling and collecting on the same two cores) and read 20 us a text
            # where it costs 10-12.
            for engine in engines:
                tokenizing[engine].append(tokenize_alone(bundle, texts, engine))
                print(f"round {round_ + 1}: tokenizing alone, {engine}: {tokenizing[engine][-1]['cpu_us']:.0f} us/text",
                      file=sys.stderr)
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the null bundle: each run builds its own
    best_floor = {c: min(floors[c], key=lambda r: r["cpu_us"]) for c in clients}
    best_of = {k: min(v, key=lambda r: r["cpu_us"]) for k, v in workers.items()}
    tok = {e: min(tokenizing[e], key=lambda r: r["cpu_us"]) for e in engines}
    main_engine = engines[0]
    best = {c: best_of[c, main_engine] for c in clients}
    print(f"\nKafka path, {len(texts):,} events ({source}) on {args.partitions} partitions, null bundle, batches of at most"
          f" {args.max_batch_size} inputs and {args.max_batch_tokens:,} tokens; best of {args.repeats}"
          f" per client and tokenizer, alternating in one run; {wb.load_avg()}")
    if args.tokenizer_from is None:
        print(UNPINNED_TOKENIZER)
    print("| what | " + " | ".join(f"{c}: CPU us/event | {c}: events/s" for c in clients) + " |")
    print("|---|" + "---:|---:|" * len(clients))

    def row(what: str, cells: list[tuple[float | None, str]]) -> None:
        print(f"| {what} | " + " | ".join(f"{'' if us is None else f'{us:.1f}'} | {eps}" for us, eps in cells) + " |")

    row("floor: bare consume -> decode -> produce loop",
        [(best_floor[c]["cpu_us"], f"{best_floor[c]['eps']:,.0f}") for c in clients])
    for engine in engines:
        row(f"worker, end to end (all threads), {engine} tokenizer",
            [(best_of[c, engine]["cpu_us"], f"{best_of[c, engine]['eps']:,.0f}") for c in clients])
    if args.untimed:
        best_untimed = {c: min(untimed[c], key=lambda r: r["cpu_us"]) for c in clients}
        row(f"worker, end to end (all threads), {main_engine} tokenizer, stage timing off",
            [(best_untimed[c]["cpu_us"], f"{best_untimed[c]['eps']:,.0f}") for c in clients])
    row(f"of which system time: the kernel, GIL hand-overs included ({main_engine})",
        [(best[c]["system_us"], f"{best[c]['switches_per_event']:.2f} context switches/event") for c in clients])
    row(f"of which the client: fetch + produce stages, its own threads ({main_engine})",
        [(client_share(best[c]), "") for c in clients])
    for engine in engines:
        row(f"tokenizing alone, {engine} (the null bundle's tokenizer, every thread)",
            [(tok[engine]["cpu_us"], f"{tok[engine]['eps']:,.0f}") for _ in clients])
    for engine in engines:
        row(f"worker minus tokenizing ({engine})", [(best_of[c, engine]["cpu_us"] - tok[engine]["cpu_us"], "") for c in clients])
    row(f"inputs per model call, on average ({main_engine})", [(None, f"{best[c].get('mean_batch', 0):.1f}") for c in clients])
    for stage in STAGE_ORDER:
        if any(stage in best[c]["stages"] for c in clients):
            cells = []
            for c in clients:
                us = best[c]["stages"].get(stage, {}).get("cpu_us")
                cells.append((us, f"{1e6 / us:,.0f} (alone)" if us else ""))
            row(f"stage: {stage} ({main_engine})", cells)
    threads = sorted({name for c in clients for name, us in best[c]["threads_us"].items() if us >= 0.5})
    for name in threads:
        row(f"thread: {name} ({main_engine})", [
            (best[c]["threads_us"].get(name), _switches(best[c].get("threads_switches", {}).get(name))) for c in clients
        ])
    print()
    for c in clients:
        floor_us = best_floor[c]["cpu_us"]
        for engine in engines:
            worker_us = best_of[c, engine]["cpu_us"]
            print(f"{c}, {engine} tokenizer: worker / floor {worker_us / floor_us:.2f}x the CPU per event;"
                  f" worker / (floor + tokenizing alone) {worker_us / (floor_us + tok[engine]['cpu_us']):.2f}x")
        if args.untimed:
            worker_us = best_untimed[c]["cpu_us"]
            print(f"{c}, {main_engine} tokenizer, stage timing off: worker / floor {worker_us / floor_us:.2f}x the CPU per"
                  f" event; worker / (floor + tokenizing alone) {worker_us / (floor_us + tok[main_engine]['cpu_us']):.2f}x")
        if len(engines) > 1:
            a, b = (best_of[c, e]["cpu_us"] for e in engines[:2])
            print(f"{c}: {engines[0]} / {engines[1]} tokenizer: {a / b:.2f}x the worker's CPU per event")
    if len(clients) > 1:
        base = clients[0]
        for c in clients[1:]:
            print(f"{c} / {base}: worker {best[c]['cpu_us'] / best[base]['cpu_us']:.2f}x,"
                  f" floor {best_floor[c]['cpu_us'] / best_floor[base]['cpu_us']:.2f}x the CPU per event")
    wb.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (wb.RESULTS_DIR / "kafka_path_bench.json").write_text(
        json.dumps({"floor": floors, "worker": {f"{c}/{e}": v for (c, e), v in workers.items()},
                    "worker_untimed": untimed, "tokenize": tokenizing, "events": len(texts), "texts": source,
                    "load": wb.load_avg()}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
