"""The broadcaster process: live board snapshots to WebSocket and SSE spectators."""
