"""How many threads the CPU work (torch's intra-op pool) uses.

torch's default uses every logical CPU. On a machine where another process already keeps cores busy that
oversubscribes them: every parallel region then waits for a thread that is not scheduled, and prefill
throughput collapses by an order of magnitude instead of dropping in proportion to the cores lost.

The choice, first that applies:

1. ``--threads N`` (or the library's ``requested``);
2. the environment variable ``INFLLM_THREADS``;
3. the physical cores this process may run on (logical CPUs that are hyper-threads of the same core count
   once; restricted to the process's CPU affinity and the cgroup CPU quota), less the CPUs other processes
   keep busy now (only when this process may use every CPU of the machine): never more threads than logical
   CPUs left idle, at least 1. "Busy now" is sampled from ``/proc/stat`` over a fifth of a second before
   any work starts; where that cannot be read, the one-minute load average stands in. The sample, not the
   load average, is preferred because the load average still counts a process that ended a minute ago
   (running the tool twice in a row would halve the second run's threads) and is slow to count one that
   just started.

Invalid values (not a positive integer) are usage errors (exit 2). The choice is logged with its reason.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

log = logging.getLogger("infllm.threads")

ENV_THREADS = "INFLLM_THREADS"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str


@dataclass(frozen=True)
class CpuFacts:
    """What the machine offers this process."""

    logical: int  # online logical CPUs of the machine
    usable: int  # logical CPUs this process may run on (affinity)
    physical: int  # physical cores among the usable CPUs
    quota: float | None  # cgroup CPU quota in CPUs (None: unlimited)
    load: float | None  # one-minute load average (None: unknown)
    busy: float | None = None  # CPUs busy over a short sample just now (None: not measured)


def parse_threads(value: object, origin: str) -> int:
    """A positive thread count from ``value`` (``origin`` names where it came from); UsageError otherwise."""
    try:
        n = int(str(value).strip())
    except ValueError:
        raise UsageError(f"{origin} must be a positive integer (threads), got {value!r}") from None
    if n < 1:
        raise UsageError(f"{origin} must be a positive integer (threads), got {value!r}")
    return n


def choose_threads(requested: int | str | None, env: str | None, facts: CpuFacts) -> ThreadChoice:
    """The thread count and why (see the module docstring). Pure: everything it depends on is passed in."""
    if requested is not None:
        return ThreadChoice(parse_threads(requested, "--threads"), "--threads")
    if env is not None and env.strip():
        return ThreadChoice(parse_threads(env, ENV_THREADS), ENV_THREADS)
    cores = max(1, facts.physical)
    why = [f"{cores} physical core{'s' if cores != 1 else ''}"]
    if facts.usable < facts.logical:
        why.append(f"of {facts.usable} usable CPUs")
    if facts.quota is not None and facts.quota < cores:
        cores = max(1, math.floor(facts.quota))
        why.append(f"cgroup quota {facts.quota:g} CPUs")
    others, what = (facts.busy, "busy now") if facts.busy is not None else (facts.load, "load average")
    if others is not None and facts.usable >= facts.logical and facts.quota is None:
        # logical CPUs other processes keep busy (our own threads are not running yet): more threads than
        # the CPUs left would oversubscribe them
        free = facts.logical - int(others + 0.25)
        if free < cores:
            why.append(f"{what} {others:.1f} of {facts.logical} CPUs")
            cores = max(1, free)
    return ThreadChoice(cores, ", ".join(why))


# -- facts about this machine ----------------------------------------------------------------------------


def _usable_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return set(range(os.cpu_count() or 1))


def _physical_cores(cpus: set[int]) -> int:
    """Distinct (package, core) pairs among ``cpus``, from sysfs; ``len(cpus)`` when unknown."""
    cores: set[tuple[str, str]] = set()
    base = Path("/sys/devices/system/cpu")
    for cpu in cpus:
        topo = base / f"cpu{cpu}" / "topology"
        try:
            package = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add((package, core))
    return len(cores) or len(cpus)


def _cgroup_quota() -> float | None:
    """CPU quota of the cgroup (v2 ``cpu.max``, v1 ``cfs_quota_us``), in CPUs; None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def busy_cpus(before: list[int], after: list[int], cpus: int) -> float | None:
    """CPUs (of ``cpus`` online) kept busy between two readings of ``/proc/stat``'s aggregate ``cpu`` line
    (its jiffy counters: user nice system idle iowait irq softirq steal ...); None when no time passed.
    Idle and iowait count as free."""
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8])
    if total <= 0:
        return None
    idle = delta[3] + (delta[4] if len(delta) > 4 else 0)
    return max(0.0, (total - idle) / total) * cpus


def _read_cpu_stat() -> list[int] | None:
    try:
        with open("/proc/stat") as f:
            first = f.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu" or len(first) < 5:
        return None
    try:
        return [int(x) for x in first[1:]]
    except ValueError:
        return None


def _sample_busy(seconds: float = 0.2) -> float | None:
    """CPUs busy over ``seconds`` now (this process sleeps meanwhile), or None where /proc/stat is absent."""
    before = _read_cpu_stat()
    if before is None:
        return None
    time.sleep(seconds)
    after = _read_cpu_stat()
    return None if after is None else busy_cpus(before, after, os.cpu_count() or 1)


def cpu_facts(sample: bool = True) -> CpuFacts:
    """What the machine offers; ``sample``: measure the CPUs busy now (takes a fifth of a second)."""
    usable = _usable_cpus()
    try:
        load: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover
        load = None
    return CpuFacts(
        logical=os.cpu_count() or len(usable), usable=len(usable), physical=_physical_cores(usable),
        quota=_cgroup_quota(), load=load, busy=_sample_busy() if sample else None,
    )


def configure_threads(requested: int | str | None = None) -> ThreadChoice:
    """Choose the thread count (``requested``, else ``$INFLLM_THREADS``, else the machine), apply it to
    torch, and log it."""
    import torch

    env = os.environ.get(ENV_THREADS)
    measured = requested is None and not (env and env.strip())  # sample the CPUs only when they decide
    choice = choose_threads(requested, env, cpu_facts(sample=measured))
    torch.set_num_threads(choice.threads)
    log.info("threads: %d (%s)", choice.threads, choice.reason)
    return choice
