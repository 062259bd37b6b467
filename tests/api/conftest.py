"""A live server process on a provisioned home: two agencies, every role, a gallery each."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from facesearch.auth.totp import code_at
from facesearch.config import Settings

PASSWORD = "correct horse battery 9"
# The environment of every test server: cheap password hashing, and rate limits far above what a
# suite sends from one address (the fuzz run alone sends ~1,700 requests); the rate limit tests
# (tests/security/test_rate_limits.py) run their own server with tight ones.
GENEROUS_RATE_LIMITS = {f"FACESEARCH_RATE_LIMIT_{k}": "1000000" for k in (
    "LOGIN_PER_ADDRESS", "LOGIN_PER_ACCOUNT", "SEARCH_PER_ACCOUNT", "SEARCH_PER_ADDRESS", "EXPORT_PER_ACCOUNT",
    "EXPORT_PER_ADDRESS")}
FAST_ARGON2 = {"FACESEARCH_ARGON2_MEMORY_KIB": "1024", "FACESEARCH_ARGON2_TIME_COST": "1", **GENEROUS_RATE_LIMITS}
CASE = "2026-000123"
PURPOSE = "robbery investigation"


@dataclass
class Account:
    username: str
    role: str
    agency: str | None
    secret: str
    token: str | None = None


@dataclass
class Live:
    url: str
    home: Path
    accounts: dict[str, Account]
    probe: Path
    noface: Path
    settings: Settings
    db_url: str

    def sql(self, statement: str, **params: object) -> list[tuple]:
        """Run SQL on the server's database directly (what an intruder or time would change)."""
        from sqlalchemy import text

        from facesearch.store.db import make_engine

        engine = make_engine(self.db_url)
        try:
            with engine.begin() as conn:
                res = conn.execute(text(statement), params)
                return [tuple(r) for r in res] if res.returns_rows else []
        finally:
            engine.dispose()

    def client(self, who: str | None = None) -> httpx.Client:
        headers = {}
        if who is not None:
            headers["Authorization"] = f"Bearer {self.token(who)}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def token(self, who: str) -> str:
        acc = self.accounts[who]
        if acc.token is None:
            acc.token = login(self.url, acc)
        return acc.token


def login(url: str, acc: Account) -> str:
    for attempt in range(2):
        r = httpx.post(f"{url}/api/v1/auth/login", json={
            "username": acc.username, "password": PASSWORD,
            "totp": code_at(acc.secret, datetime.now(timezone.utc))}, timeout=60)
        if r.status_code == 200:
            return r.json()["access_token"]
        # a TOTP code is accepted once: if this account already used the current step, wait
        # for the next one (at most 30 s)
        time.sleep(30.5 - time.time() % 30)
    raise AssertionError(r.text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def provision(home: Path, dev_labels, db_url: str | None) -> tuple[dict[str, Account], Path, Path]:  # noqa: ANN001
    from facesearch.facade import FaceSearch
    from facesearch.services.accounts import Accounts

    env_settings = dict(home=home, workers=1, argon2_memory_kib=1024, argon2_time_cost=1)
    if db_url:
        env_settings["database_url"] = db_url
    s = Settings(**env_settings)
    accounts: dict[str, Account] = {}
    with FaceSearch(settings=s) as fs:
        acc = Accounts(fs.ctx)
        for name in ("Agency A", "Agency B", "Agency C"):
            acc.add_agency(name, r"^\d{4}-\d{6}$", [PURPOSE, "missing person"])
        for who, role, agency in [("root", "sysadmin", None), ("admin_a", "agency_admin", "Agency A"),
                                  ("sup_a", "supervisor", "Agency A"), ("inv_a1", "investigator", "Agency A"),
                                  ("inv_a2", "investigator", "Agency A"), ("inv_b", "investigator", "Agency B"),
                                  ("sup_b", "supervisor", "Agency B"), ("lockme", "investigator", "Agency B"),
                                  ("inv_c", "investigator", "Agency C"), ("privacy", "privacy_officer", None)]:
            u = acc.add_user(who, PASSWORD, role, agency)
            accounts[who] = Account(who, role, agency, u.totp_secret)
        photos = home / "photos"
        for gallery, agency, idents in [("bookings-a", "Agency A", ["dlib_John_Simm", "dlib_John_Salley"]),
                                        ("bookings-b", "Agency B", ["dlib_John_Savage"])]:
            for ident in idents:
                (photos / gallery / ident).mkdir(parents=True)
                for p in dev_labels[ident][:3]:
                    (photos / gallery / ident / p.name).write_bytes(p.read_bytes())
            fs.ingest(photos / gallery, gallery=gallery, legal_basis="State booking records, statute 12-3",
                      subject_from_folder=True, agency=agency)
    from PIL import Image

    noface = home / "wall.png"
    Image.new("RGB", (300, 300), (180, 170, 160)).save(noface)
    return accounts, dev_labels["dlib_John_Simm"][5], noface


def start_server(home: Path, db_url: str | None, *, log: Path | None = None, clean_env: bool = False,
                 timeout: float = 90) -> tuple[subprocess.Popen, str]:
    """``facesearch serve`` on a free port, once ``/healthz`` answers. ``log``: the server's
    output goes to that file (else to pipes); ``clean_env``: no ``FACESEARCH_*`` setting of the
    calling environment reaches the server (the security flow scans what it logs)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not (clean_env and k.startswith("FACESEARCH_"))}
    env.update(FAST_ARGON2, FACESEARCH_HOME=str(home))
    if db_url:
        env["FACESEARCH_DATABASE_URL"] = db_url
    cmd = [sys.executable, "-m", "facesearch.cli", "serve", "--port", str(port)]
    if log is None:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    else:
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            said = log.read_text() if log is not None else proc.stderr.read().decode()
            raise RuntimeError(f"server exited: {said[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start in {timeout:.0f} s")


@contextmanager
def scratch_database(backend: str, prefix: str) -> Iterator[str | None]:
    """``None`` (the home's SQLite file) for ``sqlite``; for ``postgresql`` a fresh database on the
    server named by FACESEARCH_TEST_POSTGRES_URL (skipped without it), dropped afterwards."""
    if backend != "postgresql":
        yield None
        return
    admin = os.environ.get("FACESEARCH_TEST_POSTGRES_URL")
    if not admin:
        pytest.skip("set FACESEARCH_TEST_POSTGRES_URL to run this on PostgreSQL")
    import uuid

    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')  # nosec B608 - a generated name, not input
    try:
        yield f"{admin.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # nosec B608 - generated name


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, dev_labels) -> Live:  # noqa: ANN001
    """The same suite on SQLite and on a real PostgreSQL server (FACESEARCH_TEST_POSTGRES_URL)."""
    home = tmp_path_factory.mktemp(f"service-home-{request.param}")
    with scratch_database(request.param, "fs_api") as db_url:
        accounts, probe, noface = provision(home, dev_labels, db_url)
        proc, url = start_server(home, db_url)
        settings = Settings(home=home, database_url=db_url)
        try:
            yield Live(url, home, accounts, probe, noface, settings, settings.db_url)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
