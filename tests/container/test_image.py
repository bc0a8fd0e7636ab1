"""The built image, before anything runs: what `podman image inspect` and a throwaway container show."""

from __future__ import annotations

import pytest

from mlproxy_supervisor.exits import EXIT_CONFIG
from tests.container.conftest import measure
from tests.container.engine import podman

pytestmark = pytest.mark.container

# Measured: 1.28 GB on the test's Debian base (python3 from bookworm), of which the virtualenv is
# about 1.05 GB (mlflow's own dependencies: pyarrow, scipy, pandas, scikit-learn...). A copy of
# the build stage, a pip cache or apt lists would push it well past this.
SIZE_BUDGET = 1.5e9


def shell(image, script: str) -> str:
    result = podman("run", "--rm", "--entrypoint", "/bin/sh", image.tag, "-c", script, check=False)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    return result.stdout


def test_image_declares_healthcheck_user_port_volume_and_init(image):
    inspected = image.inspect()
    config = inspected["Config"]
    healthcheck = inspected.get("Healthcheck") or config.get("Healthcheck") or {}  # podman | docker
    assert "mlproxy status" in " ".join(healthcheck.get("Test", [])), f"HEALTHCHECK missing or not the agent's status: {healthcheck}"
    assert config["User"] and config["User"].split(":")[0] not in ("", "0", "root")
    assert set(config.get("ExposedPorts") or {}) == {"8888/tcp"}
    assert set(config.get("Volumes") or {}) == {"/var/lib/mlproxy"}
    assert config["Entrypoint"] == ["/usr/bin/tini", "--"]
    assert config["Cmd"] == ["mlproxy", "up"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["MLPROXY_LOG_TARGET"] == "stdout"
    assert env["MLPROXY_JUPYTER__IP"] == "0.0.0.0"
    assert env["MLPROXY_STATE_DIR"] == "/var/lib/mlproxy"
    assert env["MLPROXY_RUNTIME_DIR"] == "/run/mlproxy"  # socket and status: not in the volume
    assert not any(key.startswith("MLPROXY_MLFLOW__HOST") for key in env)  # MLflow stays on loopback


def test_runs_as_a_user_that_owns_home_and_state(image):
    out = shell(image, 'id -u; id -g; echo "$HOME"; test -w "$HOME" && echo home-writable; '
                       'stat -c "%u %a" /var/lib/mlproxy; test -w /opt/mlproxy || echo venv-read-only')
    uid, gid, home, home_writable, state, venv = out.split("\n")[:6]
    assert uid == "1000" and gid == "1000"
    assert home == "/home/mlproxy" and home_writable == "home-writable"
    assert state == "1000 750"
    assert venv == "venv-read-only"  # the stack cannot modify its own code


def test_final_image_has_no_build_tools_or_caches(image):
    out = shell(image, r"""
        for tool in gcc cc c++ g++ make ld as cpp; do command -v "$tool" && echo "tool: $tool"; done
        for package in python3-venv python3-pip build-essential libpython3.11-dev python3-dev; do
            dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed' && echo "package: $package"
        done
        find /var/lib/apt/lists -mindepth 1 -not -name lock -not -name partial | sed 's/^/apt list: /' | head -3
        ls /var/cache/apt/*.bin 2>/dev/null | sed 's/^/apt cache: /'
        for dir in /root/.cache /home/mlproxy/.cache /src /wheels /tmp/wheels; do test -e "$dir" && echo "leftover: $dir"; done
        find / -xdev \( -name '*.whl' -o -path '*/pip/http*' -o -path '*/pip/wheels' \) 2>/dev/null | sed 's/^/pip cache: /' | head -3
        command -v tini python3 mlproxy > /dev/null && echo runtime-ok
        true
    """)
    found = [line for line in out.splitlines() if line and line != "runtime-ok"]
    assert not found, "the final image carries build tools or caches:\n" + "\n".join(found)
    assert "runtime-ok" in out


def test_image_size_is_recorded_and_within_budget(image):
    size = image.inspect()["Size"]
    base = podman("image", "inspect", "--format", "{{.Size}}", image.base).stdout.strip()
    measure("image size vs base", f"{size / 1e6:.0f} MB total, base {int(base) / 1e6:.0f} MB, added {(size - int(base)) / 1e6:.0f} MB")
    assert size < SIZE_BUDGET, f"image is {size / 1e9:.2f} GB, budget {SIZE_BUDGET / 1e9:.2f} GB"


def test_a_user_who_cannot_write_the_volume_is_told_how_to_fix_it(image, make_volume):
    # `--user` with another uid (no passwd entry) on a volume the image's user owns: mlproxy up
    # used to die with a traceback (PermissionError on the database, KeyError from pwd).
    result = podman("run", "--rm", "--user", "12345:12345", "--volume", f"{make_volume()}:/var/lib/mlproxy", image.tag,
                    check=False, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == EXIT_CONFIG, output  # a person must act: not worth a restart
    assert "Traceback" not in output, output
    assert "cannot start: state_dir /var/lib/mlproxy is not writable by user 12345" in output, output
    assert "fix: chown 12345 /var/lib/mlproxy" in output
