"""CallJournal: the inputs of the model call a worker died in are counted once at its next start."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from worker_fakes import Clock

from worker import call_journal
from worker.call_journal import CallJournal, DeathCounts
from worker.kafka.base import TopicPartition
from worker.model_calls import ModelCalls
from worker.telemetry import Health

GROUP = "tagstream-test"
TP = TopicPartition("news", 0)


def died(journal: CallJournal) -> None:
    """What the kernel does for a killed process: its files close and its lock goes, nothing else."""
    journal.close()


def test_the_inputs_of_a_call_the_process_died_in_are_counted_once_and_a_finished_call_counts_nothing(tmp_path):
    first = CallJournal.open(tmp_path, GROUP, streams=2)
    assert first is not None and first.counts == {}
    first.begin(0, [("news", 0, 5), ("news", 0, 6), ("news", 1, 9)])
    first.end(0)  # returned: not counted
    first.begin(1, [("news", 0, 7), ("news", 1, 3)])
    first.begin(0, [("news", 0, 8)])
    died(first)  # in both calls

    second = CallJournal.open(tmp_path, GROUP, streams=2)
    assert second is not None and second.name == first.name  # the dead worker's files
    assert second.counts == {TP: {7: (1, 0), 8: (1, 0)}, TopicPartition("news", 1): {3: (1, 0)}}
    second.begin(0, [("news", 0, 8)], alone=True)  # the input run alone kills it again
    died(second)

    third = CallJournal.open(tmp_path, GROUP, streams=2)
    assert third is not None
    assert third.counts == {TP: {7: (1, 0), 8: (2, 1)}, TopicPartition("news", 1): {3: (1, 0)}}
    died(third)  # dies while starting, in no call: counts nothing more, twice nothing
    fourth = CallJournal.open(tmp_path, GROUP, streams=1)
    assert fourth is not None and fourth.counts == third.counts
    fourth.close()


def test_a_call_counted_once_is_not_counted_again_when_its_file_outlives_the_count(tmp_path, monkeypatch):
    """The counts are saved before the call files are cleared: a death between the two must not
    count the same call a second time at the start after."""
    first = CallJournal.open(tmp_path, GROUP, streams=1)
    assert first is not None
    first.begin(0, [("news", 0, 1)])
    died(first)
    monkeypatch.setattr(CallJournal, "_open_calls", lambda self: None)  # dies before clearing the files
    second = CallJournal.open(tmp_path, GROUP, streams=1)
    assert second is not None and second.counts == {TP: {1: (1, 0)}}
    died(second)
    monkeypatch.undo()
    third = CallJournal.open(tmp_path, GROUP, streams=1)
    assert third is not None and third.counts == {TP: {1: (1, 0)}}
    third.close()


def test_a_death_between_writing_the_inputs_and_the_header_counts_nothing(tmp_path):
    first = CallJournal.open(tmp_path, GROUP, streams=1)
    assert first is not None
    first.begin(0, [("news", 0, 1)])
    first.end(0)
    # The next call's inputs are written, its header is not: the call had not begun.
    os.pwrite(first._fds[0], call_journal._encode([("news", 0, 2)]), call_journal.HEADER.size)
    died(first)
    second = CallJournal.open(tmp_path, GROUP, streams=1)
    assert second is not None and second.counts == {}
    second.close()


def test_a_process_killed_with_sigkill_in_a_call_leaves_its_inputs_for_the_next_start(tmp_path):
    script = (
        "import os, signal, sys; from pathlib import Path; from worker.call_journal import CallJournal\n"
        f"j = CallJournal.open(Path({str(tmp_path)!r}), {GROUP!r}, streams=1)\n"
        "j.begin(0, [('news', 0, 41), ('news', 0, 42)]); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    journal = CallJournal.open(tmp_path, GROUP, streams=1)
    assert journal is not None and journal.name == "worker-0"  # the kernel released the dead one's lock
    assert journal.counts == {TP: {41: (1, 0), 42: (1, 0)}}
    journal.close()


def test_a_second_worker_of_the_group_on_the_host_takes_its_own_files(tmp_path):
    first = CallJournal.open(tmp_path, GROUP, streams=1)
    second = CallJournal.open(tmp_path, GROUP, streams=1)
    other_group = CallJournal.open(tmp_path, "other", streams=1)
    assert second is not None
    second.close()
    second.close()  # a failed start and the exit both close: the second is a no-op
    second = CallJournal.open(tmp_path, GROUP, streams=1)
    assert first is not None
    assert os.fstat(first._lock_fd)  # the double close took no one else's file
    assert first is not None and second is not None and other_group is not None
    assert (first.name, second.name, other_group.name) == ("worker-0", "worker-1", "worker-0")
    assert first.folder == second.folder != other_group.folder
    second.begin(0, [("news", 0, 1)])
    died(second)
    third = CallJournal.open(tmp_path, GROUP, streams=1)  # worker-0 is held: it takes worker-1's files
    assert third is not None and third.name == "worker-1" and third.counts == {TP: {1: (1, 0)}}
    for journal in (first, third, other_group):
        journal.close()


def test_a_sets_identity_is_the_same_for_the_next_worker_to_hold_it_and_differs_while_held(tmp_path):
    """The identity a transactional id is named by (worker/transactions.py): two workers holding sets at
    once differ, the next worker to take a released set has its identity, another state dir differs."""
    first = CallJournal.open(tmp_path / "a", GROUP, streams=1)
    second = CallJournal.open(tmp_path / "a", GROUP, streams=1)
    elsewhere = CallJournal.open(tmp_path / "b", GROUP, streams=1)
    assert first is not None and second is not None and elsewhere is not None
    assert len({first.identity, second.identity, elsewhere.identity}) == 3
    was = first.identity
    first.close()
    restarted = CallJournal.open(tmp_path / "a", GROUP, streams=1)
    assert restarted is not None and restarted.identity == was
    for journal in (second, elsewhere, restarted):
        journal.close()


def test_a_fresh_folder_at_the_same_path_is_another_identity(tmp_path):
    """Two containers on the host's network, each with a private /tmp: the same host name and the
    same state path, but another filesystem. They must not share a transactional id (they would
    fence each other for ever), so the identity is the folder's own id, not a hash of its path."""
    first = CallJournal.open(tmp_path / "state", GROUP, streams=1)
    assert first is not None
    was = first.identity
    first.close()
    shutil.rmtree(tmp_path / "state")  # the other container's /tmp: nothing of the first one's in it
    other = CallJournal.open(tmp_path / "state", GROUP, streams=1)
    assert other is not None and other.name == "worker-0" and other.identity != was
    other.close()


