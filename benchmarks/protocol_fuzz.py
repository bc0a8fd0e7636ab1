"""The protocol fuzzer, the long run: the generator and checks of the fuzz tier
(tests/support/protocol_fuzz.py) for 100,000 cases against a stack of its own. Writes
benchmarks/results/protocol_fuzz.json, the table between the protocol-fuzz markers in
docs/SECURITY.md and docs/images/protocol-fuzz-memory.png (Jupyter's memory over the run).

    python -m benchmarks.protocol_fuzz --cases 100000

Run from the repository root in mlproxy's environment (about 55 min on 2 cores). Unlike the tier,
a failing case does not stop the run: it is counted, and the first ones are kept in the results
(each becomes a plain test in tests/hostile/test_protocol.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.report import rewrite_between, run_identity

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "protocol_fuzz.json"
DOC = ROOT / "docs" / "SECURITY.md"
PLOT = ROOT / "docs" / "images" / "protocol-fuzz-memory.png"
BEGIN, END = "<!-- protocol-fuzz:begin (written by benchmarks/protocol_fuzz.py) -->", "<!-- protocol-fuzz:end -->"
SAMPLE_EVERY = 1000  # cases between two readings of Jupyter's memory


def table(result: dict, command: str) -> str:
    summary = result["summary"]
    statuses = ", ".join(f"{count} × {status}" for status, count in summary["statuses"].items())
    endings = ", ".join(f"{count} {ending}" for ending, count in summary["endings"].items())
    lines = [
        f"Run of {result['date']} at commit {result['commit']}, {result['machine']}: {summary['cases']} cases in "
        f"{result['minutes']:.0f} min ({summary['cases'] / (summary['seconds'] or 1):.0f} cases/s). Reproduce with:",
        "",
        f"    {command}",
        "",
        f"- victims answered with another request's answer: **{result['victims_wrong']}**",
        f"- unauthenticated requests answered 500: **{result['unauthenticated_500']}**",
        f"- violations over the whole run (smuggled requests or parser errors in MLflow's log, the token in a log, memory): **{len(result['violations'])}**"
        + (f" ({'; '.join(result['violations'])})" if result["violations"] else ""),
        f"- Jupyter's memory: {result['rss_mb'][0]:.0f} MB at the start, {max(result['rss_mb']):.0f} MB at most, {result['rss_mb'][-1]:.0f} MB at the end",
        f"- how the connections ended: {endings}",
        f"- answers read: {statuses}",
        "",
        f"![Jupyter's memory over the fuzz run]({PLOT.relative_to(DOC.parent).as_posix()})",
    ]
    return "\n".join(lines)


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 3.5))
    cases = [index * SAMPLE_EVERY for index in range(len(result["rss_mb"]))]
    axes.plot(cases, result["rss_mb"], marker=".")
    axes.set_ylim(0, max(result["rss_mb"]) * 1.2)
    axes.set_xlabel("fuzz cases sent")
    axes.set_ylabel("Jupyter RSS (MB)")
    axes.set_title(f"Jupyter's memory under {result['summary']['cases']} generated raw requests")
    figure.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000)
    args = parser.parse_args()

    from hypothesis import HealthCheck, given, settings

    from tests.stack import Stack
    from tests.support.hostile import Target
    from tests.support.protocol_fuzz import Run, cases, jupyter_rss, login_cookie, run_case

    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlproxy-protocol-fuzz-") as scratch:
        stack = Stack(Path(scratch) / "state").start(timeout=300)  # its ports from tests/support/ports.py
        try:
            target = Target(stack)
            run = Run(target)
            cookie = login_cookie(target)
            rss = [jupyter_rss(target) / (1 << 20)]
            failing: list[dict] = []

            @settings(max_examples=args.cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(cases(target, cookie))
            def one_case(case):
                problems = run_case(run, case)
                if problems and len(failing) < 20:
                    failing.append({"problems": problems, "messages": [repr(message) for message in case.messages], "ending": case.ending})
                if run.cases % SAMPLE_EVERY == 0:
                    rss.append(jupyter_rss(target) / (1 << 20))
                    print(f"{run.cases} cases, {len(run.victims_wrong)} victims wrong, Jupyter {rss[-1]:.0f} MB", flush=True)

            one_case()
            violations = run.violations()
            summary = run.summary()
        finally:
            stack.stop()
    result = {
        **run_identity(), "minutes": (time.monotonic() - began) / 60,
        "summary": summary, "victims_wrong": len(run.victims_wrong), "unauthenticated_500": len(run.unauthenticated_500),
        "violations": violations, "failing_cases": failing, "rss_mb": [round(value, 1) for value in rss],
    }  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    rewrite_between(DOC, BEGIN, END, table(result, f"python -m benchmarks.protocol_fuzz --cases {args.cases}"))
    plot(result)
    print(f"{summary['cases']} cases, {len(run.victims_wrong)} victims wrong, {len(violations)} violations; see {DOC.relative_to(ROOT)}")
    return 0 if not (run.victims_wrong or run.unauthenticated_500 or violations) else 1


if __name__ == "__main__":
    raise SystemExit(main())
