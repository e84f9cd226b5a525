"""Bucket shapes for CUDA graphs (worker/cuda_graphs.py): the ladders, which buckets the limits need, and
the runner's bucket path (padding rows and lengths up to a bucket) giving the plain path's answers. The
bucket path runs eagerly on a CPU here; the capture itself needs a GPU (the last test, skipped without)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from worker_support import fixture_texts

from worker.cuda_graphs import (
    BucketedForward,
    GraphedForward,
    length_buckets,
    needed_shapes,
    padded_rows,
    plan_groups,
    row_buckets,
)
from worker.runner import ModelRunner, packed


def runner_for(path, device: str = "cpu", **kw) -> ModelRunner:
    args = {"device": torch.device(device), "autocast_dtype": None, "max_batch_size": 24, "max_batch_tokens": 1024,
            "top_k": 3}
    args.update(kw)
    return ModelRunner.load(path, **args)


def test_row_ladder_is_powers_of_two_and_the_halves_between_up_to_the_limit():
    assert row_buckets(256) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    assert row_buckets(100) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 100]
    assert row_buckets(1) == [1]
    rungs = row_buckets(1024)
    assert all(b / a <= 1.5 for a, b in itertools.pairwise(rungs[1:]))  # at most half again: bounded padding


def test_length_ladder_is_multiples_of_16_then_the_max_length():
    assert length_buckets(128) == [16, 32, 48, 64, 80, 96, 112, 128]
    assert length_buckets(40) == [16, 32, 40]
    assert length_buckets(16) == [16]


def test_only_buckets_the_token_budget_allows_are_needed():
    shapes = needed_shapes(256, 128, 8192)
    assert (256, 128) not in shapes  # 193 rows x 113 tokens is over the budget: never a batch
    assert (64, 128) in shapes  # 49 x 113 = 5,537 fits
    assert (256, 32) in shapes and (1, 128) in shapes
    for rows, length in shapes:  # every needed bucket's smallest batch fits
        smaller_rows = max((r for r in row_buckets(256) if r < rows), default=0)
        smaller_len = max((x for x in length_buckets(128) if x < length), default=0)
        assert (smaller_rows + 1) * (smaller_len + 1) <= 8192


def test_a_batch_goes_to_the_smallest_bucket_that_holds_it():
    buckets = BucketedForward(lambda ids, mask: ids, needed_shapes(64, 128, 4096))
    assert buckets.shape_for(5, 17) == (6, 32)
    assert buckets.shape_for(64, 16) == (64, 16)
    assert buckets.shape_for(1, 1) == (1, 16)
    assert buckets.shape_for(65, 16) is None  # more rows than any bucket: eager
    assert buckets.shape_for(64, 128) is None  # over the budget: never captured, eager


def test_padding_rows_are_one_pad_token_each():
    flat, lengths = packed([[5, 6, 7], [8]])
    flat_b, lengths_b = padded_rows(flat, lengths, 4, pad_id=0)
    assert flat_b.tolist() == [5, 6, 7, 8, 0, 0] and lengths_b.tolist() == [3, 1, 1, 1]
    assert padded_rows(flat, lengths, 2, pad_id=0)[1] is lengths  # already there


def test_bucket_path_gives_the_plain_paths_answers(tiny_bundle):
    """Padded up to buckets (rows and lengths), every input gets the answers it gets at its own shape;
    the padding rows' answers are dropped."""
    plain, bucketed = runner_for(tiny_bundle), runner_for(tiny_bundle)
    seen: list[tuple[int, int]] = []

    def model(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(ids.shape))
        return bucketed._model(ids, mask)

    bucketed.buckets = BucketedForward(model, needed_shapes(24, bucketed.max_length, 1024))
    texts = fixture_texts(40, seed=7, min_words=1, max_words=30)
    for size in (1, 5, 7, 13, 24):
        ids = plain.tokenize(texts[:size])
        a, b = plain.classify_packed(*packed(ids)), bucketed.classify_packed(*packed(ids))
        assert b.top_indices.shape == (size, 3)
        assert np.array_equal(a.top_indices, b.top_indices)
        np.testing.assert_allclose(a.top_scores, b.top_scores, atol=1e-5)
        p, q = plain.probabilities_packed(*packed(ids)), bucketed.probabilities_packed(*packed(ids))
        np.testing.assert_allclose(p.probs, q.probs, atol=1e-5)
    assert seen and all(shape in bucketed.buckets.shapes for shape in seen)
    assert (8, 32) in seen or (6, 32) in seen  # 5 and 7 rows ran padded, not at their own shape


