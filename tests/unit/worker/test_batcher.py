"""The batching policy, driven by a hand-held clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.batcher import Batcher, BatchLimits


def make(size=4, tokens=1000, wait_s=0.02) -> Batcher[str]:
    return Batcher(BatchLimits(max_batch_size=size, max_batch_tokens=tokens, max_wait_s=wait_s))


def test_nothing_is_due_when_empty():
    """An empty batcher hands out nothing and has no deadline."""
    b = make()
    assert b.next_batch(now=100.0) is None
    assert b.time_until_due(now=100.0) is None


def test_closes_on_max_batch_size_without_waiting():
    """A batch is due at once when max_batch_size inputs wait."""
    b = make(size=3)
    for i in range(3):
        b.add(f"e{i}", 10, now=0.0)
    assert b.time_until_due(now=0.0) == 0.0
    batch = b.next_batch(now=0.0)
    assert batch is not None and batch.reason == "size"
    assert batch.items == ["e0", "e1", "e2"]
    assert len(b) == 0


def test_size_limit_leaves_the_rest_waiting():
    """Inputs beyond max_batch_size stay for the next batch."""
    b = make(size=2)
    for i in range(5):
        b.add(f"e{i}", 10, now=0.0)
    sizes = []
    while (batch := b.next_batch(now=0.0)) is not None:
        sizes.append(len(batch.items))
    assert sizes == [2, 2]  # the fifth waits for more inputs or for max_wait
    assert len(b) == 1


def test_waits_until_max_wait_then_closes():
    """A partial batch is held until its oldest input has waited max_wait."""
    b = make(size=8, wait_s=0.02)
    b.add("a", 5, now=10.000)
    b.add("b", 5, now=10.015)
    assert b.next_batch(now=10.019) is None
    assert b.time_until_due(now=10.010) == pytest.approx(0.010)
    batch = b.next_batch(now=10.020)
    assert batch is not None and batch.reason == "wait" and batch.items == ["a", "b"]


def test_zero_wait_closes_immediately():
    """With max_wait 0, whatever waits is handed out at once."""
    b = make(size=8, wait_s=0.0)
    b.add("a", 5, now=1.0)
    batch = b.next_batch(now=1.0)
    assert batch is not None and batch.items == ["a"]


def test_padded_token_budget_closes_the_batch():
    """The input that would push longest x count over max_batch_tokens waits for the next batch."""
    b = make(size=100, tokens=100)
    for i in range(4):
        b.add(f"e{i}", 30, now=0.0)  # 3 x 30 = 90 fits, 4 x 30 = 120 does not
    batch = b.next_batch(now=0.0)
    assert batch is not None and batch.reason == "tokens"
    assert len(batch.items) == 3 and batch.padded_tokens == 90
    assert len(b) == 1


def test_budget_counts_padding_not_real_tokens():
    """One long input makes every row cost its length: the budget is longest x count."""
    b = make(size=100, tokens=100)
    b.add("long", 50, now=0.0)
    b.add("short1", 2, now=0.0)
    b.add("short2", 2, now=0.0)  # real tokens 54, but padded 3 x 50 = 150 > 100
    batch = b.next_batch(now=0.0)
    assert batch is not None
    assert batch.padded_tokens <= 100
    assert len(batch.items) == 2 and batch.real_tokens < batch.padded_tokens


def test_every_batch_respects_both_limits():
    """Across a random mix of lengths no batch exceeds max_batch_size or max_batch_tokens."""
    import random

    rng = random.Random(7)
    b = make(size=16, tokens=512, wait_s=0.0)
    for i in range(500):
        b.add(i, rng.randint(1, 128), now=0.0)
    seen = []
    while (batch := b.next_batch(now=1.0)) is not None:
        assert len(batch.items) <= 16
        assert batch.padded_tokens <= 512
        assert batch.padded_tokens == batch.longest * len(batch.items)
        seen.extend(batch.items)
    assert sorted(seen) == list(range(500))


def test_groups_similar_lengths():
    """With short and long inputs waiting, batches group by length instead of mixing."""
    b = make(size=4, tokens=10_000)
    lengths = [5, 100, 6, 101, 5, 99, 7, 102]
    for i, n in enumerate(lengths):
        b.add((i, n), n, now=0.0)
    first = b.next_batch(now=0.0)
    second = b.next_batch(now=0.0)
    assert first is not None and second is not None
    assert max(n for _, n in first.items) < 10
    assert min(n for _, n in second.items) > 90
    # Grouping cut the padding: mixed batches of 4 would each cost 4 x ~100 tokens.
    assert first.padded_tokens + second.padded_tokens < 2 * 4 * 100


def test_oldest_input_is_always_in_the_next_batch():
    """The next batch is grown from the oldest input, so no input starves."""
    b = make(size=2, tokens=10_000)
    b.add("old-long", 120, now=0.0)
    for i in range(10):
        b.add(f"short{i}", 3, now=0.001)
    batch = b.next_batch(now=0.0)
    assert batch is not None and "old-long" in batch.items


def test_flush_hands_out_partial_batches():
    """flush=True (shutdown) empties the batcher regardless of max_wait."""
    b = make(size=8, wait_s=10.0)
    b.add("a", 3, now=0.0)
    assert b.next_batch(now=0.0) is None
    batch = b.next_batch(now=0.0, flush=True)
    assert batch is not None and batch.reason == "flush" and batch.items == ["a"]


def test_remove_if_takes_out_matching_inputs():
    """remove_if drops waiting inputs (e.g. of revoked partitions) and returns them in arrival order."""
    b = make(size=8)
    for i in range(6):
        b.add(i, 10 - i, now=0.0)
    removed = b.remove_if(lambda i: i % 2 == 0)
    assert removed == [0, 2, 4]
    assert len(b) == 3


def test_longer_than_budget_is_clamped_and_batched_alone():
    """An input longer than the budget still goes out (alone) instead of blocking the queue."""
    b = make(size=8, tokens=64, wait_s=0.0)
    b.add("huge", 500, now=0.0)
    batch = b.next_batch(now=0.0)
    assert batch is not None and batch.items == ["huge"]


def test_invalid_limits_are_refused():
    """Limits below one input are rejected when the batcher is built."""
    with pytest.raises(ValueError):
        BatchLimits(max_batch_size=0, max_batch_tokens=10, max_wait_s=0.01)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(1, 300)),
            st.tuples(st.just("next"), st.booleans()),
            st.tuples(st.just("remove"), st.integers(0, 6)),
        ),
        max_size=120,
    )
)
def test_every_batch_holds_the_oldest_waiting_input_and_each_input_leaves_once(steps):
    """Whatever the mix of adds, batches (due or flushed) and removals: the oldest waiting input is
    in every batch, the wait timer runs from it, and every input comes out exactly once."""
    b = make(size=5, tokens=600, wait_s=0.02)
    waiting: dict[int, float] = {}  # seq -> arrival, the reference's view
    out: list[int] = []
    now, seq = 0.0, 0
    for kind, arg in steps:
        now += 0.004
        if kind == "add":
            b.add(seq, arg, now=now)
            waiting[seq] = now
            seq += 1
        elif kind == "next":
            due = b.time_until_due(now)
            batch = b.next_batch(now, flush=arg)
            if waiting:
                oldest = min(waiting)
                assert due is not None and (due > 0 or batch is not None)
                if batch is not None:
                    assert oldest in batch.items
            else:
                assert due is None and batch is None
            for item in batch.items if batch else ():
                del waiting[item]
                out.append(item)
        else:
            removed = b.remove_if(lambda item, m=arg: item % 7 == m)
            assert removed == sorted(item for item in waiting if item % 7 == arg)
            for item in removed:
                del waiting[item]
                out.append(item)
    while (batch := b.next_batch(now, flush=True)) is not None:
        out.extend(batch.items)
    assert sorted(out) == list(range(seq)) and len(b) == 0


def test_adding_many_at_once_gives_the_batches_adding_one_by_one_gives():
    """add_many (one hand-over's inputs at once) leaves the batcher as add() per input does: the same
    batches, in the same order, for inputs of mixed lengths arriving over several hand-overs, lengths
    past the token budget clamped as add() clamps them."""
    import random

    rng = random.Random(3)
    one, many = make(size=16, tokens=400, wait_s=0.02), make(size=16, tokens=400, wait_s=0.02)
    taken_one, taken_many = [], []
    for poll in range(40):
        items = [f"p{poll}e{i}" for i in range(rng.randint(0, 60))]
        lengths = [rng.choice([0, rng.randint(1, 120), 500]) for _ in items]
        now = poll * 0.005
        for item, n in zip(items, lengths, strict=True):
            one.add(item, n, now)
        many.add_many(items, lengths, [now] * len(items))
        for batcher, taken in ((one, taken_one), (many, taken_many)):
            while (batch := batcher.next_batch(now)) is not None:
                taken.append((batch.items, batch.longest, batch.reason))
    for batcher, taken in ((one, taken_one), (many, taken_many)):
        while (batch := batcher.next_batch(1.0, flush=True)) is not None:
            taken.append((batch.items, batch.longest, batch.reason))
    assert taken_many == taken_one and len(taken_one) > 40
