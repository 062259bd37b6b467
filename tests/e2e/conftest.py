"""A live server with the web UI on a provisioned home (the API suite's `provision`), and a
headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no browser download)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from facesearch.config import Settings
from tests.api.conftest import Live, provision, start_server

CHROMIUM = Path(os.environ.get("FACESEARCH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

@pytest.fixture(scope="module")
def web_live(tmp_path_factory: pytest.TempPathFactory, dev_labels) -> Iterator[Live]:  # noqa: ANN001
    home = tmp_path_factory.mktemp("web-home")
    accounts, probe, noface = provision(home, dev_labels, None)
    proc, url = start_server(home, None)
    settings = Settings(home=home)
    try:
        yield Live(url, home, accounts, probe, noface, settings, settings.db_url)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's chromium, or set FACESEARCH_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
