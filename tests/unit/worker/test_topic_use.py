"""Producers forget the topics they stopped writing to (worker/kafka/topic_use.py), as Java's does after
metadata.max.idle.ms: else their metadata refresh creates a deleted result topic again."""

from __future__ import annotations

from worker_fakes import Clock

from worker.kafka.topic_use import CHECK_S, TopicUse

IDLE_S = 300.0


def used_then_checked() -> tuple[Clock, TopicUse]:
    """a.labels sent to, and one check since (which found it in use)."""
    clock = Clock()
    use = TopicUse(IDLE_S, clock)
    use.used.add("a.labels")
    clock.now += CHECK_S
    use.idle()
    return clock, use


def test_a_topic_is_named_idle_once_when_nothing_was_sent_to_it_for_the_idle_time():
    clock = Clock()
    use = TopicUse(IDLE_S, clock)
    use.used.update({"a.labels", "b.labels"})
    clock.now += CHECK_S
    assert use.idle() == []  # both just used
    for _ in range(int(IDLE_S // CHECK_S) - 1):
        use.used.add("b.labels")  # b keeps being written to
        clock.now += CHECK_S
        assert use.idle() == []
    clock.now += CHECK_S
    use.used.add("b.labels")
    assert use.idle() == ["a.labels"]
    clock.now += IDLE_S
    assert use.idle() == ["b.labels"]  # a was named once only
    clock.now += IDLE_S
    assert use.idle() == []


def test_between_checks_nothing_is_looked_at():
    clock, use = used_then_checked()
    clock.now += IDLE_S + CHECK_S - 1  # the next check is due, a is idle...
    assert use.idle() == ["a.labels"]
    use.used.add("c.labels")
    clock.now += 0.5  # ...but not before CHECK_S has passed again
    assert use.idle() == []


def test_a_short_idle_time_is_checked_four_times_over():
    clock = Clock()
    use = TopicUse(2.0, clock)
    use.used.add("a.labels")
    clock.now += 0.5
    assert use.idle() == []
    clock.now += 2.0
    assert use.idle() == ["a.labels"]


def test_a_topic_kept_back_is_named_again_at_the_next_check():
    clock, use = used_then_checked()
    clock.now += IDLE_S
    assert use.idle() == ["a.labels"]
    use.keep(["a.labels"])  # the producer could not forget it this time (records still in flight)
    clock.now += CHECK_S
    assert use.idle() == ["a.labels"]
