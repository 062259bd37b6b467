"""Backups: ``facesearch backup create`` / ``restore`` round trip to an identical, verifiable
state; tampered, incomplete and foreign-key backups are refused before anything is touched; the
key is never in a backup; a backup taken while an ingest writes restores to a consistent state."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from facesearch.cli import main
from facesearch.facade import FaceSearch

CASE, PURPOSE = "2026-000123", "robbery investigation"
BASIS = "Test fixture: faces-dev photos"


def cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return r.exit_code, r.output


def candidates(fs: FaceSearch, probe: Path) -> list[tuple]:
    res = fs.search(probe, gallery="dev", case_number=CASE, purpose=PURPOSE)
    return [(c.subject, round(c.score, 6), c.image_id, c.face_id) for f in res.faces for c in f.candidates]


def db_counts(home: Path) -> dict[str, int]:
    con = sqlite3.connect(home / "facesearch.db")
    try:
        names = [r[0] for r in con.execute("select name from sqlite_master where type='table' "
                                           "and name not like 'sqlite_%'")]
        return {n: con.execute(f'select count(*) from "{n}"').fetchone()[0] for n in names}
    finally:
        con.close()


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def settled_sha(db: Path) -> str:
    """The database file's hash once its write-ahead log is folded in: whichever process opens
    it next would do that checkpoint anyway, which changes the file's bytes, not its content."""
    import sqlite3

    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return sha(db)


def key_secrets(home: Path) -> list[bytes]:
    """Every piece of key material under ``home/keys``: the files, each token in them, and the
    raw bytes those tokens decode to."""
    out = []
    for f in (home / "keys").rglob("*"):
        if f.is_file():
            raw = f.read_bytes()
            out.append(raw.strip())
            for line in raw.decode().splitlines():
                token = line.split(":", 1)[-1].strip()
                if len(token) >= 32 and not token.startswith("#"):
                    out.append(token.encode())
                    try:
                        out.append(base64.b64decode(token))
                    except ValueError:
                        pass
    return [s for s in out if len(s) >= 16]


@pytest.fixture(scope="module")
def gallery_dirs(tmp_path_factory: pytest.TempPathFactory, dev_labels) -> dict[str, Path]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("backup-photos")
    idents = list(dev_labels)[:6]
    for ident in idents:
        (root / "dev" / ident).mkdir(parents=True)
        for p in dev_labels[ident][:2]:
            shutil.copy(p, root / "dev" / ident / p.name)
    extra = list(dev_labels)[6]
    (root / "extra" / extra).mkdir(parents=True)
    for p in dev_labels[extra][:2]:
        shutil.copy(p, root / "extra" / extra / p.name)
    return {"dev": root / "dev", "extra": root / "extra", "probe": dev_labels[idents[0]][2]}


