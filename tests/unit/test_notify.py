"""systemd's notification protocol: datagrams to $NOTIFY_SOCKET and the watchdog interval."""

from __future__ import annotations

import socket

from mlproxy_supervisor.agent.notify import Notifier


def test_notifier_sends_datagrams_and_watchdog_interval(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
        assert notifier.watchdog_interval == 1.0  # every step, at most once a second (below 10 s / 2)
        notifier.ready("ready: all good")
        notifier.status("ready: all good")  # unchanged: not sent again
        notifier.status("degraded: mlflow starting")
        notifier.watchdog()
        messages = [receiver.recv(1024).decode() for _ in range(3)]
    assert messages == ["READY=1\nSTATUS=ready: all good", "STATUS=degraded: mlflow starting", "WATCHDOG=1"]
    assert Notifier({}).address is None  # not under systemd: silent
