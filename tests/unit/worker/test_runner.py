"""The model runner: device and dtype resolution, batching parity with the bundle, warm-up."""

from __future__ import annotations

import pytest
import torch
from worker_support import fixture_texts

from model.bundle import Bundle
from worker.errors import BundleLoadError, InferenceError, SettingsError
from worker.runner import Classified, ModelRunner, configure_threads, resolve_device, resolve_dtype

CPU = torch.device("cpu")


def runner_for(path, **kw) -> ModelRunner:
    args = {"device": CPU, "autocast_dtype": None, "max_batch_size": 16, "max_batch_tokens": 512, "top_k": 3}
    args.update(kw)
    return ModelRunner.load(path, **args)


@pytest.mark.parametrize(
    ("requested", "cuda", "count", "expected"),
    [
        ("auto", False, 0, "cpu"),
        ("auto", True, 2, "cuda:0"),
        ("cpu", True, 2, "cpu"),
        ("cuda", True, 1, "cuda:0"),
        ("cuda:1", True, 2, "cuda:1"),
    ],
)
def test_device_resolution(requested, cuda, count, expected):
    """auto picks the first GPU when there is one; explicit devices are honoured."""
    assert resolve_device(requested, cuda_available=cuda, device_count=count) == torch.device(expected)


@pytest.mark.parametrize(("requested", "cuda", "count"), [("cuda", False, 0), ("cuda:2", True, 2)])
def test_unavailable_device_names_the_setting(requested, cuda, count):
    """Asking for a GPU the machine lacks fails at start naming TAGSTREAM_DEVICE."""
    with pytest.raises(SettingsError, match="TAGSTREAM_DEVICE"):
        resolve_device(requested, cuda_available=cuda, device_count=count)


@pytest.mark.parametrize(
    ("requested", "device", "bf16", "expected"),
    [
        ("auto", "cpu", True, None),
        ("float32", "cuda:0", True, None),
        ("auto", "cuda:0", True, torch.bfloat16),
        ("auto", "cuda:0", False, torch.float16),
        ("float16", "cuda:0", True, torch.float16),
        ("bfloat16", "cuda:0", True, torch.bfloat16),
        ("bfloat16", "cpu", False, torch.bfloat16),
        ("float16", "cpu", False, torch.float16),
    ],
)
def test_dtype_resolution(requested, device, bf16, expected):
    """auto is float32 on CPU and bf16 (else fp16) autocast on GPU; explicit dtypes are honoured."""
    assert resolve_dtype(requested, torch.device(device), bf16_supported=bf16) == expected


def test_bf16_on_a_gpu_without_it_is_refused():
    """bfloat16 on a GPU that lacks it fails naming TAGSTREAM_DTYPE."""
    with pytest.raises(SettingsError, match="TAGSTREAM_DTYPE=bfloat16"):
        resolve_dtype("bfloat16", torch.device("cuda:0"), bf16_supported=False)


def test_batched_scores_equal_the_bundles_offline_scores(tiny_bundle):
    """Padded-batch top-k scores equal Bundle.predict_proba's (same labels, scores within 1e-5)."""
    runner = runner_for(tiny_bundle)
    offline = Bundle.load(tiny_bundle)
    texts = fixture_texts(40, seed=9)
    got = runner.classify(runner.tokenize(texts))
    probs = offline.predict_proba(texts)
    for i in range(len(texts)):
        assert got.top_indices[i][0] == int(probs[i].argmax())
        for j, p in zip(got.top_indices[i], got.top_scores[i], strict=True):
            assert p == pytest.approx(float(probs[i, j]), abs=1e-5)


def test_batching_never_changes_answers(tiny_bundle):
    """A text's scores are the same alone and padded inside a batch of longer texts."""
    runner = runner_for(tiny_bundle)
    texts = fixture_texts(12, seed=4, min_words=1, max_words=40)
    ids = runner.tokenize(texts)
    batched = runner.classify(ids)
    for i, one in enumerate(ids):
        alone = runner.classify([one])
        assert alone.top_indices[0] == batched.top_indices[i]
        assert alone.top_scores[0] == pytest.approx(batched.top_scores[i], abs=1e-5)


def test_long_texts_are_truncated_to_max_length(tiny_bundle):
    """Over-long texts tokenize to the bundle's max_length and are classified, not rejected."""
    runner = runner_for(tiny_bundle)
    ids = runner.tokenize(["word " * 5000, "short"])
    assert len(ids[0]) == runner.max_length and len(ids[1]) < runner.max_length
    assert len(runner.classify(ids).top_indices) == 2


def test_top_k_is_capped_at_the_label_count(tiny_bundle):
    """top_k larger than the number of labels returns every label, most probable first."""
    runner = runner_for(tiny_bundle, top_k=10)
    got = runner.classify(runner.tokenize(["hello there"]))
    assert len(got.top_indices[0]) == len(runner.labels)
    assert got.top_scores[0] == sorted(got.top_scores[0], reverse=True)
    assert sum(got.top_scores[0]) == pytest.approx(1.0, abs=1e-5)


