"""Authentication attacks against the live server: every attempt must be refused.

- lockout bypass: after 5 failures the user name is locked whatever its case, spacing, Unicode
  width or invisible characters, on the API and the web form alike; an unknown name locks the
  same way (the lock does not reveal which accounts exist);
- replay: a bearer token or session cookie after logout, a tampered token, an API token as a
  cookie and a session token as a bearer token;
- expiry: an expired bearer token, an idle web session;
- one-time codes: a TOTP code used once cannot be used again in its window, nor an older one;
- the bootstrap link: it works once, a newer link replaces an older one, none works once an
  administrator exists.

The unit tests (tests/unit/test_auth.py) check the rules themselves; tests/api checks the basic
lockout and logout contract; this suite attacks the running service. Figures:
``auth_attacks_attempted`` and ``auth_attacks_succeeded`` (target 0).
"""
from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from facesearch.auth.tokens import hash_token
from facesearch.auth.totp import code_at
from tests.api.conftest import PASSWORD
from tests.security.conftest import FuzzServer


class Tally:
    def __init__(self) -> None:
        self.attempted = 0
        self.succeeded: list[str] = []

    def refused(self, name: str, r: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> None:
        """One attack: it must get ``status`` (and the catalogue ``code`` where given)."""
        self.attempted += 1
        statuses = (status,) if isinstance(status, int) else status
        ok = r.status_code in statuses
        if ok and code is not None:
            try:
                ok = r.json()["error"]["code"] == code
            except ValueError:
                ok = code in r.text
        if not ok:
            self.succeeded.append(f"{name}: {r.status_code} {r.text[:160]}")


@pytest.fixture
def tally(security_figure) -> Tally:  # noqa: ANN001
    t = Tally()
    yield t
    security_figure("auth_attacks_attempted", t.attempted)
    security_figure("auth_attacks_succeeded", len(t.succeeded))


def _user(server: FuzzServer, role: str = "investigator") -> tuple[str, str]:
    from facesearch.config import Settings
    from facesearch.services.accounts import Accounts
    from facesearch.services.context import AppContext

    ctx = AppContext(Settings(home=server.home, argon2_memory_kib=1024, argon2_time_cost=1))
    try:
        name = f"victim_{secrets.token_hex(3)}"
        return name, Accounts(ctx).add_user(name, PASSWORD, role, "Agency B").totp_secret
    finally:
        ctx.close()


def _now_code(secret: str, offset_s: int = 0) -> str:
    return code_at(secret, datetime.now(timezone.utc) + timedelta(seconds=offset_s))


def _login(url: str, name: str, password: str, code: str) -> httpx.Response:
    return httpx.post(f"{url}/api/v1/auth/login", json={"username": name, "password": password, "totp": code},
                      timeout=60)


def _sql(server: FuzzServer, statement: str, **params: object) -> None:
    from sqlalchemy import text

    from facesearch.config import Settings
    from facesearch.store.db import make_engine

    engine = make_engine(Settings(home=server.home).db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement), params)
    finally:
        engine.dispose()


def _fullwidth(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if 0x21 <= ord(c) <= 0x7E else c for c in s)


def _variants(name: str) -> list[str]:
    return [name.upper(), f"  {name} ", _fullwidth(name), name[:3] + "\u200b" + name[3:], name.title() + "\t",
            name[:2] + "\u00ad" + name[2:], f"\u2003{name}"]


def _web_login(url: str, name: str, password: str, code: str) -> tuple[httpx.Client, httpx.Response]:
    c = httpx.Client(base_url=url, timeout=60, follow_redirects=False)
    csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"username": name, "password": password, "code": code, "csrf": csrf, "next": "/"})
    return c, r


def test_lockout_cannot_be_bypassed_by_spelling_the_user_name_differently(fuzz_server: FuzzServer,
                                                                           tally: Tally) -> None:
    name, secret = _user(fuzz_server)
    variants = _variants(name)
    for v in variants[:5]:  # five failures, each under another spelling
        tally.refused(f"failure as {v!r}", _login(fuzz_server.url, v, "wrong password 77", "000000"), 401,
                      "authentication_failed")
    # now the right password and code, under every spelling, on the API and the web form
    for v in [name, *variants]:
        tally.refused(f"locked login as {v!r}", _login(fuzz_server.url, v, PASSWORD, _now_code(secret)), 429,
                      "account_locked")
    _c, r = _web_login(fuzz_server.url, name.upper(), PASSWORD, _now_code(secret))
    tally.refused("locked web sign-in", r, 429)
    assert int(r.headers.get("Retry-After", "0")) > 60
    assert not tally.succeeded, tally.succeeded


def test_an_unknown_name_locks_like_a_real_one(fuzz_server: FuzzServer, tally: Tally) -> None:
    ghost = f"ghost_{secrets.token_hex(3)}"
    for v in _variants(ghost)[:5]:
        tally.refused("failure on an unknown name", _login(fuzz_server.url, v, "wrong password 77", "000000"), 401,
                      "authentication_failed")
    r = _login(fuzz_server.url, ghost, "wrong password 77", "000000")
    tally.refused("unknown name after 5 failures", r, 429, "account_locked")
    assert not tally.succeeded, tally.succeeded


