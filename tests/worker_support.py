"""Test support for the worker: fixture texts and tiny model bundles built on the spot.

The bundles are randomly initialised (no training): what the worker tests need is a real
TorchScript model, a real tokenizer and a real bundle on disk, fast. The head is scaled up so
predictions are confident, which keeps "same label online and offline" free of ties.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from model.bundle import MULTI_LABEL, SINGLE_LABEL, write_bundle
from model.config import EncoderConfig, TokenizerConfig
from model.encoder import EncoderClassifier, ProbabilityModel
from model.tokenizer import pad_id, train_tokenizer
from model.truncation import Truncation

LABELS = ["ham", "spam", "news"]

_WORDS = [
    "free", "win", "prize", "call", "now", "claim", "cash", "offer", "urgent", "reply", "stop",
    "text", "mobile", "meeting", "lunch", "tonight", "home", "later", "thanks", "love",
    "sorry", "tomorrow", "see", "you", "market", "shares", "rose", "fell", "government",
    "election", "team", "match", "season", "league", "oil", "prices", "company", "profit",
    "quarter", "report", "minister", "talks", "peace", "storm",
]


def fixture_texts(n: int, seed: int = 0, min_words: int = 2, max_words: int = 40) -> list[str]:
    """``n`` reproducible pseudo-sentences of varied length (some past a short max_length)."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        words = rng.choices(_WORDS, k=rng.randint(min_words, max_words))
        texts.append(f"{' '.join(words)} #{i}")
    return texts


def make_tiny_bundle(
    out_dir: Path,
    *,
    seed: int = 0,
    labels: list[str] | None = None,
    name: str = "tiny-test",
    max_length: int = 32,
    d_model: int = 32,
    thresholds: list[float] | None = None,
    truncation: Truncation | None = None,
    head_scale: float = 200.0,
) -> Path:
    """Write a random tiny bundle to ``out_dir`` and return its path.

    ``thresholds`` (one per label) make it a multi-label bundle (sigmoid outputs); ``truncation``
    how it reads long texts (default head).
    """
    labels = list(labels or LABELS)
    tokenizer = train_tokenizer(fixture_texts(300, seed=1234), TokenizerConfig(vocab_size=300, min_frequency=1))
    torch.manual_seed(seed)
    cfg = EncoderConfig(
        vocab_size=tokenizer.get_vocab_size(), max_length=max_length, d_model=d_model, n_heads=2,
        n_layers=1, d_ff=2 * d_model, n_classes=len(labels), dropout=0.0, attn_dropout=0.0,
        pad_id=pad_id(tokenizer),
    )
    model = EncoderClassifier(cfg)
    with torch.no_grad():
        model.head.weight.mul_(head_scale)  # confident, well-separated predictions
    model.eval()
    scripted = torch.jit.script(ProbabilityModel(model, multi_label=thresholds is not None).eval())
    return write_bundle(
        out_dir,
        scripted_model=scripted,
        tokenizer=tokenizer,
        labels=labels,
        name=name,
        max_length=max_length,
        lowercase=True,
        model_config=cfg.to_dict(),
        metrics={},
        training={"note": "random weights for tests"},
        task=MULTI_LABEL if thresholds is not None else SINGLE_LABEL,
        thresholds=thresholds,
        truncation=truncation,
    )


# -- Kafka helpers for the integration tests -----------------------------------------------------
# A worker with the tiny bundle starts in well under a second; results of a few thousand events
# arrive in seconds. The timeouts only bound a failure.
RESULTS_TIMEOUT_S = 90
# Readers often start before the worker creates its output topic on first use: a subscription to a
# topic that does not exist yet is only noticed at the next metadata refresh (5 min by default).
READER_METADATA_MAX_AGE_MS = 1_000
QUIET_S = 1.0  # after the expected count, keep reading this long to catch duplicates


