"""``python -m broadcaster``: the broadcaster process (the Procfile's ``broadcaster``).

Runs uvicorn with the WebSocket options taken from the settings: incoming
message cap, pings and their timeout, no compression.
"""

from __future__ import annotations

import uvicorn

from broadcaster.ws_protocol import SpectatorWebSocketProtocol
from scoreboard.settings import load_settings


def main() -> None:
    settings = load_settings()
    uvicorn.run("broadcaster.app:create_app", factory=True, host=settings.broadcaster_host,
                port=settings.broadcaster_port, loop="uvloop", http="httptools",
                ws=SpectatorWebSocketProtocol, ws_max_size=settings.ws_max_message_bytes,
                ws_ping_interval=settings.ws_ping_interval_s,
                ws_ping_timeout=settings.ws_ping_timeout_s, ws_per_message_deflate=False,
                access_log=False, log_level=settings.log_level.lower(),
                # client addresses: our own TRUSTED_PROXIES rule, not uvicorn's default
                proxy_headers=False)


if __name__ == "__main__":
    main()
