"""Keep a worker's Python threads on one CPU (``TAGSTREAM_CPU_PINNING``).

A worker process is bound by its interpreter lock: its stage threads (source, batcher, sink,
model threads) and the Kafka client's threads take turns holding it, thousands of times a
second. Left to the scheduler, consecutive holders run on different cores, and each hand-over
wakes a thread on another core and moves the lock and the data it touches across caches. With
every thread on one core, the same work cost a quarter to a third less CPU and ran 25-60%
faster: the null-bundle worker of ``bench/kafka_path_bench.py`` on the 2-core development
machine, with the broker on the other core, alternating three times (context switches per event
0.7 -> 0.2, system time per event 6-9 -> 1-2 µs). README, "Threads on one CPU", has the figures.

What is pinned, when on:

- a feeder process (``TAGSTREAM_PROCESSES`` > 1): the whole of it, feeder *i* on the *i*-th
  CPU of the pod's affinity mask (round robin), so feeders do not share a core;
- the pod's model process: the CPUs the feeders leave, when they leave any (the GPU overlay's
  4 feeders on 6 CPUs: the model process on the last 2), so that its threads do not preempt a
  feeder on its own core; with no CPU spare it keeps the whole mask;
- a single-process worker: every thread it starts once its model is loaded (the clients' I/O
  threads and the stages) on the first CPU of the mask. Its model threads leave the pin when the
  model computes on the CPU: their intra-op threads (started unpinned, at the warm-up) need
  every core. On a GPU they stay, since they only launch kernels and wait.

Pinning is safe only where the pod owns its CPUs. ``auto`` (the default) pins when the
affinity mask has no more CPUs than the cgroup CPU limit allows: Kubernetes' static CPU manager
policy gives a Guaranteed pod with whole CPUs exactly those CPUs. A pod sharing the node's CPUs
(no limit, or a mask wider than its limit) would pin its threads to the same first cores as
every other such pod, so ``auto`` leaves it alone; ``on`` pins anyway (a dedicated machine),
``off`` never.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

from model.cpus import CpuBudget

Pinning = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class PinPlan:
    """Whether to pin, to which CPU, and why (for the log)."""

    cpu: int | None  # None: no pinning
    allowed: frozenset[int]  # the affinity mask at start: what a released thread gets back
    reason: str


def plan_pinning(setting: Pinning, budget: CpuBudget, slot: int, allowed: set[int] | None = None) -> PinPlan:
    """The CPU for the worker with index ``slot`` (a feeder's index; 0 for a single process)."""
    if allowed is None and not hasattr(os, "sched_getaffinity"):  # macOS
        return PinPlan(None, frozenset(), "this platform cannot pin threads")
    mask = frozenset(os.sched_getaffinity(0) if allowed is None else allowed)
    if setting == "off":
        return PinPlan(None, mask, "TAGSTREAM_CPU_PINNING=off")
    if not hasattr(os, "sched_setaffinity") or not mask:
        return PinPlan(None, mask, "this platform cannot pin threads")
    if setting == "auto":
        if budget.quota is None:
            return PinPlan(None, mask, "auto: no cgroup CPU limit, so the CPUs may be shared with other pods")
        if len(mask) > math.ceil(budget.quota):
            return PinPlan(
                None, mask,
                f"auto: {len(mask)} CPUs in the affinity mask for a CPU limit of {budget.quota:g}: shared CPUs",
            )
    cpu = sorted(mask)[slot % len(mask)]
    why = "TAGSTREAM_CPU_PINNING=on" if setting == "on" else "auto: the affinity mask is within the CPU limit"
    return PinPlan(cpu, mask, why)


def spare_cpus(plan: PinPlan, feeders: int) -> frozenset[int] | None:
    """The CPUs a pod's ``feeders`` feeder processes leave to its model process (None: none spare,
    or no pinning). Feeder i takes the i-th CPU of the mask (``plan_pinning``)."""
    if plan.cpu is None or feeders >= len(plan.allowed):
        return None
    return frozenset(sorted(plan.allowed)[feeders:])


def pin_this_thread(cpu: int) -> None:
    """Run the calling thread, and every thread it starts from now on, on ``cpu`` only."""
    os.sched_setaffinity(0, {cpu})  # pid 0: the calling thread (Linux)


def release_this_thread(allowed: frozenset[int]) -> None:
    """Give the calling thread its whole affinity mask back."""
    os.sched_setaffinity(0, allowed)
