"""The inputs of each model call on disk, so that a worker that dies in a call can count them.

A model call that hangs is timed and given up (worker/model_calls.py): its inputs are counted in
the commit's hint, the next worker runs each of them alone, and one that hangs the model again is
dead-lettered (``stalled_twice``). A worker that *dies* in the call counts nothing that way: the
OOM killer, a crash in a kernel or a driver, a liveness probe's SIGKILL while the call holds the
interpreter. Its successor read the same batch, died the same way, and restarted for ever.

So before each call a model thread writes the call's inputs to a small file of its own, and marks
it idle after. At start the worker reads the files its predecessor left: a file still marked names
a call that process died in. Each of its inputs is counted once, in ``counts`` (kept beside the
files, across restarts), and so is whether it ran alone; the source adds them to the hint's counts
(worker/source.py): an input counted once runs alone. A death can come from outside (a node's
memory pressure, a kubelet's kill), so one death with the input alone does not convict it, as a
hang with it alone (timed by the worker itself) does: it is dead-lettered (``stalled_twice``) once
it has died alone twice, or died and hung. A worker that dies on an input every time therefore
restarts three times; in a crash loop for another reason, an innocent input is dead-lettered
only if two deaths land in its own alone calls.

A pod (worker/procs/) shares one set: its supervisor opens it at the pod's start (``open`` with no
streams: it counts what the set names, then clears it) and holds its lock, the model process writes
its calls to it (``attach``), and each feeder is given the counts (``DeathCounts``). A model process
that dies alone is counted by its feeders instead, from its shared-memory slots
(worker/procs/transport.py): the supervisor then marks the set idle (``unmark_calls``), so that
nothing is counted twice. The set counts only a pod killed whole, supervisor and all: a container's
OOM kill (with cgroup v2 Kubernetes kills every process in it), a liveness probe's SIGKILL, a
node's crash.

- **Once.** Each call has an id; ``counts`` keeps the ids it has counted, so a worker that dies
  again while it starts does not count the same call twice.
- **Exact.** The journal's counts are never committed, and the hint never counts a call the
  journal counts: a call given up as stalled is unmarked here (``end``) as the hint takes it.
  Their sum is therefore exact. A call with the other streams idle (an input run alone: see
  worker/call_gate.py) names the input that was in it when the process died.
- **Local.** The counts stay on this host: a partition that moves to another worker takes the
  hint's counts with it, not these, so that worker may die on the input up to three times more.

Where: ``TAGSTREAM_STATE_DIR`` (``/tmp/tagstream`` by default; the Kubernetes manifest's ``/tmp`` is
an emptyDir, which outlives the container's restarts), one folder per consumer group. Each worker
holds a lock on its set of files (``worker-N``); a second worker of the group on the same host
takes the next set. The folder keeps a random id of its own (``folder-id``): with the set's name it
makes the worker's transactional id without static membership, so the folder should outlive the
worker's restarts (a new folder is a new id: read_committed readers may then wait out the open
transaction the last worker left). Nothing here ever stops the worker: a journal that cannot be
written is turned off, with a warning saying why.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import re
import secrets
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from worker.inference import InputId
from worker.kafka.base import TopicPartition
from worker.telemetry import get_logger

log = get_logger("tagstream.worker")

HEADER = struct.Struct("<IQI")  # payload length (0: idle), call id, flags
ALONE = 1  # flags: the call ran one input alone (worker/call_gate.py: no other call beside it)
IDLE = struct.pack("<I", 0)
MAX_SETS = 16  # workers of one group on one host
MAX_COUNTED = 10_000  # inputs with a count; the oldest go first (they were committed past long ago)
MAX_CALL_IDS = 64  # calls remembered as counted: far more than die while one worker starts
_FOLDER_ID = re.compile(r"[0-9a-f]{8}")  # what a folder-id file holds (_folder_id)


class CallJournal:
    """One worker's call files and counts; see the module docstring. ``open`` makes one."""

    def __init__(self, folder: Path, name: str, lock_fd: int, streams: int) -> None:
        self.folder = folder
        self.name = name  # worker-N
        self._lock_fd = lock_fd
        # (topic, partition) -> {offset: (calls the worker died in with it, of them with it alone)}
        self.counts: dict[TopicPartition, dict[int, tuple[int, int]]] = {}
        self._order: list[InputId] = []  # counted inputs, oldest first (for MAX_COUNTED)
        self._counted_calls: list[int] = []
        self._prefix = secrets.randbits(32) << 32  # call ids: this process's prefix and a sequence
        self._sequence = itertools.count(1)
        self._fds: list[int] = []
        self._streams = streams
        self._broken = False
        self._folder_id = ""  # set by open (the identity's first half)

    @property
    def identity(self) -> str:
        """This set, for a transactional id that outlives restarts (worker/transactions.py): the state
        folder's own id (``_folder_id``: another folder, or the same path on another filesystem, is
        another id) and the set's name. The next worker of the group to start on this folder takes
        this set once this one's lock is gone, never while it is held."""
        return f"{self._folder_id}.{self.name}"

    # -- start ------------------------------------------------------------------------------------
    @classmethod
    def open(cls, state_dir: Path | None, group_id: str, streams: int) -> CallJournal | None:
        """The journal of this worker, with what its predecessor left counted; None when off."""
        if state_dir is None:
            log.info("call_journal_off", reason="TAGSTREAM_STATE_DIR is empty")
            return None
        folder = Path(state_dir) / _folder_name(group_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(MAX_SETS):
                name = f"worker-{n}"
                fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                journal = cls(folder, name, fd, streams)
                journal._folder_id = _folder_id(folder)
                journal._recover()
                journal._open_calls()
                return journal
        except OSError as exc:
            log.warning("call_journal_off", folder=str(folder), error=str(exc),
                        consequence="a worker that dies in a model call counts nothing: the input that killed it is"
                        " read again in a batch; set TAGSTREAM_STATE_DIR to a writable folder")
            return None
        log.warning("call_journal_off", folder=str(folder),
                    reason=f"{MAX_SETS} workers of this group on this host already hold its journals")
        return None

    @classmethod
    def attach(cls, folder: Path, name: str, streams: int) -> CallJournal | None:
        """The call files of a set another process holds and has counted: a pod's model process
        writes its calls there, its supervisor holds the lock (module docstring). None when they
        cannot be written (with a warning: nothing here stops the pod)."""
        journal = cls(folder, name, -1, streams)
        try:
            journal._open_calls()
        except OSError as exc:
            journal._break(exc)
            journal.close()
            return None
        return journal

    def _recover(self) -> None:
        """Count the inputs of the calls the last holder of these files died in (once each)."""
        self._load_counts()
        lost: list[tuple[int, bool, list[InputId]]] = []
        for path in sorted(self.folder.glob(f"{self.name}.call-*")):
            found = _read_call(path)
            if found is not None and found[0] not in self._counted_calls:
                lost.append(found)
        if not lost:
            return
        for call_id, alone, inputs in lost:
            for topic, partition, offset in inputs:
                self._add((topic, partition, offset), alone)
            self._counted_calls.append(call_id)
        del self._counted_calls[:-MAX_CALL_IDS]
        self._save_counts()  # before the files are cleared: a death in between counts nothing twice
        inputs = [i for _, _, call in lost for i in call]
        log.warning(
            "died_in_model_calls_counted", calls=len(lost), inputs=len(inputs), alone=sum(a for _, a, _ in lost),
            partitions=sorted({f"{t}[{p}]" for t, p, _ in inputs}), journal=str(self.folder / self.name),
            consequence="each runs alone; one the worker dies on alone twice (or dies and hangs on) is dead-lettered"
            " (stalled_twice)",
        )

    def _open_calls(self) -> None:
        for path in self.folder.glob(f"{self.name}.call-*"):
            if int(path.name.rsplit("-", 1)[1]) >= self._streams:
                path.unlink()  # a stream count that shrank: counted above, never written again
        for stream in range(self._streams):
            fd = os.open(self.folder / f"{self.name}.call-{stream}", os.O_RDWR | os.O_CREAT, 0o600)
            os.pwrite(fd, IDLE, 0)
            self._fds.append(fd)

    # -- the model threads -------------------------------------------------------------------------
    def begin(self, stream: int, inputs: Sequence[InputId], alone: bool = False) -> None:
        """A call over ``inputs`` is about to start on ``stream`` (``alone``: one input, run alone)."""
        if self._broken:
            return
        payload = _encode(inputs)
        fd = self._fds[stream]
        try:
            # The inputs first, the header that makes them count after: a death between the two
            # writes leaves the file idle (the call had not begun).
            os.pwrite(fd, payload, HEADER.size)
            os.pwrite(fd, HEADER.pack(len(payload), self._prefix | next(self._sequence), ALONE if alone else 0), 0)
        except OSError as exc:
            self._break(exc)

    def end(self, stream: int) -> None:
        """The call on ``stream`` returned, failed, or was given up (counted elsewhere)."""
        if self._broken:
            return
        try:
            os.pwrite(self._fds[stream], IDLE, 0)
        except OSError as exc:
            self._break(exc)

    def _break(self, exc: OSError) -> None:
        self._broken = True
        log.warning("call_journal_off", folder=str(self.folder), error=str(exc),
                    consequence="a worker that dies in a model call from now on counts nothing")

    def add_lost(self, inputs: Sequence[InputId], alone: bool) -> None:
        """Count ``inputs`` as in a call the pod died in: a lost call's inputs no feeder held
        (worker/procs/lost_calls.py), for the next pod's feeders."""
        for input_ in inputs:
            self._add(input_, alone)
        try:
            self._save_counts()
        except OSError as exc:
            log.warning("call_journal_counts_unsaved", folder=str(self.folder), error=str(exc),
                        consequence="the next pod may run these inputs in a batch again")

    def unmark_calls(self) -> None:
        """Mark every call file of the set idle: a pod's model process ended while its supervisor
        lives, and its feeders counted the calls it died in (module docstring)."""
        for path in self.folder.glob(f"{self.name}.call-*"):
            try:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.pwrite(fd, IDLE, 0)
                finally:
                    os.close(fd)
            except OSError as exc:
                log.warning("call_journal_unmark_failed", path=str(path), error=str(exc),
                            consequence="the next pod may count that call's inputs once more")

    # -- the counts --------------------------------------------------------------------------------
    def forget_below(self, positions: dict[TopicPartition, int | None]) -> None:
        """Drop counts of inputs below their partition's committed position: they have outcomes."""
        if _drop_below(self.counts, positions):
            self._order = [i for i in self._order if i[2] in self.counts.get(TopicPartition(i[0], i[1]), {})]
            with contextlib.suppress(OSError):
                self._save_counts()

    def _add(self, input_: InputId, alone: bool) -> None:
        topic, partition, offset = input_
        counts = self.counts.setdefault(TopicPartition(topic, partition), {})
        if offset not in counts:
            self._order.append(input_)
        deaths, deaths_alone = counts.get(offset, (0, 0))
        counts[offset] = (deaths + 1, deaths_alone + alone)
        while len(self._order) > MAX_COUNTED:
            t, p, o = self._order.pop(0)
            tp = TopicPartition(t, p)
            self.counts[tp].pop(o, None)
            if not self.counts[tp]:
                del self.counts[tp]

    def _counts_path(self) -> Path:
        return self.folder / f"{self.name}.counts.json"

    def _load_counts(self) -> None:
        path = self._counts_path()
        try:
            data = json.loads(path.read_text())
            entries = [(str(e[0]), int(e[1]), int(e[2]), int(e[3]), int(e[4])) for e in data["counts"]]
            calls = [int(c) for c in data["counted_calls"]]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("call_journal_counts_unreadable", path=str(path), error=str(exc),
                        consequence="counts from earlier deaths in model calls are forgotten")
            return
        for topic, partition, offset, n, alone in entries:
            self.counts.setdefault(TopicPartition(topic, partition), {})[offset] = (n, alone)
            self._order.append((topic, partition, offset))
        self._counted_calls = calls

    def _save_counts(self) -> None:
        entries = [[t, p, o, *self.counts[TopicPartition(t, p)][o]] for t, p, o in self._order]
        path = self._counts_path()
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps({"version": 2, "counted_calls": self._counted_calls, "counts": entries}))
        os.replace(scratch, path)

    def close(self) -> None:
        """At exit: a model thread given up in a hung call may still return, and writes nothing."""
        self._broken = True
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # releases the lock
            self._lock_fd = -1  # closed once: the number may soon name another file