def test_tokens_are_useless_after_logout_tampering_or_in_the_wrong_place(fuzz_server: FuzzServer,
                                                                          tally: Tally) -> None:
    name, secret = _user(fuzz_server)
    r = _login(fuzz_server.url, name, PASSWORD, _now_code(secret))
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    api = httpx.Client(base_url=fuzz_server.url, timeout=60, headers={"Authorization": f"Bearer {token}"})
    assert api.get("/api/v1/galleries").status_code == 200
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    tally.refused("tampered bearer token", httpx.get(f"{fuzz_server.url}/api/v1/galleries",
                                                     headers={"Authorization": f"Bearer {tampered}"}), 401, "token_invalid")
    # an API token in the session cookie does not open the web UI
    c = httpx.Client(base_url=fuzz_server.url, timeout=60, follow_redirects=False, cookies={"fs_session": token})
    tally.refused("API token as a session cookie", c.get("/search"), 303)
    assert api.post("/api/v1/auth/logout").status_code == 204
    for path in ("/api/v1/galleries", "/api/v1/searches"):
        tally.refused(f"replayed token on {path}", api.get(path), 401, "token_invalid")
    tally.refused("replayed token logging out again", api.post("/api/v1/auth/logout"), 401, "token_invalid")

    # the web session: after sign-out the cookie is dead, and it is no bearer token
    web_name, web_secret = _user(fuzz_server)
    web, r = _web_login(fuzz_server.url, web_name, PASSWORD, _now_code(web_secret))
    assert r.status_code == 303, r.text[:300]
    cookie = web.cookies["fs_session"]
    tally.refused("session cookie as a bearer token", httpx.get(
        f"{fuzz_server.url}/api/v1/galleries", headers={"Authorization": f"Bearer {cookie}"}), 401, "token_invalid")
    page = web.get("/search")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    assert web.post("/logout", data={"csrf": csrf}).status_code == 303
    replay = httpx.Client(base_url=fuzz_server.url, timeout=60, follow_redirects=False,
                          cookies={"fs_session": cookie})
    tally.refused("replayed session cookie", replay.get("/search"), 303)
    tally.refused("replayed session cookie posting a form", replay.post("/logout", data={"csrf": csrf}), (303, 403))
    assert not tally.succeeded, tally.succeeded


def test_expired_tokens_and_idle_sessions_are_refused(fuzz_server: FuzzServer, tally: Tally) -> None:
    name, secret = _user(fuzz_server)
    r = _login(fuzz_server.url, name, PASSWORD, _now_code(secret))
    token = r.json()["access_token"]
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    _sql(fuzz_server, "update tokens set expires_at = :t where hash = :h", t=past, h=hash_token(token))
    tally.refused("expired bearer token", httpx.get(f"{fuzz_server.url}/api/v1/galleries",
                                                    headers={"Authorization": f"Bearer {token}"}), 401, "token_expired")
    web_name, web_secret = _user(fuzz_server)
    web, r = _web_login(fuzz_server.url, web_name, PASSWORD, _now_code(web_secret))
    assert r.status_code == 303
    idle = datetime.now(timezone.utc) - timedelta(minutes=31)
    _sql(fuzz_server, "update tokens set last_used_at = :t where hash = :h", t=idle,
         h=hash_token(web.cookies["fs_session"]))
    r = web.get("/search")
    tally.refused("idle web session", r, 303)
    assert "expired=1" in r.headers.get("location", "")
    assert not tally.succeeded, tally.succeeded


def test_a_one_time_code_cannot_be_used_twice_in_its_window(fuzz_server: FuzzServer, tally: Tally) -> None:
    import time

    if time.time() % 30 > 24:  # keep the whole test inside one 30-second step
        time.sleep(30.5 - time.time() % 30)
    name, secret = _user(fuzz_server)
    code = _now_code(secret)
    first = _login(fuzz_server.url, name, PASSWORD, code)
    assert first.status_code == 200, first.text
    tally.refused("the same code again (API)", _login(fuzz_server.url, name, PASSWORD, code), 401,
                  "authentication_failed")
    _c, r = _web_login(fuzz_server.url, name, PASSWORD, code)
    tally.refused("the same code again (web form)", r, 401)
    older = _now_code(secret, -30)  # the previous step's code: within the drift window, but older
    tally.refused("an older code after a newer one", _login(fuzz_server.url, name, PASSWORD, older), 401,
                  "authentication_failed")
    tally.refused("the same code with spaces", _login(fuzz_server.url, name, PASSWORD, f" {code[:3]} {code[3:]} "),
                  401, "authentication_failed")
    assert not tally.succeeded, tally.succeeded


def test_the_bootstrap_link_works_once(tmp_path: Path, tally: Tally) -> None:
    from facesearch.api.app import create_app
    from facesearch.config import Settings
    from facesearch.services.bootstrap import issue_bootstrap
    from facesearch.services.context import AppContext

    s = Settings(home=tmp_path / "home", argon2_memory_kib=1024, argon2_time_cost=1)
    ctx = AppContext(s)
    try:
        old = issue_bootstrap(ctx)
        new = issue_bootstrap(ctx)  # a restart before it was used: a new link replaces the old
        c = TestClient(create_app(s, ctx))
        form = {"username": "root", "password": PASSWORD}
        tally.refused("a replaced bootstrap link", c.post("/bootstrap", data={**form, "token": old}), 401)
        tally.refused("a guessed bootstrap link", c.post("/bootstrap", data={**form, "token": secrets.token_urlsafe(32)}),
                      401)
        assert c.post("/bootstrap", data={**form, "token": new}).status_code == 200
        tally.refused("the bootstrap link a second time",
                      c.post("/bootstrap", data={**form, "username": "root2", "token": new}), 401)
        assert issue_bootstrap(ctx) is None  # an administrator exists: no new link, ever
        tally.refused("an empty bootstrap token", c.post("/bootstrap", data={**form, "username": "root3",
                                                                               "token": ""}), (401, 422))
    finally:
        ctx.close()
    assert not tally.succeeded, tally.succeeded
