"""Backups: ``facesearch backup create PATH`` and ``facesearch backup restore PATH``.

A backup is a folder (mode 0700) holding:

* ``database.sqlite`` (SQLite: a copy made with SQLite's online backup API) or ``database.pgdump``
  (PostgreSQL: ``pg_dump --format=custom``);
* ``files/...``: every other file of the home folder (the faiss indexes under ``index/``, model
  manifests, encrypted blobs), except the database files themselves, the keys (``keys/`` and the
  configured key file) and the one-time bootstrap hash;
* ``manifest.json``: the format, the time, the schema revision, the row count of every table, the
  sha256 and size of every part, and a seal: an AES-GCM tag (GMAC, with the installation's field
  key) over the sha256 of the rest of the manifest.

The backup never contains the key, so it is exactly as unreadable as the live database without it
(the encrypted columns stay encrypted). Restore needs the same key (or a keyring that still holds
it after a rotation): it verifies the seal first, then every part's hash and size, that no file was
added, and the row counts of the database copy, and refuses the backup at the first difference,
before anything in the home folder is touched.

Consistency while the server writes:

* SQLite: the online backup API copies every page in one step inside one read transaction, so the
  copy is the database as of one instant: a committed transaction is wholly in it or wholly not.
  WAL mode lets the server keep writing meanwhile.
* PostgreSQL: the row counts are taken in a REPEATABLE READ transaction whose snapshot is exported
  and handed to ``pg_dump --snapshot``, so the dump and the counts are the same instant.
* Indexes: they are copied after the database. Each index file is replaced atomically
  (``os.replace``), so a copy holds a whole version; if that version is not the database's (an
  ingest committed between the two copies), its sidecar's face count and highest id disagree with
  the database and the index is rebuilt from the stored embeddings at the next start. The database
  is the source of truth; a restored installation is never inconsistent, at most it rebuilds.

Restore replaces the database and the index folder; run it with the server stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess  # nosec B404 - pg_dump/pg_restore, fixed argument lists, no shell
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from sqlalchemy.engine import make_url

from facesearch.config import Settings
from facesearch.errors import BackupInvalid, InvalidInput

__all__ = ["BackupPart", "BackupManifest", "BackupReport", "create_backup", "restore_backup", "verify_backup"]

FORMAT = "facesearch-backup/1"
MANIFEST = "manifest.json"
SQLITE_PART = "database.sqlite"
PG_PART = "database.pgdump"
_SEAL_LABEL = b"facesearch backup manifest"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BackupPart:
    path: str  # inside the backup folder, POSIX form
    sha256: str
    bytes: int


@dataclass(frozen=True)
class BackupManifest:
    format: str
    created_at: str
    database: str  # "sqlite" | "postgresql"
    schema_revision: str | None
    counts: dict[str, int]
    parts: tuple[BackupPart, ...]
    seal: str = ""  # hex of the AES-GCM blob over the sha256 of everything else

    def body(self) -> bytes:
        d = asdict(self)
        d.pop("seal")
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> BackupManifest:  # noqa: ANN001
        try:
            parts = tuple(BackupPart(str(p["path"]), str(p["sha256"]), int(p["bytes"])) for p in d["parts"])
            return cls(str(d["format"]), str(d["created_at"]), str(d["database"]), d.get("schema_revision"),
                       {str(k): int(v) for k, v in d["counts"].items()}, parts, str(d.get("seal", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise BackupInvalid(f"the backup's manifest is malformed ({type(e).__name__})") from None


@dataclass(frozen=True)
class BackupReport:
    path: str
    database: str
    parts: int
    bytes: int
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


# -- the key: a seal over the manifest ---------------------------------------------------------------
def _cipher(settings: Settings):  # noqa: ANN202 - FieldCipher or Keyring: encrypt/decrypt with AAD
    """The installation's field cipher, from the same key source the server uses."""
    try:
        from facesearch.services.keys import key_source
        from facesearch.store.crypto import Keyring
    except ImportError:  # an installation without key rotation: one key
        from facesearch.store.crypto import FieldCipher, load_key

        return FieldCipher(load_key(settings.key, settings.key_file or settings.home / "keys" / "field.key"))
    return Keyring(key_source(settings))


