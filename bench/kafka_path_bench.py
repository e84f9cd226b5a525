"""Where the worker's CPU goes when the model costs nothing: the Kafka path, stage by stage (not a test).

    python bench/kafka_path_bench.py [--events 100000] [--partitions 3] [--repeats 2]
                                     [--tokenizer-from BUNDLE] [--client kafka-python] [--profile]

On a pre-filled topic of AG News texts (../shared/datasets, else fixture sentences):

floor   a bare loop with the same Kafka client, in its own process: poll (500 at a time), json-decode
        each value, produce one small JSON result per record, flush at the end. What any consumer of
        this client pays per event. A second floor also tokenizes each poll's texts with the null
        bundle's tokenizer (one call per poll, as the worker does): what any consumer that feeds a
        Transformer pays.
worker  ``tagstream-worker run`` with a *null* bundle (a real bundle and tokenizer whose TorchScript
        model returns fixed probabilities at once), with TAGSTREAM_STAGE_TIMING on, in its own
        process: CPU per event in all, and per stage (worker/stages.py), plus the client's own
        threads read from /proc (network I/O, delivery callbacks).

floor and worker alternate ``--repeats`` times; the best run of each counts. CPU per event is the
process's user+system time over the events, every thread included. ``--profile`` records the
worker with py-spy, sampling only threads that hold the GIL (the Python work itself, not the
waits for the GIL that crowd a profile of 8 busy threads on 2 cores), as speedscope JSON in
bench/results/. Figures also go to
bench/results/kafka_path_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

STAGE_ORDER = ("fetch", "parse", "tokenize", "track", "commit", "batch", "inference", "result_build", "produce")


# -- the floor: a bare consume -> produce loop ------------------------------------------------------------
def bare_loop_main(argv: list[str]) -> int:
    """Child process: consume ``--count`` records, decode, produce a small result each; print figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--client", default="kafka-python")
    parser.add_argument("--tokenizer", help="also tokenize each poll's texts with this tokenizer.json")
    args = parser.parse_args(argv)
    from kafka import KafkaConsumer, KafkaProducer

    encode = None
    if args.tokenizer:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(args.tokenizer)
        tokenizer.enable_truncation(max_length=128)
        encode = tokenizer.encode_batch_fast

    consumer = KafkaConsumer(
        args.topic, bootstrap_servers=args.bootstrap, group_id=f"floor-{os.getpid()}", auto_offset_reset="earliest",
        enable_auto_commit=False, max_poll_records=500, metrics_enabled=False,
    )
    producer = KafkaProducer(
        bootstrap_servers=args.bootstrap, linger_ms=5, batch_size=256 * 1024, metrics_enabled=False,
        enable_idempotence=False,
    )
    out = f"{args.topic}.floor"
    seen = 0
    started = cpu_started = None
    while seen < args.count:
        batches = consumer.poll(timeout_ms=200, max_records=500)
        if batches and started is None:
            started, cpu_started = time.monotonic(), _cpu()
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


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def floor(bootstrap: str, topic: str, count: int, client: str, tokenizer: Path | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--bare-loop", "--bootstrap", bootstrap, "--topic", topic, "--count", str(count),
         "--client", client, *(["--tokenizer", str(tokenizer)] if tokenizer else [])],
        capture_output=True, text=True, timeout=wb.RUN_TIMEOUT_S, cwd=REPO,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the bare loop failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# -- the worker with a null bundle --------------------------------------------------------------------------
def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of a process (threads of one name summed)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
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


def worker_run(bootstrap: str, topic: str, bundle: Path, count: int, args: argparse.Namespace) -> dict[str, Any]:
    extra = {"TAGSTREAM_STAGE_TIMING": "true", "TAGSTREAM_KAFKA_CLIENT": args.client}
    worker = wb.WorkerProcess(bootstrap, topic, bundle, args, f"path-{topic}", extra_env=extra)
    profiler = None
    try:
        worker.wait_ready()
        threads_before = thread_cpu(worker.proc.pid)
        cpu_started = wb.cpu_seconds(worker.proc.pid)
        if args.profile:
            wb.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            profile_path = wb.RESULTS_DIR / f"kafka_path_profile-{args.label}.speedscope.json"
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
        threads = {k: v - threads_before.get(k, 0.0) for k, v in thread_cpu(worker.proc.pid).items()}
        stages = stage_figures(scrape(worker.port))
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
        "threads_us": {k: v / count * 1e6 for k, v in sorted(threads.items(), key=lambda kv: -kv[1]) if v > 0},
    }


