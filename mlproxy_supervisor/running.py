"""Which stack a command is about: the running one, found from any shell.

`mlproxy up` writes its resolved configuration into the stack's runtime directory, and records the
stack in a per-user place that a second shell finds with no configuration at all: one small 0600
file per running stack, naming its resolved file, under $XDG_RUNTIME_DIR/mlproxy/ (else
$XDG_CACHE_HOME/mlproxy/ or ~/.cache/mlproxy/), removed when `up` ends. A record whose resolved
file is gone, or whose supervisord does not answer, is ignored. Under systemd nothing is recorded:
the unit's configuration (/etc/mlproxy/mlproxy.toml, on the search path) names the stack.

The observing commands (status, url, env, config show, logs, stop, doctor, ctl) and a Jupyter
server started by hand use, in order: the configuration when one is given (--config,
$MLPROXY_CONFIG, MLPROXY_* variables), which names exactly one stack; else
$MLPROXY_RESOLVED_CONFIG (inside the stack: kernels, terminals); else the one recorded running
stack; else the configuration search path. So an invalid ./mlproxy.toml never hides a running stack.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import rpc
from .config import CONFIG_PATH_ENV, ENV_PREFIX, RESOLVED_ENV, ConfigError, Settings, load_settings, read_resolved
from .files import write_atomically


def records_dir() -> Path | None:
    """Where this user's running stacks are recorded: a per-user runtime location (None: this
    user has none, e.g. a uid with no home directory)."""
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(runtime) / "mlproxy"
    try:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlproxy"
    except RuntimeError:
        return None


def record(settings: Settings) -> Path | None:
    """Record the stack `up` runs (best effort: a home directory we may not write loses only the
    convenience). Returns the record, for `forget`."""
    directory = records_dir()
    if directory is None:
        return None
    path = directory / f"stack-{hashlib.sha256(str(settings.resolved_file).encode()).hexdigest()[:16]}.json"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(path, json.dumps({"resolved": str(settings.resolved_file)}) + "\n", 0o600)
    except OSError:
        return None
    return path


def forget(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def answers(settings: Settings) -> bool:
    """Whether this configuration's stack runs (its supervisord answers)."""
    try:
        return settings.resolved_file.is_file() and rpc.answers(settings.socket_path)
    except OSError:  # a runtime directory this user may not enter
        return False


def recorded_stacks() -> list[Settings]:
    """The running stacks `up` recorded for this user; stale records are skipped (and removed
    when their resolved file is gone: that `up` has ended)."""
    stacks = []
    directory = records_dir()
    try:
        paths = sorted(directory.glob("stack-*.json")) if directory is not None else []
    except OSError:
        return []
    for path in paths:
        try:
            resolved = Path(json.loads(path.read_text())["resolved"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not resolved.is_file():
            path.unlink(missing_ok=True)
            continue
        try:
            settings = read_resolved(resolved)
        except ConfigError:
            continue
        if rpc.answers(settings.socket_path):
            stacks.append(settings)
    return stacks


def configuration_given(config_file: Path | None) -> bool:
    """Whether this command names its stack: --config, $MLPROXY_CONFIG or an MLPROXY_* setting."""
    if config_file is not None or os.environ.get(CONFIG_PATH_ENV):
        return True
    return any(key.upper().startswith(ENV_PREFIX) and key.upper() != RESOLVED_ENV for key in os.environ)


def locate_stack(config_file: Path | None = None) -> Settings:
    """The settings of the stack this command is about: the running one's resolved configuration
    when it runs (see the module's docstring for the order), else the configuration itself."""
    if not configuration_given(config_file):
        if named := os.environ.get(RESOLVED_ENV):
            return read_resolved(Path(named))
        stacks = recorded_stacks()
        if len(stacks) == 1:
            return stacks[0]
        if stacks:
            where = lambda stack: stack.team_url if stack.team_mode else stack.jupyter_local_url  # noqa: E731
            listed = "\n".join(f"  state_dir {stack.state_dir}: {where(stack)}" for stack in sorted(stacks, key=lambda s: s.state_dir))
            raise ConfigError(
                f"{len(stacks)} mlproxy stacks are running:\n{listed}\n"
                "name one: --config FILE, or MLPROXY_STATE_DIR=<its state_dir>"
            )
    settings = load_settings(config_file)
    return read_resolved(settings.resolved_file) if answers(settings) else settings


@dataclass(frozen=True)
class UpProcess:
    """The `mlproxy up` that runs a stack, as it recorded itself in the resolved file."""

    pid: int
    systemd: bool  # started by systemd: `systemctl stop mlproxy` stops it


def up_process(settings: Settings) -> UpProcess | None:
    """Who runs this stack (None: not recorded, e.g. a stack started by an older mlproxy)."""
    if settings.resolved_from is None:
        return None
    try:
        up = json.loads(settings.resolved_from.read_text())["up"]
        return UpProcess(pid=int(up["pid"]), systemd=bool(up["systemd"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
