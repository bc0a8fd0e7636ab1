"""The configuration files mlproxy writes, as template files (as honcho's exporters keep theirs):
supervisord's main file and the systemd unit here, the supervisord programs in
``supervisord.conf.d/``. Placeholders are ``${name}`` (string.Template); every one must be given."""

from __future__ import annotations

from importlib import resources
from string import Template


def text(path: str) -> str:
    """The template at `path`, relative to the mlproxy_supervisor package, as shipped."""
    return resources.files("mlproxy_supervisor").joinpath(path).read_text()


def render(path: str, **values: object) -> str:
    """The template at `path` with `values` filled in."""
    return Template(text(path)).substitute({name: str(value) for name, value in values.items()})
