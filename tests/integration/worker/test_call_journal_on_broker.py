"""The model-call journal on a real broker (worker/call_journal.py): a worker killed in a model call,
every time on the same input, restarts a bounded number of times, then dead-letters that input."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from worker_support import (
    DRAIN_TIMEOUT_S,
    STALL_TOKEN,
    START_TIMEOUT_S,
    assert_only_dead_letter,
    fixture_texts,
    log_events,
    make_null_bundle,
    produce_events,
    read_records,
    spawn,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.integration


def model_call_s(proc: subprocess.Popen, log: Path) -> float:
    """How long the worker's current model call has run, from its /healthz (0 before it listens)."""
    ports = log_events(log, "telemetry_listening")
    if not ports:
        assert proc.poll() is None, log.read_text()[-3000:]
        return 0.0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]['port']}/healthz", timeout=5) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as failing:
        body = json.loads(failing.read())
    except OSError:
        return 0.0
    return float(body.get("model_call_s", 0.0))


def kill_in_the_hung_call(env: dict[str, str], log: Path) -> None:
    """Start a worker and SIGKILL it once a model call has hung for a second (as the OOM killer,
    a crash in a kernel or a liveness probe's kill would end it: no drain, no commit)."""
    proc = spawn(env, log)
    try:
        wait_until(lambda: model_call_s(proc, log) >= 1.0, START_TIMEOUT_S, "a model call to hang")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)


@pytest.mark.full_size_only("confluent")  # make test: kafka-python (the journal is files on the host, the same for both)
def test_an_input_the_worker_dies_on_in_every_model_call_is_run_alone_then_dead_lettered_not_restarted_on_for_ever(
    kafka_bootstrap, new_topic, new_group, tmp_path, kafka_client
):
    """The stalling null bundle hangs on the pill, and the test kills the worker in that call (with
    TAGSTREAM_MODEL_STALL_S at 300 s the worker never gives the call up itself). Before the journal
    the successor read the same batch, died in it again, and so on for ever. Now the first kill
    counts the whole batch (the journal in TAGSTREAM_STATE_DIR); the second worker runs each of
    those inputs alone, labels the innocent ones and dies on the pill alone; so does the third (a
    death may come from outside: it takes two with the input alone); the fourth dead-letters the
    pill (stalled_twice) without running it and labels everything else. Nothing is lost."""
    topic = new_topic(partitions=2, prefix="worker-died-in-call")
    texts = fixture_texts(300, seed=47)
    texts[150] = f"{texts[150]} {STALL_TOKEN}"
    ids = produce_events(kafka_bootstrap, topic, texts)
    pill = ids[150]
    env = worker_env(kafka_bootstrap, topic, make_null_bundle(tmp_path / "stalling", stalling=True), new_group(),
                     TAGSTREAM_MODEL_STALL_S="300",
                     # static membership: each successor gets the partitions at once, not after the
                     # killed member's session times out
                     TAGSTREAM_GROUP_INSTANCE_ID=f"w-{uuid.uuid4().hex[:6]}")
    logs = [tmp_path / f"worker{i}.log" for i in (1, 2, 3, 4)]

    for log in logs[:3]:
        kill_in_the_hung_call(env, log)
    [counted] = log_events(logs[1], "died_in_model_calls_counted")
    assert counted["calls"] == 1 and counted["inputs"] > 1 and counted["alone"] == 0, counted  # the pill's batch
    [counted] = log_events(logs[2], "died_in_model_calls_counted")
    assert (counted["inputs"], counted["alone"]) == (1, 1), counted  # the pill alone

    last = spawn(env, logs[3])
    try:
        def all_answered() -> bool:
            labelled = {json.loads(r.value)["id"] for r in read_records(
                kafka_bootstrap, f"{topic}.labels", len(ids) - 1, timeout_s=2, quiet_s=0)}
            return set(ids) - {pill} <= labelled and bool(log_events(logs[3], "input_dead_lettered_after_stalls"))
        wait_until(all_answered, 120, "a result for every input, and the one the worker dies on dead-lettered")
    finally:
        last.send_signal(signal.SIGTERM)
        assert last.wait(DRAIN_TIMEOUT_S + 15) == 0, logs[3].read_text()[-3000:]
    [counted] = log_events(logs[3], "died_in_model_calls_counted")
    assert (counted["inputs"], counted["alone"]) == (1, 1), counted  # the third worker died on the pill alone
    [dead] = log_events(logs[3], "input_dead_lettered_after_stalls")
    assert (dead["stalls"], dead["died_in_calls"]) == (3, 3), dead
    assert_only_dead_letter(kafka_bootstrap, topic, pill, "stalled_twice")