def test_device_side_path_gives_the_same_answers(tiny_bundle):
    """The accelerator path (non-blocking copies to the device, top-k on the device, copy back)
    run on the CPU gives the host path's labels and scores."""
    host = runner_for(tiny_bundle)
    device_side = runner_for(tiny_bundle)
    device_side.topk_on_device = True
    ids = host.tokenize(fixture_texts(30, seed=4))
    a, b = host.classify(ids), device_side.classify(ids)
    assert a.top_indices == b.top_indices
    for x, y in zip(a.top_scores, b.top_scores, strict=True):
        assert x == pytest.approx(y, abs=1e-6)


def test_cpu_autocast_pads_lengths_to_a_step_without_changing_answers(tiny_bundle):
    """Reduced precision on a CPU pads batches to multiples of 16 tokens (bounded kernel shapes);
    the answers equal those of unstepped padding. float32 pads only to the longest input."""
    assert runner_for(tiny_bundle).length_step == 1
    stepped = runner_for(tiny_bundle, autocast_dtype=torch.bfloat16)
    assert stepped.length_step == 16
    exact = runner_for(tiny_bundle, autocast_dtype=torch.bfloat16)
    exact.length_step = 1
    ids = stepped.tokenize(fixture_texts(30, seed=5, max_words=9))  # lengths off the step
    a, b = stepped.classify(ids), exact.classify(ids)
    assert a.top_indices == b.top_indices
    for x, y in zip(a.top_scores, b.top_scores, strict=True):
        assert x == pytest.approx(y, abs=2e-2)  # bf16 rounding; the labels are what must agree


def test_autocast_path_runs_on_cpu(tiny_bundle):
    """The reduced-precision (autocast) path runs end to end and agrees on the top label mostly."""
    full = runner_for(tiny_bundle)
    half = runner_for(tiny_bundle, autocast_dtype=torch.bfloat16)
    ids = full.tokenize(fixture_texts(30, seed=2))
    a, b = full.classify(ids), half.classify(ids)
    agree = sum(x[0] == y[0] for x, y in zip(a.top_indices, b.top_indices, strict=True))
    assert agree >= 27
    assert a.top_scores != b.top_scores  # autocast really changed the arithmetic


def test_warm_up_covers_the_largest_batches(tiny_bundle):
    """Warm-up shapes are the largest batches the limits allow; warm-up runs them."""
    runner = runner_for(tiny_bundle, max_batch_size=64, max_batch_tokens=512)
    # max_length 32: at most 16 rows of 32 tokens, or 64 rows of 8 tokens.
    assert runner.warm_up_shapes == [(16, 32), (64, 8)]
    assert runner.warm_up() > 0


def test_thread_setting_applies():
    """configure_threads sets torch's intra-op threads."""
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1
    finally:
        torch.set_num_threads(before)


def test_inference_failure_is_typed(tiny_bundle):
    """A model error surfaces as InferenceError naming the batch."""
    runner = runner_for(tiny_bundle)
    with pytest.raises(InferenceError, match="batch of 1"):
        runner.classify([[10_000_000]])  # an id past the vocabulary


def test_tampered_bundle_is_refused(tiny_bundle, tmp_path):
    """A bundle whose files do not match the manifest cannot be loaded."""
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(tiny_bundle, copy)
    (copy / "labels.json").write_text('["a", "b", "c"]\n')
    with pytest.raises(BundleLoadError, match="failed verification"):
        runner_for(copy)


@pytest.mark.parametrize(
    ("requested", "device", "threads", "expected"),
    [
        (0, "cpu", 2, (2, 1)),
        (0, "cpu", 8, (2, 4)),
        (0, "cpu", 1, (1, 1)),
        (4, "cpu", 8, (4, 2)),
        (3, "cpu", 2, (3, 1)),
        (0, "cuda:0", 8, (1, 8)),
        (2, "cuda:0", 8, (2, 8)),
    ],
)
def test_inference_streams(requested, device, threads, expected):
    """auto runs two batches side by side on a multi-core CPU and one on a GPU; threads are split."""
    from worker.runner import resolve_streams

    assert resolve_streams(requested, torch.device(device), threads) == expected