def _aad(m: BackupManifest) -> str:
    return "backup-manifest:" + hashlib.sha256(m.body()).hexdigest()


def _seal(settings: Settings, m: BackupManifest) -> str:
    return _cipher(settings).encrypt(_SEAL_LABEL, _aad(m)).hex()


def _check_seal(settings: Settings, m: BackupManifest) -> None:
    from facesearch.errors import FaceSearchError

    try:
        ok = _cipher(settings).decrypt(bytes.fromhex(m.seal), _aad(m)) == _SEAL_LABEL
    except (FaceSearchError, ValueError):
        ok = False
    if not ok:
        raise BackupInvalid("the backup's manifest seal does not verify: the backup was altered, or it was "
                            "made with another key")


# -- files -----------------------------------------------------------------------------------------------
def _sha256_copy(src: Path, dst: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while chunk := fi.read(_CHUNK):
            h.update(chunk)
            fo.write(chunk)
            n += len(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    os.chmod(dst, 0o600)
    return h.hexdigest(), n


def _sha256_file(p: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(p, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _sqlite_path(settings: Settings) -> Path | None:
    url = make_url(settings.db_url)
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:":
        raise InvalidInput("an in-memory database cannot be backed up")
    return Path(url.database)


def _key_file(settings: Settings) -> Path:
    try:
        from facesearch.services.keys import key_path

        return Path(key_path(settings))
    except ImportError:
        return Path(settings.key_file or settings.home / "keys" / "field.key")


def _home_files(settings: Settings, exclude: list[Path]) -> list[Path]:
    """The files of the home folder that belong in a backup (sorted, relative to the home)."""
    home = settings.home.resolve()
    skip = {p.resolve() for p in exclude}
    keys = {(home / "keys").resolve(), _key_file(settings).resolve()}
    db = _sqlite_path(settings)
    if db is not None:
        db = db.resolve()
        skip |= {db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-journal")}
    skip.add(home / "bootstrap.sha256")  # a one-time secret's hash: never restored
    out = []
    for root, dirs, files in os.walk(home):
        r = Path(root)
        dirs[:] = sorted(d for d in dirs if (r / d).resolve() not in keys and (r / d).resolve() not in skip)
        for f in sorted(files):
            p = (r / f).resolve()
            if p in skip or p in keys or f.endswith((".tmp", ".key")) or not p.is_file():
                continue
            out.append(p.relative_to(home))
    return out


def _safe_part(path: str) -> PurePosixPath:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts or "\\" in path:
        raise BackupInvalid(f"the backup names an unsafe path: {path!r}")
    return p


# -- the database ----------------------------------------------------------------------------------------
def _sqlite_counts(path: Path) -> tuple[dict[str, int], str | None]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        counts = {}
        for t in tables:
            quoted = '"' + t.replace('"', '""') + '"'  # names come from sqlite_master, quoted
            counts[t] = int(con.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0])  # nosec B608 - quoted catalogue name
        rev = None
        if "alembic_version" in tables:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
            rev = row[0] if row else None
        return counts, rev
    finally:
        con.close()


def _sqlite_snapshot(src: Path, dst: Path) -> None:
    if not src.exists():
        raise InvalidInput(f"no database at {src}: nothing to back up")
    source = sqlite3.connect(str(src), timeout=30)
    target = sqlite3.connect(str(dst))
    try:
        source.backup(target)  # all pages in one step: one consistent instant (see the module doc)
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file (no -wal/-shm beside it)
    finally:
        target.close()
        source.close()
    os.chmod(dst, 0o600)
    check = sqlite3.connect(f"file:{dst}?mode=ro", uri=True)
    try:
        if check.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise BackupInvalid("the database copy failed its integrity check")
    finally:
        check.close()


def _pg_conninfo(settings: Settings) -> tuple[str, dict[str, str]]:
    """A libpq URL without the password, and the environment that carries it (never argv)."""
    url = make_url(settings.db_url).set(drivername="postgresql")
    env = {k: v for k, v in os.environ.items() if k.startswith(("PATH", "LANG", "LC_", "HOME", "PGSSL"))}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return url.set(password=None).render_as_string(hide_password=False), env


def _pg_tool(name: str) -> str:
    tool = shutil.which(name)
    if tool is None:
        raise InvalidInput(f"{name} is not installed: PostgreSQL backups use {name} (install the PostgreSQL "
                           "client programs of the server's version)")
    return tool


def _pg_counts(conn) -> tuple[dict[str, int], str | None]:  # noqa: ANN001 - a psycopg connection
    from psycopg import sql

    tables = [r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
        "AND table_type = 'BASE TABLE' ORDER BY table_name")]
    counts = {t: int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0])
              for t in tables}
    rev = None
    if "alembic_version" in tables:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        rev = row[0] if row else None
    return counts, rev


def _pg_snapshot(settings: Settings, dst: Path) -> tuple[dict[str, int], str | None]:
    import psycopg

    url, env = _pg_conninfo(settings)
    pg_dump = _pg_tool("pg_dump")
    with psycopg.connect(settings.db_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        counts, rev = _pg_counts(conn)
        # the dump sees exactly this transaction's snapshot, so it matches the counts
        subprocess.run([pg_dump, "--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snapshot}",
                        f"--file={dst}", f"--dbname={url}"], env=env, check=True, capture_output=True)  # nosec B603 - fixed arguments, no shell
        conn.execute("COMMIT")
    os.chmod(dst, 0o600)
    return counts, rev


# -- create ----------------------------------------------------------------------------------------------
def create_backup(settings: Settings, dest: Path) -> BackupReport:
    """A consistent backup of the installation into the new folder ``dest``."""
    dest = Path(dest).expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInput(f"{dest} exists already: a backup goes into a new folder")
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(dest, 0o700)
    parts: list[BackupPart] = []
    db = _sqlite_path(settings)
    if db is not None:
        kind = "sqlite"
        _sqlite_snapshot(db, dest / SQLITE_PART)
        counts, rev = _sqlite_counts(dest / SQLITE_PART)
        parts.append(BackupPart(SQLITE_PART, *_sha256_file(dest / SQLITE_PART)))
    else:
        kind = "postgresql"
        counts, rev = _pg_snapshot(settings, dest / PG_PART)
        parts.append(BackupPart(PG_PART, *_sha256_file(dest / PG_PART)))
    for rel in _home_files(settings, exclude=[dest]):
        target = dest / "files" / rel
        try:
            digest, size = _sha256_copy(settings.home / rel, target)
        except FileNotFoundError:
            continue  # removed while we walked (a replaced temporary file)
        parts.append(BackupPart(str(PurePosixPath("files", *rel.parts)), digest, size))
    m = BackupManifest(FORMAT, datetime.now(timezone.utc).isoformat(), kind, rev, counts, tuple(parts))
    m = BackupManifest(**{**asdict(m), "parts": m.parts, "seal": _seal(settings, m)})
    tmp = dest / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(m.to_json(), indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, dest / MANIFEST)
    return BackupReport(str(dest), kind, len(parts), sum(p.bytes for p in parts), counts)


# -- verify and restore ------------------------------------------------------------------------------
def verify_backup(settings: Settings, src: Path) -> BackupManifest:
    """The backup's manifest, once the seal, every part and the database's row counts check out."""
    src = Path(src).expanduser()
    mpath = src / MANIFEST
    if not mpath.is_file():
        raise BackupInvalid(f"{src} is not a facesearch backup (no {MANIFEST})")
    try:
        m = BackupManifest.from_json(json.loads(mpath.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise BackupInvalid("the backup's manifest is not valid JSON") from None
    if m.format != FORMAT:
        raise BackupInvalid(f"unknown backup format {m.format!r} (this version reads {FORMAT})")
    if not settings.key and not _key_file(settings).exists():
        raise BackupInvalid(f"this installation has no key: put the key the backup was made with at "
                            f"{_key_file(settings)} (or set FACESEARCH_KEY) first")
    _check_seal(settings, m)
    listed = set()
    for part in m.parts:
        rel = _safe_part(part.path)
        listed.add(rel)
        p = src.joinpath(*rel.parts)
        if not p.is_file():
            raise BackupInvalid(f"the backup is incomplete: {part.path} is missing")
        if _sha256_file(p) != (part.sha256, part.bytes):
            raise BackupInvalid(f"the backup was altered: {part.path} does not match its sha256")
    for root, _dirs, files in os.walk(src):
        for f in files:
            rel = PurePosixPath(*Path(root, f).relative_to(src).parts)
            if rel not in listed and str(rel) != MANIFEST:
                raise BackupInvalid(f"the backup was altered: {rel} is not in its manifest")
    if m.database == "sqlite":
        counts, _ = _sqlite_counts(src / SQLITE_PART)
        if counts != m.counts:
            raise BackupInvalid("the backup's database does not hold the rows its manifest counts")
    return m


def _database_exists(settings: Settings) -> bool:
    db = _sqlite_path(settings)
    if db is not None:
        return db.exists() and db.stat().st_size > 0
    import psycopg

    with psycopg.connect(settings.db_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() "
                            "AND table_name = 'alembic_version'").fetchone()[0] > 0


def restore_backup(settings: Settings, src: Path, *, force: bool = False) -> BackupReport:
    """Verify the backup, then put its database, indexes and files in place. Refuses to replace
    an existing database unless ``force`` (the server must be stopped)."""
    src = Path(src).expanduser()
    m = verify_backup(settings, src)
    kind = "sqlite" if _sqlite_path(settings) is not None else "postgresql"
    if kind != m.database:
        raise BackupInvalid(f"this is a {m.database} backup; the installation uses {kind}")
    if not force and _database_exists(settings):
        raise InvalidInput("the installation has a database already: restoring replaces it; stop the server "
                           "and give --force")
    settings.ensure_home()
    if kind == "sqlite":
        db = _sqlite_path(settings)
        if db is None:  # pragma: no cover - kind says sqlite
            raise InvalidInput("no SQLite database path")
        tmp = db.with_name(db.name + ".restore.tmp")
        _sha256_copy(src / SQLITE_PART, tmp)
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, db)
        counts, _ = _sqlite_counts(db)
    else:
        url, env = _pg_conninfo(settings)
        subprocess.run([_pg_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--no-privileges",
                        "--single-transaction", f"--dbname={url}", str(src / PG_PART)],
                       env=env, check=True, capture_output=True)  # nosec B603 - fixed arguments, no shell
        import psycopg

        with psycopg.connect(settings.db_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            counts, _ = _pg_counts(conn)
    # the indexes are exactly the backup's (an index made after the backup would be stale)
    if settings.index_dir.exists():
        shutil.rmtree(settings.index_dir)
    settings.index_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for part in m.parts:
        rel = _safe_part(part.path)
        if rel.parts[0] != "files":
            continue
        target = settings.home.joinpath(*rel.parts[1:])
        tmp = target.with_name(f".{target.name}.restore.tmp")
        _sha256_copy(src.joinpath(*rel.parts), tmp)
        os.replace(tmp, target)
    if counts != m.counts:
        raise BackupInvalid("the restored database does not hold the rows the backup's manifest counts")
    return BackupReport(str(src), kind, len(m.parts), sum(p.bytes for p in m.parts), counts)
