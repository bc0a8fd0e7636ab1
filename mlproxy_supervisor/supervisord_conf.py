"""Render supervisord's configuration from the one config model.

The program files in ``supervisord.conf.d/`` (shipped in the wheel) hold each program's restart
and stop policy, and ``templates/supervisord.conf`` the main file; only install-specific values
(${python}, ${state_dir}, ${logging}) are filled in here. The result goes to the 0700 runtime
directory, where operators can read what runs.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from . import templates
from .config import Settings
from .programs import programs as stack_programs

LOG_FORWARDER = "logforward"  # stdout and journal modes: copies every program's lines out
LOG_MAXBYTES = "10MB"
LOG_BACKUPS = 5


def _escape(value: object) -> str:
    return str(value).replace("%", "%%")  # supervisord expands %(name)s in every value


def _logging(settings: Settings) -> str:
    """Programs always log to files: the agent quotes a failing program's last lines from them."""
    logfile = f"stdout_logfile={_escape(settings.log_dir)}/%(program_name)s.log\nredirect_stderr=true\n"
    if settings.log_target == "stdout":
        # Small files only for the agent's log tail (and `mlproxy logs`); the `logforward` listener copies output to stdout.
        return logfile + "stdout_logfile_maxbytes=1MB\nstdout_logfile_backups=1\nstdout_events_enabled=true"
    logfile += f"stdout_logfile_maxbytes={LOG_MAXBYTES}\nstdout_logfile_backups={LOG_BACKUPS}"
    if settings.log_target == "journal":
        # The `logforward` listener sends each line to the journal tagged with its program
        # (journalctl -t mlproxy-mlflow); supervisord's own syslog copy would tag them all
        # "supervisord.py".
        logfile += "\nstdout_events_enabled=true"
    return logfile


def _listener(settings: Settings) -> dict[str, str]:
    """Where the `logforward` listener sends program output, and where its own errors go."""
    if settings.log_target == "journal":
        # Under systemd stdout is a socket, which supervisord cannot open as /dev/stdout.
        output = f"stderr_logfile={_escape(settings.log_dir)}/logforward.log\nstderr_logfile_maxbytes=1MB\nstderr_logfile_backups=1"
        return {"log_destination": "--journal", "listener_output": output}
    return {"log_destination": "", "listener_output": "stderr_logfile=/dev/stdout\nstderr_logfile_maxbytes=0"}


def programs(settings: Settings) -> tuple[str, ...]:
    return stack_programs(settings.services) + ((LOG_FORWARDER,) if settings.log_target in ("stdout", "journal") else ())


def render_program(name: str, settings: Settings) -> str:
    return templates.render(
        f"supervisord.conf.d/{name}.conf",
        python=_escape(sys.executable),
        state_dir=_escape(settings.state_dir),
        programs_dir=_escape(shlex.quote(str(settings.programs_dir))),  # supervisord splits commands like a shell
        logging=_logging(settings),
        front_door_autostart="true" if settings.agent.start_order == "parallel" else "false",
        **_listener(settings),
    )


def render_main(settings: Settings, programs_dir: Path) -> str:
    # silent: no echo of supervisord's log to its stdout, except to the journal (where the file
    # would otherwise be the only copy); in stdout mode the log file is stdout itself.
    if settings.log_target == "stdout":
        logfile, maxbytes, backups = "/dev/stdout", "0", "0"
    else:
        logfile, maxbytes, backups = _escape(settings.log_dir / "supervisord.log"), LOG_MAXBYTES, LOG_BACKUPS
    return templates.render(
        "templates/supervisord.conf",
        socket=_escape(settings.socket_path),
        silent="false" if settings.log_target == "journal" else "true",
        logfile=logfile,
        maxbytes=maxbytes,
        backups=backups,
        pidfile=_escape(settings.pid_file),
        log_dir=_escape(settings.log_dir),
        state_dir=_escape(settings.state_dir),
        programs_dir=_escape(programs_dir),
    )


def write_config(settings: Settings) -> Path:
    """Write the main file and the program files into the runtime directory; return the main file."""
    programs_dir = settings.programs_dir
    programs_dir.mkdir(mode=0o700, exist_ok=True)
    for stale in programs_dir.glob("*.conf"):
        stale.unlink()
    for name in programs(settings):
        (programs_dir / f"{name}.conf").write_text(render_program(name, settings))
    settings.supervisord_conf.write_text(render_main(settings, programs_dir))
    return settings.supervisord_conf
