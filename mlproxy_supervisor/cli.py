"""The `mlproxy` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .config import RESOLVED_ENV, ConfigError, Settings, config_search_path, load_settings, read_resolved
from .exits import EXIT_CONFIG, EXIT_DOWN, EXIT_INTERRUPTED, STATUS_EXIT
from .running import locate_stack


def _settings(args) -> Settings:
    """The configuration as the TOML file and MLPROXY_* say (up, config, install)."""
    return load_settings(args.config)


def _running(args) -> Settings:
    """The running stack's resolved configuration (status, url, env, config show, logs, stop,
    doctor, ctl), found from any shell (running.py); the configuration itself when none runs."""
    return locate_stack(args.config)


def cmd_up(args) -> int:
    from . import up

    return up.run(_settings(args))


def cmd_agent(args) -> int:
    from .agent.loop import main

    resolved = os.environ.get(RESOLVED_ENV)
    if not resolved:
        raise ConfigError(f"${RESOLVED_ENV} is not set: the agent runs under supervisord, started by `mlproxy up`")
    return main(read_resolved(Path(resolved)))


def cmd_logforward(args) -> int:
    from .logforward import main

    return main(to_journal=args.journal)


def cmd_logs(args) -> int:
    from . import logs

    return logs.run(_running(args), args.program, args.follow, args.lines)


def cmd_stop(args) -> int:
    from . import stop

    return stop.run(_running(args), args.timeout)


def cmd_env(args) -> int:
    from . import client_env

    return client_env.run(_running(args), "json" if args.json else "dotenv" if args.dotenv else "sh")


def cmd_config(args) -> int:
    if args.action == "reference":
        from .config_reference import reference_markdown

        print(reference_markdown())
        return 0
    if args.action == "check":
        settings = _settings(args)
        print(f"configuration OK ({settings.source})")
        return 0
    settings = _running(args)
    if settings.resolved_from is not None:
        print(f"# the running stack's configuration, as `mlproxy up` resolved it into {settings.resolved_from}; secrets masked")
    else:
        print(f"# no stack is running; what `mlproxy up` would use, from {settings.source}; secrets masked")
    print("# file search order: --config, $MLPROXY_CONFIG, " + ", ".join(str(p) for p in config_search_path()))
    print(json.dumps(settings.redacted(), indent=2))
    return 0 if settings.resolved_from is not None else EXIT_DOWN


def cmd_status(args) -> int:
    from . import status

    return status.run(lambda: _running(args), args.json, args.wait, args.timeout)


def cmd_doctor(args) -> int:
    from . import doctor

    return doctor.run(args.config)


def cmd_backup(args) -> int:
    from .store import backup

    return backup.run_backup(_settings(args), args.destination)


def cmd_restore(args) -> int:
    from .store import backup

    return backup.run_restore(_settings(args), args.source)


def cmd_url(args) -> int:
    from .credentials import CredentialError, read_token
    from .status import current_status

    settings = _running(args)
    status = current_status(settings)
    if status.overall == "down":  # a URL that leads nowhere would only mislead
        print(f"mlproxy url: {status.summary}; start it with `mlproxy up`", file=sys.stderr)
        return EXIT_DOWN
    if settings.team_mode:  # users log in at the Hub: no token in the URL
        print(settings.team_url)
    else:
        try:
            token = read_token(settings.jupyter.token_file)
        except CredentialError as error:
            print(f"mlproxy url: {error}", file=sys.stderr)
            return 1
        print(f"{settings.jupyter_local_url}/{args.route}?token={token}")
    return STATUS_EXIT[status.overall]


def cmd_ctl(args) -> int:
    """supervisorctl on this stack's socket; the socket stays 0700, so run it as the stack's user."""
    settings = _running(args)
    argv = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(settings.supervisord_conf), *args.args]
    if not settings.supervisord_conf.exists():
        print(f"mlproxy ctl: {settings.supervisord_conf} does not exist: is the stack running?", file=sys.stderr)
        return EXIT_DOWN
    os.execv(sys.executable, argv)


def cmd_install(args) -> int:
    from . import install

    return install.run("install", enable=args.enable, now=args.now)


def cmd_uninstall(args) -> int:
    from . import install

    return install.run("uninstall", purge=args.purge)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlproxy")
    except PackageNotFoundError:
        return "(not installed)"


class _DescribedSubparsers:
    """Every subcommand's `--help` starts with the line `mlproxy --help` shows for it."""

    def __init__(self, subparsers):
        self._subparsers = subparsers

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        kwargs.setdefault("description", kwargs.get("help"))
        return self._subparsers.add_parser(name, **kwargs)

    def add_internal(self, name: str, description: str, **kwargs) -> argparse.ArgumentParser:
        """A command only supervisord runs: not in `mlproxy --help`."""
        parser = self._subparsers.add_parser(name, description=description, **kwargs)
        # argparse (3.11) lists help=SUPPRESS as "==SUPPRESS==": leave the listing out instead.
        self._subparsers._choices_actions = [a for a in self._subparsers._choices_actions if a.dest != name]
        return parser


