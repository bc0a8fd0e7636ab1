"""The relay to MLflow, shared by both front doors (Jupyter's extension in single-user mode, the
JupyterHub service in team mode), with no jupyter_server import: `stream.py` relays one request
both ways, `pool.py` keeps connections alive, `handler.py` is the request handler's side,
`origin.py` the exact-Origin rule, `scrub.py` the credentials that never reach MLflow or a log,
`answers.py` our own answers (JSON for clients, a reloading page for browsers)."""
