"""Jupyter's MLflow handler: which Origin is the page's own."""

from __future__ import annotations

import pytest

from mlproxy_supervisor.relay.origin import same_origin


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
