"""The programs supervisord runs for mlproxy (no imports: the launcher reads this too)."""

SERVICES = ("mlflow", "jupyter")  # started by the agent, in this order
PROGRAMS = ("agent", *SERVICES)  # supervisord starts the agent itself
