"""Scale-out configuration: workers on SQLite refused, s3:// artifacts, store secrets kept out of
argv, launch files and `config show`."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from mlproxy_supervisor import credentials, launch, programs
from mlproxy_supervisor.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def scratch(monkeypatch):
    """The test's working directory and home, in a short scratch directory."""
    directory = Path(tempfile.mkdtemp(prefix="cfg-"))  # short: the socket path must fit AF_UNIX
    monkeypatch.setenv("HOME", str(directory / "home"))
    monkeypatch.chdir(directory)
    yield directory
    shutil.rmtree(directory)


def settings_from(text: str):
    Path("mlproxy.toml").write_text(text)
    return load_settings()


def test_several_workers_on_sqlite_are_refused_with_the_reason():
    with pytest.raises(ConfigError) as refused:
        settings_from("[mlflow]\nworkers = 4\n")
    message = str(refused.value)
    assert "mlflow: workers = 4 with a SQLite backend store" in message
    assert "database is locked" in message and "PostgreSQL" in message


def test_several_workers_on_postgresql_are_accepted():
    settings = settings_from('[mlflow]\nworkers = 4\nbackend_store_uri = "postgresql://mlflow@db/mlflow"\n')
    assert settings.mlflow.workers == 4


def test_s3_destination_and_endpoint_reach_mlflow_environment_not_argv():
    settings = settings_from(
        '[mlflow]\nartifacts_destination = "s3://bucket/prefix"\ns3_endpoint_url = "http://127.0.0.1:9000"\n'
    )
    argv, env = launch.mlflow_command(settings)
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert env[programs.MLFLOW_SERVER_ENV["artifacts_destination"]] == "s3://bucket/prefix"
    assert not any("s3://" in part for part in argv)


def test_an_endpoint_that_is_not_http_is_refused():
    with pytest.raises(ConfigError, match="mlflow.s3_endpoint_url: .*not 'minio:9000'"):
        settings_from('[mlflow]\ns3_endpoint_url = "minio:9000"\n')


def test_config_show_masks_the_endpoint_and_the_database_password():
    settings = settings_from(
        '[mlflow]\nbackend_store_uri = "postgresql://ml:pw-db@db/mlflow"\n'
        's3_endpoint_url = "https://key:pw-s3@s3.internal"\n'
    )
    shown = json.dumps(settings.redacted())
    assert "pw-db" not in shown and "pw-s3" not in shown
    assert "https://key:***@s3.internal" in shown


def write_secrets(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_secrets_file_is_read_and_the_environment_wins(scratch):
    path = write_secrets(scratch / "secrets", "# S3\nAWS_ACCESS_KEY_ID=file-key\nexport AWS_SECRET_ACCESS_KEY='file-secret'\n\nPGPASSWORD=file-pg\n")
    found = credentials.store_secrets({"PGPASSWORD": "env-pg"}, str(path))
    assert found == {"AWS_ACCESS_KEY_ID": "file-key", "AWS_SECRET_ACCESS_KEY": "file-secret", "PGPASSWORD": "env-pg"}


def test_systemd_credentials_are_read_last(scratch):
    directory = scratch / "creds"
    directory.mkdir()
    (directory / "AWS_SECRET_ACCESS_KEY").write_text("systemd-secret\n")
    (directory / "PGPASSWORD").write_text("systemd-pg")
    path = write_secrets(scratch / "secrets", "PGPASSWORD=file-pg\n")
    found = credentials.store_secrets({"CREDENTIALS_DIRECTORY": str(directory)}, str(path))
    assert found == {"AWS_SECRET_ACCESS_KEY": "systemd-secret", "PGPASSWORD": "file-pg"}


def test_a_secrets_file_readable_by_others_is_refused_and_left_alone(scratch):
    path = write_secrets(scratch / "secrets", "PGPASSWORD=pw\n", mode=0o644)
    with pytest.raises(credentials.CredentialError, match=f"readable by others \\(mode 644\\): chmod 600 {path}"):
        credentials.store_secrets({}, str(path))
    assert path.read_text() == "PGPASSWORD=pw\n" and (path.stat().st_mode & 0o777) == 0o644


def test_an_unknown_name_in_the_secrets_file_is_refused_with_its_line(scratch):
    path = write_secrets(scratch / "secrets", "PGPASSWORD=pw\nAWS_KEY=x\n")
    with pytest.raises(credentials.CredentialError, match="line 2: expected NAME=VALUE with NAME one of PGPASSWORD"):
        credentials.store_secrets({}, str(path))


def test_launch_files_hold_the_secrets_file_path_not_its_secrets(scratch, monkeypatch):
    path = write_secrets(scratch / "secrets", "AWS_SECRET_ACCESS_KEY=never-in-a-launch-file\n")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nor-this")
    settings = settings_from(f'[mlflow]\ncredentials_file = "{path}"\n')
    launch.write_launch_files(settings)
    for name in settings.services:
        text = (settings.programs_dir / f"{name}.json").read_text()
        assert "never-in-a-launch-file" not in text and "nor-this" not in text
    assert launch.LaunchSpec.read(settings.programs_dir / "mlflow.json").mlflow.credentials_file == str(path)
