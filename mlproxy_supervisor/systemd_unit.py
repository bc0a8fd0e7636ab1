"""The systemd unit, rendered from the one configuration model and the supervisord program policies.

One model, two outputs (as honcho's exporters do): the program files in ``supervisord.conf.d/``
say how each program is stopped, the agent's settings say how long start-up may take, and the
unit's timeouts are computed from those, never kept by hand beside them. `mlproxy install` renders
the unit for its own interpreter; ``systemd/mlproxy.service`` in the repository is the rendering
for the documented installation (/opt/mlproxy), and a unit test fails when it drifts.

    python -m mlproxy_supervisor.systemd_unit > systemd/mlproxy.service    # regenerate it
"""

from __future__ import annotations

import configparser
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from . import preflight, supervisord_conf
from .agent import probes
from .agent.reconcile import ROUTE
from .config import Settings
from .exits import EXIT_CONFIG
from .layout import CONFIG_FILE, DOCUMENTED_PYTHON, LOG_DIR, NAME, RUNTIME_DIR, STATE_DIR, USER, default_settings
from .timings import KILL_WAIT, ORPHAN_GRACE, RPC_TIMEOUT, WATCHDOG_MIN_SPACING

START_MARGIN = 30  # s: preflight, supervisord and the agent starting, before MLflow's budget runs
STOP_MARGIN = 10  # s: supervisord's own bookkeeping between programs
WATCHDOG_MARGIN = 15  # s: on top of the longest agent step, so slowness never looks like a freeze
RESTART_SEC = 5
START_LIMIT_BURST = 5


@dataclass(frozen=True)
class Timeouts:
    start: int
    stop: int
    watchdog: int
    start_limit_interval: int
    stop_budget: int  # the programs' stopwaitsecs, added
    agent_step: int  # the longest one agent loop step can take


def program_stopwaitsecs(settings: Settings) -> dict[str, int]:
    """Each program's stopwaitsecs, read from the program files as supervisord gets them."""
    result = {}
    for name in supervisord_conf.PROGRAMS:
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(supervisord_conf.render_program(name, settings))
        result[name] = parser.getint(f"program:{name}", "stopwaitsecs", fallback=10)  # supervisord's default
    return result


def agent_step_bound(settings: Settings) -> float:
    """The longest one agent step can take, from the timeouts that bound each part of it."""
    agent = settings.agent
    route_checks = len(probes.checks(settings)[(ROUTE, "readiness")])  # run one after another
    observe = 3 * RPC_TIMEOUT  # supervisor state, process list, pid
    probing = max(route_checks * agent.readiness.timeout, agent.liveness.timeout)  # probes run in parallel
    tails = 2 * RPC_TIMEOUT  # last log lines of failing services
    restart = 3 * RPC_TIMEOUT + KILL_WAIT  # stop, kill, wait for the reap, start
    return observe + probing + tails + restart


def timeouts(settings: Settings) -> Timeouts:
    agent = settings.agent
    stop_budget = sum(program_stopwaitsecs(settings).values())
    step = math.ceil(agent_step_bound(settings))
    start = math.ceil(agent.mlflow_startup_budget + agent.jupyter_startup_budget) + START_MARGIN
    return Timeouts(
        start=start,
        stop=math.ceil(stop_budget + ORPHAN_GRACE) + STOP_MARGIN,
        watchdog=_round_up(step + WATCHDOG_MIN_SPACING + WATCHDOG_MARGIN, 10),
        # Five failed starts in a row, each allowed its full start timeout, then give up.
        start_limit_interval=START_LIMIT_BURST * (start + RESTART_SEC),
        stop_budget=stop_budget,
        agent_step=step,
    )


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def writable_paths(settings: Settings) -> list[Path]:
    """Configured directories outside the unit's own, which ProtectSystem=strict must leave writable."""
    result: list[Path] = []
    for path, _ in preflight.writable_directories(settings):  # the state directory first: it covers what lies inside
        if not any(path == base or base in path.parents for base in (STATE_DIR, RUNTIME_DIR, LOG_DIR, *result)):
            result.append(path)
    return result


