"""systemd's notification protocol, by hand: one datagram to $NOTIFY_SOCKET per message."""

from __future__ import annotations

import os
import socket

from ..timings import WATCHDOG_MIN_SPACING


class Notifier:
    """READY=1, STATUS=... and WATCHDOG=1 for a Type=notify unit; silent when not under systemd."""

    def __init__(self, environ: dict[str, str] | None = None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract socket namespace
        self.address = address or None
        usec = environ.get("WATCHDOG_USEC", "")
        # `mlproxy up` (systemd's main process) pings once per loop: at least twice per interval,
        # as sd_watchdog_enabled advises, and otherwise once a second. The agent sends READY=1
        # and STATUS=, which count with NotifyAccess=all.
        enabled = usec.isdigit() and int(usec) > 0
        self.watchdog_interval = min(int(usec) / 2e6, WATCHDOG_MIN_SPACING) if enabled else None
        self._last_status = None

    def send(self, message: str) -> None:
        if self.address is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(message.encode(), self.address)
            except OSError:
                pass  # systemd gone (shutdown) or socket not ours: nothing useful to do

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")
        self._last_status = status

    def status(self, status: str) -> None:
        if status != self._last_status:
            self.send(f"STATUS={status}")
            self._last_status = status

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")
