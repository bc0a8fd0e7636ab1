"""Small pure pieces: origin matching, supervisord rendering, schema reading, metrics, notify,
launch environment, token file."""

from __future__ import annotations

import configparser
import os
import socket
import stat
import subprocess
import sys
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlproxy_supervisor import credentials, files, launch, programs, supervisord_conf
from mlproxy_supervisor.agent import metrics, report
from mlproxy_supervisor.agent.notify import Notifier
from mlproxy_supervisor.agent.reconcile import Memory, Phase, ProbeResult
from mlproxy_supervisor.config import Settings
from mlproxy_supervisor.relay.origin import same_origin
from mlproxy_supervisor.rpc import ProcessInfo
from mlproxy_supervisor.status_document import StatusDocument
from mlproxy_supervisor.store import schema


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "same"),
    [
        ("http://myvm.example.com:8888", "myvm.example.com:8888", "http", True),
        ("http://MyVM.example.com:8888", "myvm.example.com:8888", "http", True),
        ("https://lab.example.com", "lab.example.com", "https", True),
        ("https://lab.example.com:443", "lab.example.com", "https", True),
        ("http://[::1]:8888", "[::1]:8888", "http", True),
        ("http://localhost:9999", "localhost:8888", "http", False),  # same site, other origin
        ("http://evil.example.com", "myvm.example.com:8888", "http", False),
        ("null", "myvm.example.com:8888", "http", False),
        ("", "myvm.example.com:8888", "http", False),
        # The whole origin: scheme included, and nothing after the port.
        ("https://myvm.example.com:8888", "myvm.example.com:8888", "http", False),
        ("ws://myvm.example.com:8888", "myvm.example.com:8888", "http", False),
        ("http://myvm.example.com:8888", "myvm.example.com:8888", "https", False),
        ("http://lab.example.com", "lab.example.com", "https", False),
        ("http://myvm.example.com:8888/", "myvm.example.com:8888", "http", False),
        ("http://myvm.example.com:8888/x", "myvm.example.com:8888", "http", False),
        ("http://myvm.example.com:8888?x", "myvm.example.com:8888", "http", False),
        ("http://me@myvm.example.com:8888", "myvm.example.com:8888", "http", False),
        ("http://myvm.example.com:8888:8888", "myvm.example.com:8888", "http", False),
        ("http://myvm.example.com:x", "myvm.example.com:8888", "http", False),
        ("http://myvm.example.com", "myvm.example.com:8888", "http", False),
        ("http://:8888", ":8888", "http", False),
    ],
)
def test_same_origin(origin, host, scheme, same):
    assert same_origin(origin, host, scheme) is same


def settings(tmp_path, **values) -> Settings:
    return Settings(state_dir=tmp_path, **values)


def test_an_atomic_write_has_its_mode_and_group_before_it_has_its_name(tmp_path):
    target = tmp_path / "mlproxy.toml"
    target.write_text("old\n")
    group = 65534 if os.geteuid() == 0 else os.getegid()  # nogroup, as root; else our own
    files.write_atomically(target, "new\n", 0o640, group=group)
    info = target.stat()
    assert target.read_text() == "new\n" and stat.S_IMODE(info.st_mode) == 0o640 and info.st_gid == group
    assert [p.name for p in tmp_path.iterdir()] == ["mlproxy.toml"]  # no temporary left behind


def test_supervisord_programs_render_to_valid_ini_with_the_policies(tmp_path):
    config = settings(tmp_path)
    parser = configparser.RawConfigParser()
    for name in supervisord_conf.programs(config):
        parser.read_string(supervisord_conf.render_program(name, config))
    mlflow = parser["program:mlflow"]
    assert mlflow["command"] == f"{sys.executable} -m mlproxy_supervisor.launch {tmp_path}/run/programs/mlflow.json"
    assert mlflow["autostart"] == "true", "first in order: supervisord starts it with the agent"
    assert parser["program:jupyter"]["autostart"] == "false", "the agent starts Jupyter once MLflow is ready"
    assert (mlflow["stopasgroup"], mlflow["killasgroup"]) == ("true", "true")
    assert mlflow["stdout_logfile"] == f"{tmp_path}/logs/%(program_name)s.log"
    assert parser["program:agent"]["autostart"] == "true"
    # Higher priority numbers stop first: agent, then Jupyter, then MLflow.
    priorities = {name: int(parser[f"program:{name}"]["priority"]) for name in supervisord_conf.programs(config)}
    assert priorities["agent"] > priorities["jupyter"] > priorities["mlflow"]


