"""What each delivery guarantee and commit cadence costs, measured side by side (not a test).

    python bench/guarantee_bench.py BUNDLE [--events 20000] [--repeats 2] [--bootstrap HOST:PORT]

The same pre-filled 3-partition topic of AG News texts (../shared/datasets, or fixture sentences
when absent) is classified by ``tagstream-worker run`` in a separate process, once per setting:

    at_least_once with commits every 1000 ms (the old default), 200 ms (the default), 100 ms
    exactly_once with a transaction every 1000 ms and every 200 ms

Settings alternate over ``--repeats`` rounds; the best run of each counts. Throughput = results /
(last result's time - first input's read time), from the results' own timestamps. CPU per event
is the worker process's user+system time. Raw figures go to bench/results/guarantee_bench.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import worker_bench as wb  # noqa: E402  (the shared worker-process and broker helpers)

SETTINGS: list[tuple[str, str, int]] = [
    ("at-least-once, 1000 ms commits", "at_least_once", 1000),
    ("at-least-once, 200 ms commits (default)", "at_least_once", 200),
    ("at-least-once, 100 ms commits", "at_least_once", 100),
    ("exactly-once, 1000 ms transactions", "exactly_once", 1000),
    ("exactly-once, 200 ms transactions", "exactly_once", 200),
]


def run_once(bootstrap: str, bundle: Path, texts: list[str], guarantee: str, commit_ms: int, args: argparse.Namespace) -> dict[str, Any]:
    extra = {"TAGSTREAM_PROCESSING_GUARANTEE": guarantee, "TAGSTREAM_COMMIT_INTERVAL_MS": str(commit_ms)}
    return throughput(bootstrap, bundle, texts, args, extra)


def throughput(bootstrap: str, bundle: Path, texts: list[str], args: argparse.Namespace, extra: dict[str, str]) -> dict[str, Any]:
    topic = wb.create_topic(bootstrap, "guarantee-in")
    wb.prefill(bootstrap, topic, texts, "g")
    worker = wb.WorkerProcess(bootstrap, topic, bundle, args, f"guarantee-{topic}", extra_env=extra)
    try:
        worker.wait_ready()
        cpu_started = wb.cpu_seconds(worker.proc.pid)
        worker.wait_out(len(texts))
        cpu = wb.cpu_seconds(worker.proc.pid) - cpu_started
    finally:
        worker.stop()
    records = wb.read_all(bootstrap, f"{topic}.labels", len(texts))
    results = [(r.timestamp, json.loads(r.value)) for r in records]
    first_read_ms = min(ts - res["latency_ms"] for ts, res in results)
    last_ms = max(ts for ts, _ in results)
    return {
        "eps": len(results) / max(1e-3, (last_ms - first_read_ms) / 1000),
        "cpu_us": cpu / len(texts) * 1e6,
        "results": len(results),
        "unique": len({res["id"] for _, res in results}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="the bundle to serve (e.g. a small preset trained on AG News)")
    parser.add_argument("--bootstrap", help="an existing broker (default: start a local one)")
    parser.add_argument("--datasets", type=Path, default=wb.DATASETS)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--max-wait-ms", type=float, default=20)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--streams", type=int, default=0)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)

    texts = wb.load_texts(args.datasets)
    if texts is None:
        from worker_support import fixture_texts  # type: ignore[import-not-found]

        print(f"no datasets at {args.datasets}: using fixture sentences")
        texts = fixture_texts(args.events, seed=3)
    texts = wb.take(texts, args.events)
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from localkafka import LocalKafka

        broker = LocalKafka().start()
        bootstrap = broker.bootstrap_servers
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in SETTINGS}
    try:
        for round_ in range(args.repeats):
            for name, guarantee, commit_ms in SETTINGS:
                got = run_once(bootstrap, args.bundle, texts, guarantee, commit_ms, args)
                runs[name].append(got)
                print(f"round {round_ + 1}: {name}: {got['eps']:,.0f} events/s, {got['cpu_us']:.0f} us CPU/event"
                      f" ({got['results']:,} results, {got['unique']:,} distinct) load {wb.load_avg()}", flush=True)
    finally:
        if broker is not None:
            broker.stop()
    base = max(r["eps"] for r in runs[SETTINGS[1][0]])
    print(f"\n{args.bundle} on {len(texts):,} AG News texts, best of {args.repeats}, {wb.load_avg()}")
    print("| setting | events/s | vs at-least-once 200 ms | CPU us/event |")
    print("|---|---:|---:|---:|")
    for name, _, _ in SETTINGS:
        best = max(runs[name], key=lambda r: r["eps"])
        print(f"| {name} | {best['eps']:,.0f} | {best['eps'] / base:.0%} | {best['cpu_us']:.0f} |")
    wb.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (wb.RESULTS_DIR / "guarantee_bench.json").write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
