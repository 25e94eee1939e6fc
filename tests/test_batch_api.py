"""Game-backend batches (``POST /api/scores/batch``) against a real ingest and Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import redis

from scoreboard.accounts import create_backend_account, new_password
from scoreboard.keys import Keys
from scoreboard.stream_entry import unpacked
from tests.conftest import Api, Player, new_address
from tests.servers import (
    Backing,
    create_board,
    fresh_name,
    ingest_server,
    is_marked,
    stream_entries,
)

BATCH = "/api/scores/batch"


def item(**overrides: Any) -> dict[str, Any]:
    """A batch increment for a fresh player id, with a fresh event id."""
    fields: dict[str, Any] = {"user_id": fresh_name("gp"), "points": 1,
                              "event_id": fresh_name("ev")}
    fields.update(overrides)
    return fields


def post_batch(api: Api | httpx.Client, backend: Player,
               increments: list[dict[str, Any]]) -> httpx.Response:
    return api.post(BATCH, json={"increments": increments}, headers=backend.headers)


def entries_by_event(redis_client: redis.Redis, keys: Keys,
                     event_ids: set[str]) -> dict[str, list[dict[str, str]]]:
    """The stream entries carrying one of ``event_ids``, grouped by event id."""
    found: dict[str, list[dict[str, str]]] = {event_id: [] for event_id in event_ids}
    stream = stream_entries(redis_client, keys)
    for _, packed in stream:
        fields = unpacked(packed)  # batch entries are packed (scoreboard/stream_entry.py)
        if fields["event_id"] in found:
            found[fields["event_id"]].append(fields)
    return found


def test_two_backends_may_send_the_same_event_id(
        api: Api, backend: Player, backing: Backing, redis_client: redis.Redis,
        keys: Keys) -> None:
    """Event ids are the backend's own: another backend's "e1" is another event
    (Postgres counts per source too), while each backend's retry is a duplicate."""
    name = fresh_name("backend")
    other_id, password = asyncio.run(create_backend_account(
        backing.database_url, name, scrypt_n=1024, scrypt_r=8, scrypt_p=1))
    other = api.login(other_id, name, password, new_address())
    shared = item(points=3)
    for sender in (backend, other):
        response = post_batch(api, sender, [shared])
        assert response.json() == {"accepted": 1, "duplicates": 0, "refused": []}, sender
    for sender in (backend, other):
        assert post_batch(api, sender, [shared]).json()["duplicates"] == 1
    found = entries_by_event(redis_client, keys, {shared["event_id"]})[shared["event_id"]]
    assert sorted(e["source"] for e in found) == sorted(
        [f"backend:{backend.user_id}", f"backend:{other_id}"])


def test_batch_is_accepted_into_the_stream(api: Api, backend: Player, backing: Backing,
                                           redis_client: redis.Redis, keys: Keys,
                                           stream_length: Any) -> None:
    create_board(backing, "weekly")
    increments = [
        item(points=5, board="weekly", username="Ada"),
        item(points=1000, username="Grace Hopper"),
        item(points=2),  # no board, no username
    ]
    before = stream_length()
    response = post_batch(api, backend, increments)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 3, "duplicates": 0, "refused": []}
    assert stream_length() == before + 3

    found = entries_by_event(redis_client, keys, {i["event_id"] for i in increments})
    for sent in increments:
        entries = found[sent["event_id"]]
        assert len(entries) == 1, sent
        entry = entries[0]
        assert entry["user_id"] == sent["user_id"]
        assert entry["points"] == str(sent["points"])
        assert entry["board"] == sent.get("board", "global")
        assert entry["username"] == sent.get("username", "")
        assert entry["source"] == f"backend:{backend.user_id}"
        assert entry["ip"] == backend.address
        assert entry["request_id"] == response.headers["x-request-id"]
        assert int(entry["ts"]) > 0


def test_same_batch_posted_again_counts_only_as_duplicates(api: Api, backend: Player,
                                                           stream_length: Any) -> None:
    increments = [item(points=n) for n in range(1, 5)]
    first = post_batch(api, backend, increments)
    assert first.status_code == 202, first.text
    assert first.json()["accepted"] == 4
    before = stream_length()
    again = post_batch(api, backend, increments)
    assert again.status_code == 202, again.text
    assert again.json() == {"accepted": 0, "duplicates": 4, "refused": []}
    assert stream_length() == before


def test_a_repeated_event_id_is_a_duplicate_whatever_it_carries(
        api: Api, backend: Player, backing: Backing, stream_length: Any) -> None:
    """The event id is the idempotency key, whatever else the repeat carries."""
    create_board(backing, "other")
    sent = item(points=3)
    assert post_batch(api, backend, [sent]).json()["accepted"] == 1
    before = stream_length()
    changed = {**sent, "points": 9, "board": "other"}
    response = post_batch(api, backend, [changed])
    assert response.json() == {"accepted": 0, "duplicates": 1, "refused": []}
    assert stream_length() == before