class DeathCounts:
    """A pod's feeder's copy of the counts its supervisor read at the pod's start (the supervisor
    holds the journal); the feeder's source reads it as one process reads its own journal's."""

    def __init__(self, counts: dict[TopicPartition, dict[int, tuple[int, int]]]) -> None:
        self.counts = counts

    def forget_below(self, positions: dict[TopicPartition, int | None]) -> None:
        """Drop counts of inputs below their partition's committed position (this copy only)."""
        _drop_below(self.counts, positions)


def _drop_below(
    counts: dict[TopicPartition, dict[int, tuple[int, int]]], positions: dict[TopicPartition, int | None]
) -> int:
    """Remove from ``counts`` the offsets below each partition's position; how many went."""
    dropped = 0
    for tp, position in positions.items():
        offsets = counts.get(tp)
        if offsets is None or position is None:
            continue
        for offset in [o for o in offsets if o < position]:
            del offsets[offset]
            dropped += 1
        if not offsets:
            del counts[tp]
    return dropped


def process_identity(journal: CallJournal | None) -> str:
    """The process part of a transactional id without static membership (worker/transactions.py):
    the journal set's ``identity``, or without a journal (TAGSTREAM_STATE_DIR empty) this process's pid."""
    return journal.identity if journal is not None else str(os.getpid())


