"""What mlproxy's commands say to the person running them, and who that is."""

from __future__ import annotations

import os


def say(message: str) -> None:
    print(f"mlproxy: {message}", flush=True)


def started_by_systemd() -> bool:
    """Whether systemd started this process (it sets INVOCATION_ID for every unit it runs): its
    output then goes to the journal, read by an operator rather than the user at a terminal."""
    return "INVOCATION_ID" in os.environ
