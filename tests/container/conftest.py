"""Fixtures of the container tier: the engine, the local base image, the image under test, and
a running container on its own named volume. Measurements end up in the pytest summary."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest
import requests

from tests.container import base_image, engine
from tests.container.engine import Container, podman
from tests.stack import ROOT

MEASUREMENTS: dict[str, str] = {}


def measure(name: str, value: str) -> None:
    MEASUREMENTS[name] = value


def pytest_terminal_summary(terminalreporter):
    if MEASUREMENTS:
        terminalreporter.section("container tier measurements")
        for name, value in MEASUREMENTS.items():
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="session")
def container_engine():
    reason = engine.unavailable_reason()
    if reason:
        pytest.skip(reason)
    for leftover in engine.remove_leftovers():
        print(f"removed {leftover} left by an earlier run")
    return True


class Image:
    def __init__(self, tag: str, base: str):
        self.tag, self.base = tag, base

    def inspect(self) -> dict:
        return json.loads(podman("image", "inspect", self.tag).stdout)[0]


@pytest.fixture(scope="session")
def image(container_engine, tmp_path_factory) -> Image:
    """The repository's Dockerfile, built with podman on the local base (layer cache kept)."""
    started = time.monotonic()
    base = base_image.ensure_base_image()
    measure("base image ready", f"{time.monotonic() - started:.1f} s ({base})")
    tag = f"localhost/mlproxy-test:run-{os.getpid()}"
    log = tmp_path_factory.mktemp("build") / "build.log"
    started = time.monotonic()
    with open(log, "w") as output:
        result = subprocess.run(
            ["podman", "build", "--format", "docker", "--layers", "--build-arg", f"BASE={base}", "--tag", tag, str(ROOT)],
            env=engine.engine_env(), stdout=output, stderr=subprocess.STDOUT, timeout=1800, check=False,
        )
    if result.returncode != 0:
        pytest.fail(f"podman build exited {result.returncode}:\n" + "\n".join(log.read_text().splitlines()[-40:]))
    measure("image build", f"{time.monotonic() - started:.1f} s (log {log})")
    built = Image(tag, base)
    measure("image size", f"{built.inspect()['Size'] / 1e6:.0f} MB")
    yield built
    podman("rmi", "--no-prune", tag, check=False)  # keeps the parent layers: the next build's cache


def unique(prefix: str) -> str:
    return f"mlproxy-test-{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def make_volume(container_engine):
    """Named volumes, removed after the module, each carrying this run's labels."""
    made = []

    def create() -> str:
        name = unique("state")
        podman("volume", "create", *engine.run_labels(), name)
        made.append(name)
        return name

    yield create
    for name in made:
        podman("volume", "rm", "--force", name, check=False)


@pytest.fixture(scope="module")
def start_container(image):
    """Start containers of the image under test; each is removed (killed) after the module."""
    started: list[Container] = []

    def start(volume: str, env: dict[str, str] | None = None, extra_args: list[str] | None = None,
              wait: bool = True, name: str | None = None) -> Container:
        container = Container(name or unique("stack"), image.tag, volume, env=dict(env or {}), extra_args=list(extra_args or []))
        started.append(container)
        container.run()
        if wait:
            container.wait_healthy()
        return container

    yield start
    for container in started:
        container.remove()


def authorized(token: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"token {token}"
    return session
