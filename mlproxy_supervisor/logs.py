"""`mlproxy logs [PROGRAM] [-f]`: the programs' log files (log_dir), from any shell.

Every program logs to a rotated file in log_dir whatever log_target says (the journal and stdout
get copies), so the files are the one place to read, running or stopped. Several programs are
shown with their name before each line; -f follows the files across rotation.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from . import supervisord_conf
from .config import Settings
from .exits import EXIT_CONFIG

FOLLOW_PERIOD = 0.5  # seconds between two looks at the files


def log_files(settings: Settings) -> dict[str, Path]:
    """Each program's log file (supervisord's own too), by the program's name."""
    names = ("supervisord", *supervisord_conf.programs(settings))
    return {name: settings.log_dir / f"{name}.log" for name in names}


def last_lines(path: Path, count: int) -> tuple[list[str], int]:
    """The last `count` lines of a file and the offset its end had."""
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        start, data = end, b""
        while start > 0 and data.count(b"\n") <= count:
            start = max(0, start - 65536)
            handle.seek(start)
            data = handle.read(end - start)
    lines = data.decode(errors="replace").splitlines()
    return lines[-count:] if count else [], end


class Follower:
    """New complete lines of one file, from an offset on; starts over when the file is rotated
    (another inode) or truncated."""

    def __init__(self, path: Path, offset: int):
        self.path = path
        self.offset = offset
        self.inode = self._inode()
        self.pending = b""

    def _inode(self) -> int | None:
        try:
            return self.path.stat().st_ino
        except OSError:
            return None

    def read(self) -> list[str]:
        inode = self._inode()
        if inode is None:
            return []
        if inode != self.inode:
            self.inode, self.offset, self.pending = inode, 0, b""
        with open(self.path, "rb") as handle:
            if handle.seek(0, os.SEEK_END) < self.offset:
                self.offset, self.pending = 0, b""
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        *lines, self.pending = (self.pending + data).split(b"\n")
        return [line.decode(errors="replace") for line in lines]


def run(settings: Settings, program: str | None, follow: bool, count: int) -> int:
    files = log_files(settings)
    if program is not None and program not in files:
        print(f"mlproxy logs: no program {program!r} in this stack; its programs are: {', '.join(files)}", file=sys.stderr)
        return EXIT_CONFIG
    chosen = {program: files[program]} if program else files
    prefix = (lambda name: f"[{name}] ") if len(chosen) > 1 else (lambda name: "")
    followers = []
    for name, path in chosen.items():
        if not path.exists():
            if program is not None:
                print(f"mlproxy logs: {path} does not exist yet ({name} has not run)", file=sys.stderr)
            followers.append(Follower(path, 0))
            continue
        lines, end = last_lines(path, count)
        print("".join(f"{prefix(name)}{line}\n" for line in lines), end="", flush=True)
        followers.append(Follower(path, end))
    while follow:
        time.sleep(FOLLOW_PERIOD)
        for name, follower in zip(chosen, followers, strict=True):
            lines = follower.read()
            if lines:
                print("".join(f"{prefix(name)}{line}\n" for line in lines), end="", flush=True)
    return 0