def build_parser() -> argparse.ArgumentParser:
    config_help = "TOML config file (default: the search order `mlproxy config show` prints)"
    # Accepted before the subcommand and after it; SUPPRESS keeps a subcommand from resetting
    # a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=config_help)
    parser = argparse.ArgumentParser(
        prog="mlproxy", description="MLflow beside Jupyter, behind Jupyter's login, supervised."
    )
    parser.add_argument("--version", action="version", version=f"mlproxy {_version()}")
    parser.add_argument("--config", type=Path, default=None, help=config_help)
    commands = _DescribedSubparsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))

    up = commands.add_parser("up", parents=[common], help="start the stack in the foreground")
    up.set_defaults(func=cmd_up)

    status = commands.add_parser(
        "status", parents=[common], help="show the running stack's status (exit 0 ready, 1 starting/degraded, 2 down)"
    )
    status.add_argument("--json", action="store_true", help="print the status document")
    status.add_argument("--wait", action="store_true", help="block until ready (or --timeout)")
    status.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits (default 300)")
    status.set_defaults(func=cmd_status)

    config = commands.add_parser(
        "config", parents=[common],
        help="check, show (the running stack's, secrets masked; exit 2 when none runs) or document the configuration",
    )
    config.add_argument("action", choices=("check", "show", "reference"))
    config.set_defaults(func=cmd_config)

    doctor = commands.add_parser(
        "doctor", parents=[common], help="diagnose why MLflow does not work behind Jupyter, with fixes"
    )
    doctor.set_defaults(func=cmd_doctor)

    backup = commands.add_parser("backup", parents=[common], help="consistent copy of the database and artifacts, safe while running")
    backup.add_argument("destination", type=Path, help="a new directory for the backup")
    backup.set_defaults(func=cmd_backup)

    restore = commands.add_parser("restore", parents=[common], help="put a backup back (stopped stack only; keeps what it replaces)")
    restore.add_argument("source", type=Path, help="a directory written by `mlproxy backup`")
    restore.set_defaults(func=cmd_restore)

    url = commands.add_parser("url", parents=[common], help="print the URL to open, token included (exit 2 while down)")
    url.add_argument("route", nargs="?", default="mlflow/", help="path under Jupyter (default mlflow/)")
    url.set_defaults(func=cmd_url)

    env = commands.add_parser(
        "env", parents=[common],
        help='print MLFLOW_TRACKING_URI and MLFLOW_TRACKING_TOKEN for the running stack: eval "$(mlproxy env)"',
    )
    form = env.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="as a JSON object")
    form.add_argument("--dotenv", action="store_true", help="as KEY=VALUE lines (docker --env-file, EnvironmentFile=)")
    env.set_defaults(func=cmd_env)

    stop = commands.add_parser("stop", parents=[common], help="stop the running stack, in order, as Ctrl-C in `mlproxy up` does")
    stop.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for it to stop (default 120)")
    stop.set_defaults(func=cmd_stop)

    logs = commands.add_parser("logs", parents=[common], help="print (-f: follow) the programs' logs, e.g. `mlproxy logs mlflow -f`")
    logs.add_argument("program", nargs="?", help="one program: mlflow, jupyter, agent, supervisord (team mode: service)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)")
    logs.add_argument("-n", "--lines", type=int, default=40, help="lines of each log to start with (default 40)")
    logs.set_defaults(func=cmd_logs)

    ctl = commands.add_parser("ctl", parents=[common], help="supervisorctl for this stack, e.g. `mlproxy ctl status`")
    ctl.add_argument("args", nargs=argparse.REMAINDER)
    ctl.set_defaults(func=cmd_ctl)

    install = commands.add_parser("install", help="(root) install the systemd service: user, directories, config, unit")
    install.add_argument("--enable", action="store_true", help="start the service at boot")
    install.add_argument("--now", action="store_true", help="start it now (returns once it is ready)")
    install.set_defaults(func=cmd_install)

    uninstall = commands.add_parser("uninstall", help="(root) remove the systemd service; keeps data unless --purge")
    uninstall.add_argument("--purge", action="store_true", help="also remove config, data, logs and user mlproxy")
    uninstall.set_defaults(func=cmd_uninstall)

    agent = commands.add_parser("agent", parents=[common], help="(used by supervisord) the health agent")
    agent.set_defaults(func=cmd_agent)

    forward = commands.add_internal("_logforward", "(used by supervisord) copy program output to stdout or the journal")
    forward.add_argument("--journal", action="store_true", help="to systemd's journal, tagged mlproxy-<program>")
    forward.set_defaults(func=cmd_logforward)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is handled, not at exit
        return code
    except ConfigError as error:
        print(f"mlproxy: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `mlproxy status | head -1`: the reader has what it wanted
        # Python flushes stdout again at exit; point it at /dev/null so that flush cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