def _folder_id(folder: Path) -> str:
    """A random id made once per group folder and kept in it (``identity``): the same for every worker
    that uses this folder, across restarts, and different for a folder on another filesystem even at
    the same path on a host of the same name (two containers on the host's network, each with a
    private /tmp), which a hash of the path could not tell apart. Kafka Streams keeps its process id
    in its state directory for the same reason. Written beside, then linked into place: a worker
    that starts at the same moment reads the first one's id, never a half-written file."""
    path = folder / "folder-id"
    if not path.exists():
        _place_new_id(path, os.link)  # FileExistsError: another worker made it first, its id counts
    found = path.read_text().strip()
    if not _FOLDER_ID.fullmatch(found):
        log.warning("folder_id_replaced", path=str(path), found=found[:40],
                    consequence="a new transactional id: readers may wait out the last worker's open transaction once")
        _place_new_id(path, os.replace)
        found = path.read_text().strip()
    return found


def _place_new_id(path: Path, place: Callable[[Path, Path], None]) -> None:
    """A new random id written to a spare file, then put at ``path`` by ``place`` (link: only where
    none is; replace: over what is there)."""
    spare = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        spare.write_text(secrets.token_hex(4) + "\n")  # a full disk fails here, the spare made but empty
        place(spare, path)
    except FileExistsError:
        pass
    finally:
        spare.unlink(missing_ok=True)


