"""The audit trail on SQLite: append/verify, the append-only triggers, tamper detection (what an
attacker with the database file can do once the triggers are dropped), anchoring the head, and
concurrent appends from two processes."""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import exc

from facesearch.audit import GENESIS_HASH, AuditAction, AuditLog, AuditOutcome, ChainHead
from facesearch.audit.chain import canonical_bytes, canonical_fields, parse_at, record_hash
from facesearch.errors import InvalidInput
from facesearch.store.db import make_engine, migrate

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
COLUMNS = ("seq", "at", "actor", "agency", "action", "target", "outcome", "request_id", "details",
           "prev_hash", "hash")


class Clock:
    """A clock that ticks one second and one microsecond per call."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        t, self.now = self.now, self.now + timedelta(seconds=1, microseconds=1)
        return t


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "fs.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


@pytest.fixture()
def engine(db: Path):  # noqa: ANN201
    e = make_engine(f"sqlite:///{db}")
    yield e
    e.dispose()


@pytest.fixture()
def log(engine: sa.Engine) -> AuditLog:
    return AuditLog(engine, clock=Clock())


def fill(log: AuditLog, n: int = 5) -> list:
    actions = list(AuditAction)
    return [log.append(actions[i % len(actions)], actor=f"user{i}", agency="agency-a",
                       target=f"case-{i}", outcome=AuditOutcome.SUCCESS, request_id=f"req-{i}",
                       details={"n": i, "note": "ok"})
            for i in range(n)]


def attacker(db: Path) -> sqlite3.Connection:
    """Someone with the database file: a plain sqlite3 connection with the triggers dropped."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("DROP TRIGGER audit_log_no_update")
    con.execute("DROP TRIGGER audit_log_no_delete")
    return con


def one_byte_changed(value: str) -> str:
    """The same text with its last character replaced by another one (one byte, ASCII)."""
    last = value[-1]
    return value[:-1] + ("1" if last == "0" else "0" if last.isdigit() else
                         "b" if last == "a" else "a")


# -- round trip ---------------------------------------------------------------------------------

def test_append_then_verify_round_trip(log: AuditLog) -> None:
    written = fill(log, 12)
    report = log.verify()
    assert (report.ok, report.checked, report.first_broken_seq, report.reason) == (True, 12, None, None)
    assert (report.head_seq, report.head_hash) == (12, written[-1].hash)
    assert log.head() == ChainHead(12, written[-1].hash)
    assert [r.seq for r in written] == list(range(1, 13))
    assert written[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in zip(written, written[1:]))
    assert log.records(limit=None) == written  # what was returned is what is stored
    r = written[3]
    assert r.hash == record_hash(seq=r.seq, at=r.at, actor=r.actor, agency=r.agency, action=r.action,
                                 target=r.target, outcome=r.outcome, request_id=r.request_id,
                                 details=r.details_json, prev_hash=r.prev_hash)
    assert r.details == {"n": 3, "note": "ok"}
    assert r.to_json()["at"] == "2026-03-01T12:00:03.123459Z"


def test_optional_fields_and_unicode_round_trip(log: AuditLog) -> None:
    r = log.append("login", actor="Zoë", agency=None, target=None, outcome="failure",
                   request_id=None, details={"reason": "bad password", "ip": "10.0.0.1", "x": ["ü", 1.5]})
    assert log.records()[0] == r
    assert r.details_json == '{"ip":"10.0.0.1","reason":"bad password","x":["ü",1.5]}'
    assert log.verify().ok


def test_empty_log_verifies_and_its_head_is_genesis(log: AuditLog) -> None:
    assert log.head() == (0, GENESIS_HASH)
    report = log.verify(expected_head=log.head())
    assert report.ok and report.checked == 0 and report.anchored


