"""The spectator page (``GET /``) in a real headless Chromium against a real broadcaster.

Scores are put on a fresh board through the worker's write path (Postgres, the
Redis board, the revision bump and the change notice the broadcaster follows),
and the page must show them, update without a reload, show usernames as text,
and reconnect by itself when its broadcaster goes away and comes back.

The browser is Debian's ``chromium`` (see tests/browser_support.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from playwright.sync_api import Page, expect

from scoreboard.embedded import free_port
from scoreboard.keys import Keys
from scoreboard.stream_entry import StreamEntry
from tests.board_support import entry, seed
from tests.browser_support import WAIT_MS, browser, page, playwright  # noqa: F401 (fixtures)
from tests.servers import Backing, broadcaster_server, fresh_name

# The page's reconnect backoff is capped at 10 s (with jitter), and a new
# broadcaster takes a moment to start.
RECONNECT_WAIT_MS = 25_000

IMG_NAME = '<img src=x onerror="window.__xss=1">'
BOLD_NAME = "<b>bold</b>"


def put_scores(backing: Backing, keys: Keys, entries: Sequence[StreamEntry]) -> None:
    """``seed`` from another thread: Playwright's sync API keeps its event loop marked
    as running in this one, so ``asyncio.run`` cannot be called here."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(seed, backing, keys, entries).result(timeout=30)


def now_ms() -> int:
    return int(time.time() * 1000)


def shown_rows(page: Page) -> list[tuple[str, str, str]]:
    """The table as (rank, username, score) text, top to bottom."""
    cells: list[list[str]] = page.eval_on_selector_all(
        "#rows tr", "trs => trs.map(tr => [...tr.cells].map(td => td.textContent))")
    return [(rank, username, score) for rank, username, score in cells]


def row(user_id: str) -> str:
    return f'#rows tr[data-user-id="{user_id}"]'


def test_rows_update_live_and_usernames_stay_text(backing: Backing, keys: Keys,
                                                  page: Page) -> None:
    board = fresh_name("board")
    alice, bob, img, bold = (fresh_name(n) for n in ("alice", "bob", "img", "bold"))
    put_scores(backing, keys, [entry(alice, 30, now_ms(), board=board, username="Alice"),
                         entry(bob, 20, now_ms(), board=board, username="Bob"),
                         entry(img, 10, now_ms(), board=board, username=IMG_NAME),
                         entry(bold, 5, now_ms(), board=board, username=BOLD_NAME)])
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    with broadcaster_server(backing.env()) as url:
        page.goto(f"{url}/?board={board}")
        expect(page.locator("#status")).to_have_text("live")
        expect(page.locator("#rows tr")).to_have_count(4)
        assert shown_rows(page) == [("1", "Alice", "30"), ("2", "Bob", "20"),
                                    ("3", IMG_NAME, "10"), ("4", BOLD_NAME, "5")]
        assert page.input_value("#board") == board

        # Usernames are text: no element made from them, no script run, nothing fetched.
        assert page.text_content(f"{row(img)} td.name") == IMG_NAME
        assert page.text_content(f"{row(bold)} td.name") == BOLD_NAME
        assert page.locator("#rows img").count() == 0
        assert page.locator("#rows b").count() == 0
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert not [u for u in requested if u.rstrip("/").endswith("/x")]

        # A change while the page is open: pushed, no reload; Bob moves to the top.
        page.evaluate("window.__sameDocument = true")
        put_scores(backing, keys, [entry(bob, 15, now_ms(), board=board, username="Bob")])
        expect(page.locator(f"{row(bob)} td.score")).to_have_text("35")
        assert shown_rows(page) == [("1", "Bob", "35"), ("2", "Alice", "30"),
                                    ("3", IMG_NAME, "10"), ("4", BOLD_NAME, "5")]
        expect(page.locator(row(bob))).to_have_class("changed")
        for unchanged in (alice, img, bold):  # moved or not, their scores did not change
            expect(page.locator(row(unchanged))).not_to_have_class("changed")
        assert page.evaluate("window.__sameDocument") is True
        assert page.evaluate("typeof window.__xss") == "undefined"


def test_page_reconnects_to_a_restarted_broadcaster(backing: Backing, keys: Keys,
                                                    page: Page) -> None:
    board = fresh_name("board")
    alice, bob, carol = (fresh_name(n) for n in ("alice", "bob", "carol"))
    put_scores(backing, keys, [entry(alice, 30, now_ms(), board=board, username="Alice"),
                         entry(bob, 20, now_ms(), board=board, username="Bob")])
    port = free_port()
    status = page.locator("#status")

    with broadcaster_server(backing.env(), port=port) as url:
        page.goto(f"{url}/?board={board}")
        expect(status).to_have_text("live")
        expect(page.locator("#rows tr")).to_have_count(2)
        page.evaluate("window.__sameDocument = true")
    # The broadcaster is gone (stopped and waited for).
    expect(status).to_have_text("reconnecting")
    expect(status).to_have_class("down")
    assert shown_rows(page) == [("1", "Alice", "30"), ("2", "Bob", "20")]

    # Changes while nobody serves the page arrive with the first snapshot after reconnecting.
    put_scores(backing, keys, [entry(carol, 50, now_ms(), board=board, username="Carol")])
    with broadcaster_server(backing.env(), port=port):
        expect(status).to_have_text("live", timeout=RECONNECT_WAIT_MS)
        expect(page.locator(f"{row(carol)} td.score")).to_have_text("50")
        assert shown_rows(page) == [("1", "Carol", "50"), ("2", "Alice", "30"),
                                    ("3", "Bob", "20")]

        # And the new connection gets pushed changes.
        put_scores(backing, keys, [entry(bob, 40, now_ms(), board=board, username="Bob")])
        expect(page.locator(f"{row(bob)} td.score")).to_have_text("60")
        assert shown_rows(page) == [("1", "Bob", "60"), ("2", "Carol", "50"),
                                    ("3", "Alice", "30")]
        expect(page.locator(row(bob))).to_have_class("changed")
        assert page.evaluate("window.__sameDocument") is True


def test_board_form_switches_boards_even_while_connecting(backing: Backing, keys: Keys,
                                                          page: Page) -> None:
    first, second, third = (fresh_name("board") for _ in range(3))
    put_scores(backing, keys, [entry("u-one", 1, now_ms(), board=first, username="One"),
                               entry("u-two", 2, now_ms(), board=second, username="Two"),
                               entry("u-three", 3, now_ms(), board=third, username="Three")])
    names = page.locator("#rows td.name")

    with broadcaster_server(backing.env()) as url:
        page.goto(f"{url}/?board={first}")
        expect(names).to_have_text(["One"])
        page.evaluate("window.__sameDocument = true")

        page.fill("#board", second)
        page.press("#board", "Enter")
        expect(names).to_have_text(["Two"])
        assert page.url == f"{url}/?board={second}"

        # A switch while the socket is still connecting: nothing can be sent on it yet,
        # so the page must subscribe once it opens. The page's script is a classic
        # one, so its top-level names (socket, connect, boardInput) are globals; one
        # synchronous call makes the race certain instead of likely.
        page.evaluate("""(wanted) => {
            socket.onclose = null;
            socket.close();
            connect();
            if (socket.readyState !== WebSocket.CONNECTING) throw new Error("socket opened");
            boardInput.value = wanted;
            document.getElementById("board-form").requestSubmit();
        }""", third)
        expect(names).to_have_text(["Three"])
        expect(page.locator("#status")).to_have_text("live")
        assert page.evaluate("window.__sameDocument") is True
