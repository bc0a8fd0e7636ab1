"""Benchmarks for mlproxy (issue 3): time to READY, MTTR, hang restart, idle cost.

Run from the repository root: ``python -m benchmarks.run`` (see docs/benchmarks.md). Not part of
the pytest tiers: a full run takes about a quarter of an hour.
"""