def test_workers_starting_at_once_on_a_new_folder_agree_on_its_id(tmp_path):
    folder = tmp_path / "group"
    folder.mkdir()
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(call_journal._folder_id(folder))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["folder-id"]  # no spare file left behind


def reopened_after_writing(tmp_path, name: str, text: str) -> tuple[CallJournal, list]:
    """A journal opened, closed, ``name`` in its folder overwritten with ``text``, then opened again (with the
    log lines of that second open)."""
    first = CallJournal.open(tmp_path, GROUP, streams=1)
    assert first is not None
    first.close()
    (first.folder / name).write_text(text)
    with capture_logs() as logs:
        second = CallJournal.open(tmp_path, GROUP, streams=1)
    assert second is not None
    return second, logs


def test_a_folder_id_that_is_not_one_is_replaced_with_a_warning(tmp_path):
    second, logs = reopened_after_writing(tmp_path, "folder-id", "edited by hand\n")
    assert second.identity.split(".")[0] == (second.folder / "folder-id").read_text().strip()
    assert [entry["found"] for entry in logs if entry["event"] == "folder_id_replaced"] == ["edited by hand"]
    third = CallJournal.open(tmp_path, GROUP, streams=1)  # kept from then on
    assert third is not None and third.identity.split(".")[0] == second.identity.split(".")[0]
    second.close()
    third.close()


