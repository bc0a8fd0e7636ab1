"""The configuration model: defaults, validation messages, precedence, redaction."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from mlproxy_supervisor.config import ConfigError, load_settings, redact_uri


@pytest.fixture(autouse=True)
def home_and_working_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture()
def tmp_path():
    """Short paths: the supervisord socket under the default runtime_dir must fit AF_UNIX."""
    path = Path(tempfile.mkdtemp(prefix="cfg-"))
    yield path
    shutil.rmtree(path)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mlproxy.toml"
    path.write_text(text)
    return path


def test_defaults_are_secure_and_embedded(tmp_path):
    settings = load_settings()
    state = tmp_path / "home" / ".local" / "share" / "mlproxy"
    assert settings.state_dir == state
    assert settings.mlflow.host == "127.0.0.1" and settings.mlflow.port == 5001
    assert settings.jupyter.ip == "127.0.0.1" and settings.jupyter.port == 8888
    assert settings.mlflow.backend_store_uri == f"sqlite:///{state}/mlflow.db"  # absolute: four slashes
    assert settings.mlflow.artifacts_destination == str(state / "artifacts")
    assert settings.mlflow.workers == 1 and not settings.mlflow.job_execution
    assert settings.jupyter.token_file == state / "jupyter_token"
    assert settings.socket_path == state / "run" / "supervisord.sock"
    assert settings.config_file is None


def test_systemd_directories_are_used(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/mlproxy")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/mlproxy")
    monkeypatch.setenv("LOGS_DIRECTORY", "/var/log/mlproxy")
    settings = load_settings()
    assert (settings.state_dir, settings.runtime_dir, settings.log_dir) == (Path("/var/lib/mlproxy"), Path("/run/mlproxy"), Path("/var/log/mlproxy"))


def test_file_then_environment_precedence(monkeypatch, tmp_path):
    path = write(tmp_path, "[mlflow]\nport = 5002\nlisten = \"tcp\"\njob_execution = true\n")
    monkeypatch.setenv("MLPROXY_MLFLOW__PORT", "5003")
    settings = load_settings(path)
    assert settings.mlflow.port == 5003 and settings.mlflow.job_execution
    assert settings.config_file == path


def test_job_runner_on_a_socket_is_refused_naming_both_keys(tmp_path):
    path = write(tmp_path, "[mlflow]\njob_execution = true\n")
    with pytest.raises(ConfigError, match=r'job_execution = true needs listen = "tcp".*MLPROXY_MLFLOW__LISTEN=tcp'):
        load_settings(path)


def test_search_order_finds_the_working_directory_file(tmp_path):
    write(tmp_path, "[jupyter]\nport = 9999\n")
    assert load_settings().jupyter.port == 9999


def test_mlproxy_config_variable_must_name_an_existing_file(monkeypatch, tmp_path):
    monkeypatch.setenv("MLPROXY_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[mlflow]\nworkerz = 2\n", "mlflow.workerz: unknown key"),
        ("colour = 'blue'\n", "colour: unknown key"),
        ("[mlflow]\nport = 70000\n", "mlflow.port: Input should be less than or equal to 65535"),
        ("[mlflow]\nhost = '0.0.0.0'\n", "loopback only"),
        ("[mlflow]\nbackend_store_uri = '/srv/mlruns'\n", "refuses a plain directory"),
        ("[mlflow]\nbackend_store_uri = 'file:///srv/mlruns'\n", "refuses a plain directory"),
        ("[mlflow]\nbackend_store_uri = 'sqlite:///mlflow.db'\n", "absolute path (four slashes)"),
        ("[mlflow]\nartifacts_destination = 'artifacts'\n", "relative path"),
        ("[jupyter]\nip = 'myhost'\n", "not an IP address"),
        ("[jupyter]\nport = 5001\n", "ports must differ"),
        ("[agent.liveness]\nperiod = 0\n", "greater than 0"),
    ],
)
def test_invalid_values_name_the_key_and_the_fix(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, text))
    assert message in str(error.value)
    assert str(tmp_path / "mlproxy.toml") in str(error.value)


def test_malformed_toml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        load_settings(write(tmp_path, "[mlflow]\nport = \n"))


def test_too_long_runtime_directory_says_how_to_fix_it(monkeypatch, tmp_path):
    monkeypatch.setenv("MLPROXY_RUNTIME_DIR", "/tmp/" + "x" * 90)
    with pytest.raises(ConfigError, match="too long for a unix socket path.*set runtime_dir to a shorter"):
        load_settings()


def test_unknown_environment_variables_are_errors(monkeypatch):
    monkeypatch.setenv("MLPROXY_JUPYTER__PORTT", "1")
    with pytest.raises(ConfigError, match="MLPROXY_JUPYTER__PORTT"):
        load_settings()


def test_postgres_is_accepted_and_redacted(tmp_path):
    settings = load_settings(write(tmp_path, "[mlflow]\nbackend_store_uri = 'postgresql://ml:pw@db:5432/mlflow'\n"))
    assert settings.redacted()["mlflow"]["backend_store_uri"] == "postgresql://ml:***@db:5432/mlflow"
    assert redact_uri("postgresql://ml@db/mlflow") == "postgresql://ml@db/mlflow"


def test_unspecified_jupyter_ip_is_reached_on_loopback(tmp_path):
    settings = load_settings(write(tmp_path, "[jupyter]\nip = '0.0.0.0'\nbase_url = 'lab'\n"))
    assert settings.jupyter.base_url == "/lab/"
    assert settings.jupyter_local_url == "http://127.0.0.1:8888/lab"


def test_configuration_reference_is_current():
    from mlproxy_supervisor.config_reference import reference_markdown

    document = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    section = document.split("<!-- config-reference:start -->\n")[1].split("\n<!-- config-reference:end -->")[0]
    assert section == reference_markdown(), "run scripts/sync-readme"


def test_resolved_file_is_read_back_whatever_the_environment_says(monkeypatch, tmp_path):
    from mlproxy_supervisor import rpc
    from mlproxy_supervisor.config import RESOLVED_ENV, read_resolved, write_resolved
    from mlproxy_supervisor.running import locate_stack

    monkeypatch.setenv("MLPROXY_STATE_DIR", "reldata")  # relative: resolved against this directory, once
    monkeypatch.setenv("MLPROXY_JUPYTER__PORT", "38888")
    settings = load_settings()
    assert settings.state_dir == tmp_path / "reldata"
    assert "MLPROXY_JUPYTER__PORT" in settings.source and "built-in defaults" not in settings.source
    path = write_resolved(settings)
    assert path.stat().st_mode & 0o777 == 0o600

    monkeypatch.chdir(tmp_path / "reldata")  # where supervisord starts its programs
    monkeypatch.setenv("MLPROXY_JUPYTER__PORT", "8888")
    monkeypatch.setenv("MLPROXY_STATE_DIR", "elsewhere")
    again = read_resolved(path)
    assert again.state_dir == tmp_path / "reldata" and again.jupyter.port == 38888
    assert again.model_dump() == settings.model_dump()
    monkeypatch.setenv(RESOLVED_ENV, str(path))
    assert locate_stack().jupyter.port == 8888, "MLPROXY_* variables name a stack of their own"
    monkeypatch.delenv("MLPROXY_JUPYTER__PORT")  # inside the stack: `up` left none of them
    monkeypatch.delenv("MLPROXY_STATE_DIR")
    assert locate_stack().jupyter.port == 38888

    monkeypatch.delenv(RESOLVED_ENV)
    monkeypatch.setenv("MLPROXY_STATE_DIR", str(tmp_path / "reldata"))
    assert locate_stack().jupyter.port == 8888, "no supervisord answers: the resolved file is stale"
    monkeypatch.setattr(rpc, "answers", lambda socket_path, timeout=2.0: True)
    found = locate_stack()  # another shell that names only the state directory of a running stack
    assert found.jupyter.port == 38888 and found.resolved_from == path


def test_a_bad_value_from_the_environment_names_the_variable_and_quotes_the_value(monkeypatch):
    monkeypatch.setenv("MLPROXY_JUPYTER__PORT", "abc")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "MLPROXY_JUPYTER__PORT:" in str(refused.value) and "'abc'" in str(refused.value), refused.value


def test_unknown_keys_point_to_the_reference_which_works(monkeypatch, tmp_path):
    (tmp_path / "bad.toml").write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match=r"colour: unknown key; `mlproxy config reference` lists"):
        load_settings(tmp_path / "bad.toml")
    monkeypatch.setenv("MLPROXY_COLOUR", "blue")
    with pytest.raises(ConfigError, match=r"MLPROXY_COLOUR; run `mlproxy config reference`"):
        load_settings()
