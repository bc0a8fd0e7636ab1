"""Each server's argv and environment: secrets out of argv, MLflow on its socket or TCP, private
launch files."""

from __future__ import annotations

import stat
import subprocess
import sys

from mlproxy_supervisor import credentials, launch, programs
from mlproxy_supervisor.config import Settings


def settings(tmp_path, **values) -> Settings:
    return Settings(state_dir=tmp_path, **values)


def test_mlflow_launch_keeps_secrets_out_of_argv(tmp_path):
    config = Settings(state_dir=tmp_path, mlflow={"backend_store_uri": "postgresql://ml:s3cret@db/mlflow"})
    argv, env = launch.mlflow_command(config)
    assert not any("s3cret" in arg for arg in argv)
    assert env[programs.MLFLOW_SERVER_ENV["backend_store"]].endswith("s3cret@db/mlflow")
    # By default MLflow listens on a unix socket in the 0700 runtime directory (the launcher binds
    # it and hands it over as a descriptor), on no TCP port.
    assert argv[argv.index("--fd") + 1] == str(launch.MLFLOW_LISTEN_FD)
    assert launch.launch_spec("mlflow", config).mlflow.unix_socket == str(tmp_path / "run" / "mlflow.sock")
    assert "--host" not in argv and "--port" not in argv


def test_mlflow_on_tcp_when_configured_and_for_the_job_runner(tmp_path):
    config = Settings(state_dir=tmp_path, mlflow={"listen": "tcp", "port": 5011})
    argv, _ = launch.mlflow_command(config)
    assert argv[argv.index("--host") + 1 : argv.index("--port") + 2] == ["127.0.0.1", "--port", "5011"] and "--fd" not in argv
    assert config.mlflow_socket is None
    jobs = Settings(state_dir=tmp_path, mlflow={"listen": "tcp", "job_execution": True})
    assert launch.mlflow_command(jobs)[0][3] == "server"


def test_mlflow_server_variables_match_the_installed_mlflow():
    """The names `mlflow server` uses to hand its configuration to uvicorn; a drift here would
    silently start MLflow on its defaults."""
    from mlflow import environment_variables as variables
    from mlflow.server import constants

    expected = {
        "backend_store": constants.BACKEND_STORE_URI_ENV_VAR,
        "registry_store": constants.REGISTRY_STORE_URI_ENV_VAR,
        "artifact_root": constants.ARTIFACT_ROOT_ENV_VAR,
        "serve_artifacts": constants.SERVE_ARTIFACTS_ENV_VAR,
        "artifacts_destination": constants.ARTIFACTS_DESTINATION_ENV_VAR,
        "sgi_name": variables._MLFLOW_SGI_NAME.name,
        "boot_id": variables._MLFLOW_SERVER_BOOT_ID.name,
        "in_job_executor": variables._MLFLOW_IN_JOB_EXECUTOR.name,
    }
    assert expected == programs.MLFLOW_SERVER_ENV


def test_jupyter_launch_reads_the_token_from_a_file(tmp_path):
    argv, env = launch.jupyter_command(settings(tmp_path))
    assert env["JUPYTER_TOKEN_FILE"] == str(tmp_path / "run" / "jupyter_token")
    assert "--ServerApp.port_retries=0" in argv
    # Kernels reach MLflow through Jupyter's route (MLflow itself is on a socket), token from exec.
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:8888/mlflow"
    assert "MLFLOW_TRACKING_TOKEN" not in env


def test_launch_files_are_private_and_hold_no_token(tmp_path):
    config = settings(tmp_path)
    token = credentials.ensure_token(config.jupyter.token_file)
    launch.write_launch_files(config)
    for name in config.services:
        path = config.programs_dir / f"{name}.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert token not in path.read_text()
        spec = launch.LaunchSpec.read(path)
        assert spec.service == name and spec.argv[0] == sys.executable


def test_launcher_without_its_file_says_what_writes_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mlproxy_supervisor.launch", str(tmp_path / "mlflow.json")], check=False, capture_output=True, text=True
    )
    assert result.returncode == 3 and "`mlproxy up` writes it" in result.stderr
