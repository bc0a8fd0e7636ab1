"""Summaries, targets and the results files (latest.json with every sample, latest.md the table)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

# The targets.
READY_FACTOR, READY_SLACK = 1.05, 0.3  # READY within 1.05 x bare ordered limit + 0.3 s
MTTR_SLACK = 1.0  # MTTR within MLflow's warm start + 1 s
HANG_SLACK = 1.0  # hang restart within the liveness budget + 1 s
AGENT_RSS_MB, AGENT_CPU_PERCENT = 60.0, 1.0


def run_identity() -> dict:
    """What a result names its run by: the date, the commit measured, the machine."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent.parent,
                            capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    return {"date": time.strftime("%Y-%m-%d"), "commit": commit, "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"}


def save_results(directory: Path, stem: str, results: dict, text: str) -> None:
    """A run's results side by side: <stem>.json (every figure) and <stem>.md (the table the docs quote)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (directory / f"{stem}.md").write_text(text + "\n")


def rewrite_between(doc: Path, begin: str, end: str, text: str) -> None:
    """Replace what lies between a document's two marker lines (the markers stay) with text."""
    content = doc.read_text()
    start, stop = content.index(begin) + len(begin), content.index(end)
    doc.write_text(content[:start] + "\n" + text + "\n" + content[stop:])


def stats(values: Iterable[float | None]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0}
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3), "n": len(values)}


def _fmt(s: dict, unit: str = "s", digits: int = 2) -> str:
    if not s.get("n"):
        return "n/a"
    if s["n"] == 1:
        return f"{s['median']:.{digits}f} {unit}"
    return f"{s['median']:.{digits}f} {unit} ({s['min']:.{digits}f}–{s['max']:.{digits}f}, n={s['n']})"


def _processes(count: int) -> str:
    return f"{count} process" + ("" if count == 1 else "es")


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "**MISS**")


