"""The configuration reference (every key, its variable, default and meaning), from the model.

`mlproxy config reference` prints it, and the README carries the same table; a unit test keeps
the two equal, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from .config import ENV_PREFIX, Settings

# Defaults that depend on the environment, described instead of shown.
DERIVED_DEFAULTS = {
    "state_dir": "$STATE_DIRECTORY (systemd), else $XDG_DATA_HOME/mlproxy or ~/.local/share/mlproxy",
    "log_dir": "$LOGS_DIRECTORY (systemd), else <state_dir>/logs",
    "runtime_dir": "$RUNTIME_DIRECTORY (systemd), else <state_dir>/run",
    "log_target": '`"journal"` when systemd connects stdout to the journal ($JOURNAL_STREAM), else `"files"`',
    "mlflow.backend_store_uri": "sqlite:////<state_dir>/mlflow.db",
    "mlflow.artifacts_destination": "<state_dir>/artifacts",
    "jupyter.root_dir": "<state_dir>/notebooks",
    "jupyter.token_file": "<state_dir>/jupyter_token",
    "team.service_token_file": "<state_dir>/hub_service_token",
}


def _rows(model: type[BaseModel], instance: BaseModel | None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        value = getattr(instance, name) if instance is not None else field.default
        if isinstance(value, BaseModel):
            rows += _rows(type(value), value, f"{key}.")
            continue
        env = ENV_PREFIX + key.upper().replace(".", "__")
        default = DERIVED_DEFAULTS[key] if key in DERIVED_DEFAULTS else f"`{json.dumps(value)}`"
        rows.append((f"`{key}`", f"`{env}`", default, field.description or ""))
    return rows


def reference_markdown() -> str:
    defaults = Settings.model_construct()  # field defaults only: no environment, no validation
    lines = ["| key | environment variable | default | meaning |", "|---|---|---|---|"]
    lines += [f"| {key} | {env} | {default} | {meaning} |" for key, env, default, meaning in _rows(Settings, defaults)]
    return "\n".join(lines)
