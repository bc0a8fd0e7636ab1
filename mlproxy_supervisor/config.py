"""The one configuration model: a TOML file plus MLPROXY_* environment variables.

Read once (``load_settings``), validated once, passed down. Every path a component needs is a
resolved attribute or property here, so no other module guesses a location.
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .programs import SINGLE_USER_SERVICES, TEAM_SERVICES
from .redact import redact_uri
from .store.sqlite import database_file

ENV_PREFIX = "MLPROXY_"
CONFIG_PATH_ENV = "MLPROXY_CONFIG"
CONFIG_FILE_NAME = "mlproxy.toml"
# Names the running stack's resolved configuration (Settings.resolved_file). `mlproxy up` puts it
# in every program's environment: the agent, Jupyter's extension, kernels and their terminals
# read the stack's values from there, never from the TOML or MLPROXY_* again.
RESOLVED_ENV = "MLPROXY_RESOLVED_CONFIG"
# Every other variable this module reads (through _read_env): the directories systemd exports
# for StateDirectory= and its siblings, the XDG base directories of a user install, and
# JOURNAL_STREAM, which makes the journal log_target's default.
OTHER_ENV = (
    "STATE_DIRECTORY", "LOGS_DIRECTORY", "RUNTIME_DIRECTORY", "CONFIGURATION_DIRECTORY",
    "XDG_DATA_HOME", "XDG_CONFIG_HOME", "JOURNAL_STREAM",
)  # fmt: skip

Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0, le=3600)]


class ConfigError(Exception):
    """A configuration problem, worded for the person who has to fix it."""


class LocalStore(NamedTuple):
    """A directory on this machine that MLflow writes to."""

    path: Path
    what: str  # for people: "the artifact store"
    key: str  # the setting that puts it there


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MLflowSettings(_Section):
    listen: Literal["socket", "tcp"] = Field(
        "socket",
        description="socket: MLflow listens only on a unix socket in the 0700 runtime directory, so nothing "
        "but the stack's own user and Jupyter's login reaches it; tcp: on host:port on loopback, where every "
        "local user and every page in a local browser reaches it with no login (docs/SECURITY.md).",
    )
    host: str = Field("127.0.0.1", description='Loopback address MLflow binds to with listen = "tcp" (loopback only).')
    port: Port = Field(
        5001, description='MLflow\'s port in the route /proxy/<port>/; with listen = "tcp" also the loopback port it listens on.'
    )
    backend_store_uri: str | None = Field(
        None,
        description="SQLAlchemy URI of the tracking store (SQLite or PostgreSQL).",
    )
    artifacts_destination: str | None = Field(
        None, description="Where the server stores artifacts (a directory or a URI such as s3://...)."
    )
    # 1 worker and no job runner: ~5 s cold start and ~0.3 GB instead of 20-46 s and GBs
    # (measured, see docs/benchmarks.md), and no keep-alive latency penalty.
    workers: int = Field(1, ge=1, le=32, description="uvicorn worker processes.")
    job_execution: bool = Field(False, description="Run MLflow's job runner (huey consumers).")
    schema_upgrade: Literal["refuse", "backup-and-upgrade"] = Field(
        "refuse",
        description="What to do with an out-of-date schema: refuse with the upgrade command, or back "
        "the database up (a copy; pg_dump on PostgreSQL) and run `mlflow db upgrade`. Hosts sharing a "
        "PostgreSQL database take turns: one upgrades, the others wait for it.",
    )
    sqlite_journal_mode: Literal["wal", "delete"] = Field(
        "wal",
        description="SQLite's journal mode, set on the database before MLflow starts (see docs/RELIABILITY.md). "
        "wal (about 2x the writes per second) keeps -wal and -shm files beside the database; delete for a "
        "database on a network filesystem, where wal does not work. Both survive kill -9 and power cuts.",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="Endpoint of an S3-compatible store for s3:// artifacts (MLFLOW_S3_ENDPOINT_URL); "
        "unset: AWS.",
    )
    credentials_file: Path | None = Field(
        None,
        description="0600 file of KEY=VALUE lines (PGPASSWORD, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_SESSION_TOKEN) handed to MLflow's process only; the environment and systemd credentials "
        "also work.",
    )

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        try:
            loopback = ipaddress.ip_address(value).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"MLflow must listen on loopback only (127.0.0.1 or ::1), not {value!r}; "
                "users reach it through Jupyter at /mlflow/"
            )
        return value

    @field_validator("backend_store_uri")
    @classmethod
    def _usable_store(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = urlsplit(value).scheme
        if not scheme or scheme == "file" or len(scheme) == 1:  # len 1: a Windows drive letter
            raise ValueError(
                "MLflow 3.13+ refuses a plain directory as backend store; use a database URI "
                "such as sqlite:////var/lib/mlproxy/mlflow.db or postgresql://user@host/db"
            )
        if scheme == "sqlite" and not value.startswith("sqlite:////"):
            raise ValueError(
                "a SQLite URI must hold an absolute path (four slashes), "
                "e.g. sqlite:////var/lib/mlproxy/mlflow.db"
            )
        return value

    @field_validator("artifacts_destination")
    @classmethod
    def _absolute_destination(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value and not value.startswith("/"):
            raise ValueError(
                "give an absolute directory or a URI such as s3://bucket/path, "
                f"not the relative path {value!r}"
            )
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _http_endpoint(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"give an http:// or https:// URL, e.g. https://s3.example.com, not {value!r}")
        return value

    @field_validator("credentials_file")
    @classmethod
    def _absolute_credentials_file(cls, value: Path | None) -> Path | None:
        return value.expanduser().absolute() if value is not None else None

    @model_validator(mode="after")
    def _store_fits(self) -> MLflowSettings:
        backend = self.backend_store_uri or ""
        if self.workers > 1 and backend.startswith("sqlite:"):
            raise ValueError(
                f"workers = {self.workers} with a SQLite backend store: SQLite takes one writer at a time, "
                "so several workers queue on its lock and fail with 'database is locked' under load. "
                "Keep workers = 1, or move the store to PostgreSQL (docs/SCALING.md)"
            )
        if self.job_execution and self.listen == "socket":
            raise ValueError(
                "job_execution = true needs listen = \"tcp\": MLflow's job runner calls the server back on "
                "http://host:port, which a unix socket does not serve. Set [mlflow] listen = \"tcp\" "
                "(MLPROXY_MLFLOW__LISTEN=tcp), and read what it exposes in docs/SECURITY.md"
            )
        if (self.artifacts_destination or "").startswith("s3://") and importlib.util.find_spec("boto3") is None:
            raise ValueError(
                f"artifacts_destination {self.artifacts_destination!r} needs boto3: in your mlproxy checkout, pip install -c constraints.txt '.[s3]'"
            )
        return self


class JupyterSettings(_Section):
    ip: str = Field("127.0.0.1", description="Address Jupyter binds to (0.0.0.0 in a container).")
    port: Port = Field(8888, description="Jupyter's port; MLflow is served under it.")
    base_url: str = Field("/", description="Jupyter's base URL.")
    root_dir: Path | None = Field(None, description="Notebook directory.")
    token_file: Path | None = Field(
        None, description="0600 file holding the token; generated on first start if missing."
    )
    # With token auth always on, a foreign Host header cannot log in, so accepting any Host
    # (an SSH tunnel, a reverse proxy, the VM's DNS name) costs no protection.
    allow_remote_access: bool = Field(True, description="Accept any Host header (auth still applies).")
    max_upload_size: int = Field(
        1 << 40, ge=1, description="Largest request body (artifact upload) the MLflow routes accept, in bytes; streamed, so memory does not grow with it."
    )
    mlflow_timeout: Seconds = Field(300, description="Seconds MLflow may stay silent during a proxied request before the client gets 504.")

    @field_validator("ip")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"not an IP address: {value!r}") from None
        return value

    @field_validator("base_url")
    @classmethod
    def _slashes(cls, value: str) -> str:
        return "/" + value.strip("/") + "/" if value.strip("/") else "/"


class ProbeSettings(_Section):
    period: Seconds = Field(description="Seconds between probes.")
    timeout: Seconds = Field(description="Seconds before one probe counts as failed.")
    failure_threshold: int = Field(ge=1, le=100, description="Consecutive failures before acting.")


class AgentSettings(_Section):
    start_order: Literal["ordered", "parallel"] = Field(
        "ordered",
        description="ordered: the front door's process (Jupyter, or the Hub service) starts only once MLflow is ready. "
        "parallel: both start at once and requests reach MLflow only once the agent finds it ready (503 + "
        "Retry-After before): READY 0.70 x as soon on a quiet 2-core machine, no sooner under CPU load "
        "(docs/how-it-works.md).",
    )
    startup_period: Seconds = Field(0.1, description="Probe period while a service or the route is not ready yet (fast poll).")
    mlflow_startup_budget: Seconds = Field(
        120, description="Seconds MLflow may take to become ready before it counts as failed."
    )
    jupyter_startup_budget: Seconds = Field(
        60, description="Seconds Jupyter may take to become ready before it counts as failed."
    )
    liveness: ProbeSettings = ProbeSettings(period=2, timeout=2, failure_threshold=3)
    readiness: ProbeSettings = ProbeSettings(period=2, timeout=5, failure_threshold=2)
    backoff_initial: Seconds = Field(2, description="First retry delay for a FATAL service.")
    backoff_max: Seconds = Field(60, description="Cap of the FATAL retry delay.")
    metrics_port: int = Field(9181, ge=0, le=65535, description="Prometheus metrics on loopback; 0 = off.")

    @field_validator("liveness", "readiness", mode="before")
    @classmethod
    def _partial_probe(cls, value: Any, info) -> Any:
        """[agent.liveness] with only period = 5 keeps the other defaults of that probe."""
        if isinstance(value, dict):
            return {**cls.model_fields[info.field_name].default.model_dump(), **value}
        return value


class TeamSettings(_Section):
    """Team mode: one MLflow for a whole JupyterHub, served as the Hub service `service_name`."""

    hub_api_url: str | None = Field(
        None,
        description="The Hub's API URL (e.g. http://127.0.0.1:8081/hub/api). Set: team mode, MLflow served as a "
        "JupyterHub service behind the Hub's login (docs/team.md); unset: single-user mode, behind Jupyter's.",
    )
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="The Hub's public URL (its proxy) as users and kernels reach it; MLflow is at <public_url>/services/<service_name>/.",
    )
    service_name: str = Field("mlflow", pattern=r"^[a-z0-9][a-z0-9-]*$", description="The Hub service's name (its route).")
    service_port: Port = Field(5002, description="Loopback port of the service; the Hub's proxy forwards /services/<service_name>/ to it.")
    default_permission: Literal["READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS"] = Field(
        "READ",
        description="What users may do with an experiment or model they were not granted anything on: READ for an "
        "open team, NO_PERMISSIONS for private work. Creators get MANAGE and grant others in MLflow.",
    )
    admin_group: str = Field("mlflow-admins", description="Members of this Hub group are MLflow admins.")
    user_sync_period: Seconds = Field(
        60, description="Seconds between two walks of the Hub's user list, which make every Hub user an MLflow user (so grants work before a first visit)."
    )
    service_token_file: Path | None = Field(
        None, description="0600 file holding the service's Hub API token; generated if missing (<state_dir>/hub_service_token)."
    )

    @field_validator("hub_api_url", "public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname):
            raise ValueError(f"give an http:// or https:// URL, e.g. http://127.0.0.1:8081/hub/api, not {value!r}")
        return value.rstrip("/") if value else value


def _read_env(name: str) -> str | None:
    assert name in OTHER_ENV, f"{name} is read by config.py: add it to OTHER_ENV"
    return os.environ.get(name)


def _default_state_dir() -> Path:
    # systemd's StateDirectory= exports STATE_DIRECTORY; otherwise follow XDG for a user install.
    if systemd_dir := _read_env("STATE_DIRECTORY"):
        return Path(systemd_dir.split(":")[0])
    data_home = _read_env("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "mlproxy"


def _systemd_dir(name: str) -> Path | None:
    value = _read_env(name)
    return Path(value.split(":")[0]) if value else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    state_dir: Path = Field(default_factory=_default_state_dir, description="Runs, artifacts, token.")
    log_dir: Path | None = Field(None, description="Program logs, one rotated file per program.")
    runtime_dir: Path | None = Field(
        None, description="supervisord socket (0700), pid file, status document."
    )
    log_target: Literal["files", "stdout", "journal"] = Field(
        default_factory=lambda: "journal" if _read_env("JOURNAL_STREAM") else "files",
        description="files: rotated files under log_dir; stdout (containers): every program's lines, "
        "prefixed, on stdout too; journal: the files plus a copy of every line in systemd's journal.",
    )
    mlflow: MLflowSettings = MLflowSettings()
    jupyter: JupyterSettings = JupyterSettings()
    agent: AgentSettings = AgentSettings()
    team: TeamSettings = TeamSettings()

    # The file the values came from (None: defaults and environment only); not a setting.
    _config_file: Path | None = PrivateAttr(None)
    # The running stack's resolved file these values were read from (None: resolved here).
    _resolved_from: Path | None = PrivateAttr(None)
    _environment: tuple[str, ...] = PrivateAttr(())  # the MLPROXY_* variables that applied

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, **_unused):
        # Environment over file: init_settings carries the TOML file's values.
        return (env_settings, init_settings)

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        """Resolve every default that depends on another value, so consumers see paths."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        # A value of the wrong type is left where it is, for validation to name with its key.
        state = _absolute(data.get("state_dir"))
        if not isinstance(state, (Path, type(None))):
            return data
        state = state or _default_state_dir().expanduser().absolute()
        data["state_dir"] = state
        data["log_dir"] = _or(_absolute(data.get("log_dir")), _systemd_dir("LOGS_DIRECTORY") or state / "logs")
        # Under the state directory by default, so one state directory is one self-contained
        # instance (two instances never share a socket or a status document).
        data["runtime_dir"] = _or(_absolute(data.get("runtime_dir")), _systemd_dir("RUNTIME_DIRECTORY") or state / "run")
        mlflow, jupyter = data.get("mlflow", {}), data.get("jupyter", {})
        if isinstance(mlflow, dict):
            mlflow = dict(mlflow)
            mlflow.setdefault("backend_store_uri", f"sqlite:///{state / 'mlflow.db'}")
            mlflow.setdefault("artifacts_destination", str(state / "artifacts"))
            data["mlflow"] = mlflow
        team = data.get("team", {})
        if isinstance(team, dict):
            team = dict(team)
            team["service_token_file"] = _or(_absolute(team.get("service_token_file")), state / "hub_service_token")
            data["team"] = team
        if isinstance(jupyter, dict):
            jupyter = dict(jupyter)
            jupyter["root_dir"] = _or(_absolute(jupyter.get("root_dir")), state / "notebooks")
            jupyter["token_file"] = _or(_absolute(jupyter.get("token_file")), state / "jupyter_token")
            data["jupyter"] = jupyter
        return data

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        front = {"team.service_port": self.team.service_port} if self.team_mode else {"jupyter.port": self.jupyter.port}
        ports = {"mlflow.port": self.mlflow.port, **front}
        if self.agent.metrics_port:
            ports["agent.metrics_port"] = self.agent.metrics_port
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"ports must differ: {ports}")
        if self.team_mode and self.mlflow.listen != "socket":
            raise ValueError(
                'team mode needs mlflow.listen = "socket": on a TCP port every local user reaches MLflow with no '
                "login and names any user, while the Hub service must be the only way in (docs/team.md)"
            )
        if len(str(self.socket_path)) > 100:  # AF_UNIX paths are limited to 107 bytes
            raise ValueError(
                f"runtime_dir {self.runtime_dir} is too long for a unix socket path (over 100 bytes); "
                "set runtime_dir to a shorter directory, e.g. /run/user/<uid>/mlproxy"
            )
        return self

    @property
    def team_mode(self) -> bool:
        """One MLflow for a JupyterHub, behind the Hub's login (team.hub_api_url set)."""
        return self.team.hub_api_url is not None

    @property
    def state_dir_is_default(self) -> bool:
        """Whether state_dir is the default location, the only one `up` creates with its parents."""
        return self.state_dir == _default_state_dir().expanduser().absolute()

    @property
    def services(self) -> tuple[str, ...]:
        """The programs the agent starts and watches, in dependency order."""
        return TEAM_SERVICES if self.team_mode else SINGLE_USER_SERVICES

    # Derived locations: one place names every file the stack uses.
    @property
    def socket_path(self) -> Path:
        return self.runtime_dir / "supervisord.sock"

    @property
    def supervisord_conf(self) -> Path:
        return self.runtime_dir / "supervisord.conf"

    @property
    def programs_dir(self) -> Path:
        """supervisord's program files, and the launch files of MLflow and Jupyter."""
        return self.runtime_dir / "programs"

    @property
    def pid_file(self) -> Path:
        return self.runtime_dir / "supervisord.pid"

    @property
    def status_file(self) -> Path:
        return self.runtime_dir / "status.json"

    @property
    def traffic_gate_file(self) -> Path:
        """Present while the agent lets requests through to MLflow (traffic_gate.py)."""
        return self.runtime_dir / "mlflow-admitted"

    @property
    def heartbeat_file(self) -> Path:
        """Touched by the agent at every phase of its loop; `up` watches it (watchdog.py)."""
        return self.runtime_dir / "agent-heartbeat"

    @property
    def watchdog_file(self) -> Path:
        """What `up`'s watcher replaced, when and why (watchdog.py); `mlproxy status` shows it."""
        return self.runtime_dir / "watchdog.json"

    @property
    def resolved_file(self) -> Path:
        """This configuration as `mlproxy up` resolved it (0600): what the running stack uses."""
        return self.runtime_dir / "resolved.json"

    @property
    def jupyter_token_copy(self) -> Path:
        return self.runtime_dir / "jupyter_token"

    @property
    def service_url(self) -> str:
        """Where the Hub service listens (loopback), its route included, as the Hub's proxy forwards to it."""
        return f"http://127.0.0.1:{self.team.service_port}{self.service_prefix}"

    @property
    def service_prefix(self) -> str:
        return f"/services/{self.team.service_name}/"

    @property
    def team_url(self) -> str:
        """MLflow as users and kernels reach it in team mode: through the Hub's public URL."""
        return f"{self.team.public_url}{self.service_prefix}"

    @property
    def service_cookie_secret(self) -> Path:
        """The service's cookie secret (0600): its login cookies survive a restart."""
        return self.state_dir / "hub_service_cookie_secret"

    @property
    def mlflow_auth_secret(self) -> Path:
        """MLflow's Flask secret key in team mode (0600), the same for every worker and restart."""
        return self.state_dir / "mlflow_auth_secret"

    @property
    def mlflow_auth_config(self) -> Path:
        """MLflow's auth app configuration (basic_auth.ini), written by `up` in team mode."""
        return self.runtime_dir / "mlflow_auth.ini"

    @property
    def mlflow_auth_database(self) -> Path:
        """Users and permissions of MLflow's auth app (SQLite, beside the state)."""
        return self.state_dir / "mlflow_auth.db"

    @property
    def mlflow_socket(self) -> Path | None:
        """MLflow's unix socket (mlflow.listen = "socket"); None when it listens on TCP."""
        return self.runtime_dir / "mlflow.sock" if self.mlflow.listen == "socket" else None

    @property
    def sqlite_database(self) -> Path | None:
        """The tracking store's SQLite file; None for a database server."""
        return database_file(self.mlflow.backend_store_uri)

    @property
    def local_artifacts(self) -> Path | None:
        """The artifact store's directory; None when it is a URI (s3://...)."""
        destination = self.mlflow.artifacts_destination
        return Path(destination) if destination.startswith("/") else None

    @property
    def local_stores(self) -> list[LocalStore]:
        """Where MLflow writes on this machine: the SQLite database's directory, the artifacts."""
        stores = []
        if self.sqlite_database is not None:
            stores.append(LocalStore(self.sqlite_database.parent, "the MLflow database's directory", "the directory of mlflow.backend_store_uri"))
        if self.local_artifacts is not None:
            stores.append(LocalStore(self.local_artifacts, "the artifact store", "mlflow.artifacts_destination"))
        return stores

    @property
    def mlflow_url(self) -> str:
        """How to reach MLflow, with mlflow_socket: the one address the probes, doctor and Jupyter's
        routes derive from. With a socket, connect to mlflow_socket; this URL's host:port is then
        only the Host MLflow is shown (nothing listens on that port)."""
        host = f"[{self.mlflow.host}]" if ":" in self.mlflow.host else self.mlflow.host
        return f"http://{host}:{self.mlflow.port}"

    @property
    def mlflow_tracking_uri(self) -> str:
        """MLflow through Jupyter's route, as kernels reach it (with the token in MLFLOW_TRACKING_TOKEN)."""
        return f"{self.jupyter_local_url}/mlflow"

    @property
    def jupyter_local_url(self) -> str:
        """Where this machine reaches Jupyter (loopback even when Jupyter binds 0.0.0.0)."""
        address = ipaddress.ip_address(self.jupyter.ip)
        if address.is_unspecified:
            host = "127.0.0.1" if address.version == 4 else "[::1]"
        else:
            host = f"[{address}]" if address.version == 6 else str(address)
        return f"http://{host}:{self.jupyter.port}{self.jupyter.base_url.rstrip('/')}"

    @property
    def config_file(self) -> Path | None:
        return self._config_file

    @property
    def resolved_from(self) -> Path | None:
        return self._resolved_from

    @property
    def source(self) -> str:
        if self._resolved_from is not None:
            return f"the running stack ({self._resolved_from})"
        parts = [str(self._config_file)] if self._config_file else []
        if self._environment:
            parts.append(", ".join(self._environment))
        return " and ".join(parts) or "built-in defaults"

    def redacted(self) -> dict[str, Any]:
        """The effective configuration with secrets masked, for `mlproxy config show`."""
        data = self.model_dump(mode="json")
        data["mlflow"]["backend_store_uri"] = redact_uri(self.mlflow.backend_store_uri)
        data["mlflow"]["artifacts_destination"] = redact_uri(self.mlflow.artifacts_destination)
        data["mlflow"]["s3_endpoint_url"] = redact_uri(self.mlflow.s3_endpoint_url)
        return data