def test_a_wide_spread_of_lengths_runs_as_groups_of_similar_length():
    """1,024 rows, most short and a few at the limit: padding all to the longest costs far more than
    two groups; a batch of even lengths stays one call."""
    buckets = BucketedForward(lambda ids, mask: ids, needed_shapes(1024, 128, 131072))
    spread = np.sort(np.r_[np.full(900, 30), np.full(124, 128)])
    assert plan_groups(spread, buckets) == [(0, 900), (900, 1024)]
    even = np.sort(np.r_[np.full(200, 30), np.full(56, 33)])  # 30 and 33: two length buckets, one call is cheaper
    assert plan_groups(even, buckets) == [(0, 256)]
    assert plan_groups(np.array([5]), buckets) == [(0, 1)]


def test_grouped_rows_get_the_answers_they_get_alone(tiny_bundle):
    """Sorted into length groups and put back in order: every input's answer is the plain path's."""
    plain, grouped = runner_for(tiny_bundle, max_batch_size=64, max_batch_tokens=2048), runner_for(
        tiny_bundle, max_batch_size=64, max_batch_tokens=2048)
    calls: list[tuple[int, int]] = []

    def model(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(ids.shape))
        return grouped._model(ids, mask)

    grouped.buckets = BucketedForward(model, needed_shapes(64, grouped.max_length, 2048))
    grouped.buckets.call_cost_tokens = 0  # at this tiny scale a call's own cost would outweigh any padding
    texts = [*fixture_texts(40, seed=5, min_words=1, max_words=3), *fixture_texts(8, seed=6, min_words=40, max_words=60)]
    order = np.random.default_rng(0).permutation(len(texts))
    ids = plain.tokenize([texts[i] for i in order])  # short and long interleaved
    a, b = plain.classify_packed(*packed(ids)), grouped.classify_packed(*packed(ids))
    assert len(calls) == 2  # the short ones and the long ones
    assert np.array_equal(a.top_indices, b.top_indices)
    np.testing.assert_allclose(a.top_scores, b.top_scores, atol=1e-5)
    p, q = plain.probabilities_packed(*packed(ids)), grouped.probabilities_packed(*packed(ids))
    np.testing.assert_allclose(p.probs, q.probs, atol=1e-5)


def test_device_side_bucket_path_gives_the_same_answers(tiny_bundle):
    """The accelerator's answer path (top-k on the device) through the buckets, on the CPU."""
    plain, bucketed = runner_for(tiny_bundle), runner_for(tiny_bundle)
    bucketed.topk_on_device = True
    bucketed.buckets = BucketedForward(bucketed._model, needed_shapes(24, bucketed.max_length, 1024))
    ids = plain.tokenize(fixture_texts(11, seed=3))
    a, b = plain.classify(ids), bucketed.classify(ids)
    assert a.top_indices == b.top_indices


def test_graphs_are_a_gpu_feature(tiny_bundle):
    """On a CPU the setting changes nothing: no capture is attempted, batches run at their own shape."""
    runner = runner_for(tiny_bundle, cuda_graphs=True)
    runner.warm_up()
    assert runner.cuda_graphs is False and runner.buckets is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU: run on the GPU machine")
def test_graphs_give_the_eager_answers_on_a_gpu(tiny_bundle):
    """Captured at warm-up, replayed per batch: the answers of eager calls, batch after batch."""
    eager = runner_for(tiny_bundle, "cuda")
    graphed = runner_for(tiny_bundle, "cuda", cuda_graphs=True)
    graphed.warm_up()
    assert isinstance(graphed.buckets, GraphedForward) and graphed.buckets.shapes
    texts = fixture_texts(60, seed=11, min_words=1, max_words=40)
    for size in (1, 3, 9, 24):
        ids = eager.tokenize(texts[:size])
        a, b = eager.classify(ids), graphed.classify(ids)
        assert a.top_indices == b.top_indices
        np.testing.assert_allclose(np.array(a.top_scores), np.array(b.top_scores), atol=1e-4)
