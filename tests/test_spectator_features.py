"""The spectator page's features in headless Chromium against a real ingest and
broadcaster: the board picker from the board list, the number of players,
rank movement, top-3 styling, the empty state, truncated names, following a
player (their rank and neighbours from the broadcaster's rank feed), and the layout at phone and
desktop widths (screenshots kept in pytest's temporary folder)."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from scoreboard.keys import Keys
from scoreboard.stream_entry import StreamEntry
from tests.board_support import entry, seed
from tests.browser_support import WAIT_MS, browser, page, playwright  # noqa: F401 (fixtures)
from tests.servers import Backing, broadcaster_server, fresh_name, ingest_server

LONG_NAME = "Bartholomew-the-Unreasonably-Long-Named-Grinder-of-the-North_" * 1
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def servers(backing: Backing) -> Iterator[tuple[str, str]]:
    """An ingest that lets any page read it (CORS ``*``) and a broadcaster."""
    with ingest_server(backing.env(CORS_ALLOWED_ORIGINS="*")) as api, \
            broadcaster_server(backing.env()) as live:
        yield api, live


def put_scores(backing: Backing, keys: Keys, entries: list[StreamEntry]) -> None:
    """``seed`` from another thread (Playwright's sync API holds this one's loop)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(seed, backing, keys, entries).result(timeout=30)


def now_ms() -> int:
    return int(time.time() * 1000)


def open_board(page: Page, servers: tuple[str, str], board: str, **extra: str) -> None:
    api, live = servers
    query = "&".join(f"{k}={v}" for k, v in {"board": board, "api": api, **extra}.items())
    page.goto(f"{live}/?{query}")
    expect(page.locator("#status")).to_have_text("live")


def row(user_id: str) -> str:
    return f'#rows tr[data-user-id="{user_id}"]'


def test_board_picker_player_count_and_empty_state(backing: Backing, keys: Keys, page: Page,
                                                   servers: tuple[str, str]) -> None:
    busy, empty = fresh_name("busy"), fresh_name("quiet")
    put_scores(backing, keys, [entry(f"u{i}", 10 + i, now_ms(), board=busy) for i in range(3)])
    open_board(page, servers, empty)
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#rows tr")).to_have_count(0)
    expect(page.locator("#players")).to_have_text("0 players")
    options = page.locator(f'#board-list option[value="{busy}"]')
    expect(options).to_have_count(1)
    assert options.get_attribute("label") == "3 players"

    page.fill("#board", busy)
    page.dispatch_event("#board", "change")  # what picking from the list does
    expect(page.locator("#rows tr")).to_have_count(3)
    expect(page.locator("#empty")).to_be_hidden()
    expect(page.locator("#players")).to_have_text("3 players")


def test_rank_movement_top_three_and_long_names(backing: Backing, keys: Keys, page: Page,
                                                servers: tuple[str, str]) -> None:
    board = fresh_name("moves")
    put_scores(backing, keys, [entry("ann", 40, now_ms(), board=board, username="Ann"),
                               entry("bob", 30, now_ms(), board=board, username="Bob"),
                               entry("cy", 20, now_ms(), board=board, username=LONG_NAME),
                               entry("dee", 10, now_ms(), board=board, username="Dee")])
    open_board(page, servers, board)
    expect(page.locator("#rows tr")).to_have_count(4)
    assert page.locator("#rows tr[data-move]").count() == 0  # nothing to compare yet
    styles = [page.eval_on_selector(f"{row(u)} td.rank", "td => getComputedStyle(td).boxShadow")
              for u in ("ann", "bob", "cy", "dee")]
    assert len(set(styles[:3])) == 3 and styles[3] == "none"  # gold, silver, bronze

    name = page.locator(f"{row('cy')} td.name")
    assert name.text_content() == LONG_NAME and name.get_attribute("title") == LONG_NAME
    assert name.evaluate("td => td.scrollWidth > td.clientWidth")  # cut, with an ellipsis
    assert name.evaluate("td => getComputedStyle(td).textOverflow") == "ellipsis"

    put_scores(backing, keys, [entry("dee", 25, now_ms(), board=board, username="Dee"),
                               entry("eve", 50, now_ms(), board=board, username="Eve")])
    expect(page.locator(f"{row('eve')}")).to_have_attribute("data-move", "new")
    expect(page.locator(f"{row('dee')}")).to_have_attribute("data-move", "up")
    for fallen in ("ann", "bob", "cy"):
        expect(page.locator(row(fallen))).to_have_attribute("data-move", "down")
    arrow = page.eval_on_selector(f"{row('dee')} td.rank",
                                  "td => getComputedStyle(td, '::before').content")
    assert arrow == '"▲"'
    assert page.text_content(f"{row('dee')} td.rank") == "3"  # the arrow is not text
    expect(page.locator(row("eve"))).to_have_attribute("data-rank", "1")


