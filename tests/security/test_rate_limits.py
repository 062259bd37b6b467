"""Rate limits on sign-in, search and case export, through the real application (API and web
form) with tight limits and an injected clock: 429, ``Retry-After`` and the catalogue's error body;
per account whatever the address, per address whatever the account; X-Forwarded-For believed only
from a configured proxy."""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from facesearch.api.app import create_app
from facesearch.api.ratelimit import RateLimiter
from facesearch.auth.totp import code_at
from facesearch.config import Settings
from facesearch.services.accounts import Accounts
from facesearch.services.context import AppContext

PASSWORD = "correct horse battery 9"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Tight:
    app: object
    clock: Clock
    secrets: dict[str, str]

    def client(self, address: str = "203.0.113.10") -> TestClient:
        return TestClient(self.app, client=(address, 40000))

    def token(self, c: TestClient, who: str) -> str:
        r = c.post("/api/v1/auth/login", json={"username": who, "password": PASSWORD,
                                               "totp": code_at(self.secrets[who], datetime.now(timezone.utc))})
        assert r.status_code == 200, r.text
        return r.json()["access_token"]


@pytest.fixture
def tight(tmp_path: Path) -> Iterator[Tight]:
    s = Settings(home=tmp_path / "home", argon2_memory_kib=1024, argon2_time_cost=1, workers=1,
                 rate_limit_login_per_address=10, rate_limit_login_per_account=5,
                 rate_limit_search_per_account=3, rate_limit_search_per_address=5,
                 rate_limit_export_per_account=2, rate_limit_export_per_address=4,
                 trusted_proxies="10.9.0.0/16")
    ctx = AppContext(s)
    acc = Accounts(ctx)
    acc.add_agency("Agency R", r"^\d{4}-\d{6}$", ["robbery investigation"])
    secrets = {}
    for who, role in [("inv_r1", "investigator"), ("inv_r2", "investigator"), ("sup_r", "supervisor")]:
        secrets[who] = acc.add_user(who, PASSWORD, role, "Agency R").totp_secret
    app = create_app(s, ctx)
    clock = Clock()
    app.state.limits = RateLimiter.from_settings(s, clock=clock)  # the same rules, a clock we move
    yield Tight(app, clock, secrets)
    ctx.close()


def _bad_login(c: TestClient, name: str, headers: dict | None = None):  # noqa: ANN202
    return c.post("/api/v1/auth/login", json={"username": name, "password": "wrong password 1", "totp": "000000"},
                  headers=headers or {})


def _is_429(r, code: str = "rate_limited") -> int:  # noqa: ANN001
    assert r.status_code == 429, (r.status_code, r.text[:300])
    assert r.json() == {"error": {"code": code, "message": r.json()["error"]["message"]}}
    wait = int(r.headers["Retry-After"])
    assert wait >= 1
    return wait


def test_login_per_address_limit_then_retry_after(tight: Tight) -> None:
    c = tight.client()
    for i in range(10):  # ten different names from one address: a password spray
        assert _bad_login(c, f"nobody{i}").status_code == 401
    wait = _is_429(_bad_login(c, "nobody-else"))
    assert wait == 6  # 10 per 60 s: one more every 6 s
    assert _bad_login(tight.client("203.0.113.11"), "nobody-else").status_code == 401  # another address
    tight.clock.t += wait
    assert _bad_login(c, "nobody-else").status_code == 401  # allowed again after Retry-After


def test_login_per_account_limit_whatever_the_spelling_or_address(tight: Tight) -> None:
    spellings = ["inv_r2", "INV_R2", " inv_r2 ", "ｉｎｖ＿ｒ２", "inv\u200b_r2"]
    for i, name in enumerate(spellings):
        assert _bad_login(tight.client(f"198.51.100.{i}"), name).status_code == 401
    # the sixth attempt, from yet another address and spelling, is refused before any check
    wait = _is_429(_bad_login(tight.client("198.51.100.99"), "Inv_R2"))
    assert wait == 12  # 5 per 60 s
    # the right password does not get through either while limited
    r = tight.client("198.51.100.98").post("/api/v1/auth/login", json={
        "username": "inv_r2", "password": PASSWORD,
        "totp": code_at(tight.secrets["inv_r2"], datetime.now(timezone.utc))})
    assert r.status_code == 429


