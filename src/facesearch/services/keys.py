"""Keys of the field encryption: the production checks, the one-off encryption of clear values
left by older schemas, key rotation (resumable, online) and its status.

What is encrypted is read from the schema itself: every ``EncryptedText`` column of the tables
(AAD ``table.column``), every class's ``__blind_indexes__``, and two binary columns bound to their
row (``probe_images.ciphertext``, ``suppressions.ciphertext``).

Rotation (``facesearch keys rotate``): a new key version is appended to the key file, which
running servers re-read on its next use (they then write under the new version and read both);
then every encrypted value not yet under the new version is re-encrypted and every blind index
recomputed, table by table in primary-key order, in small transactions. The progress (target
version, table, last key done) is kept in ``crypto_state`` in the same transaction as the rows,
so a rotation killed at any point continues where it stopped when run again; values written
meanwhile under an older version are caught by a final sweep. The HMAC keys of the blind indexes
rotate with the encryption keys (both derive from the version's master key); while a rotation
runs, lookups match the index of every version in the keyring.
"""
from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, Text, delete, insert, select, type_coerce, update

from facesearch.auth.lockout import normalise_user_name
from facesearch.config import Settings
from facesearch.errors import KeyConfigurationError
from facesearch.store.crypto import (KeyError_, Keyring, KeySource, KeyVersion, file_problems, is_encrypted_text,
                                     new_master, parse_keyring, text_blob, write_key_file,
                                     write_key_file_exclusive)
from facesearch.store.fields import EncryptedText
from facesearch.store.tables import Base, CryptoState, ErasureRequest, Lockout, ProbeImage, Suppression, User
from facesearch.store.repository import utcnow

PLAINTEXT_DONE = "plaintext_encrypted"
ROTATION = "rotation"



def key_path(settings: Settings) -> Path:
    return settings.key_file or settings.home / "keys" / "field.key"


def production_mode(settings: Settings) -> bool:
    return settings.env == "production"


def key_source(settings: Settings) -> KeySource:
    """Where the keyring comes from; only development generates a missing key file."""
    return KeySource(settings.key, key_path(settings), create_if_missing=not production_mode(settings))


def production_problems(settings: Settings) -> list[str]:
    """Why this key set-up may not serve in production (empty when it may)."""
    if settings.key:
        try:
            parse_keyring(settings.key)
        except KeyError_ as e:
            return [f"FACESEARCH_KEY: {e}"]
        return []
    path = key_path(settings)
    if not path.exists():
        return [f"no key: set FACESEARCH_KEY or FACESEARCH_KEY_FILE (missing: {path}); "
                "create one with `facesearch keys generate --out FILE`"]
    problems = file_problems(path)
    if not problems:
        try:
            _versions, dev = parse_keyring(path.read_text())
        except KeyError_ as e:
            return [f"key file {path}: {e}"]
        if dev:
            problems.append(f"key file {path} is a generated development key: create a production key "
                            "with `facesearch keys generate --out FILE`")
    return problems


def check_production(settings: Settings) -> None:
    if production_mode(settings):
        problems = production_problems(settings)
        if problems:
            raise KeyConfigurationError("refusing to start in production: " + "; ".join(problems))


def generate_key_file(path: Path) -> None:
    """A fresh production keyring file (version 1, mode 0600); never overwrites."""
    try:
        write_key_file_exclusive(path, [KeyVersion(1, new_master())], dev=False)
    except FileExistsError:
        raise KeyConfigurationError(f"{path} exists already: it is not overwritten") from None


# what is encrypted -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TextTable:
    table: Table
    pk: str
    columns: tuple[tuple[str, str], ...]  # (column, aad)
    blind: tuple[tuple[str, str, str, Callable[[str], str]], ...] = field(default=())  # (bi column, source, domain, norm)


@dataclass(frozen=True)
class BlobTable:
    table: Table
    pk: str
    column: str
    aad: Callable[[Any], str]  # row -> associated data
    base64_text: bool = False  # the ciphertext kept as base64 in a Text column

    def read(self, row: Any) -> bytes | None:
        v = getattr(row, self.column)
        if v is None:
            return None
        return base64.b64decode(v) if self.base64_text else bytes(v)

    def stored(self, blob: bytes) -> bytes | str:
        return base64.b64encode(blob).decode("ascii") if self.base64_text else blob


