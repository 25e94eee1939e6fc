"""Load tests and benchmarks, run as commands (``python -m loadtest.<name>``), not tests."""

from __future__ import annotations


class BenchError(Exception):
    """A benchmark cannot produce a trustworthy figure; the message says why."""