def test_counts_below_a_committed_position_are_dropped_and_stay_dropped(tmp_path):
    first = CallJournal.open(tmp_path, GROUP, streams=1)
    assert first is not None
    first.begin(0, [("news", 0, 4), ("news", 0, 9), ("news", 1, 2)])
    died(first)
    second = CallJournal.open(tmp_path, GROUP, streams=1)
    assert second is not None
    second.forget_below({TP: 5, TopicPartition("news", 1): None})  # news[1]: no commit known
    assert second.counts == {TP: {9: (1, 0)}, TopicPartition("news", 1): {2: (1, 0)}}
    second.forget_below({TP: 10})
    assert second.counts == {TopicPartition("news", 1): {2: (1, 0)}}
    died(second)
    third = CallJournal.open(tmp_path, GROUP, streams=1)
    assert third is not None and third.counts == {TopicPartition("news", 1): {2: (1, 0)}}
    third.close()


def test_the_oldest_counts_go_first_past_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(call_journal, "MAX_COUNTED", 3)
    first = CallJournal.open(tmp_path, GROUP, streams=1)
    assert first is not None
    first.begin(0, [("news", 0, o) for o in (1, 2, 3, 4)])
    died(first)
    second = CallJournal.open(tmp_path, GROUP, streams=1)
    assert second is not None and second.counts == {TP: {2: (1, 0), 3: (1, 0), 4: (1, 0)}}
    second.close()


def test_an_unwritable_folder_turns_the_journal_off_with_a_warning_naming_the_setting(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with capture_logs() as logs:
        assert CallJournal.open(blocker / "state", GROUP, streams=1) is None
        assert CallJournal.open(None, GROUP, streams=1) is None
    assert [e["event"] for e in logs] == ["call_journal_off", "call_journal_off"]
    assert logs[0]["log_level"] == "warning" and "TAGSTREAM_STATE_DIR" in logs[0]["consequence"]


def test_a_full_disk_turns_the_journal_off_and_leaves_no_spare_file_behind(tmp_path, monkeypatch):
    """ENOSPC as the folder id is written (seen on a full tmpfs): the spare file is made but stays empty;
    it is removed, not left for every restart to add one more."""

    def full_disk(self, *args, **kwargs):
        self.touch()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with capture_logs() as logs:
        assert CallJournal.open(tmp_path, GROUP, streams=1) is None
    assert [p.name for p in (tmp_path / call_journal._folder_name(GROUP)).iterdir()] == ["worker-0.lock"]
    assert [e["event"] for e in logs] == ["call_journal_off"] and "No space left" in logs[0]["error"]


def test_unreadable_counts_are_forgotten_with_a_warning_not_a_failed_start(tmp_path):
    second, logs = reopened_after_writing(tmp_path, "worker-0.counts.json", "{not json")
    assert second.counts == {}
    assert [e["event"] for e in logs] == ["call_journal_counts_unreadable"]
    second.begin(0, [("news", 0, 1)])
    died(second)
    third = CallJournal.open(tmp_path, GROUP, streams=1)
    assert third is not None and third.counts == {TP: {1: (1, 0)}}
    saved = json.loads((third.folder / "worker-0.counts.json").read_text())
    assert saved["counts"] == [["news", 0, 1, 1, 0]]
    third.close()


def test_model_calls_write_each_call_and_a_stalled_call_given_up_is_left_to_the_hint(tmp_path):
    """A call given up as stalled is counted in the commit's hint (TAGSTREAM_MODEL_STALL_S): it is
    unmarked in the journal then, or a death after it would count it twice."""
    clock = Clock()
    journal = CallJournal.open(tmp_path, GROUP, streams=2)
    assert journal is not None
    calls: ModelCalls[str] = ModelCalls(Health(clock=clock, model_stall_s=3.0), journal)
    entered, leave = threading.Event(), threading.Event()

    def hung() -> None:
        with calls.call(["a"], [("news", 0, 1)]):
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=hung)
    thread.start()
    assert entered.wait(10)
    clock.now += 5
    with calls.call(["b"], [("news", 0, 2)]):  # this thread's call: running when the process dies
        assert [items for _, items in calls.give_up_stalled()] == [["a"]]
        died(journal)
    leave.set()
    thread.join()
    after = CallJournal.open(tmp_path, GROUP, streams=2)
    assert after is not None and after.counts == {TP: {2: (1, 0)}}
    after.close()