def test_concurrent_streams_give_the_same_answers(tiny_bundle):
    """Two threads classifying at once with one runner get the answers each would get alone."""
    import threading

    runner = runner_for(tiny_bundle)
    ids = runner.tokenize(fixture_texts(64, seed=31))
    halves = [ids[:32], ids[32:]]
    alone = [runner.classify(h) for h in halves]
    together: list = [None, None]

    def run(i: int) -> None:
        for _ in range(5):
            together[i] = runner.classify(halves[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together, strict=True):
        assert a.top_indices == b.top_indices
        for row_a, row_b in zip(a.top_scores, b.top_scores, strict=True):
            assert row_a == pytest.approx(row_b, abs=1e-6)


def test_windowed_scores_equal_the_bundles_pooled_scores(chunks_bundle):
    """Every window is read and pooled as the bundle (and training) does; results say how many."""
    runner = runner_for(chunks_bundle)
    offline = Bundle.load(chunks_bundle)
    texts = fixture_texts(30, seed=4, min_words=2, max_words=90)
    tokens = runner.tokenize(texts)
    got = runner.classify(tokens)
    expected_windows = [len(w) for w in offline.windower.windows(texts)]
    assert got.windows == expected_windows and max(expected_windows) == 4 and min(expected_windows) == 1
    assert [len(t) for t in tokens] == [sum(len(w) for w in ws) for ws in offline.windower.windows(texts)]
    probs = offline.predict_proba(texts)
    for i in range(len(texts)):
        for j, p in zip(got.top_indices[i], got.top_scores[i], strict=True):
            assert p == pytest.approx(float(probs[i, j]), abs=1e-5)


def test_windows_are_run_in_sub_batches_within_the_limits(chunks_bundle, monkeypatch):
    """A batch whose windows exceed the token budget is split into model calls that fit, same answers."""
    texts = fixture_texts(8, seed=5, min_words=60, max_words=90)  # 3-4 windows of 32 each
    wide = runner_for(chunks_bundle, max_batch_size=64, max_batch_tokens=4096)
    narrow = runner_for(chunks_bundle, max_batch_size=4, max_batch_tokens=96)
    shapes = []
    real = narrow._model

    def spy(ids, mask):
        shapes.append(tuple(ids.shape))
        return real(ids, mask)

    monkeypatch.setattr(narrow, "_model", spy)
    a, b = wide.classify(wide.tokenize(texts)), narrow.classify(narrow.tokenize(texts))
    assert a.top_indices == b.top_indices and a.windows == b.windows
    assert all(rows <= 4 and rows * width <= 96 for rows, width in shapes) and len(shapes) > 1
    assert all(x == pytest.approx(y, abs=1e-6) for x, y in zip(a.top_scores, b.top_scores, strict=True))


def test_multi_label_tags_are_the_labels_over_their_thresholds(tags_bundle):
    """Tags are every label at or over its own threshold, most probable first, as offline."""
    runner = runner_for(tags_bundle, top_k=2)
    offline = Bundle.load(tags_bundle)
    texts = fixture_texts(40, seed=6, max_words=70)
    got = runner.classify(runner.tokenize(texts))
    probs = offline.predict_proba(texts).numpy()
    assert got.tags is not None and len(got.top_indices[0]) == 2
    for i, tags in enumerate(got.tags):
        expected = [j for j in range(3) if probs[i, j] >= offline.thresholds[j]]
        assert sorted(j for j, _ in tags) == expected
        assert [p for _, p in tags] == sorted((p for _, p in tags), reverse=True)
    assert any(not t for t in got.tags) or any(len(t) > 1 for t in got.tags)


def test_joined_results_keep_windows_and_tags(tags_bundle):
    """Inputs classified one at a time (after a failed batch) keep their windows and tags."""
    runner = runner_for(tags_bundle)
    texts = fixture_texts(3, seed=7, max_words=70)
    one_by_one = Classified.join([runner.classify(runner.tokenize([t])) for t in texts])
    together = runner.classify(runner.tokenize(texts))
    assert one_by_one.windows == together.windows and one_by_one.top_indices == together.top_indices
    assert [[j for j, _ in t] for t in one_by_one.tags or []] == [[j for j, _ in t] for t in together.tags or []]


def test_worker_default_threads_follow_the_container_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """TAGSTREAM_THREADS=0 resolves through the same budget (not os.cpu_count())."""
    import worker.runner as runner
    from model.cpus import CpuBudget

    monkeypatch.setattr(runner, "available_cpus", lambda: CpuBudget(3, 64, 2.5, "/fake/cpu.max"))
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 64)
    assert runner.resolve_streams(0, torch.device("cpu"), 0) == (2, 1)
    assert runner.resolve_streams(1, torch.device("cpu"), 0) == (1, 3)


@pytest.mark.parametrize("fixture", ["tags_bundle", "chunks_bundle"])
def test_feeder_processes_serve_bundles_read_in_windows_up_to_a_label_limit_and_name_the_fix_beyond(
    fixture, request, monkeypatch
):
    """The model process of feeder processes loads multi-label and windowed bundles (their windows are
    answered by every label's probability), and refuses one with more labels than a slot holds,
    naming the setting that serves it."""
    import worker.local_model as local_model
    from worker.local_model import LocalModel
    from worker.settings import WorkerSettings

    path = request.getfixturevalue(fixture)
    settings = WorkerSettings(bundle_path=str(path), input_topics=["t"])
    feeders = LocalModel(settings, in_pod=True)
    feeders.device, feeders.dtype = CPU, None
    runner = feeders.load(path)
    assert not runner.plain
    monkeypatch.setattr(local_model, "MAX_POD_LABELS", 2)  # these bundles have 3
    with pytest.raises(BundleLoadError, match=r"3 labels.*at most 2 labels.*TAGSTREAM_PROCESSES=1"):
        feeders.load(path)
    # `tagstream-worker check` says so too, for a pod only
    from worker.check import _against_bundle

    with pytest.raises(BundleLoadError, match=r"at most 2 labels"):
        _against_bundle(settings.model_copy(update={"processes": 2}), {"runner": runner})
    assert "fits" in _against_bundle(settings, {"runner": runner})
