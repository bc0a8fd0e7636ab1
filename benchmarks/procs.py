"""What /proc says about processes and the machine: trees, memory (PSS), CPU time, load."""

from __future__ import annotations

import os
import platform
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from mlproxy_supervisor import procfs

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, for [11] utime and [12] stime (procfs.stat
    has the rest)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """root and every process below it (children, grandchildren, ...), from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for pid in procfs.pids():
        if (info := procfs.stat(pid)) is not None:
            children.setdefault(info.ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if procfs.stat(pid) is None:
            continue
        found.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(found)


def trees(processes) -> list[int]:
    """Every process of the given Popen objects' trees."""
    return [pid for process in processes for pid in descendants(process.pid)]


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    return [pid for pid in procfs.group_members(pgid) if _alive(pid)]


def cmdline(pid: int) -> str:
    return procfs.command_line(pid) or ""


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process (all its threads), in seconds."""
    fields = _stat(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class Memory:
    pss_mb: float  # proportional set size: shared pages divided among the processes mapping them
    rss_mb: float  # resident set size summed (counts shared pages once per process)
    uss_mb: float  # private pages only
    processes: int

    def as_dict(self) -> dict:
        return {"pss_mb": round(self.pss_mb, 1), "rss_mb": round(self.rss_mb, 1), "uss_mb": round(self.uss_mb, 1), "processes": self.processes}


def memory(pids: list[int]) -> Memory:
    """Summed smaps_rollup of the given processes (those that vanished meanwhile are skipped)."""
    pss = rss = uss = 0
    counted = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        values = {}
        for line in lines[1:]:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[name] = int(parts[0])
        pss += values.get("Pss", 0)
        rss += values.get("Rss", 0)
        uss += values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
        counted += 1
    return Memory(pss / 1024, rss / 1024, uss / 1024, counted)


def tree_cpu_seconds(pids: list[int]) -> float:
    """CPU time of processes plus that of their children already reaped (cutime, cstime)."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += sum(int(v) for v in fields[11:15])
    return total / CLK_TCK


def _machine_busy_seconds() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK  # all but idle and iowait


class Contention:
    """How busy the machine was during a measurement, and how much of that was not us.

    ``ours`` lists the measured processes (called at start and at finish, so it may grow); the
    benchmark's own CPU is counted as ours too. "others" is what other users of the machine took.
    """

    def __init__(self, ours=lambda: []):
        self.ours = ours
        self.wall = time.monotonic()
        self.machine = _machine_busy_seconds()
        self.own = tree_cpu_seconds(ours())
        self.me = _self_cpu()

    def finish(self) -> dict:
        wall = time.monotonic() - self.wall
        capacity = wall * (os.cpu_count() or 1)
        busy = _machine_busy_seconds() - self.machine
        measured = tree_cpu_seconds(self.ours()) - self.own
        ours = measured + _self_cpu() - self.me
        return {
            "load_after": load(),
            "cpu_s": round(measured, 2),  # the measured processes' CPU time
            "machine_busy": round(busy / capacity, 3) if capacity else 0.0,
            "others_busy": round(max(0.0, busy - ours) / capacity, 3) if capacity else 0.0,
        }


def _self_cpu() -> float:
    times = os.times()
    return times.user + times.system


def calibrate() -> dict:
    """How fast this machine is right now, to compare runs: wall time of a fixed CPU-bound loop,
    and the CPU time one wake-up costs (400 x a 5 ms sleep and a stat). On a virtual machine both
    vary with the host's load, which the guest's own figures (load, /proc/stat) do not show; the
    wake-up cost is higher when the guest is otherwise idle, and idle servers mostly wake up."""
    began = time.perf_counter()
    sum(i * i for i in range(3_000_000))
    loop = time.perf_counter() - began
    cpu = time.process_time()
    for _ in range(400):
        time.sleep(0.005)
        os.stat("/proc/self")
    return {"cpu_loop_s": round(loop, 3), "wakeup_cpu_us": round((time.process_time() - cpu) / 400 * 1e6, 1)}


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "load_at_start": load(),
    }


def kill_tree(pids: list[int], pgids: list[int] = (), grace: float = 10.0) -> None:
    """SIGTERM process groups and processes, wait up to grace, then SIGKILL what is left."""
    def send(sig: int) -> None:
        for pgid in pgids:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def alive() -> bool:
        return any(_alive(p) for p in pids) or any(group_members(g) for g in pgids)

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive():
        time.sleep(0.1)
    if alive():
        send(signal.SIGKILL)
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    info = procfs.stat(pid)
    return info is not None and info.state != "Z"
