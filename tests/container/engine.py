"""podman, driven the way a user drives it: the CLI, with this tier's engine settings.

Everything here shells out to `podman`; nothing talks to an API or reads podman's storage, so
what the tests see is what `podman ps`, `podman logs` and `podman inspect` show a person.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port

CONTAINERS_CONF = Path(__file__).with_name("containers.conf")
# Every object this tier creates carries this label plus the pid of the pytest that made it, so a
# later run can remove what a killed run left behind without touching anyone else's containers.
LABEL = "org.mlproxy.test"


class EngineError(Exception):
    pass


def unavailable_reason() -> str | None:
    """Why this tier cannot run here, or None when it can."""
    if os.name != "posix" or os.geteuid() != 0:
        return "the container tier needs root (rootful podman, as CI runs it)"
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install podman runc; see docs/container.md)"
    return None


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    env["BUILDAH_FORMAT"] = "docker"  # the OCI format has no HEALTHCHECK; --format docker is passed too
    return env


def podman(*args: str, check: bool = True, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["podman", *args], env=engine_env(), capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and result.returncode != 0:
        raise EngineError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def run_labels() -> list[str]:
    return ["--label", f"{LABEL}=1", "--label", f"{LABEL}.pid={os.getpid()}"]


def remove_leftovers() -> list[str]:
    """Remove containers and volumes of earlier runs of this tier whose pytest is gone."""
    removed = []
    for kind in ("container", "volume"):
        listing = podman(kind, "ls", *(["--all"] if kind == "container" else []), "--filter", f"label={LABEL}",
                         "--format", "json", check=False)
        for item in json.loads(listing.stdout or "[]"):
            labels = item.get("Labels") or {}
            pid = int(labels.get(f"{LABEL}.pid", "0") or 0)
            if pid and pid != os.getpid() and Path(f"/proc/{pid}").exists():
                continue  # a run still going on: not ours to touch
            name = item["Names"][0] if kind == "container" else item["Name"]
            podman(kind, "rm", "--force", *(["--volumes"] if kind == "container" else []), name, check=False)
            removed.append(f"{kind} {name}")
    return removed


@dataclass
class Container:
    """One `podman run -d` of the image, published on a loopback port of the tests' (free_port)."""

    name: str
    image: str
    volume: str
    host_port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)

    def run(self) -> Container:
        self.host_port = self.host_port or free_port()
        args = ["run", "--detach", "--name", self.name, *run_labels(),
                "--publish", f"127.0.0.1:{self.host_port}:8888",
                "--volume", f"{self.volume}:/var/lib/mlproxy"]
        for key in self.env:
            args += ["--env", key]  # the value travels in podman's environment, not in its argv
        result = subprocess.run(
            ["podman", *args, *self.extra_args, self.image],
            env={**engine_env(), **self.env}, capture_output=True, text=True, timeout=60, check=False,
        )
        if result.returncode != 0:
            raise EngineError(f"podman run {self.name} exited {result.returncode}:\n{result.stderr[-3000:]}")
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    def inspect(self) -> dict:
        return json.loads(podman("container", "inspect", self.name).stdout)[0]

    def state(self) -> dict:
        return self.inspect()["State"]

    def logs(self) -> str:
        result = podman("logs", self.name)
        return result.stdout + result.stderr

    def exec(self, *argv: str, user: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return podman("exec", *(["--user", user] if user else []), self.name, *argv, check=False, timeout=timeout)

    def healthcheck(self) -> tuple[int, str]:
        """`podman healthcheck run`: 0 healthy, 1 unhealthy (nothing runs it periodically here)."""
        result = podman("healthcheck", "run", self.name, check=False, timeout=60)
        return result.returncode, result.stdout + result.stderr

    def health_status(self) -> str:
        state = self.state()
        return (state.get("Health") or state.get("Healthcheck") or {}).get("Status", "")

    def wait_healthy(self, timeout: float = 180, interval: float = 1.0) -> float:
        """Run the healthcheck until it passes; return the seconds it took."""
        started = time.monotonic()
        last = ""
        while time.monotonic() - started < timeout:
            code, last = self.healthcheck()
            if code == 0:
                return time.monotonic() - started
            if not self.state().get("Running"):
                break
            time.sleep(interval)
        raise AssertionError(f"{self.name} not healthy after {time.monotonic() - started:.0f} s; last check: {last}\n"
                             f"--- podman logs (last 60 lines)\n" + "\n".join(self.logs().splitlines()[-60:]))

    def stop(self, timeout: int = 10) -> float:
        """`podman stop` (SIGTERM, then SIGKILL after `timeout` s); return the seconds it took."""
        started = time.monotonic()
        podman("stop", "--time", str(timeout), self.name, timeout=timeout + 60)
        return time.monotonic() - started

    def start(self) -> None:
        podman("start", self.name)

    def remove(self) -> None:
        podman("rm", "--force", "--volumes", "--time", "0", self.name, check=False)
