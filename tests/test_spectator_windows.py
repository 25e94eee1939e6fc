"""The spectator page's windows and periods in headless Chromium against a real
ingest and broadcaster: the window picker of a board with windows, the current
period live with when it resets, an archived period from the API with its
winner, back to live, and a board without windows (no pickers)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Page, expect

from scoreboard.keys import Keys
from tests.browser_support import WAIT_MS, browser, page, playwright  # noqa: F401 (fixtures)
from tests.servers import Backing, broadcaster_server, fresh_name, ingest_server
from tests.test_board_archives import archive
from tests.window_support import entry, make_board, now_ms, seed

T = TypeVar("T")


def off_thread(work: Callable[..., T], *args: Any) -> T:
    """Run ``work`` in another thread (Playwright's sync API holds this one's loop)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(work, *args).result(timeout=60)


@pytest.fixture(scope="module")
def servers(backing: Backing) -> Iterator[tuple[str, str]]:
    with ingest_server(backing.env(CORS_ALLOWED_ORIGINS="*")) as api, \
            broadcaster_server(backing.env()) as live:
        yield api, live


def names(page: Page) -> list[str]:
    found: list[str] = page.eval_on_selector_all("#rows td.name",
                                                 "tds => tds.map(td => td.textContent)")
    return found


def test_windows_periods_and_the_reset_countdown(backing: Backing, keys: Keys, page: Page,
                                                 servers: tuple[str, str]) -> None:
    api, live = servers
    board, plain = fresh_name("arena"), fresh_name("plain")
    made = off_thread(lambda: make_board(backing, board, windows=("all_time", "daily"),
                                         created_at="2026-11-28T00:00:00Z"))
    off_thread(lambda: make_board(backing, plain))
    yesterday = (datetime.now(UTC) - timedelta(days=2)).replace(hour=0, minute=30)
    old = int(yesterday.timestamp() * 1000)
    off_thread(seed, backing, keys, [entry("ann", 10, old, board=board),
                                     entry("bob", 5, old, board=board),
                                     entry("cat", 3, now_ms(), board=board)], [made])
    off_thread(seed, backing, keys, [entry("dan", 1, now_ms(), board=plain)], [])
    off_thread(archive, backing, keys)

    page.goto(f"{live}/?board={board}&api={api}")
    expect(page.locator("#status")).to_have_text("live")
    expect(page.locator("#window-bar")).to_be_visible()
    expect(page.locator("#window option")).to_have_text(["All time", "Daily"])
    expect(page.locator("#rows td.name")).to_have_text(["name of ann", "name of bob",
                                                        "name of cat"])

    page.select_option("#window", "daily")  # the current day, live
    expect(page.locator("#rows td.name")).to_have_text(["name of cat"])
    expect(page.locator("#reset")).to_have_text(re.compile(r"^Resets in \d+"))
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert page.get_attribute("#reset", "data-reset-at") == f"{tomorrow}T00:00:00Z"
    assert "window=daily" in page.url
    off_thread(seed, backing, keys, [entry("eve", 7, now_ms(), board=board)], [made])
    expect(page.locator("#rows td.name")).to_have_text(["name of eve", "name of cat"])

    period = yesterday.date().isoformat()
    archived = page.locator(f'#period option[value="{period}"]')
    expect(archived).to_have_text(f"{period}: won by name of ann (10)")
    page.select_option("#period", period)  # an archive, from the API
    expect(page.locator("#rows td.name")).to_have_text(["name of ann", "name of bob"])
    expect(page.locator("#reset")).to_have_text(f"Archived period {period}: final standings")
    expect(page.locator("#meta")).to_have_text(f"archived period {period}")
    assert f"period={period}" in page.url
    off_thread(seed, backing, keys, [entry("fay", 9, now_ms(), board=board)], [made])
    page.wait_for_timeout(500)  # a live change must not replace the archive shown
    assert names(page) == ["name of ann", "name of bob"]

    page.select_option("#period", "")  # back to the live current period
    expect(page.locator("#rows td.name")).to_have_text(["name of fay", "name of eve",
                                                        "name of cat"])

    page.fill("#board", plain)
    page.dispatch_event("#board", "change")
    expect(page.locator("#rows td.name")).to_have_text(["name of dan"])
    expect(page.locator("#window-bar")).to_be_hidden()
    assert "window=" not in page.url and "period=" not in page.url
    assert WAIT_MS > 0