def text_tables() -> list[TextTable]:
    out = []
    blind_by_table = {m.class_.__tablename__: getattr(m.class_, "__blind_indexes__", {})
                      for m in Base.registry.mappers}
    for t in Base.metadata.sorted_tables:
        cols = tuple((c.name, c.type.aad) for c in t.columns if isinstance(c.type, EncryptedText))
        if not cols:
            continue
        pk = [c.name for c in t.primary_key.columns]
        blind = tuple((bi, src, dom, norm) for bi, (src, dom, norm) in blind_by_table.get(t.name, {}).items())
        out.append(TextTable(t, pk[0], cols, blind))
    return out


def blob_tables() -> list[BlobTable]:
    """Every value encrypted by a service rather than by its column type (with the same AAD as
    the service uses): probes, suppressed embeddings, a pending erasure request's photos'
    embeddings and its match list. A column that is missing here is neither counted by ``keys
    status`` nor moved by ``keys rotate``."""
    return [BlobTable(ProbeImage.__table__, "search_id", "ciphertext", lambda r: f"probe:{r.search_id}"),
            BlobTable(Suppression.__table__, "id", "ciphertext", lambda r: f"suppression:{r.public_id}"),
            BlobTable(ErasureRequest.__table__, "id", "probes", lambda r: f"erasure-probes:{r.public_id}"),
            BlobTable(ErasureRequest.__table__, "id", "matches", lambda r: f"erasure-matches:{r.public_id}",
                      base64_text=True)]


# the data step of migration 0009 ---------------------------------------------------------------
def encrypt_plaintext(engine: Engine, keyring: Keyring, batch: int = 500) -> int:
    """Encrypt clear values left by schemas before 0009, fill the blind indexes and re-key the
    lockouts; once per set of encrypted columns (kept in ``crypto_state``: a later schema that
    encrypts one more column runs it again). Returns the number of rows changed."""
    covered = sorted(iter_specs())
    with engine.connect() as conn:
        done = conn.execute(select(CryptoState.value).where(CryptoState.name == PLAINTEXT_DONE)).scalar()
    if done is not None and set(covered) <= set(json.loads(done).get("columns", [])):
        return 0
    changed = 0
    for spec in text_tables():
        changed += _rewrite_table(engine, keyring, spec, None, batch)
    with engine.begin() as conn:
        for key, failures, started, until in conn.execute(
                select(Lockout.key, Lockout.failures, Lockout.window_started_at, Lockout.locked_until)).all():
            if len(key) == 64 and all(c in "0123456789abcdef" for c in key):
                continue
            conn.execute(delete(Lockout.__table__).where(Lockout.__table__.c.key == key))
            conn.execute(insert(Lockout.__table__).values(
                key=keyring.blind_index("user", normalise_user_name(key)), failures=failures,
                window_started_at=started, locked_until=until))
            changed += 1
        t = CryptoState.__table__
        conn.execute(delete(t).where(t.c.name == PLAINTEXT_DONE))
        conn.execute(insert(t).values(name=PLAINTEXT_DONE, value=json.dumps({"columns": covered}), updated_at=utcnow()))
    if changed and engine.dialect.name == "sqlite":
        _compact_sqlite(engine)
    return changed


def _compact_sqlite(engine: Engine) -> None:
    """Leave no clear copy behind in free pages or the write-ahead log."""
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = engine.raw_connection()
    try:
        raw.driver_connection.execute("VACUUM")
        raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()


def _raw_rows(conn: Any, spec: TextTable, after: Any, limit: int) -> list[Any]:
    t = spec.table
    cols = ([t.c[spec.pk]] + [type_coerce(t.c[c], Text).label(c) for c, _ in spec.columns]
            + [t.c[bi] for bi, *_ in spec.blind])
    q = select(*cols).order_by(t.c[spec.pk]).limit(limit)
    if after is not None:
        q = q.where(t.c[spec.pk] > after)
    return conn.execute(q).all()


