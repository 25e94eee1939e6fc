"""The benchmark harness: what every benchmark in ``loadtest/`` needs, in one place.

- ``command``: the ``main`` of a benchmark command (SIGTERM unwinds like Ctrl-C,
  a :class:`BenchError` is reported, every process started is stopped);
- ``backing``: Redis and Postgres, embedded or given (loopback only), fresh
  databases and key prefixes, and keeping Redis's forks out of a window;
- ``processes``: the system under test's processes (ingest, worker,
  broadcaster, any uvicorn app), started as the Procfile starts them and
  stopped with SIGTERM, then SIGKILL;
- ``cpu``: who used the cores during a window (/proc, Redis INFO);
- ``figures``: percentiles, histograms, and the lines every report starts with;
- ``players``: players, their addresses and action tokens, over HTTP;
- ``http``: the raw HTTP/1.1 client and the Prometheus scrape;
- ``spectator_client``: the program of a client process, many WebSocket spectators;
- ``spectators``: the handle on such processes and the window sequence over several.

A benchmark imports the harness and its own modules, never a sibling benchmark.
"""

from __future__ import annotations

from loadtest import BenchError

__all__ = ["BenchError"]