def produce_events(
    bootstrap: str, topic: str, texts: list[str], prefix: str = "e", **client: Any
) -> list[str]:
    """Send one JSON event per text (id ``{prefix}{i}``, key = id, a header); return the ids.

    ``client``: more kafka-python settings (security), e.g. ``Endpoint.client_config()``'s."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**{"bootstrap_servers": bootstrap, "linger_ms": 5, **client})
    ids = []
    for i, text in enumerate(texts):
        event_id = f"{prefix}{i}"
        value = json.dumps({"id": event_id, "text": text}).encode()
        producer.send(topic, value=value, key=event_id.encode(), headers=[("origin", b"test")])
        ids.append(event_id)
    producer.flush(30)
    producer.close()
    return ids


def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """The sum of ``group``'s committed offsets on ``topic``'s partitions (the broker's own count)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)


def read_records(
    bootstrap: str, topic: str, expected: int, timeout_s: float = RESULTS_TIMEOUT_S, quiet_s: float = QUIET_S,
    **client: Any,
) -> list[Any]:
    """Read ``topic`` from the start until ``expected`` records arrived, then ``quiet_s`` longer.

    ``client``: more kafka-python settings (security), as for ``produce_events``."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, **{"bootstrap_servers": bootstrap, **client}, auto_offset_reset="earliest", group_id=None, metadata_max_age_ms=READER_METADATA_MAX_AGE_MS,
        enable_auto_commit=False,
    )
    try:
        return poll_records(consumer, expected, timeout_s, quiet_s)
    finally:
        consumer.close()


def assert_only_dead_letter(bootstrap: str, topic: str, event_id: str, reason: str, **client: Any) -> None:
    """``topic``'s dead-letter topic holds one record: ``event_id``'s, with ``tagstream.reason``
    ``reason``. ``client``: as for ``read_records`` (e.g. read_committed)."""
    letters = read_records(bootstrap, f"{topic}.dlq", 1, **client)
    assert [json.loads(r.value)["id"] for r in letters] == [event_id]
    assert dict(letters[0].headers)["tagstream.reason"] == reason.encode()


def poll_records(consumer: Any, expected: int, timeout_s: float, quiet_s: float = QUIET_S) -> list[Any]:
    """Poll ``consumer`` until ``expected`` records arrived (or ``timeout_s``), then ``quiet_s``
    longer, so that duplicates past the expected count are caught too."""
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
    quiet_until = time.monotonic() + quiet_s
    while time.monotonic() < quiet_until:
        for batch in consumer.poll(timeout_ms=100).values():
            records.extend(batch)
    return records


def make_topic(name: str, partitions: int = 2, **client: Any) -> str:
    """Create topic ``name`` on a broker of the test's own (the session broker has the ``new_topic``
    fixture), and wait until every partition has a leader. ``client``: kafka-python admin settings
    (``bootstrap_servers``, and security settings where the listener needs them)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**client)
    try:
        admin.create_topics({name: {"num_partitions": partitions, "replication_factor": -1}})
        admin.wait_for_topics([name], timeout_ms=30_000)
    finally:
        admin.close()
    return name


