"""Session fixtures: real Redis, real Postgres, a real ingest process.

Each run gets a fresh database and a fresh key prefix, so the suite can also
run against long-lived servers (``REDIS_URL`` / ``DATABASE_URL``) without
touching anything else on them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from scoreboard.accounts import create_backend_account
from scoreboard.db import with_database
from scoreboard.embedded import EmbeddedPostgres, EmbeddedRedis
from scoreboard.embedded_cluster import EmbeddedCluster
from scoreboard.keys import Keys
from scoreboard.migrate import ensure_database, migrate
from scoreboard.signing_keys import load_action_keys, load_jwt_keys
from tests.servers import Backing, fresh_name, ingest_server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a cluster (``REDIS_CLUSTER=1``), tests marked ``single_node`` are skipped
    with the marker's reason (say in one line why the test is single-node)."""
    if os.environ.get("REDIS_CLUSTER", "").lower() not in ("1", "true", "yes", "on"):
        return
    for item in items:
        marker = item.get_closest_marker("single_node")
        if marker is not None:
            reason = marker.args[0] if marker.args else "single-node only"
            item.add_marker(pytest.mark.skip(reason=f"single node: {reason}"))


@pytest.fixture(scope="session")
def backing() -> Iterator[Backing]:
    # Not under pytest's own temporary root: a pytest run that starts meanwhile resets
    # that folder to 0700, and the embedded Postgres (run as an unprivileged user
    # under root) could then no longer reach its data to stop.
    folder = tempfile.TemporaryDirectory(prefix="scoreboard-tests-", ignore_cleanup_errors=True)
    root = Path(folder.name)
    stops = [folder.cleanup]
    redis_url = os.environ.get("REDIS_URL") or None
    admin_url = os.environ.get("DATABASE_URL") or None
    cluster = os.environ.get("REDIS_CLUSTER", "").lower() in ("1", "true", "yes", "on")
    shards = int(os.environ.get("REDIS_SHARDS") or (3 if cluster else 1))
    arq_url = os.environ.get("ARQ_REDIS_URL", "")
    try:
        if redis_url is None and cluster:
            embedded_cluster = EmbeddedCluster(root / "redis-cluster", masters=3)
            redis_url = embedded_cluster.start()
            stops.append(embedded_cluster.stop)
            arq_redis = EmbeddedRedis(root / "arq-redis")  # arq speaks to one node only
            arq_url = arq_redis.start()
            stops.append(arq_redis.stop)
        elif redis_url is None:
            embedded_redis = EmbeddedRedis(root / "redis")
            redis_url = embedded_redis.start()
            stops.append(embedded_redis.stop)
        if admin_url is None:
            embedded_pg = EmbeddedPostgres(root / "postgres", durable=False)
            admin_url = embedded_pg.start()
            stops.append(embedded_pg.stop)
        database = fresh_name("sbtest")
        asyncio.run(ensure_database(admin_url, database))
        database_url = with_database(admin_url, database)
        asyncio.run(migrate(database_url))
        keys_dir = root / "keys"
        load_jwt_keys(keys_dir / "jwt", create=True)
        load_action_keys(keys_dir / "action-token-keys", create=True)
        yield Backing(redis_url=redis_url, database_url=database_url,
                      admin_database_url=admin_url, key_prefix=fresh_name("sbtest"),
                      jwt_keys_dir=keys_dir / "jwt",
                      action_keys_file=keys_dir / "action-token-keys",
                      redis_cluster=cluster, redis_shards=shards, arq_redis_url=arq_url)
    finally:
        for stop in reversed(stops):
            stop()


@pytest.fixture(scope="session")
def ingest_url(backing: Backing) -> Iterator[str]:
    """One ingest process for the suite. Trusts 127.0.0.1 as a proxy, so each
    test can speak from an address of its own through ``X-Forwarded-For``."""
    with ingest_server(backing.env(TRUSTED_PROXIES="127.0.0.1/32")) as url:
        yield url


@pytest.fixture
def redis_client(backing: Backing) -> Iterator[Any]:
    client = backing.sync_redis(decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def keys(backing: Backing) -> Keys:
    return backing.keys


def new_address() -> str:
    """An address from the documentation range, unique per call: a rate-limit label only."""
    return f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"


@dataclass
class Player:
    user_id: str
    username: str
    password: str
    access_token: str
    refresh_token: str
    address: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}", "X-Forwarded-For": self.address}


class Api:
    """A real HTTP client of the ingest process, with the steps tests repeat."""

    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=10)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.post(path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def register(self, username: str, password: str, address: str) -> str:
        registered = self.post("/api/auth/register", json={
            "username": username, "password": password}, headers={"X-Forwarded-For": address})
        assert registered.status_code == 201, registered.text
        user_id: str = registered.json()["user_id"]
        return user_id

    def login(self, user_id: str, username: str, password: str, address: str) -> Player:
        login = self.post("/api/auth/login", json={"username": username, "password": password},
                          headers={"X-Forwarded-For": address})
        assert login.status_code == 200, login.text
        body = login.json()
        return Player(user_id=user_id, username=username, password=password,
                      access_token=body["access_token"], refresh_token=body["refresh_token"],
                      address=address)

    def register_and_login(self) -> Player:
        address, username, password = new_address(), fresh_name("p"), secrets.token_urlsafe(12)
        user_id = self.register(username, password, address)
        return self.login(user_id, username, password, address)

    def action_token(self, player: Player) -> str:
        response = self.post("/api/actions/token", headers=player.headers)
        assert response.status_code == 200, response.text
        token: str = response.json()["action_token"]
        return token

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def api(ingest_url: str) -> Iterator[Api]:
    client = Api(ingest_url)
    yield client
    client.close()


@pytest.fixture
def player(api: Api) -> Player:
    return api.register_and_login()


@pytest.fixture
def stream_length(redis_client: Any, keys: Keys) -> Any:
    """Call to read the stream's current length (every shard's, summed)."""
    return lambda: sum(int(redis_client.xlen(stream)) for stream in keys.streams)


@pytest.fixture
def backend(api: Api, backing: Backing) -> Player:
    """A game backend's login (scope ``scores:write``), created as the CLI does."""
    name = fresh_name("backend")
    user_id, password = asyncio.run(create_backend_account(
        backing.database_url, name, scrypt_n=1024, scrypt_r=8, scrypt_p=1))
    return api.login(user_id, name, password, new_address())