def test_stdout_mode_forwards_program_output_and_keeps_a_tail_file(tmp_path):
    config = settings(tmp_path, log_target="stdout")
    text = supervisord_conf.render_program("jupyter", config)
    assert "stdout_events_enabled=true" in text and f"stdout_logfile={tmp_path}/logs/" in text
    assert "logfile=/dev/stdout" in supervisord_conf.render_main(config, tmp_path)
    assert supervisord_conf.programs(config) == ("agent", "mlflow", "jupyter", "logs")
    assert supervisord_conf.programs(settings(tmp_path)) == ("agent", "mlflow", "jupyter")
    parser = configparser.RawConfigParser()
    parser.read_string(supervisord_conf.render_program("logs", config))
    assert parser["eventlistener:logs"]["events"] == "PROCESS_LOG"


def test_forwarded_lines_are_prefixed_and_partial_lines_wait():
    from mlproxy_supervisor.logforward import prefixed_lines

    lines, rest = prefixed_lines("mlflow", "", "one\ntw")
    assert (lines, rest) == (["[mlflow] one\n"], "tw")
    lines, rest = prefixed_lines("mlflow", rest, "o\n")
    assert (lines, rest) == (["[mlflow] two\n"], "")


def test_main_config_has_only_a_private_unix_socket(tmp_path):
    text = supervisord_conf.render_main(settings(tmp_path), tmp_path / "programs")
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    assert parser["unix_http_server"]["chmod"] == "0700"
    assert not parser.has_section("inet_http_server")


def test_percent_signs_in_paths_are_escaped(tmp_path):
    odd = tmp_path / "100%"
    text = supervisord_conf.render_program("mlflow", settings(odd))
    assert "100%%" in text


def test_mlflow_launch_keeps_secrets_out_of_argv(tmp_path):
    config = Settings(state_dir=tmp_path, mlflow={"backend_store_uri": "postgresql://ml:s3cret@db/mlflow"})
    argv, env = launch.mlflow_command(config)
    assert not any("s3cret" in arg for arg in argv)
    assert env[programs.MLFLOW_SERVER_ENV["backend_store"]].endswith("s3cret@db/mlflow")
    # By default MLflow listens on a unix socket in the 0700 runtime directory (the launcher binds
    # it and hands it over as a descriptor), on no TCP port.
    assert argv[argv.index("--fd") + 1] == str(launch.MLFLOW_LISTEN_FD)
    assert launch.launch_spec("mlflow", config).mlflow.unix_socket == str(tmp_path / "run" / "mlflow.sock")
    assert "--host" not in argv and "--port" not in argv


def test_mlflow_on_tcp_when_configured_and_for_the_job_runner(tmp_path):
    config = Settings(state_dir=tmp_path, mlflow={"listen": "tcp", "port": 5011})
    argv, _ = launch.mlflow_command(config)
    assert argv[argv.index("--host") + 1 : argv.index("--port") + 2] == ["127.0.0.1", "--port", "5011"] and "--fd" not in argv
    assert config.mlflow_socket is None
    jobs = Settings(state_dir=tmp_path, mlflow={"listen": "tcp", "job_execution": True})
    assert launch.mlflow_command(jobs)[0][3] == "server"


def test_mlflow_server_variables_match_the_installed_mlflow():
    """The names `mlflow server` uses to hand its configuration to uvicorn; a drift here would
    silently start MLflow on its defaults."""
    from mlflow import environment_variables as variables
    from mlflow.server import constants

    expected = {
        "backend_store": constants.BACKEND_STORE_URI_ENV_VAR,
        "registry_store": constants.REGISTRY_STORE_URI_ENV_VAR,
        "artifact_root": constants.ARTIFACT_ROOT_ENV_VAR,
        "serve_artifacts": constants.SERVE_ARTIFACTS_ENV_VAR,
        "artifacts_destination": constants.ARTIFACTS_DESTINATION_ENV_VAR,
        "sgi_name": variables._MLFLOW_SGI_NAME.name,
        "boot_id": variables._MLFLOW_SERVER_BOOT_ID.name,
        "in_job_executor": variables._MLFLOW_IN_JOB_EXECUTOR.name,
    }
    assert expected == programs.MLFLOW_SERVER_ENV