class _ResolvedSettings(Settings):
    """Settings read back from a resolved file: its values only, never the environment."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_unused):
        return (init_settings,)


def write_resolved(settings: Settings, up: dict | None = None) -> Path:
    """Write the resolved configuration for the stack's processes and later CLI calls; `up` says
    who runs the stack (running.UpProcess: its pid, and whether systemd started it)."""
    from .files import write_atomically

    document = {"config_file": str(settings.config_file) if settings.config_file else None,
                "settings": settings.model_dump(mode="json"), "up": up}  # fmt: skip
    write_atomically(settings.resolved_file, json.dumps(document, indent=2) + "\n")
    return settings.resolved_file


def read_resolved(path: Path) -> Settings:
    """The configuration a running stack resolved, whatever this process's environment says."""
    try:
        document = json.loads(Path(path).read_text())
        settings = _ResolvedSettings(**document["settings"])
    except OSError as error:
        raise ConfigError(f"cannot read the running stack's configuration {path}: {error.strerror}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path} is not a configuration written by `mlproxy up` ({error}); restart the stack") from None
    config_file = document.get("config_file")
    settings._config_file = Path(config_file) if config_file else None
    settings._resolved_from = Path(path)
    return settings


def _absolute(value: Any) -> Any:
    """An absolute Path for a path given as text; None for none; any other value unchanged."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, Path)):
        return value
    try:
        return Path(value).expanduser().absolute()
    except RuntimeError:  # ~name of no such user, or no home directory at all
        raise ValueError(f"{str(value)!r} starts with ~ but names no home directory; give an absolute path") from None


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def config_search_path(cwd: Path | None = None) -> list[Path]:
    """Where a config file is looked for when --config is not given, first match wins."""
    cwd = cwd or Path.cwd()
    paths = []
    if env_path := os.environ.get(CONFIG_PATH_ENV):
        return [Path(env_path)]
    paths.append(cwd / CONFIG_FILE_NAME)
    config_home = Path(_read_env("XDG_CONFIG_HOME") or Path.home() / ".config")
    paths.append(config_home / "mlproxy" / CONFIG_FILE_NAME)
    if systemd_conf := _systemd_dir("CONFIGURATION_DIRECTORY"):
        paths.append(systemd_conf / CONFIG_FILE_NAME)
    paths.append(Path("/etc/mlproxy") / CONFIG_FILE_NAME)
    return paths


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. inside a directory this user may not enter: not our config
        return False


def find_config_file(explicit: Path | None = None) -> Path | None:
    if explicit is not None:
        if not _is_file(explicit):
            raise ConfigError(f"config file {explicit} does not exist (given with --config)")
        return explicit
    candidates = config_search_path()
    if os.environ.get(CONFIG_PATH_ENV) and not _is_file(candidates[0]):
        raise ConfigError(f"config file {candidates[0]} does not exist (named by ${CONFIG_PATH_ENV})")
    return next((path for path in candidates if _is_file(path)), None)


def _known_env_names(model: type[BaseModel], prefix: str) -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        names.add(f"{prefix}{name}".upper())
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _known_env_names(annotation, f"{prefix}{name}__")
    return names


def _did_you_mean(given: str, known: list[str], quote: str = "`", prefix: str = "") -> str:
    """" (did you mean `port`?)" for a near miss, else "". Names sharing `prefix` are compared
    without it (every variable starts with MLPROXY_)."""
    stems = [name.removeprefix(prefix) for name in known if name.startswith(prefix)]
    close = difflib.get_close_matches(given.removeprefix(prefix), stems, n=1, cutoff=0.7)
    return f" (did you mean {quote}{prefix}{close[0]}{quote}?)" if close else ""


def _check_environment() -> None:
    known = _known_env_names(Settings, ENV_PREFIX) | {CONFIG_PATH_ENV, RESOLVED_ENV}
    unknown = sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)
    if unknown:
        named = ", ".join(name + _did_you_mean(name.upper(), sorted(known), quote="", prefix=ENV_PREFIX) for name in unknown)
        raise ConfigError(
            f"unknown environment variable(s) {named}; "
            "run `mlproxy config reference` to see the valid keys (MLPROXY_<SECTION>__<KEY>)"
        )


def _keys_beside(location: tuple) -> list[str]:
    """The valid keys of the section an unknown key `location` was found in."""
    model: type[BaseModel] = Settings
    for part in location[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _given(problem: dict, message: str) -> str:
    """The value a validation problem is about, as the user gave it (secrets masked, long values
    cut), unless the message already quotes it."""
    value = problem.get("input")
    if problem["type"] in ("missing", "extra_forbidden"):
        return ""
    shown = repr(redact_uri(value) if isinstance(value, str) else value)
    if shown in message:
        return ""
    return f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"


def load_settings(config_file: Path | None = None) -> Settings:
    """Read, merge and validate the configuration, or raise ConfigError saying how to fix it."""
    path = find_config_file(config_file)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
        except OSError as error:
            raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    _check_environment()
    try:
        settings = Settings(**data)
    except ValidationError as error:
        source = f" in {path}" if path else ""
        lines = [f"invalid configuration{source} (environment MLPROXY_* overrides the file):"]
        for problem in error.errors():
            key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
            variable = ENV_PREFIX + "__".join(str(part) for part in problem["loc"]).upper()
            if problem["loc"] and variable in os.environ:  # the value came from the environment: name that
                key = variable
            message = problem["msg"].removeprefix("Value error, ")
            if problem["type"] == "extra_forbidden":
                near = _did_you_mean(str(problem["loc"][-1]), _keys_beside(problem["loc"])) if problem["loc"] else ""
                message = f"unknown key{near}; `mlproxy config reference` lists the valid keys"
            lines.append(f"  {key}: {message}{_given(problem, message)}")
        raise ConfigError("\n".join(lines)) from None
    settings._config_file = path.absolute() if path is not None else None
    settings._environment = tuple(sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in (CONFIG_PATH_ENV, RESOLVED_ENV)))
    return settings