def test_canonical_form_is_exactly_the_documented_json() -> None:
    """External verifiers rely on this exact text; changing it breaks every stored chain."""
    fields = canonical_fields(seq=7, at=datetime(2026, 3, 1, 13, 0, 0, 5, tzinfo=timezone(timedelta(hours=1))),
                              actor="alice", agency="north", action="search", target="case\n\"9\"",
                              outcome="success", request_id=None, details='{"k":"é"}',
                              prev_hash="ab" * 32)
    expected = ('{"action":"search","actor":"alice","agency":"north","at":"2026-03-01T12:00:00.000005Z",'
                '"details":"{\\"k\\":\\"é\\"}","outcome":"success","prev_hash":"' + "ab" * 32 + '",'
                '"request_id":null,"seq":7,"target":"case\\n\\"9\\"","v":1}')
    assert canonical_bytes(fields) == expected.encode("utf-8")
    assert record_hash(**{k: v for k, v in fields.items() if k != "v"} | {"at": parse_at(fields["at"])}) \
        == hashlib.sha256(expected.encode("utf-8")).hexdigest()


def test_naive_times_are_refused_by_the_canonical_form() -> None:
    with pytest.raises(ValueError):
        record_hash(seq=1, at=datetime(2026, 1, 1), actor="a", agency=None, action="login",
                    target=None, outcome="success", request_id=None, details="{}",
                    prev_hash=GENESIS_HASH)


# -- the triggers --------------------------------------------------------------------------------