def test_following_a_player_shows_their_rank_and_neighbours(
        backing: Backing, keys: Keys, page: Page, servers: tuple[str, str]) -> None:
    board = fresh_name("follow")
    # 15 players: the followed one (rank 12) is below the live top 10.
    put_scores(backing, keys, [entry(f"p{i:02d}", 100 - i, now_ms(), board=board,
                                     username=f"Player {i}") for i in range(15)])
    open_board(page, servers, board, follow="p11")
    panel = page.locator("#following")
    expect(panel).to_be_visible()
    expect(page.locator("#following-name")).to_have_text("Player 11")
    expect(page.locator("#following-place")).to_have_text("Rank 12 with 89")
    # the players right above and below, from the broadcaster's rank feed
    expect(page.locator("#neighbours li .name")).to_have_text(["Player 10", "Player 11",
                                                               "Player 12"])
    expect(page.locator("#neighbours li.me .name")).to_have_text("Player 11")

    page.click(row("p03"))  # follow someone in the top instead
    expect(page.locator("#following-name")).to_have_text("Player 3")
    expect(page.locator(row("p03"))).to_have_attribute("data-following", "true")
    put_scores(backing, keys, [entry("p03", 50, now_ms(), board=board, username="Player 3")])
    expect(page.locator("#following-place")).to_have_text("Rank 1 with 147")
    expect(page.locator("#neighbours li .name")).to_have_text(["Player 3", "Player 0"])
    # Player 0 passes them: the panel says so, live
    put_scores(backing, keys, [entry("p00", 60, now_ms(), board=board, username="Player 0")])
    expect(page.locator("#following-news")).to_have_text("Overtaken by Player 0")
    expect(page.locator("#following-place")).to_have_text("Rank 2 with 147")
    expect(page.locator("#neighbours li .name")).to_have_text(["Player 0", "Player 3",
                                                               "Player 1"])
    # after a reconnect the page watches them again by itself
    page.evaluate("socket.close()")
    expect(page.locator("#status")).to_have_text("live")
    put_scores(backing, keys, [entry("p03", 20, now_ms(), board=board, username="Player 3")])
    expect(page.locator("#following-place")).to_have_text("Rank 1 with 167")
    page.click("#unfollow")
    expect(panel).to_be_hidden()
    assert page.evaluate("localStorage.getItem('scoreboard.follow')") is None


def png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_layout_at_phone_and_desktop_widths(backing: Backing, keys: Keys, browser: Browser,
                                            servers: tuple[str, str], viewport: dict[str, int],
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    board = fresh_name("layout")
    put_scores(backing, keys, [entry(f"l{i}", 1000 - 7 * i, now_ms(), board=board,
                                     username=LONG_NAME if i == 4 else f"Player {i}")
                               for i in range(12)])
    context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    try:
        open_board(tab, servers, board, follow="l11")
        expect(tab.locator("#rows tr")).to_have_count(10)
        expect(tab.locator("#following-place")).to_have_text("Rank 12 with 923")
        layout: dict[str, Any] = tab.evaluate("""() => {
            const box = (el) => el.getBoundingClientRect();
            const table = box(document.querySelector('table'));
            const cells = [...document.querySelectorAll('#rows tr:first-child td')].map(box);
            return {scrollWidth: document.documentElement.scrollWidth,
                    innerWidth: window.innerWidth, tableLeft: table.left,
                    tableRight: table.right,
                    cellsInside: cells.every(c => c.right <= table.right + 0.5),
                    rowHeights: [...document.querySelectorAll('#rows tr')]
                        .map(tr => Math.round(box(tr).height)),
                    boardInput: box(document.getElementById('board')).width};
        }""")
        assert layout["scrollWidth"] <= layout["innerWidth"]  # no horizontal scroll
        assert 0 <= layout["tableLeft"] and layout["tableRight"] <= layout["innerWidth"]
        assert layout["cellsInside"]
        assert len(set(layout["rowHeights"])) == 1  # the long name does not wrap its row
        assert layout["boardInput"] >= 120  # big enough to tap
        if viewport is DESKTOP:
            assert layout["tableRight"] - layout["tableLeft"] <= 40 * 16  # a readable column
        shot = tmp_path_factory.mktemp("screenshots") / f"spectator-{viewport['width']}.png"
        tab.screenshot(path=str(shot), full_page=True)
        width, height = png_size(shot)
        assert width == viewport["width"] and height >= viewport["height"] // 2
    finally:
        context.close()
