"""`mlproxy logs`: a supervisord event listener that copies each program's output to stdout.

Under systemd (the journal) and in containers (`podman logs`), every server's output belongs on
the stack's stdout. supervisord could write program output straight to /dev/stdout, but then it
has no file left to tail, and the agent's FATAL report needs a program's last lines. So in stdout
mode programs still log to small rotated files, with `stdout_events_enabled`, and this listener
re-emits every line on its stderr, prefixed with the program's name; supervisord sends that to
its own stdout.
"""

from __future__ import annotations

import sys

from supervisor import childutils


def prefixed_lines(program: str, pending: str, data: str) -> tuple[list[str], str]:
    """Complete lines of program output, each prefixed, and the unfinished remainder."""
    *lines, rest = (pending + data).split("\n")
    return [f"[{program}] {line}\n" for line in lines], rest


def main() -> int:
    pending: dict[str, str] = {}
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        if headers["eventname"].startswith("PROCESS_LOG"):
            meta, data = childutils.eventdata(payload)
            program = meta["processname"]
            lines, pending[program] = prefixed_lines(program, pending.get(program, ""), data)
            sys.stderr.writelines(lines)
            sys.stderr.flush()
        childutils.listener.ok(sys.stdout)