def summarize(results: dict) -> dict:
    """Medians of everything, and each target's verdict, from the raw samples."""
    summary: dict = {}
    startup = results.get("startup")
    if startup:
        for mode in ("fresh", "existing"):
            mine = stats(s["ready_s"] for s in startup["samples"][f"mlproxy_{mode}"])
            bare = stats(s["ready_s"] for s in startup["samples"][f"bare_{mode}"])
            old = startup["samples"][f"old_{mode}"]
            limit = READY_FACTOR * bare["median"] + READY_SLACK if bare.get("n") else None
            summary[f"ready_{mode}"] = {
                "mlproxy": mine,
                "mlproxy_status_ready": stats(s["status_ready_s"] for s in startup["samples"][f"mlproxy_{mode}"]),
                "mlproxy_stack_ready_event": stats(s["breakdown"]["stack_ready_event"] for s in startup["samples"][f"mlproxy_{mode}"]),
                "bare": bare,
                "bare_mlflow_ready": stats(s["mlflow_ready_s"] for s in startup["samples"][f"bare_{mode}"]),
                "paired_difference": stats(
                    m["ready_s"] - b["ready_s"]
                    for m, b in zip(startup["samples"][f"mlproxy_{mode}"], startup["samples"][f"bare_{mode}"], strict=True)
                ),
                "mlproxy_cpu_s": stats(s.get("cpu_s") for s in startup["samples"][f"mlproxy_{mode}"]),
                "bare_cpu_s": stats(s.get("cpu_s") for s in startup["samples"][f"bare_{mode}"]),
                "old_cpu_s": stats(s.get("cpu_s") for s in old),
                "old_claims_ready": stats(s["claims_ready_s"] for s in old),
                "old_ready": stats(s["ready_s"] for s in old),
                "old_route_fails_after_claim": stats(s["route_fails_after_claim_s"] for s in old),
                "target_s": round(limit, 3) if limit else None,
                "pass": (mine["median"] <= limit) if limit and mine.get("n") else None,
                "breakdown": _breakdown(startup["samples"][f"mlproxy_{mode}"], startup["samples"][f"bare_{mode}"]),
            }
    recovery = results.get("recovery")
    if recovery:
        warm = stats(s["ready_s"] for s in recovery["warm_start"])
        route = stats(s["route_s"] for s in recovery["kill9"])
        status = stats(s["status_ready_s"] for s in recovery["kill9"])
        limit = warm["median"] + MTTR_SLACK if warm.get("n") else None
        summary["mttr"] = {
            "route": route,
            "status_ready": status,
            "warm_start": warm,
            "target_s": round(limit, 3) if limit else None,
            "pass_route": route["median"] <= limit if limit and route.get("n") else None,
            "pass_status": status["median"] <= limit if limit and status.get("n") else None,
            "events": {k: stats(s["events"][k] for s in recovery["kill9"]) for k in recovery["kill9"][0]["events"]} if recovery["kill9"] else {},
        }
        cli = recovery.get("cli_warm_start") or []
        summary["mlflow_launch"] = {
            "uvicorn_direct_ready": warm,
            "cli_ready": stats(s["ready_s"] for s in cli),
            "uvicorn_direct_pss_mb": stats(s["memory"]["pss_mb"] for s in recovery["warm_start"] if "memory" in s),
            "cli_pss_mb": stats(s["memory"]["pss_mb"] for s in cli if "memory" in s),
            "uvicorn_direct_processes": max((s["memory"]["processes"] for s in recovery["warm_start"] if "memory" in s), default=0),
            "cli_processes": max((s["memory"]["processes"] for s in cli if "memory" in s), default=0),
            "uvicorn_direct_cpu_s": stats(s.get("cpu_s") for s in recovery["warm_start"]),
            "cli_cpu_s": stats(s.get("cpu_s") for s in cli),
        }
        budget = recovery["liveness"]["budget_s"]
        hangs = recovery["hang"]
        restarted = stats(s["restarted_s"] for s in hangs)
        summary["hang"] = {
            "detected": stats(s["detected_s"] for s in hangs),
            "restarted": restarted,
            "new_mlflow_ready": stats(s["new_mlflow_ready_s"] for s in hangs),
            "route": stats(s["route_s"] for s in hangs),
            "status_ready": stats(s["status_ready_s"] for s in hangs),
            "budget_s": budget,
            "target_s": budget + HANG_SLACK,
            "pass": restarted["median"] <= budget + HANG_SLACK if restarted.get("n") else None,
        }
    idle = results.get("idle")
    if idle and idle.get("stack"):
        stack = idle["stack"]
        rss = stats(stack["agent_rss_mb_samples"])
        cpu = stack["agent"]["cpu_percent_of_core"]
        summary["agent_idle"] = {
            "rss_mb": rss,
            "cpu_percent": cpu,
            "cpu_percent_subwindows": stats(stack["agent"]["cpu_percent_subwindows"]),
            "others_busy": stack.get("others_busy"),
            "pass_rss": rss["max"] <= AGENT_RSS_MB,
            "pass_cpu": cpu <= AGENT_CPU_PERCENT,
        }
    if idle and idle.get("mlflow_defaults") and idle.get("stack"):
        defaults = idle["mlflow_defaults"]["mlflow_defaults"]
        summary["memory"] = {
            "stack": idle["stack"]["stack"]["memory_median"],
            "stack_mlflow": idle["stack"]["mlflow"]["memory_median"],
            "stack_jupyter": idle["stack"]["jupyter"]["memory_median"],
            "mlflow_defaults": defaults["memory_median"],
            "stack_cpu_percent": idle["stack"]["stack"]["cpu_percent_of_core"],
            "stack_cpu_by_process": {
                name: idle["stack"][name]["cpu_percent_of_core"]
                for name in ("agent", "mlflow", "jupyter", "supervisord", "up") if name in idle["stack"]
            },
            "mlflow_defaults_cpu_percent": defaults["cpu_percent_of_core"],
        }
    return summary


