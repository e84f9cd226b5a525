"""Multi-label and long-text (chunks) bundles through the worker, against a real broker."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from worker_support import fixture_texts, make_tiny_bundle, produce_events, read_records

from model.bundle import Bundle
from model.truncation import Truncation

pytestmark = pytest.mark.integration

LABELS = ["ham", "spam", "news"]


def test_multi_label_results_carry_every_tag_and_fire_every_route(kafka_bootstrap, new_topic, start_worker, tmp_path):
    """600 events: each result lists exactly the offline tags over threshold, goes to every tag's
    route (untagged and unrouted ones to the output topic), and every input is committed once."""
    bundle_path = make_tiny_bundle(tmp_path / "tags", seed=3, thresholds=[0.9, 0.4, 0.6], head_scale=50.0)
    bundle = Bundle.load(bundle_path)
    topic = new_topic(partitions=2, prefix="worker-tags")
    spam, news = f"{topic}.spam", f"{topic}.news"
    texts = fixture_texts(600, seed=21, max_words=40)
    ids = produce_events(kafka_bootstrap, topic, texts)
    probs = bundle.predict_proba(texts).numpy()
    expected = {i: [LABELS[j] for j in range(3) if probs[n, j] >= bundle.thresholds[j]] for n, i in enumerate(ids)}
    worker = start_worker(topic, bundle_path, dtype="float32", routes={"spam": spam, "news": news})

    want_spam = sum("spam" in t for t in expected.values())
    want_news = sum("news" in t for t in expected.values())
    want_default = sum(not t or "ham" in t for t in expected.values())
    assert want_spam and want_news and want_default  # the fixture exercises every route
    on_spam = [json.loads(r.value) for r in read_records(kafka_bootstrap, spam, expected=want_spam)]
    on_news = [json.loads(r.value) for r in read_records(kafka_bootstrap, news, expected=want_news)]
    default = [json.loads(r.value) for r in read_records(kafka_bootstrap, f"{topic}.labels", expected=want_default)]
    assert (len(on_spam), len(on_news), len(default)) == (want_spam, want_news, want_default)
    for result in on_spam + on_news + default:
        assert result["schema"] == "tagstream.multi_label/1" and "label" not in result
        assert [x["label"] for x in result["labels"]] == sorted(
            expected[result["id"]], key=lambda x: -probs[ids.index(result["id"]), LABELS.index(x)])
        assert len(result["top_k"]) == 3 and "windows" not in result
    assert {r["id"] for r in on_spam} == {i for i, t in expected.items() if "spam" in t}
    assert {r["id"] for r in default} == {i for i, t in expected.items() if not t or "ham" in t}
    assert Counter(r["id"] for r in default).most_common(1)[0][1] == 1

    worker.stop()
    assert worker.wait(timeout=30) == 0
    assert worker.metrics.value("tagstream_events_out_total", {"topic": topic}) == 600


def test_chunks_bundle_reads_long_texts_as_windows(kafka_bootstrap, new_topic, start_worker, tmp_path):
    """Long texts are read as several windows within a small token budget; scores equal the offline
    pooled scores and each result says how many windows were read."""
    bundle_path = make_tiny_bundle(tmp_path / "chunks", seed=2,
                                   truncation=Truncation(strategy="chunks", stride=20, max_windows=4))
    bundle = Bundle.load(bundle_path)
    topic = new_topic(partitions=2, prefix="worker-chunks")
    texts = fixture_texts(400, seed=22, min_words=2, max_words=90)
    ids = produce_events(kafka_bootstrap, topic, texts)
    worker = start_worker(topic, bundle_path, dtype="float32", max_batch_tokens=256, max_batch_size=16)

    results = {r["id"]: r for r in (json.loads(x.value) for x in
                                    read_records(kafka_bootstrap, f"{topic}.labels", expected=400))}
    assert set(results) == set(ids)
    windows = [len(w) for w in bundle.windower.windows(texts)]
    probs = bundle.predict_proba(texts).numpy()
    for n, event_id in enumerate(ids):
        result = results[event_id]
        assert result["schema"] == "tagstream.single_label/1" and result["windows"] == windows[n]
        assert result["label"] == LABELS[int(probs[n].argmax())]
        assert result["score"] == pytest.approx(float(probs[n].max()), abs=1e-5)
    assert max(windows) == 4 and min(windows) == 1
    worker.stop()
    assert worker.wait(timeout=30) == 0