def _folder_name(group_id: str) -> str:
    """A folder name per group: readable, and distinct even where sanitising makes two names alike."""
    digest = hashlib.sha256(group_id.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', group_id)[:100]}-{digest}"


def _encode(inputs: Iterable[InputId]) -> bytes:
    """``topic<TAB>partition<TAB>offset,offset,...`` a line per partition (topic names hold neither)."""
    by_partition: dict[tuple[str, int], list[str]] = {}
    for topic, partition, offset in inputs:
        key = (topic, partition)
        offsets = by_partition.get(key)
        if offsets is None:
            offsets = by_partition[key] = []
        offsets.append(str(offset))
    return "".join(f"{t}\t{p}\t{','.join(o)}\n" for (t, p), o in by_partition.items()).encode()


def _decode(payload: bytes) -> list[InputId]:
    out: list[InputId] = []
    for line in payload.decode().splitlines():
        topic, partition, offsets = line.split("\t")
        out.extend((topic, int(partition), int(o)) for o in offsets.split(","))
    return out


def _read_call(path: Path) -> tuple[int, bool, list[InputId]] | None:
    """The call a file names, or None when idle or unreadable (a torn file counts nothing)."""
    try:
        data = path.read_bytes()
        if len(data) < HEADER.size:
            return None
        length, call_id, flags = HEADER.unpack_from(data)
        if length == 0 or HEADER.size + length > len(data):
            return None
        return call_id, bool(flags & ALONE), _decode(data[HEADER.size:HEADER.size + length])
    except (OSError, ValueError, UnicodeDecodeError, struct.error) as exc:
        log.warning("call_journal_unreadable", path=str(path), error=str(exc))
        return None
