"""The Python client (``client/``, ``scoreboard-client``) against the real
ingest and broadcaster: sessions and refresh, increments with safe retries
(an answer lost on the way back), batches, reads, typed refusals, and the
live feed with reconnect, in its async and sync forms."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from scoreboard_client import (
    AsyncLiveFeed,
    AsyncScoreboardClient,
    Forbidden,
    Increment,
    NotFound,
    RetryPolicy,
    ScoreboardClient,
    Snapshot,
    Unauthorized,
    Unavailable,
)

from scoreboard.embedded import free_port
from scoreboard.keys import Keys
from tests.board_support import entry, seed
from tests.conftest import Player, new_address
from tests.servers import (
    Backing,
    SyncRedis,
    broadcaster_server,
    fresh_name,
    ingest_server,
    stream_total,
)

FAST = RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.05)


def client_for(url: str, **options: object) -> ScoreboardClient:
    """Each client speaks from an address of its own (the suite's ingest trusts
    the loopback proxy), so per-address limits of other tests do not bite."""
    return ScoreboardClient(url, headers={"X-Forwarded-For": new_address()},
                            retry=FAST, **options)  # type: ignore[arg-type]


def credentials() -> tuple[str, str]:
    return fresh_name("cl"), secrets.token_urlsafe(12)


def test_sync_client_plays_reads_and_gets_typed_refusals(
        ingest_url: str, backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    username, password = credentials()
    with client_for(ingest_url) as client:
        user_id = client.register(username, password)
        session = client.login(username, password)
        assert session.user_id == user_id
        assert (client.me().user_id, client.me().username) == (user_id, username)
        before = stream_total(redis_client, keys)
        token = client.action_token()
        accepted = client.increment(token.action_token)
        assert accepted.event_id is not None and not accepted.repeated
        assert stream_total(redis_client, keys) == before + 1
        # The same token again: the original answer (the service's contract for a
        # retry), or, from a service without it, refused as used; counted once.
        try:
            again = client.increment(token.action_token)
            assert again.event_id == accepted.event_id
        except Forbidden as used:
            assert used.code == "action_token_used"
        assert stream_total(redis_client, keys) == before + 1
        with pytest.raises(Forbidden) as foreign:
            forged = token.action_token[:-1] + ("1" if token.action_token[-1] == "0" else "0")
            client.increment(forged)  # its signature no longer matches
        assert foreign.value.code.startswith("action_token")
        with pytest.raises(NotFound):
            client.my_rank(fresh_name("empty"))

        board = fresh_name("client")
        now = int(time.time() * 1000)
        others = [entry(f"{board}-{i}", 100 - 2 * i, now, board=board) for i in range(7)]
        seed(backing, keys, [*others, entry(user_id, 95, now, board=board)])
        assert [e.score for e in client.top(board, limit=3).entries] == [100, 98, 96]
        mine = client.my_rank(board)
        assert (mine.rank, mine.score) == (4, 95)
        assert client.user(user_id, board).rank == 4
        assert [e.user_id for e in client.my_around(board, radius=1).entries] == [
            f"{board}-2", user_id, f"{board}-3"]
        assert len(list(client.entries(board, page_size=3))) == 8
        assert [e.user_id for e in client.ranks([user_id, f"{board}-0"], board).entries] == [
            f"{board}-0", user_id]
        client.logout()
        assert client.session is None


def test_backend_batch_is_safe_to_send_twice(ingest_url: str, backend: Player) -> None:
    with client_for(ingest_url) as client:
        client.login(backend.username, backend.password)
        increments = [Increment(user_id=fresh_name("p"), points=3, event_id=fresh_name("ev"),
                                username="Ada") for _ in range(3)]
        first = client.batch(increments)
        again = client.batch(increments)
    assert (first.accepted, first.duplicates) == (3, 0)
    assert (again.accepted, again.duplicates) == (0, 3)


@pytest.fixture(scope="module")
def short_lived_url(backing: Backing) -> Iterator[str]:
    with ingest_server(backing.env(ACCESS_TOKEN_TTL_S="1", TRUSTED_PROXIES="127.0.0.1/32")) as url:
        yield url


def test_expired_access_token_is_refreshed(short_lived_url: str) -> None:
    username, password = credentials()
    with client_for(short_lived_url) as client:
        client.register(username, password)
        first = client.login(username, password)
        time.sleep(1.5)  # the access token is now expired
        # The client believes it is still valid: the service's refusal makes it refresh.
        client.session = type(first)(access_token=first.access_token,
                                     refresh_token=first.refresh_token,
                                     expires_at=time.time() + 3600, user_id=first.user_id)
        assert client.me().username == username
        assert client.session.refresh_token != first.refresh_token
        time.sleep(1.5)
        assert client.me().username == username  # refreshed before sending, this time
    with client_for(short_lived_url) as stranger:
        with pytest.raises(Unauthorized):
            stranger.me()


def test_unavailable_is_retried_then_raised(backing: Backing) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    username, password = credentials()
    with ingest_server(backing.env(REDIS_URL=dead_redis), ready_path="/healthz") as url, \
            client_for(url) as client:
        with pytest.raises(Unavailable) as down:
            client.register(username, password)
    assert down.value.retry_after_s == 1 and down.value.code == "unavailable"


class LosesOneAnswer:
    """A real TCP proxy in front of ingest that forwards everything, except that
    the answer to the first ``POST /api/scores/increment`` is never passed back:
    the connection is cut after ingest has handled the request."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lost = 0
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self.handlers.add(handler)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1",
                                                                 self.upstream_port)
            await self._pipe(reader, writer, up_reader, up_writer)
        finally:
            for stream in (writer, up_writer):
                if stream is not None:
                    stream.close()
                    with contextlib.suppress(OSError, asyncio.CancelledError):
                        await stream.wait_closed()
            self.handlers.discard(handler)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        increment_sent = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(65536):
                if b"POST /api/scores/increment" in data and not self.lost:
                    increment_sent.set()
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if increment_sent.is_set() and not self.lost:
                    self.lost += 1
                    writer.transport.abort()  # ingest answered; the client never hears it
                    return
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for handler in list(self.handlers):
            handler.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()