def test_forwarded_for_is_believed_only_from_a_trusted_proxy(tight: Tight) -> None:
    direct = tight.client("203.0.113.50")
    for i in range(10):
        assert _bad_login(direct, f"x{i}", {"X-Forwarded-For": f"192.0.2.{i}"}).status_code == 401
    # a client cannot escape its limit by forging the header
    _is_429(_bad_login(direct, "x10", {"X-Forwarded-For": "192.0.2.200"}))
    # through the configured proxy, each forwarded client has its own bucket; forged left-hand
    # entries are ignored (the proxy appends the real peer on the right)
    proxy = tight.client("10.9.0.2")
    for i in range(10):
        assert _bad_login(proxy, f"y{i}", {"X-Forwarded-For": f"6.6.6.{i}, 192.0.2.77"}).status_code == 401
    _is_429(_bad_login(proxy, "y10", {"X-Forwarded-For": "192.0.2.77"}))
    assert _bad_login(proxy, "y11", {"X-Forwarded-For": "192.0.2.78"}).status_code == 401


def test_search_is_limited_per_account_and_per_address(tight: Tight) -> None:
    c = tight.client("203.0.113.20")
    h1 = {"Authorization": f"Bearer {tight.token(c, 'inv_r1')}"}
    h2 = {"Authorization": f"Bearer {tight.token(c, 'inv_r2')}"}
    form = {"gallery": "none", "case_number": "2026-000001", "purpose": "robbery investigation"}
    files = {"image": ("p.jpg", b"\xff\xd8\xff" + b"x" * 100, "image/jpeg")}
    for _ in range(3):
        r = c.post("/api/v1/searches", data=form, files=files, headers=h1)
        assert r.status_code in (404, 422), r.text  # refused by the service, but counted
    wait = _is_429(c.post("/api/v1/searches", data=form, files=files, headers=h1))
    assert wait == 20
    # the other investigator from the same address still has two left of the address's five
    for _ in range(2):
        assert c.post("/api/v1/searches", data=form, files=files, headers=h2).status_code in (404, 422)
    _is_429(c.post("/api/v1/searches", data=form, files=files, headers=h2))
    # from another address inv_r2 may search; inv_r1 may not (its own limit)
    other = tight.client("203.0.113.21")
    assert other.post("/api/v1/searches", data=form, files=files, headers=h2).status_code in (404, 422)
    _is_429(other.post("/api/v1/searches", data=form, files=files, headers=h1))


def test_case_export_is_limited(tight: Tight) -> None:
    c = tight.client("203.0.113.30")
    h = {"Authorization": f"Bearer {tight.token(c, 'sup_r')}"}
    for _ in range(2):
        assert c.get("/api/v1/cases/2026-000001/export.pdf", headers=h).status_code == 404
    wait = _is_429(c.get("/api/v1/cases/2026-000001/export.pdf", headers=h))
    assert wait == 30
    tight.clock.t += 30
    assert c.get("/api/v1/cases/2026-000001/export.pdf", headers=h).status_code == 404


def test_web_login_form_is_limited_too_and_shares_the_account_bucket(tight: Tight) -> None:
    c = tight.client("203.0.113.40")
    page = c.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    form = {"username": "sup_r", "password": "wrong password 1", "code": "000000", "csrf": csrf, "next": "/"}
    for _ in range(3):
        assert c.post("/login", data=form).status_code == 401
    for _ in range(2):  # the API's sign-in counts for the same account
        assert _bad_login(tight.client("203.0.113.41"), "SUP_R").status_code == 401
    r = c.post("/login", data=form)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "rate_limited" in r.text or "too many" in r.text.lower()
    assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
