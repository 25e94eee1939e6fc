"""Players this worker process already knows are in Postgres, and their names.

A game backend's player gets a ``users`` row on first score, and its display
name follows the backend's latest one (a registered account keeps its own).
Writing that for every player of every batch cost about as much as the
durable dedup record; once a player's row is known, a batch that brings no
new name for it has nothing to write, and its name for the boards is the one
remembered here (so the persist statement does not join ``users`` either).

Pure: no I/O. The cache learns only from committed transactions (see
``workers.persist``): a rolled-back batch must not leave a player "known"
whose row does not exist.

What it can get wrong, and why that is acceptable: another process renaming
a player is not seen until this process next writes that player (a batch
bringing a name different from the remembered one). Names already raced
between workers before the cache (each batch applied its own latest), and a
board's reconcile reads names from Postgres.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from scoreboard.stream_entry import StreamEntry

DEFAULT_CAPACITY = 100_000  # players remembered; about 20 MB at most


def requested_names(entries: Sequence[StreamEntry]) -> dict[str, str]:
    """Per player of the batch, the name its latest entry asks for (by acceptance
    time, the stream's order among equal times); an empty name asks for the
    player id, which never renames an existing player."""
    latest: dict[str, tuple[int, str]] = {}
    for entry in entries:
        seen = latest.get(entry.user_id)
        if seen is None or entry.ts_ms >= seen[0]:
            latest[entry.user_id] = (entry.ts_ms, entry.username or entry.user_id)
    return {user_id: name for user_id, (_, name) in latest.items()}


class KnownPlayers:
    """Player id -> (name in Postgres, whether it is a registered account, whose
    name a backend never changes). Bounded: past ``capacity`` the players
    learned longest ago are forgotten (and written again when next seen)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._players: dict[str, tuple[str, bool]] = {}

    def __len__(self) -> int:
        return len(self._players)

    def name(self, user_id: str) -> str | None:
        known = self._players.get(user_id)
        return None if known is None else known[0]

    def to_write(self, requested: dict[str, str]) -> dict[str, str]:
        """The players of ``requested`` (from :func:`requested_names`) whose row must
        be written: unknown ones, and known backend players whose requested name
        is a new one (not their id, which never renames)."""
        writes: dict[str, str] = {}
        for user_id, name in requested.items():
            known = self._players.get(user_id)
            if known is None or (not known[1] and name != user_id and name != known[0]):
                writes[user_id] = name
        return writes

    def learn(self, players: Iterable[tuple[str, str, bool]]) -> None:
        """Remember (player id, name in Postgres, registered) rows of a committed
        transaction; the newest are kept when over capacity."""
        for user_id, name, registered in players:
            self._players.pop(user_id, None)  # re-inserted: now the newest
            self._players[user_id] = (name, registered)
        while len(self._players) > self.capacity:
            del self._players[next(iter(self._players))]
