"""Program output forwarded to stdout: prefixed lines, partial lines held back."""

from __future__ import annotations


def test_forwarded_lines_are_prefixed_and_partial_lines_wait():
    from mlproxy_supervisor.logforward import prefixed_lines

    lines, rest = prefixed_lines("mlflow", "", "one\ntw")
    assert (lines, rest) == (["[mlflow] one\n"], "tw")
    lines, rest = prefixed_lines("mlflow", rest, "o\n")
    assert (lines, rest) == (["[mlflow] two\n"], "")