def test_update_is_refused_by_the_trigger(log: AuditLog, engine: sa.Engine) -> None:
    fill(log, 3)
    with pytest.raises(exc.IntegrityError, match="audit_log is append-only"):
        with engine.begin() as c:
            c.execute(sa.text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2"))
    assert log.records()[1].actor == "user1" and log.verify().ok


def test_delete_is_refused_by_the_trigger(log: AuditLog, engine: sa.Engine, db: Path) -> None:
    fill(log, 3)
    with pytest.raises(exc.IntegrityError, match="audit_log is append-only"):
        with engine.begin() as c:
            c.execute(sa.text("DELETE FROM audit_log"))
    with pytest.raises(sqlite3.IntegrityError, match="audit_log is append-only"):
        sqlite3.connect(db, isolation_level=None).execute("DELETE FROM audit_log WHERE seq = 3")
    assert log.verify().checked == 3


def test_table_class_matches_the_migration(engine: sa.Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from facesearch.store.tables import Base

    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
        triggers = {r[0] for r in c.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_log'")}
    assert [d for d in diff if "audit_log" in repr(d)] == []
    assert triggers == {"audit_log_no_update", "audit_log_no_delete"}


# -- tampering (triggers dropped, as someone with the file would) --------------------------------

@pytest.mark.parametrize("column", ["actor", "agency", "action", "target", "outcome", "request_id",
                                    "details", "prev_hash", "hash", "at"])
def test_one_changed_byte_in_any_field_is_detected(log: AuditLog, db: Path, column: str) -> None:
    fill(log, 5)
    con = attacker(db)
    (old,) = con.execute(f"SELECT {column} FROM audit_log WHERE seq = 3").fetchone()
    con.execute(f"UPDATE audit_log SET {column} = ? WHERE seq = 3", (one_byte_changed(old),))
    report = log.verify()
    assert not report.ok
    assert report.first_broken_seq == 3, report.reason
    assert report.checked == 2 and report.head_seq == 2


def test_details_reformatted_without_changing_their_meaning_is_detected(log: AuditLog, db: Path) -> None:
    fill(log, 3)
    attacker(db).execute("""UPDATE audit_log SET details = '{"n": 1, "note": "ok"}' WHERE seq = 2""")
    report = log.verify()
    assert (report.ok, report.first_broken_seq) == (False, 2)


def test_changed_seq_is_detected(log: AuditLog, db: Path) -> None:
    fill(log, 5)
    attacker(db).execute("UPDATE audit_log SET seq = 30 WHERE seq = 3")
    report = log.verify()
    assert (report.ok, report.first_broken_seq) == (False, 4)
    assert "missing" in report.reason


@pytest.mark.parametrize("victim, broken", [(3, 4), (1, 2)])
def test_a_deleted_record_is_detected(log: AuditLog, db: Path, victim: int, broken: int) -> None:
    fill(log, 5)
    attacker(db).execute("DELETE FROM audit_log WHERE seq = ?", (victim,))
    report = log.verify()
    assert (report.ok, report.first_broken_seq) == (False, broken)
    assert f"seq {victim}" in report.reason


def test_two_swapped_records_are_detected(log: AuditLog, db: Path) -> None:
    """Rows 2 and 3 exchange their contents (each keeps its place in seq order)."""
    fill(log, 5)
    con = attacker(db)
    rows = {r[0]: r[1:] for r in con.execute(f"SELECT {', '.join(COLUMNS)} FROM audit_log WHERE seq IN (2, 3)")}
    con.execute("DELETE FROM audit_log WHERE seq IN (2, 3)")
    marks = ", ".join("?" * len(COLUMNS))
    con.execute(f"INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES ({marks})", (2, *rows[3]))
    con.execute(f"INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES ({marks})", (3, *rows[2]))
    report = log.verify()
    assert (report.ok, report.first_broken_seq) == (False, 2)


def test_two_records_reordered_by_exchanging_their_seq_are_detected(log: AuditLog, db: Path) -> None:
    fill(log, 5)
    con = attacker(db)
    con.execute("UPDATE audit_log SET seq = -1 WHERE seq = 2")
    con.execute("UPDATE audit_log SET seq = 2 WHERE seq = 4")
    con.execute("UPDATE audit_log SET seq = 4 WHERE seq = -1")
    report = log.verify()
    assert (report.ok, report.first_broken_seq) == (False, 2)


def test_a_truncated_tail_is_detected_only_against_an_anchored_head(log: AuditLog, db: Path) -> None:
    fill(log, 5)
    anchor = log.head()
    assert anchor.seq == 5
    attacker(db).execute("DELETE FROM audit_log WHERE seq >= 4")
    assert log.verify().ok  # the documented limitation: a shorter chain is still a valid chain
    report = log.verify(expected_head=anchor)
    assert (report.ok, report.first_broken_seq, report.anchored) == (False, 4, True)
    assert "removed from the end" in report.reason


def test_an_anchor_stays_valid_while_the_chain_grows(log: AuditLog) -> None:
    fill(log, 3)
    anchor = log.head()
    fill(log, 4)
    report = log.verify(expected_head=anchor)
    assert report.ok and report.checked == 7 and report.head_seq == 7


def test_a_chain_rewritten_with_recomputed_hashes_is_detected_only_against_an_anchor(
        log: AuditLog, db: Path, engine: sa.Engine) -> None:
    fill(log, 5)
    anchor = log.head()
    con = attacker(db)
    con.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3")
    prev = con.execute("SELECT hash FROM audit_log WHERE seq = 2").fetchone()[0]
    for rec in log.records(after_seq=2):  # the attacker knows the (public) algorithm
        h = record_hash(seq=rec.seq, at=rec.at, actor=rec.actor, agency=rec.agency,
                        action=rec.action, target=rec.target, outcome=rec.outcome,
                        request_id=rec.request_id, details=rec.details_json, prev_hash=prev)
        con.execute("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, h, rec.seq))
        prev = h
    assert log.verify().ok
    report = log.verify(expected_head=anchor)
    assert (report.ok, report.first_broken_seq) == (False, 5)
    assert "rewritten" in report.reason


def test_a_record_stored_with_a_noncanonical_time_is_detected(log: AuditLog, db: Path) -> None:
    fill(log, 3)
    attacker(db).execute("UPDATE audit_log SET at = replace(at, ' ', 'T') WHERE seq = 2")
    report = log.verify()
    assert (report.ok, report.first_broken_seq) == (False, 2)


def test_verify_walks_the_chain_in_batches(log: AuditLog, db: Path) -> None:
    fill(log, 25)
    assert log.verify(batch_size=4).checked == 25
    attacker(db).execute("DELETE FROM audit_log WHERE seq = 13")
    assert log.verify(batch_size=4).first_broken_seq == 14


# -- reading --------------------------------------------------------------------------------------

def test_records_filters(log: AuditLog) -> None:
    log.append("login", actor="a", agency="north", target=None, outcome="success", request_id="1")
    log.append("search", actor="a", agency="north", target="case-1", outcome="success", request_id="2")
    log.append("search", actor="b", agency="south", target="case-2", outcome="denied", request_id="3")
    log.append("export", actor="a", agency="north", target="case-1", outcome="success", request_id="4")
    assert [r.seq for r in log.records(agency="north")] == [1, 2, 4]
    assert [r.seq for r in log.records(action="search")] == [2, 3]
    assert [r.seq for r in log.records(actor="b")] == [3]
    assert [r.seq for r in log.records(since=T0 + timedelta(seconds=1, microseconds=1))] == [2, 3, 4]
    assert [r.seq for r in log.records(until=T0 + timedelta(seconds=2, microseconds=2))] == [1, 2]
    local = timezone(timedelta(hours=-5))
    assert [r.seq for r in log.records(since=(T0 + timedelta(seconds=2)).astimezone(local))] == [3, 4]
    assert [r.seq for r in log.records(limit=2, newest_first=True)] == [4, 3]
    assert [r.seq for r in log.records(after_seq=2, limit=1)] == [3]
    assert [r.seq for r in log.records(agency="north", action="search")] == [2]


# -- what append refuses --------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"action": "delete_everything"},
    {"outcome": "maybe"},
    {"actor": ""},
    {"actor": "x" * 201},
    {"target": "a\x00b"},
    {"request_id": "\udc80"},
    {"details": {"password": "hunter2"}},
    {"details": {"user": {"API-Key": "k"}}},
    {"details": {"items": [{"refresh_token": "t"}]}},
    {"details": {"n": float("nan")}},
    {"details": {"s": {1, 2}}},
    {"details": {1: "x"}},
    {"details": ["not", "an", "object"]},
    {"details": {"big": "x" * 20_000}},
])
def test_append_refuses_bad_input(log: AuditLog, kwargs: dict) -> None:
    args = {"action": "login", "actor": "a", "agency": None, "target": None, "outcome": "success",
            "request_id": None, "details": None} | kwargs
    action = args.pop("action")
    with pytest.raises(InvalidInput):
        log.append(action, **args)
    assert log.head().seq == 0


def test_naive_filter_times_are_refused(log: AuditLog) -> None:
    with pytest.raises(InvalidInput):
        log.records(since=datetime(2026, 1, 1))


# -- concurrency ----------------------------------------------------------------------------------

def _append_many(url: str, who: str, n: int, start: object) -> None:
    import time

    from facesearch.audit import AuditLog
    from facesearch.store.db import make_engine

    engine = make_engine(url)
    log = AuditLog(engine)
    start.wait()  # type: ignore[attr-defined]
    for i in range(n):
        log.append("search", actor=who, agency="a", target=f"{who}-{i}", outcome="success",
                   request_id=None, details={"i": i})
        time.sleep(0.002)  # a service does other work between events: lets the writers interleave
    engine.dispose()


def run_two_writers(url: str, n: int = 100) -> None:
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(2)  # both writers start appending at the same moment
    procs = [ctx.Process(target=_append_many, args=(url, who, n, start)) for who in ("p1", "p2")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]


def test_two_processes_appending_at_once_keep_one_valid_chain(db: Path, log: AuditLog) -> None:
    run_two_writers(f"sqlite:///{db}", 100)
    report = log.verify()
    assert report.ok, report.reason
    assert report.checked == 200
    records = log.records(limit=None)
    assert [r.seq for r in records] == list(range(1, 201))
    for who in ("p1", "p2"):
        assert sorted(r.details["i"] for r in records if r.actor == who) == list(range(100))
    assert sum(a.actor != b.actor for a, b in zip(records, records[1:])) >= 2  # they overlapped