def test_jupyter_launch_reads_the_token_from_a_file(tmp_path):
    argv, env = launch.jupyter_command(settings(tmp_path))
    assert env["JUPYTER_TOKEN_FILE"] == str(tmp_path / "run" / "jupyter_token")
    assert "--ServerApp.port_retries=0" in argv
    # Kernels reach MLflow through Jupyter's route (MLflow itself is on a socket), token from exec.
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:8888/mlflow"
    assert "MLFLOW_TRACKING_TOKEN" not in env


def test_launch_files_are_private_and_hold_no_token(tmp_path):
    config = settings(tmp_path)
    token = credentials.ensure_token(config.jupyter.token_file)
    launch.write_launch_files(config)
    for name in config.services:
        path = config.programs_dir / f"{name}.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert token not in path.read_text()
        spec = launch.LaunchSpec.read(path)
        assert spec.service == name and spec.argv[0] == sys.executable


def test_launcher_without_its_file_says_what_writes_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mlproxy_supervisor.launch", str(tmp_path / "mlflow.json")], check=False, capture_output=True, text=True
    )
    assert result.returncode == 3 and "`mlproxy up` writes it" in result.stderr


def test_migration_revisions_are_read_from_plain_and_unusual_scripts():
    plain = 'revision = "b2"\ndown_revision = "a1"\nbranch_labels = None\n'
    assert schema._revision_assignments(plain) == {"revision": "b2", "down_revision": "a1"}
    merge = 'revision: str = "c3"\ndown_revision = (\n    "b2",\n    "x9",\n)\n'
    assert schema._revision_assignments(merge) == {"revision": "c3", "down_revision": ("b2", "x9")}


def test_expected_schema_revision_matches_mlflows_own():
    import mlflow.store
    from alembic.script import ScriptDirectory

    directory = os.path.join(os.path.dirname(mlflow.store.__file__), "db_migrations")
    head, known = schema._migration_revisions()
    assert head == ScriptDirectory(directory).get_current_head()
    assert len(known) > 50


def test_metrics_render_parses(tmp_path):
    processes = {"mlflow": ProcessInfo("mlflow", "RUNNING", 1, 1.0, 0.0, 2.0, 0, "")}
    text = metrics.render(Memory(), processes)
    parsed = list(text_string_to_metric_families(text))
    families = {family.name for family in parsed}
    assert {"mlproxy_up", "mlproxy_ready", "mlproxy_restarts", "mlproxy_stack_ready", "mlproxy_service_state"} <= families
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parsed for s in f.samples}
    assert samples[("mlproxy_up", (("service", "mlflow"),))] == 1 and samples[("mlproxy_up", (("service", "jupyter"),))] == 0
    assert samples[("mlproxy_service_state", (("service", "jupyter"), ("state", "UNKNOWN")))] == 1
    assert samples[("mlproxy_restarts_total", (("service", "mlflow"),))] == 0


def test_status_news_ignores_the_clock_but_not_a_change(tmp_path):
    settings = Settings(state_dir=tmp_path)

    def document(now: float, latency: float, phase: Phase = Phase.READY, kind: str = "liveness"):
        probe = ProbeResult("mlflow", kind, True, latency, now, "", 1)
        services = {**Memory().services, "mlflow": replace(Memory().services["mlflow"], phase=phase, pid=1, last_probe=probe)}
        processes = {"mlflow": ProcessInfo("mlflow", "RUNNING", 1, 1.0, 0.0, now, 0, "")}
        return report.status_document(replace(Memory(), services=services), processes, settings, report.EventLog(), 7, now)

    # Seconds later only uptimes, timestamps and latencies differ: nothing worth a write at once.
    assert document(100.0, 0.001).news() == document(103.5, 0.004, kind="readiness").news()
    assert document(100.0, 0.001).news() != document(100.0, 0.001, Phase.UNREADY).news()
    written = tmp_path / "status.json"
    document(100.0, 0.001).write(written)
    assert StatusDocument.read(written) == document(100.0, 0.001)  # read back through the same model
    assert written.stat().st_mode & 0o777 == 0o600


