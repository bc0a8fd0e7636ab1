"""`mlproxy config show` masks every secret of a URI and never crashes on a malformed one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlproxy_supervisor.exits import EXIT_DOWN
from mlproxy_supervisor.redact import redact_uri


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://ml:pw@db:5432/mlflow", "postgresql://ml:***@db:5432/mlflow"),
        ("postgresql://ml@db/mlflow?password=pw", "postgresql://ml@db/mlflow?password=***"),
        ("postgresql://ml@db/mlflow?sslmode=require&PASSWORD=pw&x=1", "postgresql://ml@db/mlflow?sslmode=require&PASSWORD=***&x=1"),
        ("s3://bucket/p?AWSAccessKeyId=AK&Signature=sig&X-Amz-Security-Token=t",
         "s3://bucket/p?AWSAccessKeyId=***&Signature=***&X-Amz-Security-Token=***"),
        ("postgresql://ml:p%40ss:w@db:x/mlflow", "postgresql://ml:***@db:x/mlflow"),  # non-numeric port
        ("postgresql://ml:pw@[::1/mlflow", "postgresql://***"),  # unbalanced bracket
        ("sqlite:////srv/mlflow.db", "sqlite:////srv/mlflow.db"),
        ("/srv/artifacts", "/srv/artifacts"),
        (None, None),
    ],
)
def test_secrets_are_masked(uri, shown):
    assert redact_uri(uri) == shown


@pytest.mark.parametrize("uri", ["postgresql://ml:hunter2@db:notaport/mlflow?password=hunter2", "postgresql://ml@db/m?password=hunter2"])
def test_config_show_masks_and_does_not_crash(tmp_path, uri):
    config = tmp_path / "mlproxy.toml"
    config.write_text(f'state_dir = "{tmp_path}/state"\n[mlflow]\nbackend_store_uri = "{uri}"\n')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLPROXY_CONFIG": str(config)}
    shown = subprocess.run([sys.executable, "-m", "mlproxy_supervisor", "config", "show"],
                           capture_output=True, text=True, env=env, timeout=120, check=False)
    assert shown.returncode == EXIT_DOWN, shown.stderr  # shown, and no stack runs
    assert "hunter2" not in shown.stdout + shown.stderr and "Traceback" not in shown.stderr
    assert "***" in shown.stdout
    assert not (tmp_path / "state").exists(), "config show wrote to the state directory"
