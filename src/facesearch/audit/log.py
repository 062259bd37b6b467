"""The append-only, hash-chained audit trail on the engine's database (SQLite or PostgreSQL).

Services append one record per security-relevant event (login, search, candidate view, review,
export, ingest, user/role change, gallery grant, erasure, audit read); :meth:`AuditLog.verify`
walks the chain offline and reports the first broken link.

**Details never hold secrets.** ``details`` is free-form JSON for *safe* context (counts, ids,
case numbers, reasons). Passwords, password hashes, tokens, TOTP codes, session ids, cookies,
keys, probe images and embeddings must never be passed: the record is kept for years, shown to
auditors and cannot be erased. The caller chooses the fields; as a tripwire, :meth:`append`
refuses details whose *key names* look like secrets (``password``, ``token``, ``secret``, ...),
which catches accidents but not a secret stored under an innocent name.

Appends are serialised so that concurrent writers (threads or processes) never fork the chain:
SQLite takes the database's write lock first (``BEGIN IMMEDIATE``), PostgreSQL a transaction-level
advisory lock; then the head is read, the next ``seq`` (head + 1, no gaps) and the hash are
computed and the row inserted in the same transaction. The primary key on ``seq`` and the
unique ``prev_hash`` make a fork impossible to store even if the lock were bypassed.

Each ``append`` is its own transaction on its own connection. On SQLite, do not call it while
the same thread holds an open write transaction on the same database (it would wait for its own
lock until the busy timeout): write the audit record after committing, or before starting.

Limitation: records removed from the *end* of the chain leave a shorter chain that is still
valid, and someone who can write to the table can rewrite every record from some point on with
recomputed hashes. Both are detected only against a head kept elsewhere: publish
:meth:`AuditLog.head` (or the verified ``VerifyReport.head_seq``/``head_hash``) regularly to a
place the database's administrators cannot change, and pass it to ``verify(expected_head=...)``.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, NamedTuple

from sqlalchemy import Engine, String, func, insert, select, type_coerce
from sqlalchemy.engine import Connection

from facesearch.audit.chain import GENESIS_HASH, details_text, format_at, is_hash, record_hash
from facesearch.errors import InvalidInput
from facesearch.store.audit_table import AuditLogRow

_T = AuditLogRow.__table__

# The key of PostgreSQL's advisory lock that serialises appends: the first 8 bytes of
# SHA-256("facesearch.audit_log") as a signed 64-bit integer.
ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"facesearch.audit_log").digest()[:8], "big",
                                   signed=True)
MAX_DETAILS_CHARS = 16_384
_SQLITE_AT_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores DateTime in SQLite
_SECRET_KEY_PARTS = ("password", "passwd", "passphrase", "secret", "token", "apikey",
                     "authorization", "cookie", "privatekey", "sessionid", "totp", "mfacode",
                     "otpcode")
_SECRET_KEYS = {"otp", "pin", "pwd", "session", "credentials"}


class AuditAction(StrEnum):
    LOGIN = "login"
    SEARCH = "search"
    CANDIDATE_VIEW = "candidate_view"
    REVIEW = "review"
    EXPORT = "export"
    INGEST = "ingest"
    USER_CHANGE = "user_change"
    ROLE_CHANGE = "role_change"
    GALLERY_GRANT = "gallery_grant"
    ERASURE = "erasure"
    AUDIT_READ = "audit_read"


class AuditOutcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"   # e.g. a wrong password, an invalid input
    DENIED = "denied"     # refused by the authorization decision point
    ERROR = "error"       # the system failed


class ChainHead(NamedTuple):
    """The newest record's ``(seq, hash)``; ``(0, GENESIS_HASH)`` for an empty trail."""

    seq: int
    hash: str


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: datetime                # timezone-aware, UTC
    actor: str
    agency: str | None
    action: str
    target: str | None
    outcome: str
    request_id: str | None
    details_json: str           # exactly as stored and hashed
    prev_hash: str
    hash: str

    @property
    def details(self) -> dict[str, Any]:
        return json.loads(self.details_json)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": format_at(self.at), "actor": self.actor,
                "agency": self.agency, "action": self.action, "target": self.target,
                "outcome": self.outcome, "request_id": self.request_id, "details": self.details,
                "prev_hash": self.prev_hash, "hash": self.hash}


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`AuditLog.verify` found.

    ``checked``: records found intact before the first break (all of them when ``ok``).
    ``first_broken_seq``: the seq at which the chain breaks (for records missing at the end,
    the first missing seq), ``None`` when ``ok``. ``head_seq``/``head_hash``: the last intact
    record (``0`` and the genesis hash when there is none): what to anchor when ``ok``.
    ``anchored``: whether an expected head was given and checked.
    """

    ok: bool
    checked: int
    first_broken_seq: int | None
    reason: str | None
    head_seq: int
    head_hash: str
    anchored: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "first_broken_seq": self.first_broken_seq,
                "reason": self.reason, "head": {"seq": self.head_seq, "hash": self.head_hash},
                "anchored": self.anchored}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class AuditLog:
    """The audit trail in ``audit_log`` (created by migration 0003)."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = _utcnow) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ValueError(f"the audit log supports SQLite and PostgreSQL, not {engine.dialect.name}")
        self._engine = engine
        self._clock = clock
        self._sqlite = engine.dialect.name == "sqlite"

    # -- writing -------------------------------------------------------------------------------

    def append(self, action: AuditAction | str, *, actor: str, agency: str | None,
               target: str | None, outcome: AuditOutcome | str, request_id: str | None,
               details: Mapping[str, Any] | None = None) -> AuditRecord:
        """Append one record and return it. ``details`` must hold no secrets (module docstring).

        Raises ``InvalidInput`` for an unknown action or outcome, an empty actor, a field longer
        than its column, a NUL character, or details that are not a JSON object of safe keys.
        """
        action = _choice(action, AuditAction, "action")
        outcome = _choice(outcome, AuditOutcome, "outcome")
        actor = _text("actor", actor, 200, required=True)
        agency = _text("agency", agency, 200)
        target = _text("target", target, 500)
        request_id = _text("request_id", request_id, 100)
        try:
            details_json = details_text(details)
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"audit details must be a JSON object: {e}") from None
        _refuse_secret_keys(details)
        if len(details_json) > MAX_DETAILS_CHARS:
            raise InvalidInput(f"audit details are longer than {MAX_DETAILS_CHARS} characters")
        _text("details", details_json, MAX_DETAILS_CHARS)

        with self._writer() as conn:
            head = self._head(conn)
            at = self._clock()
            if at.tzinfo is None or at.utcoffset() is None:
                raise ValueError("the audit clock must return timezone-aware times")
            at = at.astimezone(timezone.utc)
            h = record_hash(seq=head.seq + 1, at=at, actor=actor, agency=agency, action=action,
                            target=target, outcome=outcome, request_id=request_id,
                            details=details_json, prev_hash=head.hash)
            record = AuditRecord(
                seq=head.seq + 1, at=at, actor=actor, agency=agency, action=action,
                target=target, outcome=outcome, request_id=request_id, details_json=details_json,
                prev_hash=head.hash, hash=h)
            conn.execute(insert(_T).values(
                seq=record.seq, at=record.at, actor=record.actor, agency=record.agency,
                action=record.action, target=record.target, outcome=record.outcome,
                request_id=record.request_id, details=record.details_json,
                prev_hash=record.prev_hash, hash=record.hash))
            conn.commit()
        return record

    def _writer(self) -> _Writer:
        return _Writer(self._engine, self._sqlite)

    # -- reading -------------------------------------------------------------------------------

    def head(self) -> ChainHead:
        """The newest record's ``(seq, hash)`` as stored (not verified): anchor it elsewhere."""
        with self._engine.connect() as conn:
            return self._head(conn)

    @staticmethod
    def _head(conn: Connection) -> ChainHead:
        row = conn.execute(select(_T.c.seq, _T.c.hash).order_by(_T.c.seq.desc()).limit(1)).first()
        return ChainHead(0, GENESIS_HASH) if row is None else ChainHead(row.seq, row.hash)

    def records(self, *, agency: str | None = None, action: AuditAction | str | None = None,
                actor: str | None = None, since: datetime | None = None,
                until: datetime | None = None, after_seq: int | None = None,
                limit: int | None = 1000, newest_first: bool = False) -> list[AuditRecord]:
        """Records matching every filter given, in seq order (``newest_first`` reverses it).

        ``since`` is inclusive, ``until`` exclusive (timezone-aware times); ``after_seq`` pages
        forward. Reading the trail is itself an event: the calling service records an
        ``audit_read``.
        """
        q = select(_T)
        if agency is not None:
            q = q.where(_T.c.agency == agency)
        if action is not None:
            q = q.where(_T.c.action == _choice(action, AuditAction, "action"))
        if actor is not None:
            q = q.where(_T.c.actor == actor)
        if since is not None:
            q = q.where(_T.c.at >= _aware_utc(since, "since"))
        if until is not None:
            q = q.where(_T.c.at < _aware_utc(until, "until"))
        if after_seq is not None:
            q = q.where(_T.c.seq > after_seq)
        q = q.order_by(_T.c.seq.desc() if newest_first else _T.c.seq)
        if limit is not None:
            if limit < 1:
                raise InvalidInput("limit must be at least 1")
            q = q.limit(limit)
        with self._engine.connect() as conn:
            return [_record(r) for r in conn.execute(q)]

    # -- verifying -----------------------------------------------------------------------------

    def verify(self, expected_head: tuple[int, str] | None = None, *,
               batch_size: int = 1000) -> VerifyReport:
        """Walk the chain from seq 1 and report the first broken link.

        Detects a changed byte in any field, a missing record (seq gap) and records swapped or
        reordered. With ``expected_head`` (an earlier :meth:`head`, kept elsewhere) it also
        detects records removed from the end and a rewrite of the chain with recomputed hashes.
        """
        anchor = None
        if expected_head is not None:
            seq, h = expected_head
            if type(seq) is not int or seq < 0 or not is_hash(h):
                raise InvalidInput("expected_head must be (seq >= 0, 64 lowercase hex digits)")
            anchor = ChainHead(seq, h)

        checked = 0
        last = ChainHead(0, GENESIS_HASH)

        def report(broken: int | None, reason: str | None) -> VerifyReport:
            return VerifyReport(ok=broken is None, checked=checked, first_broken_seq=broken,
                                reason=reason, head_seq=last.seq, head_hash=last.hash,
                                anchored=anchor is not None)

        if anchor is not None and anchor.seq == 0 and anchor.hash != GENESIS_HASH:
            return report(0, "the anchored head of an empty chain must be the genesis hash")
        for row in self._rows(batch_size):
            reason = _check_row(row, last, self._sqlite)
            if reason is not None:
                return report(row.seq if isinstance(row.seq, int) else last.seq + 1, reason)
            if anchor is not None and row.seq == anchor.seq and row.hash != anchor.hash:
                return report(row.seq, "record does not match the anchored head: the chain was "
                                       "rewritten from this record or earlier")
            last = ChainHead(row.seq, row.hash)
            checked += 1
        if anchor is not None and last.seq < anchor.seq:
            return report(last.seq + 1, f"the chain ends at seq {last.seq} but the anchored head "
                                        f"is seq {anchor.seq}: records were removed from the end")
        return report(None, None)

    def _rows(self, batch_size: int) -> Iterator[Any]:
        # SQLite: the stored text of ``at``, so that a changed byte cannot hide behind parsing.
        at = type_coerce(_T.c.at, String).label("at") if self._sqlite else _T.c.at
        cols = [_T.c.seq, at, _T.c.actor, _T.c.agency, _T.c.action, _T.c.target, _T.c.outcome,
                _T.c.request_id, _T.c.details, _T.c.prev_hash, _T.c.hash]
        after: int | None = None
        with self._engine.connect() as conn:
            while True:
                q = select(*cols).order_by(_T.c.seq).limit(batch_size)
                if after is not None:
                    q = q.where(_T.c.seq > after)
                rows = conn.execute(q).all()
                yield from rows
                if len(rows) < batch_size:
                    return
                after = rows[-1].seq


