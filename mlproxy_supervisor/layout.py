"""Where an installed service lives: the systemd unit's name and user, its directories, and the
configuration `mlproxy install` writes. Read by install.py (which makes them) and systemd_unit.py
(which names them in the unit)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from .config import AgentSettings, JupyterSettings, MLflowSettings, Settings

NAME = "mlproxy"  # the unit, the system user and group, and the directories under /var/lib etc.
USER = NAME
UNIT_PATH = Path(f"/etc/systemd/system/{NAME}.service")
CONFIG_DIR = Path("/etc") / NAME
CONFIG_FILE = CONFIG_DIR / "mlproxy.toml"
# What systemd creates for the unit (StateDirectory=, RuntimeDirectory=, LogsDirectory=), and what
# the installed configuration names, so an operator's shell finds the same files.
STATE_DIR = Path("/var/lib") / NAME
RUNTIME_DIR = Path("/run") / NAME
LOG_DIR = Path("/var/log") / NAME
DOCUMENTED_PYTHON = "/opt/mlproxy/bin/python3"  # docs/install-vm.md installs here


def _default(section: type, key: str):
    """A setting's default, as the configuration model states it (written out for the operator)."""
    return section.model_fields[key].default


DEFAULT_CONFIG = f"""\
# mlproxy's configuration for the systemd service. Written once by `mlproxy install`, which never
# overwrites it: edit freely, then `systemctl restart {NAME}`. Every key and its current value:
# `mlproxy config show`. After changing a directory or an agent budget, run `mlproxy install`
# again so the unit follows (ReadWritePaths=, timeouts).

# The directories systemd makes for the service (StateDirectory=, RuntimeDirectory=,
# LogsDirectory=), spelled out so that `mlproxy status`, `mlproxy url` and `mlproxy ctl` in an
# operator's shell find the same files as the service.
state_dir = "{STATE_DIR}"
runtime_dir = "{RUNTIME_DIR}"
log_dir = "{LOG_DIR}"
# Program output goes to rotated files in log_dir and to the journal (journalctl -u {NAME}).
log_target = "journal"

[jupyter]
# Loopback only: reach it through an SSH tunnel (ssh -L 8888:127.0.0.1:8888 HOST). Set "0.0.0.0"
# to serve the network directly (token login applies; put TLS in front for anything public).
ip = "{_default(JupyterSettings, 'ip')}"
port = {_default(JupyterSettings, 'port')}

[mlflow]
port = {_default(MLflowSettings, 'port')}
# backend_store_uri = "postgresql://mlflow@db.example/mlflow"   # default: SQLite in state_dir

[agent]
metrics_port = {_default(AgentSettings, 'metrics_port')}
"""


def default_settings() -> Settings:
    """The configuration a fresh install runs with (DEFAULT_CONFIG, no file, no environment)."""
    return Settings(**tomllib.loads(DEFAULT_CONFIG))
