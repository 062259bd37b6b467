"""A live server with the web UI on a provisioned home (the API suite's `provision`), and a
headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no browser download)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from facesearch.config import Settings
from tests.api.conftest import FAST_ARGON2, Account, _free_port, provision, start_server

CHROMIUM = Path(os.environ.get("FACESEARCH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Until the application factory mounts the web router itself, serve an app that adds it.
_SERVE_WITH_WEB = """
import sys, uvicorn
from facesearch.api.app import create_app
from facesearch.api.routes import web
from facesearch.config import Settings
app = create_app(Settings())
if not any(getattr(r, "path", None) == "/login" for r in app.routes):
    app.include_router(web.router)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


@dataclass
class WebLive:
    url: str
    home: Path
    accounts: dict[str, Account]
    probe: Path
    db_url: str

    def sql(self, statement: str, **params: object) -> list[tuple]:
        from sqlalchemy import text

        from facesearch.store.db import make_engine

        engine = make_engine(self.db_url)
        try:
            with engine.begin() as conn:
                res = conn.execute(text(statement), params)
                return [tuple(r) for r in res] if res.returns_rows else []
        finally:
            engine.dispose()


def _web_is_mounted(home: Path) -> bool:
    from facesearch.api.app import create_app

    app = create_app(Settings(home=home))
    try:
        return any(getattr(r, "path", None) == "/login" for r in app.routes)
    finally:
        app.state.ctx.close()


def _start_with_web(home: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, **FAST_ARGON2, "FACESEARCH_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-c", _SERVE_WITH_WEB, str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in 60 s")


@pytest.fixture(scope="module")
def web_live(tmp_path_factory: pytest.TempPathFactory, dev_labels) -> Iterator[WebLive]:  # noqa: ANN001
    home = tmp_path_factory.mktemp("web-home")
    accounts, probe, _ = provision(home, dev_labels, None)
    if _web_is_mounted(home):
        proc, url = start_server(home, None)
    else:
        proc, url = _start_with_web(home)
    try:
        yield WebLive(url, home, accounts, probe, Settings(home=home).db_url)
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
