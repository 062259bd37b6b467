"""Web hardening, through the real application: security headers on every kind of answer, a strict
Content-Security-Policy (no inline script or style on any page), cookie flags, CSRF on every
state-changing form, no CORS, uploads judged by their bytes (magic numbers, size before the body is
read, pixel count from the header) and never written where a web server could serve them."""
from __future__ import annotations

import base64
import hashlib
import io
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from facesearch.api.app import create_app
from facesearch.auth.totp import code_at
from facesearch.config import Settings
from facesearch.services.accounts import Accounts
from facesearch.services.context import AppContext

PASSWORD = "correct horse battery 9"
CASE, PURPOSE = "2026-000123", "robbery investigation"


@dataclass
class App:
    settings: Settings
    ctx: AppContext
    client: TestClient
    secrets: dict[str, str]
    probe: bytes

    def web_login(self, who: str, client: TestClient | None = None) -> TestClient:
        c = client or TestClient(self.client.app, follow_redirects=False)
        csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
        r = c.post("/login", data={"username": who, "password": PASSWORD, "csrf": csrf, "next": "/",
                                   "code": code_at(self.secrets[who], datetime.now(timezone.utc))})
        assert r.status_code == 303, r.text[:300]
        return c

    def token(self, who: str) -> str:
        r = self.client.post("/api/v1/auth/login", json={
            "username": who, "password": PASSWORD, "totp": code_at(self.secrets[who], datetime.now(timezone.utc))})
        assert r.status_code == 200, r.text
        return r.json()["access_token"]


def _users(ctx: AppContext, names: list[tuple[str, str]]) -> dict[str, str]:
    acc = Accounts(ctx)
    return {n: acc.add_user(n, PASSWORD, role, None if role in ("sysadmin", "privacy_officer") else "Agency W").totp_secret
            for n, role in names}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, dev_labels) -> Iterator[App]:  # noqa: ANN001
    from facesearch.facade import FaceSearch

    home = tmp_path_factory.mktemp("hardening-home")
    s = Settings(home=home, argon2_memory_kib=1024, argon2_time_cost=1, workers=1)
    ident = next(iter(dev_labels))
    photos = home.parent / f"{home.name}-photos" / ident
    photos.mkdir(parents=True)
    for p in dev_labels[ident][:2]:
        (photos / p.name).write_bytes(p.read_bytes())
    with FaceSearch(settings=s) as fs:
        Accounts(fs.ctx).add_agency("Agency W", r"^\d{4}-\d{6}$", [PURPOSE])
        fs.ingest(photos.parent, gallery="gallery-w", legal_basis="test", subject_from_folder=True, agency="Agency W")
    ctx = AppContext(s)
    names = [(f"inv_{i}", "investigator") for i in range(6)] + [("sup_w", "supervisor"), ("adm_w", "agency_admin"),
                                                               ("po_w", "privacy_officer"), ("root_w", "sysadmin")]
    sec = _users(ctx, names)
    client = TestClient(create_app(s, ctx), follow_redirects=False)
    yield App(s, ctx, client, sec, dev_labels[ident][2].read_bytes())
    ctx.close()


BASE_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer",
                "cross-origin-opener-policy": "same-origin", "cross-origin-resource-policy": "same-origin"}


def _csp(value: str) -> dict[str, str]:
    return {d.split()[0]: d.strip() for d in value.split(";") if d.strip()}


@pytest.mark.parametrize("path", ["/healthz", "/api/v1/galleries", "/api/v1/no-such-route", "/openapi.json",
                                  "/api/v1/transparency", "/login", "/transparency", "/bootstrap", "/static/app.css",
                                  "/search", "/metrics"])
def test_every_answer_carries_the_security_headers(app: App, path: str) -> None:
    r = app.client.get(path)
    for k, v in BASE_HEADERS.items():
        assert r.headers.get(k) == v, (path, k, r.headers.get(k))
    assert "camera=()" in r.headers["permissions-policy"]
    csp = _csp(r.headers["content-security-policy"])
    assert csp["frame-ancestors"] == "frame-ancestors 'none'", path
    for directive in ("script-src", "style-src", "default-src"):
        assert "'unsafe-inline'" not in csp.get(directive, "") and "'unsafe-eval'" not in csp.get(directive, ""), path
    assert "strict-transport-security" not in r.headers  # plain http here: HSTS only behind TLS
    if path.startswith("/api/"):
        assert r.headers["cache-control"] == "no-store"