def render(settings: Settings, python: str | None = None) -> str:
    python = python or sys.executable
    t = timeouts(settings)
    agent = settings.agent
    stops = program_stopwaitsecs(settings)
    stop_terms = " + ".join(f"{stops[name]} ({name})" for name in sorted(stops, key=lambda n: -stops[n]))
    extra = writable_paths(settings)
    extra_lines = ""
    if extra:
        extra_lines = (
            "# Directories the configuration puts outside the ones above (\"-\": not an error if missing).\n"
            + "".join(f"ReadWritePaths=-{path}\n" for path in extra)
        )
    return f"""\
# mlproxy: MLflow served through Jupyter's port and login, supervised (supervisord runs the health
# agent, MLflow and Jupyter). Rendered by `mlproxy install` from the configuration
# ({CONFIG_FILE}) and the supervisord program policies: mlproxy_supervisor/systemd_unit.py.
# Do not edit: put local changes in a drop-in (systemctl edit {NAME}), and re-run
# `mlproxy install` after changing directories or agent budgets in the configuration.

[Unit]
Description=mlproxy: MLflow inside Jupyter, supervised
# MLflow may use a database or artifact store on another host.
Wants=network-online.target
After=network-online.target
# Five failed starts in a row ({START_LIMIT_BURST} x (TimeoutStartSec + RestartSec)), then stay failed.
StartLimitIntervalSec={t.start_limit_interval}
StartLimitBurst={START_LIMIT_BURST}

[Service]
# The health agent sends READY=1 once the route through Jupyter works, STATUS= on every change,
# and WATCHDOG=1 while supervisord answers. Hardening exception: NotifyAccess=all, because the
# agent is supervisord's child, not the main process.
Type=notify
NotifyAccess=all
# `mlproxy up` runs supervisord in the foreground as its child, turns SIGTERM into an ordered
# stop (agent, Jupyter, then MLflow) and kills whatever supervisord leaves behind.
ExecStart={python} -m mlproxy_supervisor up --config {CONFIG_FILE}
User={USER}
Group={USER}
# The user's home ({STATE_DIR}): kernels' caches, ~/.local, ~/.jupyter live there.
WorkingDirectory={settings.state_dir}
StateDirectory={NAME}
StateDirectoryMode=0750
# Holds supervisord's socket: only user {USER} (and root) may talk to it.
RuntimeDirectory={NAME}
RuntimeDirectoryMode=0700
LogsDirectory={NAME}
LogsDirectoryMode=0750
ConfigurationDirectory={NAME}
{extra_lines}SyslogIdentifier={NAME}

# Start: MLflow's measured cold start is 5-8 s on 2 cores (about 8 s the first time, when it
# creates its database); a slow VM gets the agent's own budgets: mlflow_startup_budget
# ({agent.mlflow_startup_budget:g} s) + jupyter_startup_budget ({agent.jupyter_startup_budget:g} s) + {START_MARGIN} s for preflight, supervisord
# and the agent. No READY=1 by then: the start failed.
TimeoutStartSec={t.start}
# Stop: supervisord stops the programs one after another, each within its stopwaitsecs:
# {stop_terms} = {t.stop_budget} s; then `mlproxy up` gives leftovers {ORPHAN_GRACE:g} s; plus {STOP_MARGIN} s.
TimeoutStopSec={t.stop}
# SIGTERM to `mlproxy up` only, which asks supervisord for that ordered stop; SIGKILL to
# whatever is left when TimeoutStopSec runs out.
KillMode=mixed
# The agent pings after each loop step in which supervisord answered (at most once a second). One
# step is bounded by its timeouts: XML-RPC calls ({RPC_TIMEOUT:g} s each), the route probe's checks in a row,
# a restart's reap wait: {t.agent_step} s at most. Plus {WATCHDOG_MIN_SPACING:g} s spacing and {WATCHDOG_MARGIN} s margin, rounded up:
# a frozen supervisord or agent is restarted; a slow one never is.
WatchdogSec={t.watchdog}
Restart=on-failure
RestartSec={RESTART_SEC}
# A refusal that needs a person (configuration, database schema, packages, directories):
# restarting cannot fix it, so the unit fails once and `systemctl status` shows why.
RestartPreventExitStatus={EXIT_CONFIG}

# Hardening: `systemd-analyze security {NAME}` scores this unit 1.5 (a default unit: 9.6).
# What MLflow, Jupyter and notebook kernels need, and why, is noted at each exception.
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
# GPU hosts: notebooks need /dev/nvidia*; use a drop-in with PrivateDevices=no (docs/install-vm.md).
PrivateDevices=yes
PrivateUsers=yes
PrivateMounts=yes
PrivateIPC=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
# (Also grants read access to /dev/rtc, which the score counts.)
ProtectClock=yes
ProtectHostname=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectProc=invisible
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
RemoveIPC=yes
UMask=0077
SystemCallArchitectures=native
# Exceptions inside @system-service, kept: @chown (supervisord chowns its socket, even when to
# itself) and @resources (notebook code sets thread affinity, priorities and rlimits: BLAS and
# OpenMP thread pools, os.sched_setaffinity, os.nice, resource.setrlimit).
SystemCallFilter=@system-service
# A filtered call fails with EPERM instead of killing a user's kernel.
SystemCallErrorNumber=EPERM
# Exceptions: Internet sockets, since Jupyter serves users over the network and MLflow and
# kernels reach databases, artifact stores and package indexes; unix sockets for supervisord's
# socket, systemd's notify socket and the journal; netlink because ZeroMQ (the kernels'
# transport) and jupyter_client list the local interfaces with getifaddrs(): without it every
# kernel dies at start ("Address family not supported by protocol", src/ip_resolver.cpp).
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
# Exceptions, not set:
# - PrivateNetwork=, IPAddressDeny=: Jupyter serves users on any address it is configured for,
#   and kernels and MLflow connect out (see RestrictAddressFamilies=).
# - MemoryDenyWriteExecute=: measured, it breaks cffi callbacks in kernels ("MemoryError: Cannot
#   allocate write+execute memory for ffi.callback()"), and JIT compilers (numba, PyTorch, JAX)
#   need writable executable memory too.
# - ProcSubset=pid: psutil (MLflow's system metrics, notebook code) reads /proc/meminfo,
#   /proc/stat and /proc/net.
# - RootDirectory=: the service runs the host's Python installation.

[Install]
WantedBy=multi-user.target
"""


def main() -> int:
    """Print the rendering for the documented installation and configuration."""
    sys.stdout.write(render(default_settings(), DOCUMENTED_PYTHON))
    return 0


if __name__ == "__main__":
    sys.exit(main())
