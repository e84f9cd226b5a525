"""The pod's one /metrics, /healthz and /readyz, made from its processes' own (each on 127.0.0.1).

Metrics: every scrape reads the model process's and each running feeder's /metrics and merges
them by name and labels, so dashboards and alerts see one worker per pod, as with one process:

- summed: counters, histograms and gauges (events, failures, batches, lag per partition (each
  partition is one feeder's), in-flight inputs, ...); the model process's copies of the feeder
  metrics are zero;
- the model process's alone: ``tagstream_model_info``, ``tagstream_bundle_reloads_total`` (it does
  the reloads; feeders only follow) and its own ``tagstream_model_*`` (merged batches, device time);
- the largest: ``tagstream_consumer_paused`` (1 while any feeder pauses);
- the pod's: ``tagstream_ready`` (what /readyz answers), plus ``tagstream_feeders`` (configured,
  running) and ``tagstream_feeder_restarts_total{feeder}``.

Counters stay monotonic across a feeder's restart: the last values read from a feeder that died
are kept and added to its successor's, never subtracted. A feeder that exits by itself (a drain, a
fatal error) sends its metrics as it goes, and those are kept: nothing it counted is lost. Only a
feeder killed (SIGKILL, the OOM killer) loses what it counted after the last scrape. A process that
does not answer a scrape in time is shown with its last values.

Every process is asked at once, each on a thread of its own (``_ask``), so a scrape or a probe
answers within one ``FETCH_TIMEOUT_S`` however many of the pod's processes hang. Asked one after
another, a scrape of a pod whose model process was frozen took 4 s (its /metrics, then its /readyz
for ``tagstream_ready``), and every further silent process added 2 s per path: past the probes'
3 s and the PodMonitor's 10 s, so the pod would vanish from Prometheus, and its probes would time
out without naming the process that hangs, just when both are wanted.

Health: live while the model process answers /healthz and every running feeder does (a feeder
being restarted does not fail it). A model process that answers nothing at all (frozen, or a hang
that holds its interpreter) keeps the pod live until it has been silent for
TAGSTREAM_MODEL_STALL_S (``model_silence_s``): the supervisor kills it then, the feeders count the
calls it was in as hung, and the pod exits 1 by itself. Failing at once instead let the kubelet
kill the whole pod after three probes, long before that, and a pod killed whole counts nothing:
an input that froze the model process every time restarted the pod for ever. Ready while the
model is ready, the feeders together hold a partition, every running feeder reaches the broker
and none has failing commits.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

FETCH_TIMEOUT_S = 2.0  # one process's answer to a scrape or a probe (all are on this host)
MODEL_OWNED = frozenset({"tagstream_model_info", "tagstream_bundle_reloads"})
LARGEST = frozenset({"tagstream_consumer_paused"})
POD_OWNED = frozenset({"tagstream_ready"})
MONOTONIC_TYPES = frozenset({"counter", "histogram", "summary"})

Fetch = Callable[[int, str], bytes]  # (port, path) -> body; raises OSError when it cannot
# What one ask gave: the body; the exception that stopped it (no answer in time, refused, cut
# short); None for a member with no port yet (or, past the deadline, an answer not come).
Answer = bytes | Exception | None
ASK_SLACK_S = 0.5  # beyond FETCH_TIMEOUT_S, what an ask may take before it counts as unanswered


def http_fetch(port: int, path: str) -> bytes:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=FETCH_TIMEOUT_S) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:  # 503 from a probe still carries its JSON
        return bytes(exc.read())


@dataclass
class Member:
    """One process of the pod, as the view knows it."""

    name: str  # "model", "feeder-0", ...
    port: int | None  # its telemetry port, once it has one
    incarnation: int = 0  # bumped on each restart of a feeder


SampleKey = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


class PodView:
    """See the module docstring. Thread-safe: the HTTP server calls it from its threads."""

    def __init__(
        self, feeders: int, fetch: Fetch = http_fetch, model_silence_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._lock = threading.Lock()
        # How long a model process that answers nothing keeps the pod live (the supervisor's limit;
        # 0: not at all), and when it last answered /healthz.
        self._model_silence_s = model_silence_s
        self._clock = clock
        self._model_answered = clock()
        self.model = Member("model", None)
        self.feeders = [Member(f"feeder-{i}", None) for i in range(feeders)]
        self.model_alive = True
        # family -> (type, help, {sample key: value}): the last values read per member incarnation
        self._last: dict[tuple[str, int], dict[str, tuple[str, str, dict[SampleKey, float]]]] = {}
        self._retired: dict[str, tuple[str, str, dict[SampleKey, float]]] = {}
        self._final: set[tuple[str, int]] = set()  # incarnations whose last metrics they sent themselves
        self.registry = CollectorRegistry(auto_describe=True)
        self.configured = Gauge("tagstream_feeders", "Feeder processes: configured, running.", ["state"],
                                registry=self.registry)
        self.restarts = Counter("tagstream_feeder_restarts", "Feeder processes restarted after they died.",
                                ["feeder"], registry=self.registry)
        self.configured.labels(state="configured").set(feeders)
        self.configured.labels(state="running").set_function(
            lambda: float(sum(1 for f in self.feeders if f.port is not None))
        )
        for i in range(feeders):
            self.restarts.labels(feeder=str(i))

    # -- what the supervisor tells it -----------------------------------------------------------
    def feeder_up(self, index: int, port: int) -> None:
        with self._lock:
            self.feeders[index].port = port

    def feeder_last_metrics(self, index: int, body: bytes) -> None:
        """A feeder's /metrics as it exits (it sends them): they replace its last scrape, so what it
        counted after that scrape is kept too (``feeder_down``)."""
        with self._lock:
            member = self.feeders[index]
            key = (member.name, member.incarnation)
            self._last[key] = _parse(body)
            self._final.add(key)  # a scrape answered before it must not replace them

    def feeder_down(self, index: int, restarting: bool) -> None:
        """A feeder exited: keep its counters' last values so the pod's sums never go down."""
        with self._lock:
            member = self.feeders[index]
            last = self._last.pop((member.name, member.incarnation), {})
            self._final.discard((member.name, member.incarnation))
            for family, (kind, doc, samples) in last.items():
                if kind not in MONOTONIC_TYPES:
                    continue
                _, _, kept = self._retired.setdefault(family, (kind, doc, {}))
                for key, value in samples.items():
                    if not key[0].endswith("_created"):
                        kept[key] = kept.get(key, 0.0) + value
            member.port = None
            member.incarnation += 1
        if restarting:
            self.restarts.labels(feeder=str(index)).inc()

    # -- /metrics ----------------------------------------------------------------------------------
    def metrics(self) -> bytes:
        members = [self.model, *self.feeders]
        with self._lock:
            seen = [(member, member.port, (member.name, member.incarnation)) for member in members]
        # One round for both: each member's /metrics and the /readyz answers tagstream_ready needs.
        answers = self._ask([(port, "/metrics") for _, port, _ in seen] + [(port, "/readyz") for _, port, _ in seen])
        merged: dict[str, tuple[str, str, dict[SampleKey, float]]] = {}
        for (member, port, key), answer in zip(seen, answers[: len(seen)], strict=True):
            families = self._families(member, key, port, answer)
            for family, (kind, doc, samples) in families.items():
                if family in POD_OWNED or (family in MODEL_OWNED and member is not self.model):
                    continue
                _, _, into = merged.setdefault(family, (kind, doc, {}))
                for sample_key, value in samples.items():
                    into[sample_key] = _combine(family, sample_key[0], into.get(sample_key), value)
        with self._lock:
            retired = {f: (k, d, dict(s)) for f, (k, d, s) in self._retired.items()}
        for family, (kind, doc, samples) in retired.items():
            _, _, into = merged.setdefault(family, (kind, doc, {}))
            for sample_key, value in samples.items():
                into[sample_key] = into.get(sample_key, 0.0) + value
        ready = Metric("tagstream_ready", "1 while /readyz would answer 200.", "gauge")
        ready.add_sample("tagstream_ready", {}, float(self._readiness(answers[len(seen):])[0]))
        metrics = [_to_metric(family, *entry) for family, entry in merged.items()]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed([*metrics, ready]))
        return bytes(generate_latest(registry)) + bytes(generate_latest(self.registry))

    def _families(
        self, member: Member, key: tuple[str, int], port: int | None, answer: Answer
    ) -> dict[str, tuple[str, str, dict[SampleKey, float]]]:
        """A member's metrics from its answer, or the last ones read when it gave none."""
        if port is None:
            return {}
        if not isinstance(answer, bytes):
            with self._lock:
                return self._last.get(key, {})
        families = _parse(answer)
        with self._lock:
            if member.incarnation == key[1] and key not in self._final:  # not restarted or ended meanwhile
                self._last[key] = families
        return families

    # -- /healthz and /readyz ------------------------------------------------------------------------
    def liveness(self) -> tuple[bool, dict[str, Any]]:
        ports = [member.port for member in [self.model, *self.feeders]]
        answers = self._ask([(port, "/healthz") for port in ports])
        model_ok, model = _probe_body(answers[0])
        if isinstance(answers[0], bytes):
            self._model_answered = self._clock()
        elif self.model.port is not None and self._model_silence_s:  # see the module's doc
            silent = self._clock() - self._model_answered
            if silent < self._model_silence_s:
                model_ok = True
                model = {**model, "ok": True, "silent_s": round(silent, 1),
                         "killed_once_silent_s": self._model_silence_s}
        model_ok = model_ok and self.model_alive
        feeders: dict[str, Any] = {}
        ok = model_ok
        for member, port, answer in zip(self.feeders, ports[1:], answers[1:], strict=True):
            if port is None:
                feeders[member.name] = {"state": "starting or restarting"}
                continue
            feeder_ok, body = _probe_body(answer)
            feeders[member.name] = body
            ok = ok and feeder_ok
        return ok, {"ok": ok, "model_process": model, "feeders": feeders}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self._readiness(self._ask([(member.port, "/readyz") for member in [self.model, *self.feeders]]))

    def _readiness(self, answers: list[Answer]) -> tuple[bool, dict[str, Any]]:
        """Ready or not from the /readyz answers of the model process (first) and each feeder."""
        _, model = _probe_body(answers[0])
        model_ready = bool(model.get("model_ready")) and self.model_alive
        assigned, reachable, failing, up = 0, True, False, 0
        for answer in answers[1:]:
            _, body = _probe_body(answer)
            if not body:  # no port: starting or restarting
                continue
            up += 1
            assigned += int(body.get("assigned_partitions", 0))
            reachable = reachable and bool(body.get("broker_reachable", False))
            failing = failing or bool(body.get("commits_failing", False))
        ok = model_ready and up > 0 and assigned > 0 and reachable and not failing
        return ok, {
            "ok": ok, "model_ready": model_ready, "assigned_partitions": assigned, "broker_reachable": reachable,
            "commits_failing": failing, "feeders_up": up, "feeders": len(self.feeders),
        }

    def answers(self, member: Member) -> bool:
        """Whether ``member`` answers /healthz at all (live or not) within FETCH_TIMEOUT_S."""
        answered = isinstance(self._ask([(member.port, "/healthz")])[0], bytes)
        if answered and member is self.model:
            self._model_answered = self._clock()
        return answered

    def _ask(self, asks: list[tuple[int | None, str]]) -> list[Answer]:
        """Every (port, path) asked at once, each on a thread of its own (module docstring); the
        answers in the same order. Whatever has not answered by FETCH_TIMEOUT_S (plus a little)
        counts as no answer: its thread ends by itself when its own timeout fires."""
        answers: list[Answer] = [None] * len(asks)

        def ask(i: int, port: int, path: str) -> None:
            try:
                answers[i] = self._fetch(port, path)
            except Exception as exc:  # refused, timed out, or cut short (http.client's own errors)
                answers[i] = exc

        threads = [
            threading.Thread(target=ask, args=(i, port, path), name="tagstream-podview-ask", daemon=True)
            for i, (port, path) in enumerate(asks)
            if port is not None
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + FETCH_TIMEOUT_S + ASK_SLACK_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        got = list(answers)  # a late answer must not change what this call has decided
        for i, (port, _) in enumerate(asks):
            if port is not None and got[i] is None:
                got[i] = TimeoutError(f"no answer within {FETCH_TIMEOUT_S + ASK_SLACK_S:.1f} s")
        return got


def _parse(body: bytes) -> dict[str, tuple[str, str, dict[SampleKey, float]]]:
    """A /metrics body: family -> (type, help, {sample key: value})."""
    families: dict[str, tuple[str, str, dict[SampleKey, float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        families[family.name] = (family.type, family.documentation, samples)
    return families


def _probe_body(answer: Answer) -> tuple[bool, dict[str, Any]]:
    """(ok, body) of a probe's answer; an empty body for a member with no port."""
    if answer is None:
        return False, {}
    if isinstance(answer, Exception):
        return False, {"ok": False, "error": f"no answer: {answer}"}
    try:
        body = json.loads(answer)
    except ValueError as exc:
        return False, {"ok": False, "error": f"no answer: {exc}"}
    return bool(body.get("ok")), body


def _combine(family: str, sample: str, old: float | None, new: float) -> float:
    if old is None:
        return new
    if sample.endswith("_created"):
        return min(old, new)
    if family in LARGEST:
        return max(old, new)
    return old + new


def _to_metric(family: str, kind: str, doc: str, samples: dict[SampleKey, float]) -> Metric:
    metric = Metric(family, doc, kind)
    for (name, labels), value in samples.items():
        metric.add_sample(name, dict(labels), value if not math.isnan(value) else 0.0)
    return metric


class _Fixed:
    """A collector of ready-made metric families (for generate_latest)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics
