"""The two ways to give the container a token: `-e JUPYTER_TOKEN` and a secret file. Either way it
works on the route, is never printed, and never shows up in any process's argv; the variable is
consumed by `mlproxy up` and not handed to the stack's programs."""

from __future__ import annotations

import json
import secrets
import uuid

import pytest

from tests.container.conftest import authorized
from tests.container.engine import podman

pytestmark = pytest.mark.container

EXPERIMENTS = "api/2.0/mlflow/experiments/search?max_results=1"

# For each process: pid, argv, and whether JUPYTER_TOKEN is in its environment (the exec'd
# reader runs as the same user, so it may read every /proc/PID/environ of the stack).
SNAPSHOT = r"""
import json, os
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        continue
    found.append({"pid": int(pid), "argv": [a.decode(errors="replace") for a in argv if a],
                  "env_names": sorted(e.split(b"=", 1)[0].decode() for e in environ if b"=" in e),
                  "environ": b"\n".join(environ).decode(errors="replace")})
print(json.dumps(found))
"""


def snapshot(container) -> list[dict]:
    result = container.exec("python3", "-c", SNAPSHOT)
    assert result.returncode == 0, result.stderr
    me = max(p["pid"] for p in json.loads(result.stdout) if p["argv"][:2] == ["python3", "-c"])
    return [p for p in json.loads(result.stdout) if p["pid"] != me]


def assert_token_works_and_stays_secret(container, token: str) -> None:
    assert authorized(token).get(f"{container.base}/mlflow/{EXPERIMENTS}", timeout=10).status_code == 200
    wrong = authorized(secrets.token_hex(24)).get(f"{container.base}/mlflow/{EXPERIMENTS}", timeout=10, allow_redirects=False)
    assert wrong.status_code == 401 and "MLFLOW_TRACKING_TOKEN" in wrong.text, (wrong.status_code, wrong.text[:200])
    assert token not in container.logs(), "a token the user supplied was printed"
    for process in snapshot(container):
        assert not any(token in arg for arg in process["argv"]), f"token in argv: {process['argv'][:4]}"


def test_token_from_the_environment(make_volume, start_container):
    token = secrets.token_hex(24)
    # engine.Container passes the value through podman's environment, not its command line.
    container = start_container(make_volume(), env={"JUPYTER_TOKEN": token})
    assert_token_works_and_stays_secret(container, token)
    stored = container.exec("stat", "-c", "%a %U", "/var/lib/mlproxy/jupyter_token").stdout.split()
    assert stored == ["600", "mlproxy"]
    processes = snapshot(container)
    stack = [p for p in processes if p["pid"] != 1 and p["argv"][-1:] != ["up"]]
    assert any("supervisor.supervisord" in " ".join(p["argv"]) for p in stack)
    assert not [p["argv"][:4] for p in stack if "JUPYTER_TOKEN" in p["env_names"]], "JUPYTER_TOKEN was handed on"
    # The one place the token may be: Jupyter's MLFLOW_TRACKING_TOKEN, which its kernels inherit
    # to log through the route (launch.py). Not MLflow, not the agent, not supervisord.
    holders = {
        " ".join(p["argv"][:3]): sorted(line.split("=", 1)[0] for line in p["environ"].split("\n") if token in line)
        for p in stack
        if token in p["environ"]
    }
    assert any("notebook" in argv for argv in holders), f"Jupyter has no MLFLOW_TRACKING_TOKEN: {holders}"
    others = {argv: names for argv, names in holders.items() if not ("notebook" in argv or "ipykernel" in argv) or names != ["MLFLOW_TRACKING_TOKEN"]}
    assert not others, f"the token reached the environment of: {others}"


@pytest.fixture
def secret(container_engine, tmp_path):
    name = f"mlproxy-test-token-{uuid.uuid4().hex[:8]}"
    token = secrets.token_hex(24)
    source = tmp_path / "token"
    source.write_text(token + "\n")  # as `echo ... > file` writes it: the newline is not the token's
    source.chmod(0o600)
    podman("secret", "create", name, str(source))
    yield name, token
    podman("secret", "rm", name, check=False)


def test_token_from_a_secret_file(make_volume, start_container, secret):
    name, token = secret
    container = start_container(
        make_volume(),
        env={"MLPROXY_JUPYTER__TOKEN_FILE": "/run/secrets/jupyter_token"},
        # The hardened way to run it: the secret, and no capabilities or privilege gains at all.
        extra_args=["--secret", f"{name},target=jupyter_token,uid=1000,gid=1000,mode=0400",
                    "--cap-drop=ALL", "--security-opt=no-new-privileges"],
    )
    assert_token_works_and_stays_secret(container, token)
    status = container.exec("grep", "-E", "^(CapEff|NoNewPrivs):", "/proc/1/status").stdout.split()
    assert status == ["CapEff:", "0000000000000000", "NoNewPrivs:", "1"], status
    # Nothing in the volume holds it (Jupyter's private copy is in the container's /run).
    assert container.exec("grep", "-rlF", token, "/var/lib/mlproxy").stdout == "", "the secret was copied into the volume"
    assert token not in json.dumps(container.inspect())

