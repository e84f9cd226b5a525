"""The dashboard and the alert rules read only metrics that a real worker exposes on /metrics."""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from worker_support import fixture_texts, produce_events, read_records, wait_until

pytestmark = pytest.mark.integration

MONITORING = Path(__file__).resolve().parents[3] / "deploy" / "monitoring.py"


def monitoring() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tagstream_deploy_monitoring_it", MONITORING)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def send(bootstrap: str, topic: str, records: list[tuple[int, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for partition, value in records:
        producer.send(topic, value=value, partition=partition)
    producer.flush(30)
    producer.close()


def scrape(port: int) -> set[str]:
    """The sample names on a worker's /metrics (histograms as _bucket/_sum/_count, counters as _total)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_every_metric_the_dashboard_and_alerts_read_is_on_a_real_workers_metrics(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle
):
    """After a worker has classified events and dead-lettered one, every tagstream_* name in the PromQL is among its samples."""
    topic = new_topic(partitions=2, prefix="dash-metrics")
    produce_events(kafka_bootstrap, topic, fixture_texts(50, seed=5))
    send(kafka_bootstrap, topic, [(0, b"{not json")])
    worker = start_worker(topic, tiny_bundle)
    assert len(read_records(kafka_bootstrap, f"{topic}.labels", expected=50, quiet_s=0.2)) == 50
    assert len(read_records(kafka_bootstrap, f"{topic}.dlq", expected=1, quiet_s=0.2)) == 1
    wait_until(lambda: worker.health.readiness()[0], 30, "the worker to be ready")
    # A partition reports lag once it has a committed position in this assignment; after a
    # rebalance (likely on a loaded machine) an idle partition has none until new input is
    # committed, so send one event to each, then give the 5 s lag refresh time.
    good = json.dumps({"id": "late", "text": "market shares rose"}).encode()
    send(kafka_bootstrap, topic, [(0, good), (1, good)])
    assert len(read_records(kafka_bootstrap, f"{topic}.labels", expected=52, quiet_s=0.2)) == 52
    wait_until(lambda: "tagstream_consumer_lag" in scrape(worker.metrics_port), 60, "the lag gauges")

    exposed = scrape(worker.metrics_port)
    referenced = monitoring().referenced_metrics()
    assert len(referenced) >= 15  # the rules and the dashboard read most of the worker's metrics
    missing = {name: sorted(where) for name, where in referenced.items() if name not in exposed}
    assert missing == {}, f"read by the dashboard or the alerts, absent from /metrics: {missing}"
    assert "tagstream_ready" in exposed and "tagstream_end_to_end_latency_seconds_bucket" in exposed
