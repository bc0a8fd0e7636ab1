"""Faults under load, the long run: the engine of tests/faults (tests/support/faults.py) with 100 or
more faults. Writes benchmarks/results/faults.json, the table between the faults markers in
docs/RELIABILITY.md and docs/images/recovery-by-fault-kind.png.

    python -m benchmarks.faults --faults 100 [--clients 3] [--seed N] [--port-offset N]

Run from the repository root in mlproxy's environment (about 20 min on 2 cores for 100 faults).
The stack runs under `mlproxy up`; kill -9 of supervisord and power cuts under systemd are in the
system tier (tests/system/test_faults_under_systemd.py), as docs/RELIABILITY.md says.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.report import rewrite_between

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
DOC = ROOT / "docs" / "RELIABILITY.md"
PLOT = ROOT / "docs" / "images" / "recovery-by-fault-kind.png"
BEGIN, END = "<!-- faults:begin (written by benchmarks/faults.py) -->", "<!-- faults:end -->"


def table(result: dict, command: str) -> str:
    counts: dict[str, int] = {}
    for outcome in result["outcomes"]:
        counts[outcome["kind"]] = counts.get(outcome["kind"], 0) + 1
    lines = [
        f"Run of {result['date']} at commit {result['commit']}, {result['machine']}: {result['faults']} faults, "
        f"{result['clients']} clients, seed {result['seed']}, {result['minutes']:.0f} min. Reproduce with:",
        "",
        f"    {command}",
        "",
        f"- writes acknowledged: **{result['acknowledged']}** ({', '.join(f'{v} {k}s' for k, v in result['by_kind'].items())})",
        f"- acknowledged writes lost: **{len(result['lost'])}**",
        f"- faults never recovered: **{len(result['never_recovered'])}**",
        "",
        "| fault | injected | recovery median (s) | recovery max (s) |",
        "|---|---:|---:|---:|",
    ]
    for kind in sorted(counts):
        times = result["recovery_seconds"].get(kind, [])
        median = f"{statistics.median(times):.1f}" if times else "-"
        worst = f"{max(times):.1f}" if times else "-"
        lines.append(f"| {kind} | {counts[kind]} | {median} | {worst} |")
    lines += ["", f"![Recovery time by fault kind]({PLOT.relative_to(DOC.parent).as_posix()})"]
    return "\n".join(lines)


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted(result["recovery_seconds"])
    figure, axes = plt.subplots(figsize=(9, 4.5))
    axes.boxplot([result["recovery_seconds"][k] for k in kinds], orientation="horizontal", tick_labels=kinds)
    for row, kind in enumerate(kinds, 1):
        values = result["recovery_seconds"][kind]
        axes.scatter(values, [row + random.uniform(-0.12, 0.12) for _ in values], s=10, alpha=0.6)
    axes.set_xlabel("seconds from the fault to READY again (clients writing throughout)")
    axes.set_title(f"Recovery by fault kind: {result['faults']} faults, {len(result['lost'])} acknowledged writes lost")
    figure.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", type=int, default=100)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--seed", type=int, default=random.randrange(10**6))
    parser.add_argument("--port-offset", type=int, default=0, help="shift the ports (31888, 31001, 31181)")
    args = parser.parse_args()

    from tests.stack import Stack
    from tests.support.faults import run

    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlproxy-faults-") as scratch:
        ports = dict(jupyter_port=31888 + args.port_offset, mlflow_port=31001 + args.port_offset, metrics_port=31181 + args.port_offset)
        stack = Stack(Path(scratch) / "state", **ports).start(timeout=300)
        try:
            result = run(stack, Path(scratch), args.faults, args.clients, args.seed, log=lambda line: print(line, flush=True))
        finally:
            stack.stop()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    result.update(
        date=time.strftime("%Y-%m-%d"), commit=commit, minutes=(time.monotonic() - began) / 60,
        machine=f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    command = f"python -m benchmarks.faults --faults {args.faults} --clients {args.clients} --seed {args.seed}"
    rewrite_between(DOC, BEGIN, END, table(result, command))
    plot(result)
    print(f"{result['faults']} faults, {result['acknowledged']} acknowledged, {len(result['lost'])} lost, "
          f"{len(result['never_recovered'])} never recovered; see {DOC.relative_to(ROOT)}")
    return 0 if not result["lost"] and not result["never_recovered"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