@pytest.mark.parametrize("inputs", [[], [("a.b-c_d", 2_147_483_647, 2**62)]])
def test_inputs_survive_their_encoding(inputs):
    assert call_journal._decode(call_journal._encode(inputs)) == inputs


def test_a_pods_model_process_writes_the_set_its_supervisor_holds_and_only_a_pod_killed_whole_is_counted(tmp_path):
    """A pod shares one set: the supervisor opens it with no streams (counting and clearing what it
    names), the model process attaches to write its calls. Killed whole, the next supervisor counts
    the calls in flight; a model process that ended under a living supervisor (its feeders counted
    its calls) leaves the set unmarked, and nothing is counted twice."""
    supervisor = CallJournal.open(tmp_path, GROUP, streams=0)
    assert supervisor is not None and supervisor.name == "worker-0"
    model = CallJournal.attach(supervisor.folder, supervisor.name, streams=2)
    assert model is not None
    model.begin(0, [("news", 0, 5), ("news", 1, 9)])
    model.begin(1, [("news", 0, 7)], alone=True)
    died(model)
    died(supervisor)  # killed whole

    supervisor = CallJournal.open(tmp_path, GROUP, streams=0)
    assert supervisor is not None and supervisor.name == "worker-0"
    assert supervisor.counts == {TP: {5: (1, 0), 7: (1, 1)}, TopicPartition("news", 1): {9: (1, 0)}}
    model = CallJournal.attach(supervisor.folder, supervisor.name, streams=2)
    assert model is not None
    model.begin(0, [("news", 0, 7)], alone=True)
    died(model)  # the model process alone: its feeders count the call
    supervisor.unmark_calls()
    died(supervisor)

    again = CallJournal.open(tmp_path, GROUP, streams=0)
    assert again is not None
    assert again.counts == {TP: {5: (1, 0), 7: (1, 1)}, TopicPartition("news", 1): {9: (1, 0)}}  # no more
    again.close()


def test_a_feeders_copy_of_the_counts_forgets_inputs_below_the_commit_in_memory_only(tmp_path):
    supervisor = CallJournal.open(tmp_path, GROUP, streams=0)
    assert supervisor is not None
    model = CallJournal.attach(supervisor.folder, supervisor.name, streams=1)
    assert model is not None
    model.begin(0, [("news", 0, 5), ("news", 0, 8)])
    died(model)
    died(supervisor)
    supervisor = CallJournal.open(tmp_path, GROUP, streams=0)
    assert supervisor is not None
    copy = DeathCounts({tp: dict(offsets) for tp, offsets in supervisor.counts.items()})  # as pickled to a feeder
    copy.forget_below({TP: 6})
    assert copy.counts == {TP: {8: (1, 0)}}
    assert supervisor.counts == {TP: {5: (1, 0), 8: (1, 0)}}  # the supervisor's own: untouched
    supervisor.close()


def test_a_model_process_that_cannot_write_the_set_serves_on_without_a_journal(tmp_path):
    with capture_logs() as logs:
        assert CallJournal.attach(tmp_path / "missing", "worker-0", streams=1) is None
    assert [e["event"] for e in logs] == ["call_journal_off"]
