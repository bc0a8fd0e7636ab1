"""Idle cost: the agent's RSS and CPU, the whole stack's memory (PSS), and MLflow's own defaults.

Memory is PSS (proportional set size) summed over a process tree, so pages shared between its
processes count once; CPU is utime+stime from /proc/<pid>/stat over the window.
"""

from __future__ import annotations

import statistics
import time

from . import procs
from .probe import mlflow_ready, wait_ports_free, wait_until
from .systems import Mlproxy, OldRecipe

SUBWINDOWS = 6  # the window is also cut in this many parts, to show how steady the idle cost is


def _cpu(pids: list[int]) -> float:
    return sum(value for pid in pids if (value := procs.cpu_seconds(pid)) is not None)


def _sample_window(trees: dict[str, list[int]], window: float, extra=None) -> dict:
    """CPU share of each named set of processes over the window and its parts, and memory samples."""
    cpu_start = {name: _cpu(pids) for name, pids in trees.items()}
    samples: dict[str, list] = {name: [] for name in trees}
    memory: dict[str, list[procs.Memory]] = {name: [] for name in trees}
    extras = []
    load_before = procs.load()
    contention = procs.Contention(lambda: sorted({pid for pids in trees.values() for pid in pids}))
    began = last = time.monotonic()
    last_cpu = dict(cpu_start)
    for _ in range(SUBWINDOWS):
        time.sleep(window / SUBWINDOWS)
        now = time.monotonic()
        for name, pids in trees.items():
            cpu = _cpu(pids)
            samples[name].append((cpu - last_cpu[name]) / (now - last))
            last_cpu[name] = cpu
            memory[name].append(procs.memory(pids))
        if extra is not None:
            extras.append(extra())
        last = now
    elapsed = time.monotonic() - began
    result = {"window_s": round(elapsed, 1), "load_before": load_before, **contention.finish()}
    for name in trees:
        result[name] = {
            "cpu_percent_of_core": round(100 * (last_cpu[name] - cpu_start[name]) / elapsed, 3),
            "cpu_percent_subwindows": [round(100 * value, 3) for value in samples[name]],
            "memory_samples": [m.as_dict() for m in memory[name]],
            "memory_median": _median_memory(memory[name]),
        }
    if extras:
        result["extra_samples"] = extras
    return result


def _median_memory(samples: list[procs.Memory]) -> dict:
    return {
        key: round(statistics.median(getattr(m, key) for m in samples), 1) for key in ("pss_mb", "rss_mb", "uss_mb")
    } | {"processes": max(m.processes for m in samples)}


def stack_idle(stack: Mlproxy, settle: float, window: float) -> dict:
    """A READY stack left alone for `settle` seconds, then watched for `window` seconds."""
    time.sleep(settle - 3)
    calibration = procs.calibrate()  # about 2.5 s, just before the window
    processes = stack.supervisor().processes()
    agent_pid = processes["agent"].pid
    stack_tree = procs.descendants(stack.process.pid)  # `mlproxy up`, supervisord, agent, MLflow, Jupyter
    trees = {
        "stack": stack_tree,
        "agent": [agent_pid],
        "up": [stack.process.pid],
        "supervisord": [pid for pid in stack_tree if "supervisor.supervisord" in procs.cmdline(pid)],
        "mlflow": procs.descendants(processes["mlflow"].pid),
        "jupyter": procs.descendants(processes["jupyter"].pid),
    }
    result = _sample_window(trees, window, extra=lambda: round(procs.rss_mb(agent_pid) or 0, 1))
    result["agent_rss_mb_samples"] = result.pop("extra_samples")
    result["calibration"] = calibration
    result["processes"] = {pid: procs.cmdline(pid)[:160] for pid in trees["stack"]}
    return result


def mlflow_defaults_idle(old: OldRecipe, settle: float, window: float) -> dict:
    """`mlflow server` with MLflow's defaults (4 workers, job execution on) alone, ready, then idle."""
    wait_ports_free([old.ports.mlflow])
    old.prepare()
    try:
        started = time.monotonic()
        server = old.start_mlflow()
        ready = wait_until(lambda: mlflow_ready(old.ports.mlflow), 240)
        if ready is None:
            raise RuntimeError("mlflow server (defaults) not ready within 240 s")
        time.sleep(settle - 3)
        calibration = procs.calibrate()
        tree = procs.descendants(server.pid)
        result = _sample_window({"mlflow_defaults": tree}, window)
        result["calibration"] = calibration
        result["ready_s"] = round(ready - started, 3)
        result["processes"] = {pid: procs.cmdline(pid)[:160] for pid in tree}
    finally:
        old.stop()
    return result
