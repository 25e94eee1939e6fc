"""``python -m ingest``: the ingest process (the Procfile's ``ingest``).

uvicorn serving ``ingest.app:create_app`` as the Procfile ran it before (uvloop,
httptools, no access log of uvicorn's own: ingest writes its own access line,
no proxy-header rewriting: ingest reads ``X-Forwarded-For`` itself, from
``TRUSTED_PROXIES``), with one difference: the HTTP protocol writes each answer
in one system call (``ingest.one_write``, and why). uvicorn's CLI takes only its
named protocols, hence this entry point.

Listens on ``INGEST_HOST``:``INGEST_PORT`` (``--host`` and ``--port`` override
them); ``--workers N`` runs N processes on that port, as uvicorn's own option.
"""

from __future__ import annotations

import argparse

import uvicorn

from ingest.one_write import OneWriteHttpTools
from scoreboard.settings import load_settings

APP = "ingest.app:create_app"


def main(argv: list[str] | None = None) -> None:
    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=settings.ingest_host,
                        help=f"address to listen on (INGEST_HOST, {settings.ingest_host})")
    parser.add_argument("--port", type=int, default=settings.ingest_port,
                        help=f"port to listen on (INGEST_PORT, {settings.ingest_port})")
    parser.add_argument("--workers", type=int, default=1, help="processes on that port (1)")
    parser.add_argument("--factory", default=APP,
                        help=f"the app factory served ({APP}; `make bench-ingest` serves its "
                             "bare route on this protocol with it)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535 or args.workers < 1:
        parser.error("--port must be 0..65535 and --workers at least 1")
    uvicorn.run(args.factory, factory=True, host=args.host, port=args.port,
                workers=args.workers, loop="uvloop", http=OneWriteHttpTools, access_log=False,
                proxy_headers=False, log_level=settings.log_level.lower())


if __name__ == "__main__":
    main()