def http_status(port: int, path: str) -> int | None:
    """The HTTP status of a worker's ``path`` (/healthz, /readyz) on ``port``; None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


# -- worker processes ----------------------------------------------------------------------------
START_TIMEOUT_S = 60  # a fresh Python with torch imports in a few seconds; this bounds a hang
DRAIN_TIMEOUT_S = 10  # what worker_env gives TAGSTREAM_DRAIN_TIMEOUT_S


# The workers' model-call journals (TAGSTREAM_STATE_DIR, worker/call_journal.py): a folder per test
# process, removed at its exit, so that test runs leave nothing in /tmp/tagstream. worker_env gives it
# to worker processes; tests/conftest.py to workers in the test process.
STATE_DIR = Path(tempfile.mkdtemp(prefix="tagstream-state-"))
atexit.register(shutil.rmtree, STATE_DIR, True)


def worker_env(bootstrap: str, topic: str, bundle: Path, group: str, **extra: str) -> dict[str, str]:
    """A worker process's environment: these settings, and the test's Kafka client (conftest's
    ``kafka_client`` fixture sets TAGSTREAM_TEST_KAFKA_CLIENT; kafka-python without it)."""
    client = os.environ.get("TAGSTREAM_TEST_KAFKA_CLIENT", "kafka-python")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSTREAM_")}
    env["TAGSTREAM_KAFKA_CLIENT"] = client
    env["TAGSTREAM_STATE_DIR"] = str(STATE_DIR)
    env.update(
        TAGSTREAM_BOOTSTRAP_SERVERS=bootstrap, TAGSTREAM_INPUT_TOPICS=topic, TAGSTREAM_BUNDLE_PATH=str(bundle),
        TAGSTREAM_GROUP_ID=group, TAGSTREAM_METRICS_PORT="0", TAGSTREAM_MAX_WAIT_MS="10",
        TAGSTREAM_COMMIT_INTERVAL_MS="200", TAGSTREAM_DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S),
        TAGSTREAM_RELOAD_INTERVAL_S="0", TAGSTREAM_LOG_FORMAT="json", **extra,
    )
    # A flaky test rerun with the workers' debug logs (librdkafka's debug contexts too) on.
    if level := os.environ.get("TAGSTREAM_TEST_WORKER_LOG_LEVEL"):
        env["TAGSTREAM_LOG_LEVEL"] = level
    return env


def log_events(log: Path, name: str) -> list[dict[str, Any]]:
    """The JSON log lines of a worker process (worker_env's TAGSTREAM_LOG_FORMAT=json) named ``name``."""
    lines = log.read_text(errors="replace").splitlines()
    return [e for e in (json.loads(line) for line in lines if line.startswith("{")) if e.get("event") == name]


def spawn(env: dict[str, str], log: Path, command: str = "run") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli", command], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )




# -- the null bundle: a real bundle whose model costs (almost) nothing ------------------------------
class _NullModel(torch.nn.Module):
    """Returns the same probabilities for every input at once: what is left is the worker's own cost."""

    def __init__(self, n_labels: int) -> None:
        super().__init__()
        probs = torch.full((1, n_labels), 0.5 / max(1, n_labels - 1))
        probs[0, 0] = 0.5
        self.register_buffer("probs", probs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.probs.expand(input_ids.size(0), -1)  # (B, n_labels)


STALL_TOKEN = "[STALL]"  # in a text, makes a stalling null bundle's model call never seem to return


class _StallingModel(_NullModel):
    """_NullModel, except that a batch holding the STALL_TOKEN runs far longer than any test's
    patience (a hung device call, seen from the worker), computing to no purpose."""

    def __init__(self, n_labels: int, stall_id: int) -> None:
        super().__init__(n_labels)
        self.stall_id = stall_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if bool((input_ids == self.stall_id).any()):
            x = torch.ones(128, 128) / 128
            for _ in range(10_000_000):
                x = torch.tanh(x @ x)
        return self.probs.expand(input_ids.size(0), -1)  # (B, n_labels)


def make_null_bundle(
    out_dir: Path, *, tokenizer_from: Path | None = None, labels: list[str] | None = None, max_length: int = 128,
    stalling: bool = False,
) -> Path:
    """A bundle with a real tokenizer (``tokenizer_from``: a bundle or a tokenizer.json; else a small
    one trained here)
    and a TorchScript model that returns fixed probabilities without computing anything; with
    ``stalling``, a model call on a text holding STALL_TOKEN never seems to return."""
    from tokenizers import Tokenizer

    from model.bundle import Bundle

    if tokenizer_from is not None and Path(tokenizer_from).is_file():  # a tokenizer.json
        tokenizer = Tokenizer.from_file(str(tokenizer_from))
        lowercase = True
    elif tokenizer_from is not None:
        source = Bundle.load(tokenizer_from)
        tokenizer = Tokenizer.from_str(source.tokenizer.to_str())
        labels = labels or list(source.labels)
        max_length = source.max_length
        lowercase = source.lowercase
    else:
        tokenizer = train_tokenizer(fixture_texts(300, seed=1234), TokenizerConfig(vocab_size=300, min_frequency=1))
        lowercase = True
    labels = list(labels or LABELS)
    module: torch.nn.Module = _NullModel(len(labels))
    if stalling:
        tokenizer.add_special_tokens([STALL_TOKEN])
        module = _StallingModel(len(labels), tokenizer.token_to_id(STALL_TOKEN))
    scripted = torch.jit.script(module.eval())
    return write_bundle(
        out_dir, scripted_model=scripted, tokenizer=tokenizer, labels=labels, name="null", max_length=max_length,
        lowercase=lowercase, model_config={"kind": "null"}, metrics={},
        training={"note": "fixed probabilities: measures everything but the model"},
    )


class DeliveryRecorder:
    """A producer's delivery handler (worker/kafka/base.py, DeliveryHandler) that keeps every call it gets, from any
    thread: ``one_by_one`` (delivered), ``in_bulk`` (each delivered_many call's tokens), ``failures`` ((token,
    Failure) pairs)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.one_by_one: list[Any] = []
        self.in_bulk: list[list[Any]] = []
        self.failures: list[tuple[Any, Any]] = []

    def delivered(self, token: Any) -> None:
        with self.lock:
            self.one_by_one.append(token)

    def delivered_many(self, tokens: list[Any]) -> None:
        with self.lock:
            self.in_bulk.append(list(tokens))

    def failed(self, token: Any, error: Any) -> None:
        with self.lock:
            self.failures.append((token, error.failure))