def _py_spy() -> str | None:
    import shutil

    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


# -- main -----------------------------------------------------------------------------------------------------
def build_null_bundle(tokenizer_from: Path | None, out: Path) -> Path:
    from worker_support import make_null_bundle  # type: ignore[import-not-found]

    is_bundle = tokenizer_from is not None and tokenizer_from.is_dir()
    return make_null_bundle(out, tokenizer_from=tokenizer_from, labels=None if is_bundle else ["a", "b", "c", "d"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--bare-loop":
        return bare_loop_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="an existing broker (default: start a local one)")
    parser.add_argument("--datasets", type=Path, default=wb.DATASETS)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--client", default="kafka-python", help="TAGSTREAM_KAFKA_CLIENT for the worker and the floor")
    parser.add_argument("--tokenizer-from", type=Path, help="a bundle (or tokenizer.json) whose tokenizer the null bundle uses")
    parser.add_argument("--profile", action="store_true", help="record the worker with py-spy")
    parser.add_argument("--label", default="run", help="names the profile file")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--max-wait-ms", type=float, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)

    texts = wb.load_texts(args.datasets)
    if texts is None:
        from worker_support import fixture_texts

        print(f"no datasets at {args.datasets}: using fixture sentences", file=sys.stderr)
        texts = fixture_texts(args.events, seed=5, max_words=40)
    texts = wb.take(texts, args.events)
    tmp = Path(tempfile.mkdtemp(prefix="null-bundle-"))
    bundle = build_null_bundle(args.tokenizer_from, tmp / "bundle")

    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from localkafka import LocalKafka

        broker = LocalKafka().start()
        bootstrap = broker.bootstrap_servers
    floors: list[dict[str, Any]] = []
    token_floors: list[dict[str, Any]] = []
    workers: list[dict[str, Any]] = []
    try:
        for round_ in range(args.repeats):
            topic = wb.create_topic(bootstrap, "path-in", partitions=args.partitions)
            wb.prefill(bootstrap, topic, texts, "p")
            floors.append(floor(bootstrap, topic, len(texts), args.client))
            token_floors.append(floor(bootstrap, topic, len(texts), args.client, bundle / "tokenizer.json"))
            workers.append(worker_run(bootstrap, topic, bundle, len(texts), args))
            print(f"round {round_ + 1}: floor {floors[-1]['eps']:,.0f} ev/s {floors[-1]['cpu_us']:.0f} us/ev;"
                  f" worker {workers[-1]['eps']:,.0f} ev/s {workers[-1]['cpu_us']:.0f} us/ev; load {wb.load_avg()}",
                  file=sys.stderr, flush=True)
    finally:
        if broker is not None:
            broker.stop()
    best_floor = min(floors, key=lambda r: r["cpu_us"])
    best_token_floor = min(token_floors, key=lambda r: r["cpu_us"])
    best = min(workers, key=lambda r: r["cpu_us"])
    print(f"\nKafka path, {len(texts):,} events on {args.partitions} partitions, client {args.client},"
          f" null bundle; best of {args.repeats}; {wb.load_avg()}")
    print("| what | CPU us/event | events/s |")
    print("|---|---:|---:|")
    print(f"| floor: bare consume -> decode -> produce loop | {best_floor['cpu_us']:.1f} | {best_floor['eps']:,.0f} |")
    print(f"| floor + tokenizing each poll's texts | {best_token_floor['cpu_us']:.1f} | {best_token_floor['eps']:,.0f} |")
    print(f"| worker, end to end (all threads) | {best['cpu_us']:.1f} | {best['eps']:,.0f} |")
    for stage in STAGE_ORDER:
        if stage in best["stages"]:
            us = best["stages"][stage]["cpu_us"]
            print(f"| stage: {stage} | {us:.1f} | {1e6 / us if us else 0:,.0f} (alone) |")
    for name, us in best["threads_us"].items():
        if us >= 0.5:
            print(f"| thread: {name} | {us:.1f} | |")
    print(f"\nworker / floor: {best['cpu_us'] / best_floor['cpu_us']:.2f}x the CPU per event;"
          f" worker / (floor + tokenizing): {best['cpu_us'] / best_token_floor['cpu_us']:.2f}x")
    wb.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (wb.RESULTS_DIR / "kafka_path_bench.json").write_text(
        json.dumps({"floor": floors, "floor_tokenizing": token_floors, "worker": workers}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
