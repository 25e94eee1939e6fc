"""The API docs page (``GET /docs`` on ingest) in a real headless Chromium: it
renders every operation from ``/openapi.json`` and the live feed's section,
and loads nothing from anywhere but ingest itself (it must work offline)."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Page, expect

from ingest.api_docs import OPERATIONS
from tests.browser_support import browser, page, playwright  # noqa: F401 (fixtures)


def test_docs_page_renders_the_api_offline(ingest_url: str, page: Page) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{ingest_url}/docs")
    expect(page.locator(".opblock")).to_have_count(len(OPERATIONS))
    expect(page.locator(".opblock-summary-path[data-path='/api/me/around']")).to_have_count(1)
    expect(page.get_by_text("Live feed (broadcaster")).to_be_visible()
    expect(page.locator(".models, .model-container").first).to_be_attached()
    foreign = {urlsplit(url).netloc for url in requested if not url.startswith("data:")}
    assert foreign == {urlsplit(ingest_url).netloc}, requested