def test_backup_restores_an_identical_verifiable_state_and_refuses_tampering(tmp_path: Path, gallery_dirs) -> None:  # noqa: ANN001
    home = tmp_path / "home"
    with FaceSearch(home=home, workers=1) as fs:
        fs.ingest(gallery_dirs["dev"], gallery="dev", legal_basis=BASIS, subject_from_folder=True)
        before = candidates(fs, gallery_dirs["probe"])
    assert before and before[0][0] == gallery_dirs["probe"].parent.name  # dev photos: <identity>/<n>.jpg
    counts = db_counts(home)
    assert counts["faces"] >= 10 and counts["searches"] == 1

    bk = tmp_path / "bk"
    code, out = cli("backup", "create", str(bk), "--home", str(home), "--json")
    assert code == 0, out
    report = json.loads(out)
    manifest = json.loads((bk / "manifest.json").read_text())
    assert manifest["counts"] == counts == report["counts"]
    paths = {p["path"] for p in manifest["parts"]}
    assert "database.sqlite" in paths and any(p.startswith("files/index/") for p in paths)
    assert not any("keys" in p or p.endswith(".key") for p in paths)
    # the key is nowhere in the backup
    secrets = key_secrets(home)
    assert secrets, "the installation has a key file"
    for f in bk.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not any(s in data for s in secrets), f
    assert os.stat(bk).st_mode & 0o077 == 0

    code, out = cli("backup", "verify", str(bk), "--home", str(home), "--json")
    assert code == 0 and json.loads(out)["ok"] is True and json.loads(out)["counts"] == counts, out
    # restoring over a live database needs --force
    code, out = cli("backup", "restore", str(bk), "--home", str(home))
    assert code == 1 and "--force" in out

    # mutate, then destroy
    with FaceSearch(home=home, workers=1) as fs:
        fs.ingest(gallery_dirs["extra"], gallery="dev", legal_basis=BASIS, subject_from_folder=True)
    assert db_counts(home)["faces"] > counts["faces"]
    for f in home.glob("facesearch.db*"):
        f.unlink()
    shutil.rmtree(home / "index")

    code, out = cli("backup", "restore", str(bk), "--home", str(home), "--json")
    assert code == 0, out
    assert db_counts(home) == counts
    assert sha(home / "facesearch.db") == sha(bk / "database.sqlite")  # byte for byte
    code, out = cli("audit", "verify", "--home", str(home), "--json")
    assert code == 0 and json.loads(out)["ok"] is True, out
    with FaceSearch(home=home, workers=1) as fs:
        assert candidates(fs, gallery_dirs["probe"]) == before

    # tampering: each copy of the backup is refused, and the home is left as it was
    live = settled_sha(home / "facesearch.db")

    def tampered(name: str, change) -> tuple[int, str]:  # noqa: ANN001
        t = tmp_path / name
        shutil.copytree(bk, t)
        change(t)
        return cli("backup", "restore", str(t), "--home", str(home), "--force")

    def flip(p: Path) -> None:
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0x01
        p.write_bytes(bytes(data))

    def forge_counts(t: Path) -> None:
        m = json.loads((t / "manifest.json").read_text())
        m["counts"]["searches"] = 0
        (t / "manifest.json").write_text(json.dumps(m))

    def forge_hash(t: Path) -> None:  # alter a part and write its new hash into the manifest
        flip(t / "database.sqlite")
        m = json.loads((t / "manifest.json").read_text())
        for p in m["parts"]:
            if p["path"] == "database.sqlite":
                p["sha256"] = sha(t / "database.sqlite")
        (t / "manifest.json").write_text(json.dumps(m))

    index_part = next(p for p in paths if p.startswith("files/index/") and p.endswith(".faiss"))
    cases = {
        "flipped-db": lambda t: flip(t / "database.sqlite"),
        "flipped-index": lambda t: flip(t / index_part),
        "forged-counts": forge_counts,
        "forged-hash": forge_hash,
        "missing-part": lambda t: (t / index_part).unlink(),
        "planted-file": lambda t: (t / "files" / "evil.sh").write_text("#!/bin/sh\n"),
        "no-manifest": lambda t: (t / "manifest.json").unlink(),
    }
    for name, change in cases.items():
        code, out = tampered(name, change)
        assert code == 1 and "backup_invalid" in out, (name, out)
        code, out = cli("backup", "verify", str(tmp_path / name), "--home", str(home))
        assert code == 1 and "backup_invalid" in out, (name, out)
    assert settled_sha(home / "facesearch.db") == live

    # a backup is as unreadable as the database without the key: another installation's key
    # (a fresh home makes its own) does not verify it
    other = tmp_path / "other-home"
    code, out = cli("backup", "restore", str(bk), "--home", str(other))
    assert code == 1 and "no key" in out and not (other / "keys").exists(), out  # nothing made up
    with FaceSearch(home=other, workers=1) as fs:
        fs.ctx.cipher.encrypt(b"x", "test")  # an installation with its own key (made on first use)
    code, out = cli("backup", "restore", str(bk), "--home", str(other), "--force")
    assert code == 1 and "another key" in out, out
    # with the key (kept apart from the backup), a new machine gets the same state
    shutil.copytree(home / "keys", tmp_path / "new-home" / "keys")
    code, out = cli("backup", "restore", str(bk), "--home", str(tmp_path / "new-home"))
    assert code == 0, out
    with FaceSearch(home=tmp_path / "new-home", workers=1) as fs:
        assert candidates(fs, gallery_dirs["probe"]) == before