def _breakdown(mlproxy: list[dict], bare: list[dict]) -> dict:
    """Median length of each start-up step, mlproxy (from its logs) next to bare where comparable."""
    def step(samples, end, start=None):
        values = []
        for s in samples:
            b = s["breakdown"]
            a = 0.0 if start is None else b.get(start)
            z = s.get(end) if end in s else b.get(end)
            if a is not None and z is not None:
                values.append(z - a)
        return stats(values)

    return {
        "up_to_supervisord_started": step(mlproxy, "supervisord_started"),
        "supervisord_started_to_mlflow_spawned": step(mlproxy, "mlflow_spawned", "supervisord_started"),
        "supervisord_started_to_jupyter_spawned": step(mlproxy, "jupyter_spawned", "supervisord_started"),
        "supervisord_started_to_agent_spawned": step(mlproxy, "agent_spawned", "supervisord_started"),
        "mlflow_spawned_to_agent_sees_ready": step(mlproxy, "mlflow_ready", "mlflow_spawned"),
        "jupyter_spawned_to_agent_sees_ready": step(mlproxy, "jupyter_ready", "jupyter_spawned"),
        "both_ready_to_route_works": stats(
            s["ready_s"] - max(s["breakdown"]["mlflow_ready"], s["breakdown"]["jupyter_ready"])
            for s in mlproxy
            if s["breakdown"].get("mlflow_ready") is not None and s["breakdown"].get("jupyter_ready") is not None
        ),
        "route_works_to_status_ready": stats(s["status_ready_s"] - s["ready_s"] for s in mlproxy),
        "bare_mlflow_ready": stats(s["mlflow_ready_s"] for s in bare),
        "bare_jupyter_to_route": stats(s["jupyter_to_route_s"] for s in bare),
    }


