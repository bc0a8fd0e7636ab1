"""supervisord's files rendered from the one model: programs, policies, the private socket."""

from __future__ import annotations

import configparser
import sys

from mlproxy_supervisor import supervisord_conf
from mlproxy_supervisor.config import Settings


def settings(tmp_path, **values) -> Settings:
    return Settings(state_dir=tmp_path, **values)


def test_supervisord_programs_render_to_valid_ini_with_the_policies(tmp_path):
    config = settings(tmp_path)
    parser = configparser.RawConfigParser()
    for name in supervisord_conf.programs(config):
        parser.read_string(supervisord_conf.render_program(name, config))
    mlflow = parser["program:mlflow"]
    assert mlflow["command"] == f"{sys.executable} -m mlproxy_supervisor.launch {tmp_path}/run/programs/mlflow.json"
    assert mlflow["autostart"] == "true", "first in order: supervisord starts it with the agent"
    assert parser["program:jupyter"]["autostart"] == "false", "ordered start (the default): the agent starts it"
    assert (mlflow["stopasgroup"], mlflow["killasgroup"]) == ("true", "true")
    assert mlflow["stdout_logfile"] == f"{tmp_path}/logs/%(program_name)s.log"
    assert parser["program:agent"]["autostart"] == "true"
    # Higher priority numbers stop first: agent, then Jupyter, then MLflow.
    priorities = {name: int(parser[f"program:{name}"]["priority"]) for name in supervisord_conf.programs(config)}
    assert priorities["agent"] > priorities["jupyter"] > priorities["mlflow"]


def test_an_ordered_start_leaves_the_front_door_to_the_agent(tmp_path):
    for extra, door in (({}, "jupyter"), ({"team": {"hub_api_url": "http://127.0.0.1:8081/hub/api"}}, "service")):
        config = settings(tmp_path, agent={"start_order": "ordered"}, **extra)
        parser = configparser.RawConfigParser()
        parser.read_string(supervisord_conf.render_program(door, config))
        assert parser[f"program:{door}"]["autostart"] == "false", "the agent starts it once MLflow is ready"


def test_stdout_mode_forwards_program_output_and_keeps_a_tail_file(tmp_path):
    config = settings(tmp_path, log_target="stdout")
    text = supervisord_conf.render_program("jupyter", config)
    assert "stdout_events_enabled=true" in text and f"stdout_logfile={tmp_path}/logs/" in text
    assert "logfile=/dev/stdout" in supervisord_conf.render_main(config, tmp_path)
    assert supervisord_conf.programs(config) == ("agent", "mlflow", "jupyter", "logforward")
    assert supervisord_conf.programs(settings(tmp_path)) == ("agent", "mlflow", "jupyter")
    parser = configparser.RawConfigParser()
    parser.read_string(supervisord_conf.render_program("logforward", config))
    assert parser["eventlistener:logforward"]["events"] == "PROCESS_LOG"


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