def test_duplicates_inside_one_batch_count_once(api: Api, backend: Player,
                                                redis_client: redis.Redis, keys: Keys,
                                                stream_length: Any) -> None:
    twice, once = item(points=7), item(points=2)
    # the same event id for another player (sharded: one in another shard, whose own
    # call would not know the first)
    other = next(user for user in (fresh_name("gp") for _ in range(100))
                 if keys.shard_of(user) != keys.shard_of(twice["user_id"]) or not keys.sharded)
    before = stream_length()
    response = post_batch(api, backend, [twice, once, twice, {**twice, "points": 8},
                                         {**twice, "user_id": other}])
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2, "duplicates": 3, "refused": []}
    assert stream_length() == before + 2
    found = entries_by_event(redis_client, keys, {twice["event_id"], once["event_id"]})
    assert [e["points"] for e in found[twice["event_id"]]] == ["7"]  # the first one wins
    assert len(found[once["event_id"]]) == 1


def test_banned_users_items_are_refused_and_the_rest_accepted(
        api: Api, backend: Player, backing: Backing, redis_client: redis.Redis, keys: Keys,
        stream_length: Any) -> None:
    create_board(backing, "weekly")
    banned_user = fresh_name("gp")
    redis_client.set(keys.banned(banned_user), "1")
    try:
        fine = [item(), item()]
        refused = [item(user_id=banned_user), item(user_id=banned_user, board="weekly")]
        before = stream_length()
        response = post_batch(api, backend, [fine[0], refused[0], fine[1], refused[1]])
        assert response.status_code == 202, response.text
        assert response.json() == {
            "accepted": 2, "duplicates": 0,
            "refused": [{"event_id": r["event_id"], "reason": "user_banned"} for r in refused]}
        assert stream_length() == before + 2
        found = entries_by_event(redis_client, keys, {i["event_id"] for i in fine + refused})
        assert all(len(found[i["event_id"]]) == 1 for i in fine)
        assert all(found[r["event_id"]] == [] for r in refused)
    finally:
        redis_client.delete(keys.banned(banned_user))
    # A refused event id was not marked as seen: once unbanned, it counts.
    again = post_batch(api, backend, refused[:1])
    assert again.json() == {"accepted": 1, "duplicates": 0, "refused": []}


def test_backend_limit_refuses_the_whole_batch(backing: Backing, backend: Player,
                                               redis_client: redis.Redis, keys: Keys,
                                               stream_length: Any) -> None:
    with ingest_server(backing.env(TRUSTED_PROXIES="127.0.0.1/32", BACKEND_RATE="5/60")) as url:
        with httpx.Client(base_url=url, timeout=10) as client:
            first = [item() for _ in range(5)]
            response = post_batch(client, backend, first)
            assert response.status_code == 202, response.text
            assert response.json()["accepted"] == 5

            over = item()
            before = stream_length()
            limited = post_batch(client, backend, [over])
            assert limited.status_code == 429, limited.text
            assert limited.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(limited.headers["retry-after"]) <= 12  # one every 12 s
            assert stream_length() == before
            assert not is_marked(redis_client, keys.player(over["user_id"]).event_marks(
                f"backend:{backend.user_id}"), over["event_id"])

            # Duplicates cost nothing: a retried batch is still answered.
            retried = post_batch(client, backend, first)
            assert retried.status_code == 202, retried.text
            assert retried.json() == {"accepted": 0, "duplicates": 5, "refused": []}
            assert stream_length() == before


def test_revoked_backend_token_is_refused(api: Api, backend: Player,
                                          stream_length: Any) -> None:
    logout = api.post("/api/auth/logout", headers=backend.headers)
    assert logout.status_code == 204, logout.text
    before = stream_length()
    response = post_batch(api, backend, [item(), item()])
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "token_revoked"
    assert stream_length() == before


def test_a_banned_backend_cannot_post(api: Api, backend: Player, redis_client: redis.Redis,
                                      keys: Keys, stream_length: Any) -> None:
    """The backend account itself is checked, not only the players it posts for."""
    redis_client.set(keys.banned(backend.user_id), "manual")
    try:
        before = stream_length()
        response = post_batch(api, backend, [item(), item()])
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "user_banned"
        assert stream_length() == before
    finally:
        redis_client.delete(keys.banned(backend.user_id))
    assert post_batch(api, backend, [item()]).status_code == 202


def test_control_and_bidi_characters_in_display_names_are_refused(
        api: Api, backend: Player, stream_length: Any) -> None:
    """Refused (422), not normalised: nothing of the batch reaches the stream."""
    before = stream_length()
    for name in ("\u0085\u009b", "Ada\u202eevil", "\u2067x\u2069"):
        response = post_batch(api, backend, [item(), item(username=name)])
        assert response.status_code == 422, name
        assert response.json()["error"]["field"] == "increments[1].username"
    assert stream_length() == before


def test_a_generated_backend_password_never_starts_with_a_dash() -> None:
    """It goes after ``--password`` on command lines, where a leading dash is an
    option (the quick tour's example failed so, one time in 64)."""
    passwords = [new_password() for _ in range(3000)]
    assert not [p for p in passwords if p.startswith("-")]
    assert len(set(passwords)) == len(passwords) and {len(p) for p in passwords} == {32}
