"""The system tier's container: booted once per session, mlproxy installed in it with pip."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.stack import ROOT
from tests.system import container as harness

WORKDIR_PREFIX = "/var/tmp/mlproxy-system-"  # + pid: the container's overlay and the built wheel


class Timings(dict):
    def measure(self, name: str, started: float) -> float:
        self[name] = round(time.monotonic() - started, 1)
        harness.log(f"{name}: {self[name]} s")
        return self[name]


@pytest.fixture(scope="session")
def timings():
    measured = Timings()
    yield measured
    harness.log("timings (s): " + ", ".join(f"{k} {v}" for k, v in measured.items()))


@pytest.fixture(scope="session")
def machine(tmp_path_factory, timings):
    """A booted Debian container with mlproxy pip-installed into /opt/mlproxy (not yet `install`ed)."""
    reason = harness.missing_requirements()
    if reason:
        pytest.skip(f"system tier: {reason}")
    started = time.monotonic()
    rootfs = harness.ensure_rootfs()
    timings.measure("rootfs", started)
    started = time.monotonic()
    wheelhouse = harness.ensure_wheelhouse(ROOT)
    timings.measure("wheelhouse", started)

    harness.sweep_stale(WORKDIR_PREFIX)
    workdir = Path(f"{WORKDIR_PREFIX}{os.getpid()}")
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    started = time.monotonic()
    wheel = harness.build_project_wheel(ROOT, workdir / "build")
    shutil.copy(ROOT / "constraints.txt", workdir / "build" / "constraints.txt")
    timings.measure("project wheel", started)

    binds = {
        wheelhouse: "/mnt/wheels",
        workdir / "build": "/mnt/build",
        ROOT / "tests" / "system": "/mnt/system",
        ROOT / "tests" / "support": "/mnt/support",
    }
    box = harness.Container(rootfs, workdir / "container", f"mlproxy-{os.getpid()}", binds)
    started = time.monotonic()
    try:
        box.boot()
        timings.measure("boot", started)
        started = time.monotonic()
        # As docs/install-vm.md says, with the wheelhouse standing in for the package index.
        box.run("python3", "-m", "venv", "/opt/mlproxy")
        box.run(
            "/opt/mlproxy/bin/pip", "install", "--quiet", "--no-index", "--find-links", "/mnt/wheels",
            "-c", "/mnt/build/constraints.txt", f"/mnt/build/dist/{wheel.name}", timeout=900,
        )  # fmt: skip
        timings.measure("pip install in the container", started)
        yield box
    finally:
        journal = tmp_path_factory.getbasetemp() / "system-journal.txt"
        if box.leader:
            result = box.run("journalctl", "-b", "--no-pager", "-o", "short-precise", check=False, timeout=60)
            journal.write_text(result.stdout)
            harness.log(f"the container's journal: {journal}")
        box.teardown()
        shutil.rmtree(workdir, ignore_errors=True)
