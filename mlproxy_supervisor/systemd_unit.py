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

from . import preflight, supervisord_conf, templates
from .config import Settings
from .exits import EXIT_CONFIG
from .layout import CONFIG_FILE, DOCUMENTED_PYTHON, LOG_DIR, NAME, RUNTIME_DIR, STATE_DIR, USER, default_settings
from .programs import programs
from .timings import ORPHAN_GRACE, RPC_TIMEOUT, UP_LOOP_BOUND, WATCHDOG_MIN_SPACING

START_MARGIN = 30  # s: preflight, supervisord and the agent starting, before MLflow's budget runs
STOP_MARGIN = 10  # s: supervisord's own bookkeeping between programs
WATCHDOG_MARGIN = 10  # s: on top of the longest loop of `up`, so slowness never looks like a freeze
RESTART_SEC = 5
START_LIMIT_BURST = 5


@dataclass(frozen=True)
class Timeouts:
    start: int
    stop: int
    watchdog: int
    start_limit_interval: int
    stop_budget: int  # the programs' stopwaitsecs, added


def program_stopwaitsecs(settings: Settings) -> dict[str, int]:
    """Each program's stopwaitsecs, read from the program files as supervisord gets them."""
    result = {}
    for name in programs(settings.services):
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(supervisord_conf.render_program(name, settings))
        result[name] = parser.getint(f"program:{name}", "stopwaitsecs", fallback=10)  # supervisord's default
    return result


def timeouts(settings: Settings) -> Timeouts:
    agent = settings.agent
    stop_budget = sum(program_stopwaitsecs(settings).values())
    start = math.ceil(agent.mlflow_startup_budget + agent.jupyter_startup_budget) + START_MARGIN
    return Timeouts(
        start=start,
        stop=math.ceil(stop_budget + ORPHAN_GRACE) + STOP_MARGIN,
        watchdog=_round_up(UP_LOOP_BOUND + WATCHDOG_MIN_SPACING + WATCHDOG_MARGIN, 10),
        # Five failed starts in a row, each allowed its full start timeout, then give up.
        start_limit_interval=START_LIMIT_BURST * (start + RESTART_SEC),
        stop_budget=stop_budget,
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
    return templates.render(
        "templates/mlproxy.service",
        config_file=CONFIG_FILE,
        name=NAME,
        start_limit_burst=START_LIMIT_BURST,
        start_limit_interval=t.start_limit_interval,
        python=python,
        user=USER,
        home=STATE_DIR,
        working_directory=settings.state_dir,
        extra_lines=extra_lines,
        mlflow_startup_budget=f"{agent.mlflow_startup_budget:g}",
        jupyter_startup_budget=f"{agent.jupyter_startup_budget:g}",
        start_margin=START_MARGIN,
        timeout_start=t.start,
        stop_terms=stop_terms,
        stop_budget=t.stop_budget,
        orphan_grace=f"{ORPHAN_GRACE:g}",
        stop_margin=STOP_MARGIN,
        timeout_stop=t.stop,
        rpc_timeout=f"{RPC_TIMEOUT:g}",
        up_loop=f"{UP_LOOP_BOUND:g}",
        watchdog_min_spacing=f"{WATCHDOG_MIN_SPACING:g}",
        watchdog_margin=WATCHDOG_MARGIN,
        watchdog=t.watchdog,
        restart_sec=RESTART_SEC,
        exit_config=EXIT_CONFIG,
    )


def main() -> int:
    """Print the rendering for the documented installation and configuration."""
    sys.stdout.write(render(default_settings(), DOCUMENTED_PYTHON))
    return 0


if __name__ == "__main__":
    sys.exit(main())