def test_pages_have_no_inline_script_or_style_and_bootstrap_allows_only_its_own_script(app: App) -> None:
    c = app.web_login("inv_0")
    for path in ("/login", "/search", "/cases", "/transparency"):
        html = (c if path != "/login" else app.client).get(path).text
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path  # only <script src=...>
        assert not re.search(r"\son[a-z]+\s*=", html, re.I), path  # no onclick= etc.
        assert not re.search(r"<style|\sstyle\s*=", html, re.I), path
    r = app.client.get("/bootstrap")
    script = re.search(r"<script>(.*?)</script>", r.text, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert _csp(r.headers["content-security-policy"])["script-src"] == f"script-src 'sha256-{digest}'"


def test_no_cors_for_any_origin(app: App) -> None:
    pre = app.client.options("/api/v1/searches", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization"})
    assert "access-control-allow-origin" not in pre.headers and pre.status_code in (401, 404, 405)
    r = app.client.get("/api/v1/transparency", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and not any(k.startswith("access-control-") for k in r.headers)


def test_session_cookie_flags_and_secure_behind_tls(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    c = TestClient(app.client.app, follow_redirects=False)
    login_cookie = c.get("/login").headers["set-cookie"]
    assert re.search(r"HttpOnly", login_cookie, re.I) and re.search(r"SameSite=strict", login_cookie, re.I)
    assert "Path=/login" in login_cookie
    csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"username": "inv_1", "password": PASSWORD, "csrf": csrf, "next": "/",
                               "code": code_at(app.secrets["inv_1"], datetime.now(timezone.utc))})
    session = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("fs_session="))
    assert re.search(r"HttpOnly", session, re.I) and re.search(r"SameSite=strict", session, re.I)
    assert "Path=/" in session and "secure" not in session.lower()  # plain http in this test
    # behind TLS: Secure cookies and HSTS (a new application, as at start-up)
    monkeypatch.setenv("FACESEARCH_COOKIE_SECURE", "true")
    tls = TestClient(create_app(app.settings, app.ctx), base_url="https://testserver", follow_redirects=False)
    page = tls.get("/login")
    assert "secure" in page.headers["set-cookie"].lower()
    assert page.headers["strict-transport-security"].startswith("max-age=")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = tls.post("/login", data={"username": "inv_2", "password": PASSWORD, "csrf": csrf, "next": "/",
                                 "code": code_at(app.secrets["inv_2"], datetime.now(timezone.utc))})
    session = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("fs_session="))
    assert "secure" in session.lower() and "httponly" in session.lower()


def _web_posts() -> list[str]:
    from facesearch.api.routes import web

    routers = [web.router]
    try:
        from facesearch.api.routes import web_privacy

        routers.append(web_privacy.router)
    except ImportError:  # pragma: no cover
        pass
    return sorted({r.path for router in routers for r in router.routes if "POST" in (r.methods or ())})


def test_every_state_changing_form_needs_its_csrf_token(app: App) -> None:
    posts = _web_posts()
    assert {"/login", "/logout", "/search", "/searches/{search_id}/reviews", "/admin/users"} <= set(posts)
    sessions = {who: app.web_login(who) for who in ("inv_3", "po_w")}
    for path in posts:
        url = re.sub(r"{[^}]+}", lambda _m: secrets.token_hex(16), path)
        if path == "/login":
            fresh = TestClient(app.client.app, follow_redirects=False)  # no login-csrf cookie
            r = fresh.post(url, data={"username": "inv_3", "password": PASSWORD, "code": "123456", "csrf": "x"})
            assert r.status_code == 403 and "csrf_rejected" in r.text, r.text[:300]
            continue
        for who, c in sessions.items():
            for csrf in (None, "0" * 64):
                data = {"candidate_id": "x", "decision": "reject", "gallery": "gallery-w", "case_number": CASE,
                        "purpose": PURPOSE, "username": "x_new", "password": PASSWORD, "role": "investigator"}
                if csrf is not None:
                    data["csrf"] = csrf
                r = c.post(url, data=data, files={"photo": ("p.jpg", app.probe, "image/jpeg")}
                           if path == "/search" else None)
                assert r.status_code == 403 and "csrf_rejected" in r.text, (path, who, csrf, r.status_code,
                                                                             r.text[:300])
    # the API takes no cookies: a signed-in browser cannot be made to call it (so it needs no CSRF token)
    c = sessions["inv_3"]
    r = c.post("/api/v1/searches", data={"gallery": "gallery-w", "case_number": CASE, "purpose": PURPOSE},
               files={"image": ("p.jpg", app.probe, "image/jpeg")})
    assert r.status_code == 401