def test_a_backup_taken_during_an_ingest_restores_to_a_consistent_state(tmp_path: Path, dev_labels) -> None:  # noqa: ANN001
    photos = tmp_path / "photos"
    for ident in list(dev_labels)[:10]:
        (photos / ident).mkdir(parents=True)
        for p in dev_labels[ident][:2]:
            shutil.copy(p, photos / ident / p.name)
    home = tmp_path / "home"
    with FaceSearch(home=home, workers=1):
        pass  # database and key exist before the ingest starts
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESEARCH_")}
    env.update(FACESEARCH_HOME=str(home), FACESEARCH_WORKERS="1", FACESEARCH_BATCH_SIZE="2")
    proc = subprocess.Popen([sys.executable, "-m", "facesearch.cli", "ingest", str(photos), "--gallery", "dev",
                             "--legal-basis", BASIS, "--subject-from-folder"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    backups: list[tuple[Path, dict[str, int]]] = []  # one per distinct state seen
    taken = 0
    try:
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            bk = tmp_path / f"bk{taken}"
            taken += 1
            code, out = cli("backup", "create", str(bk), "--home", str(home), "--json")
            assert code == 0, out
            counts = json.loads(out)["counts"]
            if backups and backups[-1][1] == counts:
                shutil.rmtree(bk)
            else:
                backups.append((bk, counts))
            time.sleep(0.3)
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, proc.stderr.read().decode()[-2000:]
    final = db_counts(home)["faces"]
    mid = [c["faces"] for _bk, c in backups if 0 < c.get("faces", 0) < final]
    assert mid, f"no backup was taken while faces were being written ({[c.get('faces') for _b, c in backups]})"

    # restore a few of them (the first and last mid-ingest states, one between, and the final one)
    mids = [b for b in backups if 0 < b[1].get("faces", 0) < final]
    chosen = [mids[0], mids[len(mids) // 2], mids[-1], backups[-1]]
    for bk, counts in {b[0]: b for b in chosen}.values():
        target = tmp_path / f"restored-{bk.name}"
        shutil.copytree(home / "keys", target / "keys")
        code, out = cli("backup", "restore", str(bk), "--home", str(target))
        assert code == 0, out
        con = sqlite3.connect(target / "facesearch.db")
        try:
            assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
            assert con.execute("pragma foreign_key_check").fetchall() == []
            orphans = con.execute("select count(*) from faces f left join images i on i.id = f.image_id "
                                  "where i.id is null").fetchone()[0]
            assert orphans == 0
        finally:
            con.close()
        assert db_counts(target) == counts
        code, out = cli("audit", "verify", "--home", str(target), "--json")
        assert code == 0 and json.loads(out)["ok"] is True, out
        if counts.get("faces", 0) == 0:
            continue
        # the index is the database's: loaded if it matched, rebuilt if it was a newer version
        from facesearch.services.context import AppContext
        from facesearch.store.tables import Gallery
        from sqlalchemy import select

        with FaceSearch(home=target, workers=1) as fs:
            ctx: AppContext = fs.ctx
            with ctx.repo() as repo:
                g = repo.s.scalar(select(Gallery).where(Gallery.name == "dev"))
                _key, index = ctx.index_for(repo, g.id, g.model_id)
                assert index.ntotal == counts["faces"]
            res = fs.search(dev_labels[list(dev_labels)[0]][2], gallery="dev", case_number=CASE, purpose=PURPOSE)
            assert res.faces


PG_URL = os.environ.get("FACESEARCH_TEST_POSTGRES_URL")


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="set FACESEARCH_TEST_POSTGRES_URL to a PostgreSQL server")
@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="pg_dump is not installed")
def test_postgresql_backup_round_trip(tmp_path: Path, gallery_dirs, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import uuid

    import psycopg

    from facesearch.config import Settings

    name = f"fs_backup_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')  # generated name, not input
    url = f"{PG_URL.rsplit('/', 1)[0]}/{name}"
    try:
        home = tmp_path / "home"
        settings = Settings(home=home, database_url=url, workers=1)
        with FaceSearch(settings=settings) as fs:
            fs.ingest(gallery_dirs["dev"], gallery="dev", legal_basis=BASIS, subject_from_folder=True)
            before = candidates(fs, gallery_dirs["probe"])
        bk = tmp_path / "bk"
        env_home = ["--home", str(home)]
        monkeypatch.setenv("FACESEARCH_DATABASE_URL", url)  # the CLI reads the database from the environment
        code, out = cli("backup", "create", str(bk), *env_home, "--json")
        assert code == 0, out
        counts = json.loads(out)["counts"]
        assert json.loads(out)["database"] == "postgresql" and (bk / "database.pgdump").exists()
        assert counts["faces"] >= 10 and counts["searches"] == 1 and counts["audit_log"] > 0
        with FaceSearch(settings=settings) as fs:  # mutate after the backup
            fs.ingest(gallery_dirs["extra"], gallery="dev", legal_basis=BASIS, subject_from_folder=True)
        shutil.rmtree(home / "index")
        code, out = cli("backup", "restore", str(bk), *env_home)
        assert code == 1 and "--force" in out
        code, out = cli("backup", "restore", str(bk), *env_home, "--force", "--json")
        assert code == 0, out
        assert json.loads(out)["counts"] == counts
        code, out = cli("audit", "verify", *env_home, "--json")
        assert code == 0 and json.loads(out)["ok"] is True, out
        with FaceSearch(settings=settings) as fs:
            assert candidates(fs, gallery_dirs["probe"]) == before
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