def test_async_increment_whose_answer_was_lost_counts_once(
        ingest_url: str, keys: Keys, redis_client: SyncRedis) -> None:
    username, password = credentials()

    async def run() -> None:
        proxy = LosesOneAnswer(int(ingest_url.rsplit(":", 1)[1]))
        proxied = await proxy.start()
        try:
            async with AsyncScoreboardClient(proxied, retry=FAST, headers={
                    "X-Forwarded-For": new_address()}) as client:
                await client.register(username, password)
                await client.login(username, password)
                before = stream_total(redis_client, keys)
                accepted = await client.score()
                assert proxy.lost == 1
                # The retry after the lost answer gets the original answer, or (from a
                # service that refuses a spent token) "used", which means accepted.
                if accepted.repeated:
                    assert accepted.event_id is None
                else:
                    assert accepted.event_id is not None
                assert stream_total(redis_client, keys) == before + 1  # counted once
                again = await client.score()  # and the client goes on normally
                assert again.event_id is not None and not again.repeated
                assert stream_total(redis_client, keys) == before + 2
        finally:
            await proxy.stop()

    asyncio.run(run())


def test_live_feed_follows_changes_switches_boards_and_reconnects(
        backing: Backing, keys: Keys) -> None:
    board, other = fresh_name("live"), fresh_name("live")
    now = int(time.time() * 1000)
    seed(backing, keys, [entry("ann", 10, now, board=board), entry("bob", 5, now, board=other)])
    port = free_port()

    async def run() -> None:
        async with AsyncScoreboardClient(live_url=f"ws://127.0.0.1:{port}",
                                         retry=FAST) as client:
            feed = client.live(board)
            try:
                await follow(feed, aiter(feed))
            finally:
                await feed.aclose()

    async def follow(feed: AsyncLiveFeed, snapshots: AsyncIterator[Snapshot]) -> None:
        with broadcaster_server(backing.env(), port=port):
            first = await asyncio.wait_for(anext(snapshots), 10)
            assert [(e.user_id, e.score) for e in first.entries] == [("ann", 10)]
            await asyncio.to_thread(seed, backing, keys, [entry("ann", 5, now, board=board)])
            changed = await asyncio.wait_for(anext(snapshots), 10)
            assert changed.version > first.version
            assert [(e.user_id, e.score) for e in changed.entries] == [("ann", 15)]
            await feed.switch(other)
            switched = await asyncio.wait_for(anext(snapshots), 10)
            assert (switched.board, switched.entries[0].user_id) == (other, "bob")
        # The broadcaster is gone; a change meanwhile arrives after reconnecting.
        await asyncio.to_thread(seed, backing, keys, [entry("bob", 1, now, board=other)])
        with broadcaster_server(backing.env(), port=port):
            back = await asyncio.wait_for(anext(snapshots), 30)
            assert [(e.user_id, e.score) for e in back.entries] == [("bob", 6)]
            assert feed.reconnects >= 1

    asyncio.run(run())


def test_sync_live_feed_gets_snapshots(backing: Backing, keys: Keys) -> None:
    board = fresh_name("live")
    now = int(time.time() * 1000)
    seed(backing, keys, [entry("cat", 7, now, board=board)])
    with broadcaster_server(backing.env()) as url, ScoreboardClient(
            live_url=url.replace("http", "ws"), retry=FAST) as client:
        feed = client.live(board)
        snapshots = iter(feed)
        assert [(e.user_id, e.score) for e in next(snapshots).entries] == [("cat", 7)]
        seed(backing, keys, [entry("dog", 9, now, board=board)])
        assert [e.user_id for e in next(snapshots).entries] == ["dog", "cat"]
        feed.close()