def markdown(results: dict, summary: dict) -> str:
    meta = results["meta"]
    lines = [
        "<!-- generated by `python -m benchmarks.run`; do not edit by hand -->",
        f"Run {meta['finished']} on {meta['machine']['cpu_model']} ({meta['machine']['cores']} cores, "
        f"{meta['machine']['memory_gb']} GB), commit `{meta['commit']}`; command `{meta['command']}`, "
        f"{meta['duration_min']:.1f} min. Medians (min–max, n runs).",
        "",
        "| Measurement | mlproxy | Baseline | Difference | Target | Result |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("fresh", "existing"):
        r = summary.get(f"ready_{mode}")
        if not r:
            continue
        lines.append(
            f"| Time to READY, {mode} state dir (route works) | {_fmt(r['mlproxy'])} | bare ordered: {_fmt(r['bare'])} "
            f"| {r['mlproxy']['median'] - r['bare']['median']:+.2f} s (×{r['mlproxy']['median'] / r['bare']['median']:.3f}; "
            f"paired {r['paired_difference']['median']:+.2f} s) | ≤ {r['target_s']:.2f} s | {_verdict(r['pass'])} |"
        )
        lines.append(
            f"| … `mlproxy status` says ready, {mode} | {_fmt(r['mlproxy_status_ready'])} | | "
            f"{r['mlproxy_status_ready']['median'] - r['mlproxy']['median']:+.2f} s after the route works | | |"
        )
        lines.append(
            f"| Old recipe (`sleep 3`), {mode}: claims ready | {_fmt(r['old_claims_ready'])} | route works at {_fmt(r['old_ready'])} "
            f"| route keeps failing {_fmt(r['old_route_fails_after_claim'])} after the claim | (informative) | |"
        )
    m = summary.get("mttr")
    if m:
        lines.append(
            f"| MTTR after kill -9 of MLflow: route works again | {_fmt(m['route'])} | MLflow warm start: {_fmt(m['warm_start'])} "
            f"| {m['route']['median'] - m['warm_start']['median']:+.2f} s | ≤ {m['target_s']:.2f} s | {_verdict(m['pass_route'])} |"
        )
        lines.append(
            f"| MTTR: `mlproxy status` ready again | {_fmt(m['status_ready'])} | MLflow warm start: {_fmt(m['warm_start'])} "
            f"| {m['status_ready']['median'] - m['warm_start']['median']:+.2f} s | ≤ {m['target_s']:.2f} s | {_verdict(m['pass_status'])} |"
        )
    h = summary.get("hang")
    if h:
        lines.append(
            f"| Hang (SIGSTOP): agent restarts MLflow (new process) | {_fmt(h['restarted'])} | liveness budget {h['budget_s']:g} s "
            f"| {h['restarted']['median'] - h['budget_s']:+.2f} s | ≤ {h['target_s']:g} s | {_verdict(h['pass'])} |"
        )
        lines.append(f"| … detection (agent's `restart` event) | {_fmt(h['detected'])} | | | | |")
        lines.append(
            f"| … new MLflow ready / route works / status ready | {_fmt(h['new_mlflow_ready'])} / {_fmt(h['route'])} / "
            f"{_fmt(h['status_ready'])} | | | | |"
        )
    a = summary.get("agent_idle")
    if a:
        lines.append(f"| Agent RSS at idle | {_fmt(a['rss_mb'], 'MB', 1)} | | | ≤ {AGENT_RSS_MB:g} MB (max) | {_verdict(a['pass_rss'])} |")
        others = f"; other users took {a['others_busy']:.0%} of the CPUs meanwhile" if a.get("others_busy") is not None else ""
        lines.append(
            f"| Agent CPU at idle (60 s window) | {a['cpu_percent']:.2f} % of a core | | 10 s parts: {_fmt(a['cpu_percent_subwindows'], '%')}{others} "
            f"| ≤ {AGENT_CPU_PERCENT:g} % | {_verdict(a['pass_cpu'])} |"
        )
    mem = summary.get("memory")
    if mem:
        d = mem["mlflow_defaults"]
        for label, key in (("Whole stack idle PSS", "stack"), ("… mlproxy's MLflow alone", "stack_mlflow"), ("… Jupyter", "stack_jupyter")):
            v = mem[key]
            diff = f"{v['pss_mb'] - d['pss_mb']:+.0f} MB (×{v['pss_mb'] / d['pss_mb']:.2f})" if key != "stack_jupyter" else ""
            base = f"`mlflow server` defaults: {d['pss_mb']:.0f} MB, {_processes(d['processes'])}" if key != "stack_jupyter" else ""
            lines.append(f"| {label} | {v['pss_mb']:.0f} MB, {_processes(v['processes'])} | {base} | {diff} | (informative) | |")
        by_process = ", ".join(f"{name} {value:.2f}" for name, value in mem["stack_cpu_by_process"].items())
        lines.append(
            f"| Idle CPU, whole stack | {mem['stack_cpu_percent']:.2f} % of a core | `mlflow server` defaults: "
            f"{mem['mlflow_defaults_cpu_percent']:.2f} % | by process: {by_process} | (informative) | |"
        )
    launch = summary.get("mlflow_launch")
    if launch and launch["cli_ready"].get("n"):
        lines.append(
            f"| MLflow warm start, mlproxy's launch (uvicorn on MLflow's app) | {_fmt(launch['uvicorn_direct_ready'])} "
            f"| `mlflow server --workers 1`, jobs off: {_fmt(launch['cli_ready'])} "
            f"| {launch['uvicorn_direct_ready']['median'] - launch['cli_ready']['median']:+.2f} s | (informative) | |"
        )
        lines.append(
            f"| … its PSS 3 s after ready | {_fmt(launch['uvicorn_direct_pss_mb'], 'MB', 0)}, {_processes(launch['uvicorn_direct_processes'])} "
            f"| {_fmt(launch['cli_pss_mb'], 'MB', 0)}, {_processes(launch['cli_processes'])} "
            f"| {launch['uvicorn_direct_pss_mb']['median'] - launch['cli_pss_mb']['median']:+.0f} MB | (informative) | |"
        )
    lines += _breakdown_table(summary)
    lines += ["", _conditions(results)]
    return "\n".join(lines) + "\n"


def _breakdown_table(summary: dict) -> list[str]:
    modes = [m for m in ("fresh", "existing") if summary.get(f"ready_{m}")]
    if not modes:
        return []
    rows = [
        ("`mlproxy up` exec → supervisord started", "up_to_supervisord_started", None),
        ("supervisord started → MLflow spawned", "supervisord_started_to_mlflow_spawned", None),
        ("supervisord started → Jupyter spawned (beside MLflow)", "supervisord_started_to_jupyter_spawned", None),
        ("supervisord started → agent spawned", "supervisord_started_to_agent_spawned", None),
        ("MLflow spawned → agent sees it ready (bare: MLflow started → ready)", "mlflow_spawned_to_agent_sees_ready", "bare_mlflow_ready"),
        ("Jupyter spawned → agent sees it ready (bare: Jupyter started → route works)", "jupyter_spawned_to_agent_sees_ready", "bare_jupyter_to_route"),
        ("both ready → route works (outside poll)", "both_ready_to_route_works", None),
        ("route works → status says ready", "route_works_to_status_ready", None),
    ]
    header = "| Start-up step (medians, s) | " + " | ".join(f"mlproxy {m} | bare {m}" for m in modes) + " |"
    lines = ["", header, "|---|" + "---|---|" * len(modes)]
    for label, key, bare_key in rows:
        cells = []
        for m in modes:
            b = summary[f"ready_{m}"]["breakdown"]
            cells.append(f"{b[key]['median']:.2f}" if b[key].get("n") else "n/a")
            cells.append(f"{b[bare_key]['median']:.2f}" if bare_key and b[bare_key].get("n") else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cpu = []
    for m in modes:
        r = summary[f"ready_{m}"]
        cpu += [f"{r[key]['median']:.1f}" if r[key].get("n") else "n/a" for key in ("mlproxy_cpu_s", "bare_cpu_s")]
    lines.append("| CPU time used until READY (all processes of the variant, CPU-s) | " + " | ".join(cpu) + " |")
    return lines


def _conditions(results: dict) -> str:
    loads, busy = [], []
    for section in ("startup", "recovery"):
        data = results.get(section) or {}
        for samples in (data.get("samples") or {}).values():
            loads += [s["load_before"][0] for s in samples]
            busy += [s["others_busy"] for s in samples]
        for key in ("kill9", "hang", "warm_start"):
            loads += [s["load_before"][0] for s in data.get(key, [])]
            busy += [s["others_busy"] for s in data.get(key, [])]
    meta = results["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    text = f"Versions: {versions}."
    calibrations = [meta.get("calibration_start"), *(results.get("startup") or {}).get("calibration_per_round", []),
                    ((results.get("idle") or {}).get("stack") or {}).get("calibration"), meta.get("calibration_end")]
    calibrations = [c for c in calibrations if c]
    if calibrations:
        loops = [c["cpu_loop_s"] for c in calibrations]
        wakeups = [c["wakeup_cpu_us"] for c in calibrations]
        idle_wakeup = ((results.get("idle") or {}).get("stack") or {}).get("calibration", {}).get("wakeup_cpu_us")
        text += (
            f" Machine speed during the run (procs.calibrate): fixed CPU loop {min(loops):.3f}–{max(loops):.3f} s, "
            f"CPU per wake-up {min(wakeups):.0f}–{max(wakeups):.0f} µs"
            + (f" ({idle_wakeup:.0f} µs just before the idle window)" if idle_wakeup else "") + "."
        )
    if loads:
        text += (
            f" Machine load (1-min average) before each run: median {statistics.median(loads):.2f} "
            f"({min(loads):.2f}–{max(loads):.2f}). CPU taken by other users of the machine during the timed runs: "
            f"median {statistics.median(busy):.0%} of all cores ({min(busy):.0%}–{max(busy):.0%})."
        )
    return text
