"""`mlproxy _logforward`: a supervisord event listener that copies each program's output out.

Under systemd (the journal) and in containers (`podman logs`), every server's output belongs
outside the stack's files. supervisord could write program output straight to /dev/stdout, but
then it has no file left to tail, and the agent's FATAL report needs a program's last lines. So
programs still log to rotated files, with `stdout_events_enabled`, and this listener re-emits
every line:
- stdout mode: on its stderr, prefixed with the program's name; supervisord sends that to its
  own stdout;
- journal mode (`--journal`): to journald's native socket, one entry per line with
  SYSLOG_IDENTIFIER=mlproxy-<program>, so `journalctl -t mlproxy-mlflow` finds MLflow's lines
  (journald still files them under the unit: `journalctl -u mlproxy`). supervisord's own syslog
  copy would tag every program's lines `supervisord.py`.
"""

from __future__ import annotations

import signal
import socket
import sys

from supervisor import childutils

JOURNAL_SOCKET = "/run/systemd/journal/socket"
JOURNAL_PREFIX = "mlproxy-"  # + program name; the unit's own lines (up, supervisord) are `mlproxy`
PRIORITY_INFO = 6
# A journal datagram must fit the socket's send buffer (about 200 KiB); longer lines are cut.
MAX_LINE = 64 * 1024


def prefixed_lines(program: str, pending: str, data: str) -> tuple[list[str], str]:
    """Complete lines of program output, each prefixed, and the unfinished remainder."""
    lines, rest = split_lines(pending, data)
    return [f"[{program}] {line}\n" for line in lines], rest


def split_lines(pending: str, data: str) -> tuple[list[str], str]:
    *lines, rest = (pending + data).split("\n")
    return lines, rest


def journal_entry(program: str, line: str) -> bytes:
    """One entry in journald's native protocol: KEY=value lines (a line holds no newline)."""
    message = line.rstrip("\r")[:MAX_LINE]
    fields = (("SYSLOG_IDENTIFIER", JOURNAL_PREFIX + program), ("PRIORITY", str(PRIORITY_INFO)), ("MESSAGE", message))
    return b"".join(f"{key}={value}\n".encode(errors="replace") for key, value in fields)


class Journal:
    """journald's native socket; a line it refuses goes to stderr (the listener's log file)."""

    def __init__(self, address: str = JOURNAL_SOCKET):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, program: str, lines: list[str]) -> None:
        for line in lines:
            try:
                self.sock.sendto(journal_entry(program, line), self.address)
            except OSError as error:  # no journal (not under systemd), or journald restarting
                sys.stderr.write(f"[{program}] {line}  (journal: {error.strerror})\n")
                sys.stderr.flush()


def _stop(signum, frame) -> None:
    raise SystemExit(0)  # a requested stop: supervisord logs it as INFO, not "terminated by SIGTERM"


def main(to_journal: bool = False) -> int:
    if sys.stdin.isatty():  # a person typed it: this speaks supervisord's event protocol only
        print("mlproxy _logforward is supervisord's event listener; read the logs with `mlproxy logs [PROGRAM] [-f]`", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop)
    journal = Journal() if to_journal else None
    pending: dict[str, str] = {}
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        if headers["eventname"].startswith("PROCESS_LOG"):
            meta, data = childutils.eventdata(payload)
            program = meta["processname"]
            if journal is not None:
                lines, pending[program] = split_lines(pending.get(program, ""), data)
                journal.send(program, lines)
            else:
                lines, pending[program] = prefixed_lines(program, pending.get(program, ""), data)
                sys.stderr.writelines(lines)
                sys.stderr.flush()
        childutils.listener.ok(sys.stdout)