def _row_version(row: Any, spec: TextTable) -> int | None:
    """The oldest key version of the row's values (-1: a clear value; None: nothing stored)."""
    versions = []
    for c, _ in spec.columns:
        v = getattr(row, c)
        if v is None:
            continue
        versions.append(Keyring.version_of(text_blob(v)) if is_encrypted_text(v) else -1)
    return min(versions) if versions else None


def _needs_rewrite(row: Any, spec: TextTable, target: int | None) -> bool:
    oldest = _row_version(row, spec)
    if oldest is None:
        return False
    if target is None:  # the data step: clear values, or blind indexes never computed
        return oldest == -1 or any(getattr(row, bi) is None and getattr(row, src) is not None
                                   for bi, src, *_ in spec.blind)
    return oldest != target


def _rewrite_row(keyring: Keyring, spec: TextTable, row: Any, version: int) -> dict[str, Any]:
    clear: dict[str, str | None] = {}
    values: dict[str, Any] = {}
    for c, aad in spec.columns:
        v = getattr(row, c)
        if v is None:
            clear[c] = None
            continue
        clear[c] = keyring.decrypt_text(v, aad) if is_encrypted_text(v) else v
        values[c] = keyring.encrypt_text(clear[c], aad, version)
    for bi, src, dom, norm in spec.blind:
        value = clear.get(src)
        values[bi] = None if value is None else keyring.blind_index(dom, norm(value), version)
    return values


def _in_batches(engine: Engine, pk: str, fetch: Callable[[Any, Any], list[Any]],
                rewrite: Callable[[Any, list[Any]], int], after: Any,
                progress: Callable[[Any, Any, int], None] | None) -> int:
    """Page through a table in primary-key order, one transaction per batch: ``rewrite(conn,
    rows)`` updates what needs it and says how many, and ``progress`` records the batch in the same
    transaction, so a killed run resumes after the last batch it committed."""
    changed = 0
    while True:
        with engine.begin() as conn:
            rows = fetch(conn, after)
            if not rows:
                return changed
            n = rewrite(conn, rows)
            after = getattr(rows[-1], pk)
            changed += n
            if progress is not None:
                progress(conn, after, n)
        if progress is not None:
            _fault("keys_rotate_batch")


def _rewrite_table(engine: Engine, keyring: Keyring, spec: TextTable, version: int | None, batch: int, *,
                   after: Any = None, progress: Callable[[Any, Any, int], None] | None = None) -> int:
    """Re-encrypt the table's rows that need it under ``version`` (None: the data step, under the
    newest version, only clear values), ``batch`` rows per transaction."""
    t = spec.table

    def rewrite(conn: Any, rows: list[Any]) -> int:
        target = version if version is not None else keyring.current_version
        n = 0
        for row in rows:
            if _needs_rewrite(row, spec, version):
                conn.execute(update(t).where(t.c[spec.pk] == getattr(row, spec.pk))
                             .values(**_rewrite_row(keyring, spec, row, target)))
                n += 1
        return n

    return _in_batches(engine, spec.pk, lambda conn, last: _raw_rows(conn, spec, last, batch), rewrite,
                       after, progress)


def _rewrite_blobs(engine: Engine, keyring: Keyring, spec: BlobTable, version: int, batch: int, *,
                   after: Any = None, progress: Callable[[Any, Any, int], None] | None = None) -> int:
    t = spec.table

    def fetch(conn: Any, last: Any) -> list[Any]:
        q = select(t).order_by(t.c[spec.pk]).limit(batch)
        if last is not None:
            q = q.where(t.c[spec.pk] > last)
        return list(conn.execute(q).all())

    def rewrite(conn: Any, rows: list[Any]) -> int:
        n = 0
        for row in rows:
            blob = spec.read(row)
            if blob is None or Keyring.version_of(blob) == version:
                continue
            aad = spec.aad(row)
            conn.execute(update(t).where(t.c[spec.pk] == getattr(row, spec.pk)).values(
                {spec.column: spec.stored(keyring.encrypt(keyring.decrypt(blob, aad), aad, version))}))
            n += 1
        return n

    return _in_batches(engine, spec.pk, fetch, rewrite, after, progress)


def _fault(point: str) -> None:
    """Fault injection for the crash test only (FACESEARCH_TEST_CRASH=<point>)."""
    if os.environ.get("FACESEARCH_TEST_CRASH") == point:
        os._exit(75)


