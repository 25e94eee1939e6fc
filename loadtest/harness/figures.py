"""Figures and the lines every report starts with.

Percentiles are nearest-rank (a value that was measured, never an
interpolation); a Prometheus histogram only says in which bucket a quantile
falls, and :func:`bucket_of` says no more than that.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from loadtest.harness.processes import PROJECT_DIR

BIN_PER_MS = 10  # latency histograms' resolution: 0.1 ms


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (nan when empty)."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(1, math.ceil(fraction * len(sorted_values))) - 1]


def histogram_percentile(bins: dict[int, int], fraction: float) -> float:
    """Nearest-rank percentile, in ms, of a histogram of 1/BIN_PER_MS ms bins."""
    total = sum(bins.values())
    if not total:
        return math.nan
    wanted, seen = max(1, math.ceil(fraction * total)), 0
    for key in sorted(bins):
        seen += bins[key]
        if seen >= wanted:
            return key / BIN_PER_MS
    raise AssertionError("unreachable")


def bucket_of(buckets: Sequence[tuple[float, float]], fraction: float) -> str:
    """Where a quantile falls, as a bucket range: all a histogram can honestly say."""
    if not buckets or buckets[-1][1] == 0:
        return "n/a"
    wanted, lower = fraction * buckets[-1][1], 0.0
    for le, cumulative in buckets:
        if cumulative >= wanted:
            return f"({lower * 1000:g}, {le * 1000:g}] ms" if le != math.inf else \
                f"> {lower * 1000:g} ms"
        lower = le
    return "n/a"


def share(cpu_s: float, window_s: float) -> str:
    """CPU seconds over a wall-clock interval, as a share of one core."""
    return f"{100 * cpu_s / window_s:5.0f}% of a core"


def closing_notes(notes: list[str], others: float, *, disturbed: str,
                  unsaturated: str) -> list[str]:
    """The last of a window's limit notes: ``disturbed`` (``{others}`` is filled in)
    when processes outside the run used more than 0.15 cores, ``unsaturated`` when
    nothing else was said."""
    if others > 0.15:
        notes.append(disturbed.format(others=others))
    return notes or [unsaturated]


# --- The report's first lines ----------------------------------------------------------------


def machine_line() -> str:
    """CPU count and model, kernel, Python: what a figure must be read against."""
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    return (f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def background_line(background: float) -> str:
    """The cores busy before the run started, with a warning when it was not alone."""
    return (f"background  {background:.2f} cores busy before the run started"
            + ("  WARNING: the machine was not idle; the figures are disturbed"
               if background > 0.15 else ""))


def command_line(module: str) -> str:
    """The command that produced the report, as typed."""
    return f"command     python -m {module} {' '.join(sys.argv[1:])}".rstrip()


def git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=PROJECT_DIR, capture_output=True,
                            text=True, check=False, timeout=10)
    return result.stdout.strip() if result.returncode == 0 else "?"


def code_line(folders: Sequence[str], dirty_note: str) -> str:
    """The commit measured, and ``dirty_note`` when ``folders`` have uncommitted changes."""
    dirty = git("status", "--porcelain", "--", *folders)
    return f"commit {git('rev-parse', '--short', 'HEAD')}" + (f" + {dirty_note}" if dirty
                                                              else "")


def code_fingerprint(folders: Sequence[str]) -> str:
    """A digest of the product's sources in ``folders``: other people commit to this
    tree while a run lasts, and a run must say when the code changed under it."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted((PROJECT_DIR / folder).rglob("*")):
            if path.suffix in (".py", ".lua", ".sql") and path.is_file():
                digest.update(path.relative_to(PROJECT_DIR).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