def _png_declaring(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_uploads_are_judged_by_their_bytes_and_limited_in_size_and_pixels(app: App) -> None:
    h = {"Authorization": f"Bearer {app.token('inv_4')}"}  # one user per sign-in: a code is accepted once
    form = {"gallery": "gallery-w", "case_number": CASE, "purpose": PURPOSE}

    def search(name: str, data: bytes, ctype: str):  # noqa: ANN202
        return app.client.post("/api/v1/searches", data=form, files={"image": (name, data, ctype)}, headers=h)

    # the declared name and type do not matter, the bytes do
    png = io.BytesIO()
    Image.open(io.BytesIO(app.probe)).save(png, "PNG")
    r = search("probe.gif", png.getvalue(), "image/gif")
    assert r.status_code == 200, r.text
    hostile = {
        "html.jpg": b"<!doctype html><script>alert(1)</script>",
        "svg.png": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
        "gif-polyglot.jpg": b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00;*/=alert(1)",
        "pdf.jpg": b"%PDF-1.7\n1 0 obj<<>>endobj",
        "zip.png": b"PK\x03\x04" + b"\0" * 64,
        "tiff.jpg": b"II*\x00" + b"\0" * 64,
        "elf.webp": b"\x7fELF\x02\x01\x01" + b"\0" * 64,
    }
    for name, data in hostile.items():
        r = search(name, data, "image/jpeg")
        assert r.status_code == 422 and r.json()["error"]["code"] == "not_an_image", (name, r.text)
    # pixels: judged from the header, before anything is decoded
    r = search("bomb.png", _png_declaring(30000, 30000), "image/png")
    assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large", r.text
    # size: refused from Content-Length before the body is read or spooled to disk
    big = b"\xff\xd8\xff" + b"\0" * (app.settings.max_upload_bytes + 2 * 1024 * 1024)
    r = search("big.jpg", big, "image/jpeg")
    assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"


def test_uploads_are_never_written_where_they_could_be_served(app: App) -> None:
    from facesearch.web import STATIC_DIR, WEB_DIR

    def listing(root: Path) -> dict[str, float]:
        return {str(p): p.stat().st_mtime for p in root.rglob("*") if p.is_file()}

    web_before = listing(WEB_DIR)
    home_before = set(listing(app.settings.home))
    marker = app.probe[len(app.probe) // 2: len(app.probe) // 2 + 64]
    h = {"Authorization": f"Bearer {app.token('inv_5')}"}
    r = app.client.post("/api/v1/searches", data={"gallery": "gallery-w", "case_number": CASE, "purpose": PURPOSE},
                        files={"image": ("probe.jpg", app.probe, "image/jpeg")}, headers=h)
    assert r.status_code == 200, r.text
    assert listing(WEB_DIR) == web_before  # nothing lands in the package's templates or static files
    new = set(listing(app.settings.home)) - home_before
    assert all(Path(p).name.startswith("facesearch.db") or "/index/" in p for p in new), new
    for p in Path(app.settings.home).rglob("*"):  # the probe is kept only encrypted
        if p.is_file():
            assert marker not in p.read_bytes(), p
    # the static route serves a fixed list, never a path from the request
    assert app.client.get("/static/app.css").status_code == 200
    for probe in ("/static/..%2f__init__.py", "/static/%2e%2e/templates/base.html", "/static/probe.jpg",
                  f"/static/{STATIC_DIR.name}"):
        assert app.client.get(probe).status_code == 404, probe
