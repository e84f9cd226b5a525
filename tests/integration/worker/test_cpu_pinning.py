"""A worker told to pin its threads (TAGSTREAM_CPU_PINNING=on) labels everything with its stage
threads on one CPU, its CPU model threads free, and the thread that started it untouched."""

from __future__ import annotations

import json
import os

import pytest
from worker_support import fixture_texts, produce_events, read_records

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no thread affinity on this platform"),
]


def test_pinned_worker_keeps_its_stages_on_one_cpu_and_labels_every_input(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle
):
    mask = os.sched_getaffinity(0)
    topic = new_topic(partitions=2, prefix="pinned")
    ids = produce_events(kafka_bootstrap, topic, fixture_texts(300, seed=31))
    worker = start_worker(topic, tiny_bundle, cpu_pinning="on", inference_streams=2)

    results = [json.loads(r.value) for r in read_records(kafka_bootstrap, f"{topic}.labels", expected=300)]
    assert sorted(r["id"] for r in results) == sorted(ids)
    cpu = min(mask)  # a single-process worker takes the first CPU of the mask
    threads = {name: os.sched_getaffinity(thread.native_id) for name, thread in worker._threads.items()}
    assert all(threads[name] == {cpu} for name in ("source", "batcher", "sink")), threads
    # The tiny model computes on the CPU: its threads (and so their intra-op threads) use every core.
    assert threads["model-0"] == threads["model-1"] == mask
    assert os.sched_getaffinity(0) == mask  # the test's thread, which called start(), was given its CPUs back
