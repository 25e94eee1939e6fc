"""CPU accounting: who used the cores during a window.

On a small machine the load generator, the clients and the servers share the
same cores, so every report says what each party used (CPU seconds over wall
seconds = cores), read from /proc and from Redis's INFO (which works for a
server this run did not start).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all threads), read from /proc."""
    after_name = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(after_name[11]) + int(after_name[12])) / CLOCK_TICKS


def machine_times() -> dict[str, float]:
    """CPU seconds of the whole machine since boot (/proc/stat): ``machine`` busy
    (user, nice, system, irq, softirq, steal), ``iowait``, and ``kernel``, the part
    of busy no process is charged with (irq, softirq: loopback traffic, mostly;
    steal: the hypervisor)."""
    user, nice, system, _idle, iowait, irq, softirq, steal = (
        int(v) / CLOCK_TICKS for v in Path("/proc/stat").read_text().split("\n", 1)[0]
        .split()[1:9])
    return {"machine": user + nice + system + irq + softirq + steal, "iowait": iowait,
            "kernel": irq + softirq + steal}


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (not idle, not waiting on I/O)."""
    return machine_times()["machine"]


def redis_info(client: Any) -> dict[str, float]:
    """Redis's own CPU seconds and fork count (INFO)."""
    cpu = client.info("cpu")
    stats = client.info("stats")
    return {"cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            "forks": float(stats.get("total_forks", 0))}


def background_cores(seconds: float = 2.0) -> float:
    """Cores kept busy by whatever else runs on the machine, sampled before we
    start anything: a benchmark on a shared machine must say when it was not alone."""
    before, started = machine_busy_s(), time.perf_counter()
    time.sleep(seconds)
    return (machine_busy_s() - before) / (time.perf_counter() - started)


def cpu_seconds(pids: Mapping[str, int | Sequence[int]], redis_client: Any, *,
                own: str) -> dict[str, float]:
    """CPU seconds so far of each named process (or group of processes, summed),
    of Redis, of this process (named ``own``) and of the machine; ``at`` is
    ``time.perf_counter()``. Two readings make a window: see :func:`cores`."""
    return {**{name: (process_cpu_s(pid) if isinstance(pid, int)
                      else sum(process_cpu_s(p) for p in pid)) for name, pid in pids.items()},
            "redis": redis_info(redis_client)["cpu_s"], own: time.process_time(),
            "machine": machine_busy_s(), "at": time.perf_counter()}


def cores(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Cores used by each party between two :func:`cpu_seconds` readings."""
    span = after["at"] - before["at"]
    return {name: (after[name] - before[name]) / span for name in before if name != "at"}


# --- Every process at once: Postgres's whole server and the busiest others -----------------


@dataclass(frozen=True)
class ProcessTimes:
    name: str
    ppid: int
    own_s: float  # user + system
    reaped_s: float  # of its children it has waited for


def process_table() -> dict[int, ProcessTimes]:
    """Every process's CPU times from /proc (kernel threads included)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        name, rest = text[text.index("(") + 1:text.rindex(")")], text.rsplit(")", 1)[1].split()
        # rest[0] is field 3 (state); field k is rest[k - 3]
        table[int(entry.name)] = ProcessTimes(
            name=name, ppid=int(rest[1]), own_s=(int(rest[11]) + int(rest[12])) / CLOCK_TICKS,
            reaped_s=(int(rest[13]) + int(rest[14])) / CLOCK_TICKS)
    return table


def postgres_cpu_s(table: dict[int, ProcessTimes], postmaster: int | None) -> float | None:
    """CPU of the postmaster, its live children, and (through its reaped time)
    the children that have exited: the whole server's CPU, monotonic."""
    if postmaster is None or postmaster not in table:
        return None
    parent = table[postmaster]
    return parent.own_s + parent.reaped_s + sum(
        p.own_s for p in table.values() if p.ppid == postmaster)


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    machine_s: float
    iowait_s: float
    pid: int  # the measured process
    processes: dict[int, ProcessTimes]
    redis_s: float
    postgres_s: float | None
    redis_forks: int


@dataclass(frozen=True)
class CpuUse:
    """Cores used per party over a window (CPU-seconds / wall seconds)."""

    window_s: float
    machine: float
    iowait: float
    process: float
    redis: float
    postgres: float | None
    redis_forked: bool
    top_others: list[tuple[str, float]]  # the busiest other processes, by name

    def line(self, process_name: str) -> str:
        pg = "n/a" if self.postgres is None else f"{self.postgres:.2f}"
        return (f"{process_name} {self.process:.2f}, postgres {pg}, redis-server "
                f"{self.redis:.2f} cores; machine {self.machine:.2f} of {os.cpu_count()} "
                f"cores busy, iowait {self.iowait:.2f}")


class CpuMeter:
    """Snapshots of who used the CPU: the measured process, Postgres (whole
    server), redis-server (its INFO), the machine, and everything else."""

    def __init__(self, redis_client: Any, postmaster: int | None) -> None:
        self.redis_client = redis_client
        self.postmaster = postmaster
        self.redis_pid = int(redis_client.info("server").get("process_id", 0))

    def snapshot(self, pid: int) -> CpuSnapshot:
        info = self.redis_client.info()
        machine = machine_times()
        table = process_table()
        return CpuSnapshot(at=time.perf_counter(), machine_s=machine["machine"],
                           iowait_s=machine["iowait"], pid=pid, processes=table,
                           redis_s=float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
                           postgres_s=postgres_cpu_s(table, self.postmaster),
                           redis_forks=int(info.get("total_forks", 0)))

    def between(self, before: CpuSnapshot, after: CpuSnapshot) -> CpuUse:
        window = max(1e-9, after.at - before.at)
        postgres = None if before.postgres_s is None or after.postgres_s is None else (
            (after.postgres_s - before.postgres_s) / window)

        def own(snapshot: CpuSnapshot, pid: int) -> float:
            times = snapshot.processes.get(pid)
            return 0.0 if times is None else times.own_s

        parties = {after.pid, self.redis_pid, self.postmaster}
        others = []
        for pid, times in after.processes.items():
            if pid in parties or times.ppid == self.postmaster:
                continue
            earlier = before.processes.get(pid)
            # Own time only: a reaped child's whole life would land in one window.
            used = times.own_s - (earlier.own_s if earlier else 0.0)
            if used / window >= 0.02:
                name = "this benchmark" if pid == os.getpid() else f"{times.name}[{pid}]"
                others.append((name, used / window))
        return CpuUse(window_s=window, machine=(after.machine_s - before.machine_s) / window,
                      iowait=(after.iowait_s - before.iowait_s) / window,
                      process=(own(after, after.pid) - own(before, before.pid)) / window,
                      redis=(after.redis_s - before.redis_s) / window, postgres=postgres,
                      redis_forked=after.redis_forks != before.redis_forks,
                      top_others=sorted(others, key=lambda o: -o[1])[:4])


def busiest_others(before: dict[int, ProcessTimes], after: dict[int, ProcessTimes],
                   window_s: float, parties: set[int], *, top: int = 4,
                   floor: float = 0.05) -> list[tuple[str, float]]:
    """The processes outside ``parties`` that used at least ``floor`` cores between
    two :func:`process_table` readings, busiest first, as ``("name[pid]", cores)``:
    on a shared machine, who else took the cores."""
    others = []
    for pid, times in after.items():
        if pid in parties or pid == os.getpid():
            continue
        earlier = before.get(pid)
        cores = (times.own_s - (earlier.own_s if earlier else 0.0)) / window_s
        if cores >= floor:
            others.append((f"{times.name}[{pid}]", cores))
    return sorted(others, key=lambda other: -other[1])[:top]
