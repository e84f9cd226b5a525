"""How many feeders a pod runs, and what each is told.

``TAGSTREAM_PROCESSES``: a number, or ``auto``: with a GPU (``gpu_visible``), min(CPUs - 1, 8) feeders (one CPU is
left for the model process, which feeds the GPU; eight kafka-python feeders already outrun what
one process can batch for a small model); without one, 1 (on a CPU the model itself needs the
cores the feeders would take; ask for N explicitly to try).

Each feeder is an ordinary consumer-group member: the pod's settings with its own metrics port
(any, on 127.0.0.1: the supervisor serves the pod's), its own static-membership id
(``<group_instance_id>-<i>``: a restarted feeder gets its partitions back at once, and an
exactly-once feeder's transactional id, derived from it, fences its predecessor; without static
membership that id comes from ``feeder_identity``, which does the same on this host), no bundle
watcher (the model process reloads), and a model-stall limit ``FEEDER_STALL_MARGIN_S`` longer than
the pod's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from model.cpus import available_cpus
from worker.errors import SettingsError
from worker.procs.transport import Channel, SlotShape
from worker.settings import WorkerSettings, env_name

AUTO_MAX_FEEDERS = 8
# A feeder times its waits on the model process too (TAGSTREAM_MODEL_STALL_S), but the model process
# (a hung call) and the supervisor (a model process that answers nothing) act first and stop the pod
# as a whole; the feeders' limit is this much longer, a backstop that never races them.
FEEDER_STALL_MARGIN_S = 30.0
SLOTS_PER_FEEDER = 2  # batches a feeder has in the model process at once: one running, one queued
SHM_DIR = Path("/dev/shm")


def feeder_count(settings: WorkerSettings, *, gpu: bool | None = None, cpus: int | None = None) -> int:
    """The feeders to run (1 = no model process: the single-process worker)."""
    if settings.processes != "auto":
        return int(settings.processes)
    if gpu is None:
        gpu = gpu_visible(settings.device)
    if not gpu:
        return 1
    if cpus is None:
        cpus = available_cpus().count
    return max(1, min(cpus - 1, AUTO_MAX_FEEDERS))


def gpu_visible(device: str, dev_dir: Path = Path("/dev"), environ: dict[str, str] | None = None) -> bool:
    """Whether the model will run on a GPU, for ``auto``, without importing torch here (it would cost
    the supervisor ~300 MB): TAGSTREAM_DEVICE=cuda says so; with auto, an NVIDIA device node that
    CUDA_VISIBLE_DEVICES does not hide. (If CUDA then proves unusable, the model process says which
    device it runs on in its model_ready line.)"""
    if device == "cpu":
        return False
    if device.startswith("cuda"):
        return True  # and if there is none, the model process says so and the pod exits 2
    env = os.environ if environ is None else environ
    if env.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1"):
        return False
    return any(dev_dir.glob("nvidia[0-9]*"))


def feeder_settings(settings: WorkerSettings, index: int) -> WorkerSettings:
    """Feeder ``index``'s settings (see the module docstring)."""
    instance = settings.group_instance_id
    return settings.model_copy(
        update={
            "processes": 1,
            "metrics_port": 0,
            "reload_interval_s": 0,
            "group_instance_id": f"{instance}-{index}" if instance else None,
            "model_stall_s": settings.model_stall_s + FEEDER_STALL_MARGIN_S if settings.model_stall_s else 0.0,
        }
    )


def feeder_identity(pod: str, index: int) -> str:
    """Feeder ``index``'s name in ``pod`` (the pod's call-journal set, or its supervisor's pid without
    one): the same for each of its restarts, and for the pod's own restarts on this host.

    Without static membership it names the feeder's transactional id (worker/transactions.py), so a
    restarted exactly-once feeder fences its killed predecessor and aborts the transaction that one
    left open at once. Under its own pid's id, that transaction held back read_committed readers of
    the pod's outputs until the broker timed it out (TAGSTREAM_TRANSACTION_TIMEOUT_MS, 60 s)."""
    return f"{pod}-f{index}"


def slot_shape(settings: WorkerSettings) -> SlotShape:
    return SlotShape(rows=settings.max_batch_size, tokens=settings.max_batch_tokens, k=settings.top_k)


def tokenizer_threads(feeders: int, cpus: int | None = None) -> int:
    """Threads for each feeder's tokenizer (RAYON_NUM_THREADS): the CPUs shared out, at least one."""
    if cpus is None:
        cpus = available_cpus().count
    return max(1, cpus // max(1, feeders))


def check_shared_memory(settings: WorkerSettings, feeders: int, shm_dir: Path = SHM_DIR) -> str:
    """Refuse to start when /dev/shm cannot hold the feeders' slots; returns a one-line summary."""
    need = feeders * Channel.size_bytes(slot_shape(settings), SLOTS_PER_FEEDER)
    try:
        free = shutil.disk_usage(shm_dir).free
    except OSError:
        return f"{need / 2**20:.1f} MiB of shared memory ({shm_dir} not found: the platform's own)"
    if need > free:
        raise shared_memory_short(settings, feeders, f"{shm_dir} has {free / 2**20:.1f} MiB free")
    return f"{need / 2**20:.1f} MiB of {shm_dir}'s {free / 2**20:.0f} MiB free"


def shared_memory_short(settings: WorkerSettings, feeders: int, why: str) -> SettingsError:
    """The error for a /dev/shm too small for the feeders' slots (``why``: what was found), with the fix."""
    need = feeders * Channel.size_bytes(slot_shape(settings), SLOTS_PER_FEEDER)
    return SettingsError(
        f"{env_name('processes')}={feeders} needs {need / 2**20:.1f} MiB of shared memory for the feeders'"
        f" batches ({SLOTS_PER_FEEDER} x {env_name('max_batch_tokens')}={settings.max_batch_tokens} token ids"
        f" each, and their answers) but {why}: lower {env_name('max_batch_tokens')} or"
        f" {env_name('processes')}, or give the container a larger /dev/shm (an emptyDir with medium: Memory)"
    )
