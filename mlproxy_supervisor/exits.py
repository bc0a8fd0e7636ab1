"""Every exit status of mlproxy's commands and programs that means something beyond "failed" (1).

The launcher's and MLflow's own statuses reach supervisord (and the agent's report), `mlproxy`'s
reach scripts and systemd (RestartPreventExitStatus=).
"""

# A failure that may pass by itself (a port still held, another instance stopping): retry.
EXIT_FAILED = 1
# A refusal that needs a person: a configuration error, an out-of-date database schema, a missing
# package, a directory the stack may not write. Retrying cannot fix it, so the systemd unit does
# not restart on it (RestartPreventExitStatus=).
EXIT_CONFIG = 2
# A server that cannot start at all: its launch file is unreadable, or MLflow's store is unusable
# (launch.py, mlflow_app.py). supervisord retries it, then the agent reports FATAL with the cause.
EXIT_CANNOT_START = 3
# Ctrl-C in a command that was waiting (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130

# `mlproxy status` (and `ctl` without a stack): the stack's state, for scripts.
STATUS_EXIT = {"ready": 0, "starting": 1, "degraded": 1, "down": 2}
EXIT_DOWN = STATUS_EXIT["down"]