class _Writer:
    """A connection holding the chain's write lock for one append (a context manager)."""

    def __init__(self, engine: Engine, sqlite: bool) -> None:
        self._engine, self._sqlite = engine, sqlite

    def __enter__(self) -> Connection:
        if self._sqlite:
            self._conn = self._engine.connect()
            self._conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, before the head is read
        else:
            # READ COMMITTED: every statement after the lock sees the previous holder's commit.
            self._conn = self._engine.connect().execution_options(isolation_level="READ COMMITTED")
            self._conn.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
        return self._conn

    def __exit__(self, *exc: object) -> None:
        try:
            if self._conn.in_transaction():
                self._conn.rollback()
        finally:
            self._conn.close()


def _check_row(row: Any, prev: ChainHead, sqlite: bool) -> str | None:
    """Why ``row`` does not continue the chain after ``prev``, or None."""
    if row.seq != prev.seq + 1:
        if isinstance(row.seq, int) and row.seq > prev.seq + 1:
            missing = (f"seq {prev.seq + 1}" if row.seq == prev.seq + 2
                       else f"seqs {prev.seq + 1}..{row.seq - 1}")
            return f"record(s) missing before this one ({missing})"
        return f"unexpected seq {row.seq!r} after {prev.seq}"
    if row.prev_hash != prev.hash:
        return (f"prev_hash does not match the hash of record {prev.seq}: records were removed, "
                "swapped or changed" if prev.seq else "prev_hash of the first record is not the "
                "genesis hash")
    try:
        at = _stored_at(row.at, sqlite)
        fields = {"seq": row.seq, "at": at, "actor": row.actor, "agency": row.agency,
                  "action": row.action, "target": row.target, "outcome": row.outcome,
                  "request_id": row.request_id, "details": row.details, "prev_hash": row.prev_hash}
        computed = record_hash(**fields)
    except (TypeError, ValueError, UnicodeError) as e:
        return f"record cannot be read in its canonical form: {e}"
    if computed != row.hash:
        return "record content does not match its hash: the record was changed"
    return None


