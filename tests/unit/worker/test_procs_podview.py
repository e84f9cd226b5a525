"""The pod's one /metrics, /healthz and /readyz, made from its processes' own; and how many feeders a pod runs."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections import namedtuple
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.errors import SettingsError
from worker.procs.plan import (
    check_shared_memory,
    feeder_count,
    feeder_settings,
    gpu_visible,
    tokenizer_threads,
)
from worker.procs.podview import PodView
from worker.settings import load_settings
from worker.telemetry import Metrics


class FakePod:
    """Each process's /metrics and probes, as canned answers on fake ports."""

    def __init__(self) -> None:
        self.metrics: dict[int, Metrics] = {}
        self.health: dict[int, dict[str, dict]] = {}
        self.down: set[int] = set()

    def add(self, port: int, live: bool = True, ready: dict | None = None) -> Metrics:
        self.metrics[port] = Metrics()
        self.health[port] = {"/healthz": {"ok": live}, "/readyz": ready or {"ok": True}}
        return self.metrics[port]

    def fetch(self, port: int, path: str) -> bytes:
        if port in self.down:
            raise OSError("connection refused")
        if path == "/metrics":
            return generate_latest(self.metrics[port].registry)
        return json.dumps(self.health[port][path]).encode()


def values(text: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


FEEDER_READY = {"ok": True, "assigned_partitions": 2, "broker_reachable": True, "commits_failing": False}


@pytest.fixture
def fake():
    pod = FakePod()
    model = pod.add(9000, ready={"ok": False, "model_ready": True, "assigned_partitions": 0})
    model.set_model("news", "v2")
    model.bundle_reloads.labels(result="swapped").inc()
    for port in (9001, 9002):
        m = pod.add(port, ready=dict(FEEDER_READY))
        m.set_model("news", "v2")
        m.bundle_reloads.labels(result="swapped").inc()  # a feeder counts the swap it follows too
    view = PodView(2, fetch=pod.fetch)
    view.model.port = 9000
    view.feeder_up(0, 9001)
    view.feeder_up(1, 9002)
    return pod, view


def test_the_pod_sums_its_feeders_and_takes_model_facts_from_the_model_process(fake):
    """Counters and histograms add up over feeders; model_info and reloads come from the model process once."""
    pod, view = fake
    pod.metrics[9001].events_out.labels(topic="in").inc(30)
    pod.metrics[9002].events_out.labels(topic="in").inc(12)
    pod.metrics[9001].batch_size.observe(8)
    pod.metrics[9002].batch_size.observe(64)
    pod.metrics[9001].consumer_lag.labels(topic="in", partition="0").set(5)
    pod.metrics[9002].consumer_lag.labels(topic="in", partition="1").set(7)
    pod.metrics[9002].paused.set(1)
    got = values(view.metrics())
    assert got[("tagstream_events_out_total", (("topic", "in"),))] == 42
    assert got[("tagstream_batch_size_count", ())] == 2
    assert got[("tagstream_batch_size_bucket", (("le", "8.0"),))] == 1
    assert got[("tagstream_consumer_lag", (("partition", "0"), ("topic", "in")))] == 5
    assert got[("tagstream_consumer_lag", (("partition", "1"), ("topic", "in")))] == 7
    assert got[("tagstream_consumer_paused", ())] == 1  # any feeder paused, not a count
    assert got[("tagstream_model_info", (("name", "news"), ("version", "v2")))] == 1
    assert got[("tagstream_bundle_reloads_total", (("result", "swapped"),))] == 1
    assert got[("tagstream_ready", ())] == 1
    assert got[("tagstream_feeders", (("state", "running"),))] == 2


def test_counters_never_go_down_when_a_feeder_restarts_or_misses_a_scrape(fake):
    """A dead feeder's last counts are kept under its successor's; a feeder that does not answer shows its last."""
    pod, view = fake
    pod.metrics[9001].events_in.labels(topic="in").inc(100)
    pod.metrics[9002].events_in.labels(topic="in").inc(50)
    assert values(view.metrics())[("tagstream_events_in_total", (("topic", "in"),))] == 150
    pod.down.add(9002)  # busy: no answer within the timeout
    assert values(view.metrics())[("tagstream_events_in_total", (("topic", "in"),))] == 150
    pod.down.discard(9002)
    view.feeder_down(0, restarting=True)  # feeder 0 died; its successor starts from zero
    successor = pod.add(9003, ready=dict(FEEDER_READY))
    successor.events_in.labels(topic="in").inc(5)
    view.feeder_up(0, 9003)
    got = values(view.metrics())
    assert got[("tagstream_events_in_total", (("topic", "in"),))] == 155
    assert got[("tagstream_feeder_restarts_total", (("feeder", "0"),))] == 1


def test_a_feeder_that_exits_by_itself_loses_none_of_its_counts(fake):
    """A feeder that exits on its own sends its metrics as it goes: what it counted after the last scrape
    is kept under its successor's; a scrape answered before them does not replace them."""
    pod, view = fake
    pod.metrics[9001].events_out.labels(topic="in").inc(100)
    stale = pod.fetch(9001, "/metrics")  # a scrape's answer, in flight while the feeder finishes
    assert values(view.metrics())[("tagstream_events_out_total", (("topic", "in"),))] == 100
    pod.metrics[9001].events_out.labels(topic="in").inc(40)  # delivered after that scrape, as it drained
    view.feeder_last_metrics(0, generate_latest(pod.metrics[9001].registry))
    view._families(view.feeders[0], ("feeder-0", 0), 9001, stale)  # the late answer: ignored
    view.feeder_down(0, restarting=True)
    pod.add(9003, ready=dict(FEEDER_READY))  # its successor, from zero
    view.feeder_up(0, 9003)
    assert values(view.metrics())[("tagstream_events_out_total", (("topic", "in"),))] == 140


def test_the_pod_is_ready_only_when_the_model_is_and_its_feeders_hold_partitions(fake):
    """Ready needs the model warmed up, a partition held, the broker reached and no failing commits."""
    pod, view = fake
    ok, body = view.readiness()
    assert ok and body["assigned_partitions"] == 4 and body["feeders_up"] == 2
    pod.health[9002]["/readyz"] = {**FEEDER_READY, "ok": False, "commits_failing": True}
    ok, body = view.readiness()
    assert not ok and body["commits_failing"]
    pod.health[9002]["/readyz"] = dict(FEEDER_READY)
    pod.health[9000]["/readyz"]["model_ready"] = False
    assert not view.readiness()[0]


def test_the_pod_is_live_while_a_feeder_restarts_but_not_when_one_is_stuck(fake):
    """A feeder being restarted keeps the pod live; a running feeder that fails /healthz, or a dead model, does not."""
    pod, view = fake
    view.feeder_down(1, restarting=True)
    ok, body = view.liveness()
    assert ok and body["feeders"]["feeder-1"] == {"state": "starting or restarting"}
    pod.health[9001]["/healthz"] = {"ok": False, "dead_threads": ["tagstream-sink"]}
    assert not view.liveness()[0]
    pod.health[9001]["/healthz"] = {"ok": True}
    view.model_alive = False
    assert not view.liveness()[0]


def test_a_silent_model_process_keeps_the_pod_live_until_the_supervisor_would_have_killed_it(fake):
    """A model process that answers nothing (frozen) keeps the pod live for TAGSTREAM_MODEL_STALL_S,
    the limit past which the supervisor kills it (and the feeders count its calls as hung): a kubelet
    that killed the whole pod first would count nothing. Past the limit, or with no limit, it fails."""
    pod, _ = fake
    now = [0.0]
    view = PodView(2, fetch=pod.fetch, model_silence_s=120.0, clock=lambda: now[0])
    view.model.port = 9000
    view.feeder_up(0, 9001)
    view.feeder_up(1, 9002)
    now[0] = 10.0
    assert view.liveness()[0]  # it answered at 10 s
    pod.down.add(9000)
    now[0] = 100.0
    ok, body = view.liveness()
    assert ok and body["model_process"]["silent_s"] == 90.0 and body["model_process"]["killed_once_silent_s"] == 120.0
    now[0] = 130.5
    assert not view.liveness()[0]
    pod.down.discard(9000)
    assert view.answers(view.model)  # the supervisor's own check counts as an answer too
    pod.down.add(9000)
    now[0] = 140.0
    assert view.liveness()[0]
    unlimited = PodView(2, fetch=pod.fetch, model_silence_s=0.0)  # TAGSTREAM_MODEL_STALL_S=0: no watch, no grace
    unlimited.model.port = 9000
    assert not unlimited.liveness()[0]


# -- how many feeders, and each one's settings ---------------------------------------------------------
def settings(**overrides):
    return load_settings(input_topics="in", bundle_path="/tmp/b", **overrides)


def test_auto_runs_one_feeder_per_spare_cpu_with_a_gpu_and_one_process_without():
    """auto: min(CPUs - 1, 8) feeders with a GPU, 1 (no model process) on a CPU; a number is taken as given."""
    auto = settings(processes="auto")
    assert feeder_count(auto, gpu=True, cpus=16) == 8
    assert feeder_count(auto, gpu=True, cpus=4) == 3
    assert feeder_count(auto, gpu=True, cpus=1) == 1
    assert feeder_count(auto, gpu=False, cpus=16) == 1
    assert feeder_count(settings(processes=3), gpu=False, cpus=2) == 3
    assert feeder_count(settings(processes="auto", device="cpu")) == 1


def test_auto_sees_a_gpu_by_its_device_node_unless_hidden(tmp_path):
    """With TAGSTREAM_DEVICE=auto a GPU is an NVIDIA device node not hidden by CUDA_VISIBLE_DEVICES; cuda and
    cpu say it themselves."""
    assert not gpu_visible("auto", dev_dir=tmp_path, environ={})
    (tmp_path / "nvidia0").touch()
    assert gpu_visible("auto", dev_dir=tmp_path, environ={})
    assert not gpu_visible("auto", dev_dir=tmp_path, environ={"CUDA_VISIBLE_DEVICES": ""})
    assert gpu_visible("cuda:1", dev_dir=tmp_path / "none", environ={})
    assert not gpu_visible("cpu", dev_dir=tmp_path, environ={})


def test_each_feeder_gets_its_own_static_id_any_port_and_no_bundle_watcher():
    """Feeder i: group_instance_id <id>-<i> (none stays none), metrics on any port, reloads left to the model."""
    base = settings(processes=2, group_instance_id="pod-7", metrics_port=9100, reload_interval_s=5)
    one = feeder_settings(base, 1)
    assert (one.group_instance_id, one.metrics_port, one.reload_interval_s, one.processes) == ("pod-7-1", 0, 0, 1)
    assert feeder_settings(settings(processes=2), 0).group_instance_id is None
    assert one.bootstrap_servers == base.bootstrap_servers and one.max_batch_tokens == base.max_batch_tokens


def test_a_feeders_transactional_id_outlives_its_restarts_within_the_pod():
    """Without static membership a feeder's transactional id names the pod (its call-journal set) and the
    feeder's index, not the feeder's own pid: each restart of feeder i fences the one before. Feeders of one
    pod, and pods, differ; a static instance id still decides when there is one."""
    import socket

    from worker.procs.plan import feeder_identity
    from worker.transactions import transactional_id

    host = socket.gethostname()
    assert transactional_id("g", None, feeder_identity("ab12.worker-0", 1)) == f"g.{host}.ab12.worker-0-f1"
    assert len({feeder_identity(pod, i) for pod in ("ab12.worker-0", "ab12.worker-1") for i in (0, 1)}) == 4
    assert transactional_id("g", "pod-7-1", feeder_identity("ab12.worker-0", 1)) == "g.pod-7-1"
    assert transactional_id("g", None) == f"g.{host}.{os.getpid()}"  # no journal: this process's own


def test_a_feeders_model_stall_limit_is_a_backstop_behind_the_pods():
    """Feeders time their waits on the model process with a longer limit than the pod's (the model process
    and the supervisor act first and stop the pod as a whole); 0 stays off."""
    from worker.procs.plan import FEEDER_STALL_MARGIN_S

    assert feeder_settings(settings(processes=2, model_stall_s=60), 0).model_stall_s == 60 + FEEDER_STALL_MARGIN_S
    assert feeder_settings(settings(processes=2, model_stall_s=0), 0).model_stall_s == 0


class HangingPod(FakePod):
    """A FakePod whose ``hung`` ports take every request and never answer (until ``release``)."""

    def __init__(self) -> None:
        super().__init__()
        self.hung: set[int] = set()
        self.released = threading.Event()
        self.waiting = 0
        self.most_waiting = 0  # the most requests hanging at the same time
        self._lock = threading.Lock()

    def fetch(self, port: int, path: str) -> bytes:
        if port not in self.hung:
            return super().fetch(port, path)
        with self._lock:
            self.waiting += 1
            self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            self.released.wait(10)
            raise OSError("timed out")
        finally:
            with self._lock:
                self.waiting -= 1


def test_a_scrape_asks_every_process_at_once_so_silent_ones_cost_one_timeout_not_one_each(monkeypatch):
    """With the model process and a feeder frozen, a scrape asks all four of their endpoints at once (not one
    after another, 2 s each), shows their last values and tagstream_ready 0; the probes name the silent ones."""
    import worker.procs.podview as podview

    monkeypatch.setattr(podview, "FETCH_TIMEOUT_S", 0.2)
    monkeypatch.setattr(podview, "ASK_SLACK_S", 0.1)
    pod = HangingPod()
    pod.add(9000, ready={"ok": False, "model_ready": True})
    for port in (9001, 9002):
        pod.add(port, ready=dict(FEEDER_READY)).events_in.labels(topic="in").inc(10)
    view = PodView(2, fetch=pod.fetch)
    view.model.port = 9000
    view.feeder_up(0, 9001)
    view.feeder_up(1, 9002)
    try:
        assert values(view.metrics())[("tagstream_ready", ())] == 1
        pod.hung |= {9000, 9002}
        got = values(view.metrics())
        assert pod.most_waiting == 4  # /metrics and /readyz of both, in flight together
        assert got[("tagstream_events_in_total", (("topic", "in"),))] == 20  # feeder-1's last values kept
        assert got[("tagstream_ready", ())] == 0
        ok, body = view.liveness()
        assert not ok and "no answer" in body["model_process"]["error"] and "no answer" in body["feeders"]["feeder-1"]["error"]
        assert body["feeders"]["feeder-0"] == {"ok": True}
        assert not view.readiness()[0]
    finally:
        pod.released.set()


def test_a_member_that_answers_unhealthy_still_answers_one_that_is_silent_does_not(fake):
    """``answers``: any answer to /healthz counts (a stuck feeder answers 503); no answer, or no port yet, does not."""
    pod, view = fake
    pod.health[9001]["/healthz"] = {"ok": False}
    assert view.answers(view.model) and view.answers(view.feeders[0])
    pod.down.add(9000)
    assert not view.answers(view.model)
    view.feeder_down(1, restarting=True)
    assert not view.answers(view.feeders[1])


def test_processes_setting_accepts_auto_or_a_count_and_names_the_fix():
    """TAGSTREAM_PROCESSES is auto or 1-64; anything else fails naming the variable."""
    assert settings(processes="AUTO").processes == "auto"
    assert settings(processes="4").processes == 4
    for bad in ("0", "many", "65"):
        with pytest.raises(SettingsError, match="TAGSTREAM_PROCESSES"):
            settings(processes=bad)


def test_a_dev_shm_too_small_for_the_feeders_slots_is_refused_with_the_fix(monkeypatch, tmp_path):
    """When /dev/shm cannot hold N feeders' slots the pod refuses to start, naming the settings and the remedy."""
    assert "not found" in check_shared_memory(settings(processes=4), 4, shm_dir=Path(os.devnull) / "none")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10, 10, 1024))
    with pytest.raises(SettingsError, match=r"TAGSTREAM_MAX_BATCH_TOKENS.*emptyDir"):
        check_shared_memory(settings(processes=4), 4, shm_dir=tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10, 10, 64 * 2**20))
    assert "MiB" in check_shared_memory(settings(processes=4), 4, shm_dir=tmp_path)


def test_the_tokenizer_threads_are_shared_out_between_feeders():
    """Each feeder's tokenizer pool gets its share of the CPUs, at least one."""
    assert tokenizer_threads(4, cpus=16) == 4
    assert tokenizer_threads(8, cpus=4) == 1
