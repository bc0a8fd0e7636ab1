"""Timings the runtime keeps and the systemd unit's timeouts are computed from.

One module, imported by the runtime (rpc, the agent, `up`) and by the unit renderer, so that
systemd_unit.py needs none of the runtime's modules for them.
"""

RPC_TIMEOUT = 3.0  # seconds one XML-RPC call may take before supervisord counts as unavailable
KILL_WAIT = 3.0  # seconds the agent waits for supervisord to reap a killed process group
ORPHAN_GRACE = 5.0  # seconds leftovers get between SIGTERM and SIGKILL after supervisord exited
IDLE_TICK = 1.0  # seconds between the agent's looks at supervisord when nothing is starting

# The watchers (watchdog.py). The agent touches its heartbeat between the phases of its loop; the
# longest phase is a restart: four calls to supervisord (stop, the reap wait's last look, a look,
# start) and the reap wait itself. After the phase comes one sleep of the loop (IDLE_TICK or the
# startup period) and HEARTBEAT_MARGIN on top, so a slow agent is never taken for a frozen one.
AGENT_PHASE_BOUND = 4 * RPC_TIMEOUT + KILL_WAIT
HEARTBEAT_MARGIN = 5.0
# supervisord is frozen when its socket has not answered for this long: two calls in a row, each
# given RPC_TIMEOUT.
SUPERVISORD_SILENCE = 2 * RPC_TIMEOUT
# A supervisord started in place of a frozen one that has not answered after this long is replaced
# again (its first start is judged by `up`'s report instead: the agent never reporting).
SUPERVISORD_START_SILENCE = 30.0
WATCH_PERIOD = 1.0  # seconds between `up`'s looks at supervisord and the agent's heartbeat
# The longest one loop of `mlproxy up` takes: a look at supervisord, the agent's pid and the start
# report's two calls (RPC_TIMEOUT each), and when it replaces supervisord, ORPHAN_GRACE for what
# the old one left. `up` pings systemd's watchdog once a loop, not more often than
# WATCHDOG_MIN_SPACING, so WatchdogSec only has to cover one loop (systemd_unit.py derives it).
UP_LOOP_BOUND = 4 * RPC_TIMEOUT + ORPHAN_GRACE
WATCHDOG_MIN_SPACING = 1.0