def _stored_at(value: Any, sqlite: bool) -> datetime:
    if sqlite:
        if not isinstance(value, str):
            raise TypeError(f"stored time is {type(value).__name__}, not text")
        at = datetime.strptime(value, _SQLITE_AT_FORMAT)
        if at.strftime(_SQLITE_AT_FORMAT) != value:
            raise ValueError(f"stored time {value!r} is not in its canonical form")
        return at.replace(tzinfo=timezone.utc)
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise TypeError("stored time is not a timezone-aware timestamp")
    return value.astimezone(timezone.utc)


def _record(row: Any) -> AuditRecord:
    at = row.at.replace(tzinfo=timezone.utc) if row.at.tzinfo is None else row.at.astimezone(timezone.utc)
    return AuditRecord(seq=row.seq, at=at, actor=row.actor, agency=row.agency, action=row.action,
                       target=row.target, outcome=row.outcome, request_id=row.request_id,
                       details_json=row.details, prev_hash=row.prev_hash, hash=row.hash)


def _choice(value: object, enum: type[StrEnum], name: str) -> str:
    try:
        return enum(value).value
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise InvalidInput(f"unknown audit {name} {value!r} (one of: {allowed})") from None


def _text(name: str, value: object, max_len: int, *, required: bool = False) -> Any:
    if value is None:
        if required:
            raise InvalidInput(f"audit {name} is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"audit {name} must be text, not {type(value).__name__}")
    if required and not value.strip():
        raise InvalidInput(f"audit {name} must not be empty")
    if len(value) > max_len:
        raise InvalidInput(f"audit {name} is longer than {max_len} characters")
    if "\x00" in value:
        raise InvalidInput(f"audit {name} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"audit {name} is not valid Unicode text") from None
    return value


def _refuse_secret_keys(value: object, path: str = "details") -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            norm = "".join(c for c in str(k).lower() if c.isalnum())
            if norm in _SECRET_KEYS or any(p in norm for p in _SECRET_KEY_PARTS):
                raise InvalidInput(f"audit {path}.{k} looks like a secret; audit details must "
                                   "never hold passwords, tokens, codes or keys")
            _refuse_secret_keys(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _refuse_secret_keys(v, f"{path}[{i}]")


def _aware_utc(at: datetime, name: str) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInput(f"{name} must be timezone-aware")
    return at.astimezone(timezone.utc)
