"""Timings the runtime keeps and the systemd unit's timeouts are computed from.

One module, imported by the runtime (rpc, the agent, `up`) and by the unit renderer, so that
systemd_unit.py needs none of the runtime's modules for them.
"""

RPC_TIMEOUT = 3.0  # seconds one XML-RPC call may take before supervisord counts as unavailable
KILL_WAIT = 3.0  # seconds the agent waits for supervisord to reap a killed process group
# The agent pings after every loop step in which supervisord answered, but not more often than
# this: so the gap between pings is one loop step, and WatchdogSec only has to cover the longest
# step (systemd_unit.py derives it), not twice that.
WATCHDOG_MIN_SPACING = 1.0
ORPHAN_GRACE = 5.0  # seconds leftovers get between SIGTERM and SIGKILL after supervisord exited
