"""The kafka-python 3.0 group-join fix (worker.kafka.compat.py) against a real broker."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

# One consumer whose rebalance listener takes longer than its poll timeout, and whose loop is
# busy between polls, so the join finishes while nobody waits for it. A metadata change (one
# more partition) triggers the rebalance.
SCENARIO = textwrap.dedent(
    """
    import sys, time, uuid
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.admin import NewPartitions
    from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
    bootstrap, fix = sys.argv[1], sys.argv[2] == "fix"
    if fix:
        from worker.kafka.compat import apply_join_fix
        assert apply_join_fix()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    topic = "compat-" + uuid.uuid4().hex[:8]
    admin.create_topics({topic: {"num_partitions": 2, "replication_factor": -1}})
    admin.wait_for_topics([topic], timeout_ms=30000)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id="g-" + topic, enable_auto_commit=False,
                             metadata_max_age_ms=500)

    class SlowListener(AsyncConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked):
            if revoked:
                await consumer._net.sleep(0.3)  # e.g. waiting for in-flight batches

        async def on_partitions_assigned(self, assigned):
            pass

    consumer.subscribe(topics=[topic], listener=SlowListener())
    started, grown = time.monotonic(), False
    while time.monotonic() - started < 10:
        consumer.poll(timeout_ms=100)
        if not grown and len(consumer.assignment()) == 2:
            admin.create_partitions({topic: NewPartitions(total_count=3)})
            grown = True
        if grown:
            if len(consumer.assignment()) == 3:
                break
            time.sleep(0.5)  # a busy loop between polls
    print(len(consumer.assignment()))
    """
)


def run_scenario(bootstrap: str, mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCENARIO, bootstrap, mode], capture_output=True, text=True,
                         timeout=60, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_a_join_that_outlives_its_poll_is_applied(kafka_bootstrap):
    """With the fix, a rebalance whose join completes after the poll timed out still assigns the partitions."""
    assert run_scenario(kafka_bootstrap, "fix") == 3


def test_the_upstream_bug_is_still_there(kafka_bootstrap):
    """Without the fix kafka-python 3.0 never gets the new partition; if this fails, upstream fixed it: drop the patch."""
    assert run_scenario(kafka_bootstrap, "nofix") != 3