# rotation --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RotationReport:
    target_version: int
    rewritten: int
    resumed: bool
    new_key: bool

    def to_json(self) -> dict[str, object]:
        return {"target_version": self.target_version, "rewritten": self.rewritten, "resumed": self.resumed,
                "new_key": self.new_key}


def _state(engine: Engine) -> dict[str, Any] | None:
    with engine.connect() as conn:
        v = conn.execute(select(CryptoState.value).where(CryptoState.name == ROTATION)).scalar()
    return json.loads(v) if v else None


def _save_state(conn: Any, state: dict[str, Any]) -> None:
    t = CryptoState.__table__
    text = json.dumps(state, sort_keys=True)
    if conn.execute(update(t).where(t.c.name == ROTATION).values(value=text, updated_at=utcnow())).rowcount == 0:
        conn.execute(insert(t).values(name=ROTATION, value=text, updated_at=utcnow()))


def rotate(engine: Engine, keyring: Keyring, source: KeySource, batch: int = 200) -> RotationReport:
    """Move every encrypted value and blind index to a new key version (see the module's text)."""
    state = _state(engine)
    resumed = bool(state and not state.get("done"))
    new_key = False
    if resumed:
        assert state is not None  # nosec B101 - narrows the type; resumed implies a saved state
        target = int(state["target"])
    elif source.env_key:
        target = keyring.current_version  # the operator added the new version to FACESEARCH_KEY
        state = {"target": target, "step": 0, "after": None, "done": False, "started_at": utcnow().isoformat()}
    else:
        target = keyring.current_version + 1
        state = {"target": target, "step": 0, "after": None, "done": False, "started_at": utcnow().isoformat()}
        with engine.begin() as conn:
            _save_state(conn, state)  # first the intent, then the key: a crash between them is resumed
    if target not in keyring.versions:
        if source.env_key:
            raise KeyConfigurationError(f"the rotation in progress needs key version {target} in FACESEARCH_KEY")
        material = keyring.material
        versions = list(material.versions) + [KeyVersion(target, new_master())]
        write_key_file(source.key_file, versions, dev=material.dev_generated)
        keyring.reload()
        new_key = True
    steps: list[TextTable | BlobTable] = [*text_tables(), *blob_tables()]
    start, after = int(state["step"]), state.get("after")
    for _sweep in range(3):  # a later sweep catches values written under an older version meanwhile
        for i in range(start, len(steps)):
            spec = steps[i]

            def progress(conn: Any, last: Any, n: int, i: int = i) -> None:
                state.update(step=i, after=last, rewritten=int(state.get("rewritten", 0)) + n)
                _save_state(conn, state)

            if isinstance(spec, TextTable):
                _rewrite_table(engine, keyring, spec, target, batch, after=after, progress=progress)
            else:
                _rewrite_blobs(engine, keyring, spec, target, batch, after=after, progress=progress)
            after = None
        if not_under(engine, target) == 0:
            break
        start, after = 0, None
    state.update(done=True, finished_at=utcnow().isoformat())
    with engine.begin() as conn:
        _save_state(conn, state)
    return RotationReport(target, int(state.get("rewritten", 0)), resumed, new_key)


@dataclass(frozen=True)
class RetireReport:
    retired: int
    remaining: list[int]
    lockouts_rekeyed: int = 0  # accounts' lockout counters moved off the retired version

    def to_json(self) -> dict[str, object]:
        return {"retired": self.retired, "remaining": self.remaining, "lockouts_rekeyed": self.lockouts_rekeyed}


