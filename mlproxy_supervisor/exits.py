"""The exit statuses of `mlproxy` that mean something beyond "failed"."""

# A refusal that needs a person: a configuration error, an out-of-date database schema, a missing
# package, a directory the stack may not write. Retrying cannot fix it, so the systemd unit does
# not restart on it (RestartPreventExitStatus=).
EXIT_CONFIG = 2
