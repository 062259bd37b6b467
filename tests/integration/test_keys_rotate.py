"""Key rotation, the encryption of clear values left by older schemas, and the production checks.

A rotation is killed after its first batch; a server context opened before the rotation keeps
reading and signing in across the mixed key versions (and writes new values under the new one);
running the rotation again finishes it without another key version. A database at revision 0008
with clear names is encrypted at the next start, once, and its lookups keep working."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text, type_coerce, Text

from facesearch.auth import hash_password
from facesearch.auth.passwords import Argon2Params
from facesearch.auth.totp import code_at
from facesearch.config import Settings
from facesearch.services.accounts import Accounts
from facesearch.services.context import AppContext
from facesearch.services.keys import production_problems, value_versions
from facesearch.store.crypto import Keyring, text_blob
from facesearch.services.privacy import _seal, _unseal
from facesearch.store.tables import Agency, ErasureRequest, ProbeImage, Search, User

PASSWORD = "Plover-Quartz-Tambourine-81"
FAST = dict(argon2_memory_kib=1024, argon2_time_cost=1)
AGENCIES = [f"Rotation Test Agency {i:02d}" for i in range(6)]
CASES = [f"2026-{i:06d}" for i in range(8)]
ERASURES = ["er-rotation-1", "er-rotation-2"]


def _settings(home: Path) -> Settings:
    return Settings(home=home, workers=1, **FAST)


def _populate(ctx: AppContext) -> dict[str, str]:
    acc = Accounts(ctx)
    for name in AGENCIES:
        acc.add_agency(name, r"^\d{4}-\d{6}$", ["robbery investigation"])
    secrets = {f"user{i}": acc.add_user(f"User{i}", PASSWORD, "investigator", AGENCIES[i % 3]).totp_secret
               for i in range(4)}
    with ctx.repo() as repo:
        g = repo.create_gallery("rot", "dlib", "statute 12-3", repo.agency_by_name(AGENCIES[0]).id)
        repo.add_image(gallery_id=g.id, sha256="a" * 64, original_path="/photos/Jane Roe/1.jpg", source_uri=None,
                       legal_basis="statute 12-3", subject="Jane Roe", collected_at=None, width=10, height=10,
                       faces=[], status="no_face")
        for case in CASES:
            sid, *_ = repo.record_search(case_number=case, purpose="robbery investigation", gallery_id=g.id,
                                         model_id="dlib", probe_sha256="b" * 64, probe_faces=0, top_k=10,
                                         threshold=0.5, candidates=[], agency_id=1)
            repo.s.add(ProbeImage(search_id=sid, ciphertext=ctx.cipher.encrypt(b"jpeg " + case.encode(),
                                                                                aad=f"probe:{sid}"),
                                  created_at=datetime.now(timezone.utc)))
        for rid in ERASURES:  # pending erasure requests: the person's embeddings and the matches shown
            repo.s.add(ErasureRequest(
                public_id=rid, created_at=datetime.now(timezone.utc), status="pending_confirmation",
                images="[]", actor="user:x",
                probes=ctx.cipher.encrypt(b"embeddings " + rid.encode(), aad=f"erasure-probes:{rid}"),
                matches=_seal(ctx, "erasure-matches", rid, b'[{"face": "' + rid.encode() + b'"}]')))
    return secrets


def _login(ctx: AppContext, user: str, secret: str, minutes: int) -> None:
    """A sign-in at a later time each call (a TOTP code is accepted once)."""
    at = datetime.now(timezone.utc) + timedelta(minutes=minutes)
    Accounts(ctx, clock=lambda: at).login(user.upper(), PASSWORD, code_at(secret, at))


def _check_readable(ctx: AppContext) -> None:
    acc = Accounts(ctx)
    assert [acc.agency(n.lower()).name for n in AGENCIES] == AGENCIES
    with ctx.repo() as repo:
        assert sorted(s.case_number for s in repo.searches()) == CASES
        assert [s.case_number for s in repo.searches(case_number=CASES[3])] == [CASES[3]]
        assert repo.subject_embeddings(1, "dlib", ["Jane Roe"]) == {}  # found by its index, no faces
        for row in repo.s.scalars(select(ProbeImage)):
            assert ctx.cipher.decrypt(row.ciphertext, aad=f"probe:{row.search_id}").startswith(b"jpeg ")
        erasures = repo.s.scalars(select(ErasureRequest).order_by(ErasureRequest.public_id)).all()
        assert [e.public_id for e in erasures] == ERASURES
        for e in erasures:
            assert ctx.cipher.decrypt(e.probes, aad=f"erasure-probes:{e.public_id}") == b"embeddings " + e.public_id.encode()
            assert _unseal(ctx, "erasure-matches", e.public_id, e.matches).startswith(b'[{"face"')


def _rotate(home: Path, crash: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESEARCH_")}
    if crash:
        env["FACESEARCH_TEST_CRASH"] = "keys_rotate_batch"
    return subprocess.run([sys.executable, "-m", "facesearch.cli", "keys", "rotate", "--batch", "1", "--json",
                           "--home", str(home)], env=env, capture_output=True, text=True, timeout=300)


def test_a_rotation_killed_midway_resumes_while_a_server_keeps_working(tmp_path: Path) -> None:
    home = tmp_path / "h"
    server = AppContext(_settings(home))  # stands for the running server: opened before the rotation
    secrets = _populate(server)
    before = value_versions(server.engine)
    assert set(before) == {"1"} and sum(before.values()) > 40

    r = _rotate(home, crash=True)
    assert r.returncode == 75, r.stderr  # killed after its first batch
    mixed = value_versions(server.engine)
    assert set(mixed) == {"1", "2"}, mixed  # some values moved, most not yet
    state = json.loads(server.engine.connect().execute(text("SELECT value FROM crypto_state "
                                                            "WHERE name = 'rotation'")).scalar())
    assert state["target"] == 2 and not state["done"]

    # readers accept both versions: lookups by blind index, decryption, sign-in
    _check_readable(server)
    _login(server, "user0", secrets["user0"], minutes=1)
    _login(server, "user3", secrets["user3"], minutes=1)
    # and new writes already use the new version
    Accounts(server).add_agency("Written During The Rotation")
    with server.repo() as repo:
        raw = repo.s.scalar(select(type_coerce(Agency.name, Text)).order_by(Agency.id.desc()).limit(1))
    assert Keyring.version_of(text_blob(raw)) == 2

    r = _rotate(home, crash=False)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["resumed"] is True and report["target_version"] == 2 and report["new_key"] is False
    assert set(value_versions(server.engine)) == {"2"}
    with server.repo() as repo:  # values sealed by services, not by their column type, moved too
        for e in repo.s.scalars(select(ErasureRequest)):
            assert Keyring.version_of(e.probes) == 2 and Keyring.version_of(base64.b64decode(e.matches)) == 2
    assert (home / "keys" / "field.key").read_text().count("\n2:") == 1  # no third version
    assert (home / "keys" / "field.key").stat().st_mode & 0o777 == 0o600
    _check_readable(server)
    _login(server, "user1", secrets["user1"], minutes=2)
    with server.repo() as repo:  # blind indexes were recomputed under the new version's key
        bis = set(repo.s.scalars(select(User.username_bi)))
        assert bis == {server.keyring.blind_index("user", f"user{i}", 2) for i in range(4)}
        assert all(s.case_bi == server.keyring.blind_index("case", s.case_number, 2)
                   for s in repo.s.scalars(select(Search)))
    assert server.audit.verify().ok  # the audit trail names no one, so a rotation leaves it alone

    r = _rotate(home, crash=False)  # a further run starts a new rotation, to version 3
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["target_version"] == 3
    _check_readable(server)
    server.close()


def test_clear_values_of_an_older_schema_are_encrypted_at_the_next_start(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from facesearch.store import db as store_db
    from facesearch.store.db import make_engine

    home = tmp_path / "h"
    home.mkdir()
    engine = make_engine(f"sqlite:///{home / 'facesearch.db'}")
    cfg = Config(str(Path(store_db.__file__).parent / "alembic.ini"))
    cfg.set_main_option("script_location", str(Path(store_db.__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0008")
    now = datetime.now(timezone.utc)
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO agencies (public_id, name, case_pattern, purposes, created_at) VALUES "
                          "('a1', 'Obsolete Plaintext Agency', '^\\d+$', '[\"robbery investigation\"]', :t)"),
                     {"t": now})
        conn.execute(text("INSERT INTO users (public_id, agency_id, username_key, display_name, role, "
                          "password_hash, totp_secret, totp_confirmed, disabled, created_at) VALUES "
                          "('u1', 1, 'legacy walrus', 'Legacy Walrus', 'investigator', :h, :s, 0, 0, :t)"),
                     {"h": hash_password(PASSWORD, params=Argon2Params(1, 1024, 1)), "s": secret, "t": now})
        conn.execute(text("INSERT INTO searches (created_at, case_number, purpose, model_id, probe_sha256, "
                          "probe_faces, top_k, threshold, public_id, agency_id) VALUES "
                          "(:t, '31337', 'robbery investigation', 'dlib', 'x', 0, 10, 0.5, 's1', 1)"), {"t": now})
        conn.execute(text("INSERT INTO lockouts (key, failures) VALUES ('legacy walrus', 2)"))
    engine.dispose()

    ctx = AppContext(_settings(home))  # migrates to the newest revision, then the data step
    with ctx.engine.connect() as conn:
        row = conn.execute(text("SELECT name, name_bi, purposes FROM agencies")).one()
        user = conn.execute(text("SELECT username_key, display_name, totp_secret, username_bi FROM users")).one()
        search = conn.execute(text("SELECT case_number, purpose, case_bi FROM searches")).one()
        lock = conn.execute(text("SELECT key, failures FROM lockouts")).one()
    assert all(v.startswith("enc:") for v in (row[0], row[2], *user[:3], *search[:2]))
    assert row[1] and user[3] and search[2]
    assert lock == (ctx.keyring.blind_index("user", "legacy walrus"), 2)
    assert Accounts(ctx).agency("obsolete plaintext agency").name == "Obsolete Plaintext Agency"
    with ctx.repo() as repo:
        assert repo.searches(case_number="31337")[0].purpose == "robbery investigation"
    at = datetime.now(timezone.utc)
    Accounts(ctx, clock=lambda: at).login("Legacy Walrus", PASSWORD, code_at(secret, at))
    raw = b"".join(p.read_bytes() for p in home.glob("facesearch.db*"))
    assert b"Obsolete Plaintext Agency" not in raw and b"Legacy Walrus" not in raw and b"legacy walrus" not in raw
    ctx.close()
    again = AppContext(_settings(home))  # the data step ran once: nothing to do now
    from facesearch.services.keys import encrypt_plaintext

    assert encrypt_plaintext(again.engine, again.keyring) == 0
    again.close()


def _serve(home: Path, env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESEARCH_")}
    env.update(FACESEARCH_HOME=str(home), FACESEARCH_ENV="production", **env_extra)
    return subprocess.run([sys.executable, "-m", "facesearch.cli", *(args or ("serve", "--port", "1"))],
                          env=env, capture_output=True, text=True, timeout=120)


def test_production_refuses_a_missing_exposed_or_development_key(tmp_path: Path) -> None:
    home = tmp_path / "h"
    r = _serve(home, {})
    assert r.returncode != 0 and "no key" in r.stderr + r.stdout
    assert not (home / "keys" / "field.key").exists()  # production never generates one
    assert not (home / "facesearch.db").exists()  # refused before anything was created
    for command in (("audit", "verify"), ("gallery", "list")):
        r = _serve(home, {}, *command)  # every entry point, not only the server
        assert r.returncode != 0 and "no key" in r.stderr + r.stdout, command
    assert not (home / "facesearch.db").exists()

    AppContext(_settings(home)).keyring.current_version  # development: generates a key (0600)
    dev_key = home / "keys" / "field.key"
    assert dev_key.stat().st_mode & 0o777 == 0o600
    r = _serve(home, {})
    assert r.returncode != 0 and "development key" in r.stderr + r.stdout

    key = tmp_path / "prod.key"
    r = subprocess.run([sys.executable, "-m", "facesearch.cli", "keys", "generate", "--out", str(key)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and key.stat().st_mode & 0o777 == 0o600
    settings = Settings(home=home, env="production", key_file=key)
    assert production_problems(settings) == []
    key.chmod(0o640)
    r = _serve(home, {"FACESEARCH_KEY_FILE": str(key)})
    assert r.returncode != 0 and "readable by others" in r.stderr + r.stdout
    assert production_problems(Settings(home=home, env="production",
                                        key=base64.b64encode(os.urandom(32)).decode())) == []
    assert production_problems(Settings(home=home, env="production", key="short")) != []


@pytest.mark.parametrize("keyring", ["1:{a}", "1:{a},2:{b}", "{a}"])
def test_a_key_from_the_environment_serves_every_version(keyring: str) -> None:
    a, b = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    from facesearch.store.crypto import KeySource

    kr = Keyring(KeySource(keyring.format(a=a, b=b), Path("/nonexistent")))
    blob = kr.encrypt(b"x", "t.c")
    assert kr.decrypt(blob, "t.c") == b"x" and Keyring.version_of(blob) == kr.current_version


def test_an_old_key_version_is_retired_only_once_nothing_needs_it(tmp_path: Path) -> None:
    from facesearch.errors import KeyConfigurationError
    from facesearch.services.keys import key_source, retire, rotate

    home = tmp_path / "h"
    ctx = AppContext(_settings(home))
    _populate(ctx)
    source = key_source(ctx.settings)

    def cli(*args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACESEARCH_")}
        env["FACESEARCH_HOME"] = str(home)
        return subprocess.run([sys.executable, "-m", "facesearch.cli", "keys", "retire", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    with pytest.raises(KeyConfigurationError, match="current one"):
        retire(ctx.engine, ctx.keyring, source, 1)  # nothing to rotate to yet
    # an account locked under key version 1 (and a name without an account), kept across the rotations
    until = datetime.now(timezone.utc) + timedelta(minutes=10)
    with ctx.repo() as repo:
        for name in ("user1", "nobody"):
            row = repo.lockout_for_update(name)
            row.failures, row.window_started_at, row.locked_until = 5, until - timedelta(minutes=20), until
    v1_key = ctx.keyring.blind_index("user", "user1", 1)
    rotate(ctx.engine, ctx.keyring, source, batch=3)
    assert ctx.keyring.versions == [1, 2]
    with ctx.repo() as repo:  # a value written under version 1 after all (a late writer)
        sid = repo.s.scalars(select(Search.id)).first()
        repo.s.get(ProbeImage, sid).ciphertext = ctx.cipher.encrypt(b"jpeg late", aad=f"probe:{sid}", version=1)
    r = cli("--version", "1", "--yes")
    assert r.returncode != 0 and "1 stored values are still under key version 1" in r.stderr + r.stdout
    assert ctx.keyring.versions == [1, 2]
    r = cli("--version", "1")  # asks first; no answer is no
    assert r.returncode != 0 and ctx.keyring.versions == [1, 2]

    rotate(ctx.engine, ctx.keyring, source, batch=3)  # version 3 now; versions 1 and 2 unused
    r = cli("--version", "1", "--yes", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"retired": 1, "remaining": [2, 3],
                                                             "lockouts_rekeyed": 1}
    assert (home / "keys" / "field.key").stat().st_mode & 0o777 == 0o600
    ctx.keyring.reload()
    assert ctx.keyring.versions == [2, 3]
    _check_readable(ctx)  # everything still reads, and sign-in lookups work
    with ctx.repo() as repo:  # the account's lock outlives the version it was keyed under
        row = repo.lockout("user1")
        assert row is not None and row.key == ctx.keyring.blind_index("user", "user1") != v1_key
        assert row.failures == 5 and row.locked_until.replace(tzinfo=timezone.utc) == until
    with pytest.raises(KeyConfigurationError, match="no key version 1"):
        retire(ctx.engine, ctx.keyring, source, 1)
    env_source = type(source)(env_key="1:" + base64.b64encode(os.urandom(32)).decode(), key_file=source.key_file)
    with pytest.raises(KeyConfigurationError, match="FACESEARCH_KEY"):
        retire(ctx.engine, ctx.keyring, env_source, 2)
    ctx.close()