def retire(engine: Engine, keyring: Keyring, source: KeySource, version: int) -> RetireReport:
    """Remove an old key version from the key file, once no stored value needs it.

    Refused for the current version, while a rotation is unfinished, while any value (text
    column, blob, or a value sealed by a service) is still under ``version``, and for keys that
    come from ``FACESEARCH_KEY`` (the operator edits that value). Backups taken before the
    rotation stay sealed under the retired version: the caller keeps an offline copy."""
    if source.env_key:
        raise KeyConfigurationError("the keys come from FACESEARCH_KEY: remove the version from that value once "
                                    "`facesearch keys status` shows no value under it")
    if version not in keyring.versions:
        raise KeyConfigurationError(f"there is no key version {version} (versions: {keyring.versions})")
    if version == keyring.current_version:
        raise KeyConfigurationError(f"key version {version} is the current one: new values are written under it")
    state = _state(engine)
    if state and not state.get("done"):
        raise KeyConfigurationError("a rotation is unfinished: run `facesearch keys rotate` to finish it first")
    left = value_versions(engine).get(str(version), 0)
    if left:
        raise KeyConfigurationError(f"{left} stored values are still under key version {version}: "
                                    "run `facesearch keys rotate` first")
    rekeyed = _rekey_lockouts(engine, keyring, version)
    material = keyring.material
    kept = [v for v in material.versions if v.version != version]
    write_key_file(source.key_file, kept, dev=material.dev_generated)
    keyring.reload()
    return RetireReport(version, [v.version for v in kept], rekeyed)


def _stamp(row: Any) -> Any:
    """The latest time a lockout row records (its lock's end or its window's start)."""
    return max((t for t in (row.locked_until, row.window_started_at) if t is not None), default=None)


def _rekey_lockouts(engine: Engine, keyring: Keyring, version: int) -> int:
    """Move accounts' lockout counters kept under ``version``'s blind index of the user name to
    the current version's, so that retiring ``version`` does not end a lock early. (Rotation
    cannot do this: a lockout row holds only the blind index. Here the names come from the
    accounts; counters of names without an account are left, and stop counting once the
    version is gone: there is no account behind them to guess a password for.)"""
    column = User.__table__.c.username_key
    lk = Lockout.__table__
    moved = 0
    with engine.begin() as conn:
        for value in conn.execute(select(type_coerce(column, Text))).scalars().all():
            name = normalise_user_name(keyring.decrypt_text(value, column.type.aad) if is_encrypted_text(value) else value)
            old, new = keyring.blind_index("user", name, version), keyring.blind_index("user", name)
            rows = {r.key: r for r in conn.execute(select(lk).where(lk.c.key.in_([old, new])))}
            if old == new or old not in rows:
                continue
            later = new in rows and _stamp(rows[new]) is not None and (
                _stamp(rows[old]) is None or _stamp(rows[new]) > _stamp(rows[old]))
            if later:  # both exist (a race at sign-in): the newer counters stay
                conn.execute(delete(lk).where(lk.c.key == old))
            else:
                conn.execute(delete(lk).where(lk.c.key == new))
                conn.execute(update(lk).where(lk.c.key == old).values(key=new))
            moved += 1
    return moved


def not_under(engine: Engine, target: int) -> int:
    """How many stored values are not under ``target`` (0: the rotation is complete)."""
    counts = value_versions(engine)
    return sum(n for v, n in counts.items() if v != str(target))


def value_versions(engine: Engine) -> dict[str, int]:
    """How many stored values each key version encrypts (``"clear"``: not encrypted)."""
    counts: dict[str, int] = {}

    def add(key: str) -> None:
        counts[key] = counts.get(key, 0) + 1

    with engine.connect() as conn:
        for spec in text_tables():
            t = spec.table
            for c, _ in spec.columns:
                for (v,) in conn.execute(select(type_coerce(t.c[c], Text)).where(t.c[c].is_not(None))):
                    add(str(Keyring.version_of(text_blob(v))) if is_encrypted_text(v) else "clear")
        for bspec in blob_tables():
            for row in conn.execute(select(bspec.table.c[bspec.column])):
                blob = bspec.read(row)
                if blob is not None:
                    add(str(Keyring.version_of(blob)))
    return counts


def status(engine: Engine, keyring: Keyring, settings: Settings) -> dict[str, object]:
    material = keyring.material
    return {"env": settings.env, "source": material.source,
            "key_file": str(material.path) if material.path else None,
            "versions": keyring.versions, "current_version": keyring.current_version,
            "development_key": material.dev_generated,
            "production_problems": production_problems(settings),
            "values_by_version": value_versions(engine), "rotation": _state(engine)}


def iter_specs() -> Iterator[str]:  # for documentation and tests
    for spec in text_tables():
        for c, _ in spec.columns:
            yield f"{spec.table.name}.{c}"
    for b in blob_tables():
        yield f"{b.table.name}.{b.column}"