def test_notifier_sends_datagrams_and_watchdog_interval(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
        assert notifier.watchdog_interval == 1.0  # every step, at most once a second (below 10 s / 2)
        notifier.ready("ready: all good")
        notifier.status("ready: all good")  # unchanged: not sent again
        notifier.status("degraded: mlflow starting")
        notifier.watchdog()
        messages = [receiver.recv(1024).decode() for _ in range(3)]
    assert messages == ["READY=1\nSTATUS=ready: all good", "STATUS=degraded: mlflow starting", "WATCHDOG=1"]
    assert not Notifier({}).enabled


def test_token_file_is_created_private_and_reused(tmp_path):
    path = tmp_path / "token"
    token = credentials.ensure_token(path)
    assert len(token) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == token, "no trailing newline: Jupyter reads the file verbatim"
    assert credentials.ensure_token(path) == token
    assert credentials.ensure_token(path, "a-provided-token-1234") == "a-provided-token-1234"
    with pytest.raises(credentials.CredentialError, match="too short"):
        credentials.ensure_token(path, "short")


def test_preflight_of_a_sqlite_store_does_not_import_sqlalchemy(tmp_path):
    # `mlproxy up` runs the preflight before anything starts: every import there delays READY.
    code = (
        "import sys; from mlproxy_supervisor import preflight; from mlproxy_supervisor.config import Settings; "
        f"assert not preflight.check_dependencies(Settings(state_dir={str(tmp_path)!r})); "
        "assert 'sqlalchemy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_agent_observes_supervisord_with_one_call_per_step(tmp_path):
    from supervisor.rpcinterface import SupervisorNamespaceRPCInterface
    from supervisor.states import SupervisorStates
    from supervisor.xmlrpc import Faults, RPCError

    from mlproxy_supervisor.agent.loop import Agent
    from mlproxy_supervisor.rpc import SHUTDOWN_STATE_FAULT

    # The premise: shutting down or restarting, supervisord refuses getAllProcessInfo itself,
    # so an answer to it means RUNNING (getState can only ever say RUNNING either).
    for mood in (SupervisorStates.SHUTDOWN, SupervisorStates.RESTARTING):
        supervisord = type("Supervisord", (), {"options": type("Options", (), {"mood": mood})(), "process_groups": {}})()
        with pytest.raises(RPCError) as refused:
            SupervisorNamespaceRPCInterface(supervisord).getAllProcessInfo()
        assert refused.value.code == Faults.SHUTDOWN_STATE == SHUTDOWN_STATE_FAULT

    class Fake:
        calls: list[str] = []

        def processes(self):
            self.calls.append("getAllProcessInfo")
            return {}

        def pid(self):
            self.calls.append("getPID")
            return 42

        def state(self):
            raise AssertionError("getState is a wasted call")

    agent = Agent(Settings(state_dir=tmp_path, agent={"metrics_port": 0}))
    agent.supervisor = Fake()
    assert agent.observe() == ("RUNNING", {}) and agent.observe() == ("RUNNING", {})
    assert Fake.calls == ["getAllProcessInfo", "getPID", "getAllProcessInfo"]


def test_status_shows_each_distinct_cause_once():
    from mlproxy_supervisor import status
    from mlproxy_supervisor.status_document import ErrorReport, ServiceReport, StatusDocument

    cause = "psycopg.OperationalError: connection to server at db (10.0.0.9), port 5432 failed: Connection refused"
    tail = ["INFO starting", cause, "INFO starting", cause, "INFO starting", cause]
    failed = ErrorReport(message="exited 3 times: " + cause, log_tail=tail)
    document = StatusDocument(overall="down", summary="down: mlflow failed", services={
        "mlflow": ServiceReport(phase="failed", state="FATAL", last_error=failed),
        "jupyter": ServiceReport(phase="failed", state="FATAL", last_error=failed),
    })  # fmt: skip
    table = status.render_table(document)
    assert table.count(cause) == 2, table  # the message once, the log line once
    assert f"    | {cause}  (3 times)" in table and "    | INFO starting  (3 times)" in table, table
    assert status.distinct_lines(["a", "b", "a"]) == ["b", "a  (2 times)"]


def test_a_missing_postgres_driver_hint_works_from_a_checkout(monkeypatch, tmp_path):
    from mlproxy_supervisor import preflight
    from mlproxy_supervisor.config import Settings

    real = preflight.importlib.util.find_spec
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: None if name == "psycopg" else real(name))
    settings = Settings(state_dir=tmp_path, mlflow={"backend_store_uri": "postgresql://ml@db.internal/mlflow"})
    [problem] = preflight.check_dependencies(settings)
    assert "driver psycopg" in problem.what
    assert problem.fix == "in your mlproxy checkout: pip install -c constraints.txt '.[postgres]'  (or pip install 'psycopg[binary]')"
