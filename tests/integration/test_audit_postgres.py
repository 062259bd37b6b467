"""The audit trail on a real PostgreSQL server (FACESEARCH_TEST_POSTGRES_URL): the append-only
triggers (UPDATE, DELETE, TRUNCATE), tamper detection with the triggers disabled, anchoring, and
two processes appending at once under the advisory lock."""
from __future__ import annotations

import os
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import exc

from facesearch.audit import AuditAction, AuditLog, AuditOutcome
from facesearch.audit.chain import record_hash
from facesearch.store.db import make_engine, migrate
from tests.unit.test_audit import Clock, run_two_writers  # the same helpers as on SQLite

URL = os.environ.get("FACESEARCH_TEST_POSTGRES_URL")
pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(not URL, reason="set FACESEARCH_TEST_POSTGRES_URL to a PostgreSQL server")]
COLUMNS = ("seq", "at", "actor", "agency", "action", "target", "outcome", "request_id", "details",
           "prev_hash", "hash")


@pytest.fixture()
def pg_url() -> str:
    """A fresh database on the test server, dropped afterwards."""
    import psycopg

    name = f"fs_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(URL, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')  # name is generated above, not user input
    yield f"{URL.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(URL, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def engine(pg_url: str):  # noqa: ANN201
    e = make_engine(pg_url)
    migrate(e)
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


def tamper(engine: sa.Engine, *statements: str) -> None:
    """What the table's owner can do: switch the triggers off, change rows, switch them on."""
    with engine.begin() as c:
        c.execute(sa.text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
        for s in statements:
            c.execute(sa.text(s))
        c.execute(sa.text("ALTER TABLE audit_log ENABLE TRIGGER USER"))


def test_append_then_verify_round_trip_on_postgresql(log: AuditLog) -> None:
    written = fill(log, 12)
    written.append(log.append("login", actor="Zoë", agency=None, target=None, outcome="failure",
                              request_id=None, details={"reason": "bad password", "x": ["ü", 1.5]}))
    report = log.verify()
    assert (report.ok, report.checked, report.head_hash) == (True, 13, written[-1].hash)
    assert log.records(limit=None) == written  # times keep their microseconds through timestamptz
    assert [r.seq for r in log.records(agency="agency-a", since=written[2].at,
                                       until=written[5].at)] == [3, 4, 5]


@pytest.mark.parametrize("statement, op", [
    ("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2", "UPDATE"),
    ("UPDATE audit_log SET actor = 'mallory' WHERE false", "UPDATE"),
    ("DELETE FROM audit_log WHERE seq = 3", "DELETE"),
    ("TRUNCATE audit_log", "TRUNCATE"),
])
def test_changes_are_refused_by_the_triggers(log: AuditLog, engine: sa.Engine, statement: str,
                                             op: str) -> None:
    import psycopg

    fill(log, 3)
    with pytest.raises(exc.DBAPIError, match=f"audit_log is append-only \\({op} refused\\)") as e:
        with engine.begin() as c:
            c.execute(sa.text(statement))
    assert isinstance(e.value.orig, psycopg.errors.RaiseException)
    report = log.verify()
    assert report.ok and report.checked == 3


def test_table_class_matches_the_migration_on_postgresql(engine: sa.Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from facesearch.store.tables import Base

    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
    assert [d for d in diff if "audit_log" in repr(d)] == []


@pytest.mark.parametrize("column, change", [
    ("actor", "actor || 'x'"),
    ("agency", "NULL"),
    ("details", "replace(details, '\"ok\"', '\"OK\"')"),
    ("at", "at + interval '1 microsecond'"),
    ("prev_hash", "overlay(prev_hash placing 'f' from 64)"),
    ("hash", "overlay(hash placing 'f' from 64)"),
])
def test_a_changed_field_is_detected_on_postgresql(log: AuditLog, engine: sa.Engine, column: str,
                                                   change: str) -> None:
    written = fill(log, 5)
    if column in ("prev_hash", "hash"):
        assert getattr(written[2], column)[-1] != "f"
    tamper(engine, f"UPDATE audit_log SET {column} = {change} WHERE seq = 3")
    report = log.verify()
    assert (report.ok, report.first_broken_seq, report.checked) == (False, 3, 2), report.reason


def test_a_deleted_record_is_detected_on_postgresql(log: AuditLog, engine: sa.Engine) -> None:
    fill(log, 5)
    tamper(engine, "DELETE FROM audit_log WHERE seq = 3")
    report = log.verify()
    assert (report.ok, report.first_broken_seq) == (False, 4)


def test_two_swapped_records_are_detected_on_postgresql(log: AuditLog, engine: sa.Engine) -> None:
    fill(log, 5)
    cols = ", ".join(COLUMNS[1:])
    tamper(engine,
           f"CREATE TEMP TABLE saved AS SELECT seq, {cols} FROM audit_log WHERE seq IN (2, 3)",
           "DELETE FROM audit_log WHERE seq IN (2, 3)",
           f"INSERT INTO audit_log (seq, {cols}) SELECT 5 - seq, {cols} FROM saved")
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT actor FROM audit_log WHERE seq = 2")).scalar() == "user2"
    report = log.verify()
    assert (report.ok, report.first_broken_seq) == (False, 2)


def test_a_truncated_tail_is_detected_only_against_an_anchor_on_postgresql(
        log: AuditLog, engine: sa.Engine) -> None:
    fill(log, 5)
    anchor = log.head()
    tamper(engine, "DELETE FROM audit_log WHERE seq >= 4")
    assert log.verify().ok
    report = log.verify(expected_head=anchor)
    assert (report.ok, report.first_broken_seq) == (False, 4)


def test_a_rewritten_chain_is_detected_only_against_an_anchor_on_postgresql(
        log: AuditLog, engine: sa.Engine) -> None:
    fill(log, 4)
    anchor = log.head()
    r = log.records()[3]
    forged = record_hash(seq=r.seq, at=r.at + timedelta(hours=1), actor=r.actor, agency=r.agency,
                         action=r.action, target=r.target, outcome=r.outcome,
                         request_id=r.request_id, details=r.details_json, prev_hash=r.prev_hash)
    tamper(engine, f"UPDATE audit_log SET at = at + interval '1 hour', hash = '{forged}' WHERE seq = 4")
    assert log.verify().ok
    report = log.verify(expected_head=anchor)
    assert (report.ok, report.first_broken_seq) == (False, 4)


def test_two_processes_appending_at_once_keep_one_chain_on_postgresql(
        pg_url: str, log: AuditLog) -> None:
    run_two_writers(pg_url, 100)
    report = log.verify()
    assert report.ok, report.reason
    assert report.checked == 200
    records = log.records(limit=None)
    assert [r.seq for r in records] == list(range(1, 201))
    for who in ("p1", "p2"):
        assert sorted(r.details["i"] for r in records if r.actor == who) == list(range(100))
    assert sum(a.actor != b.actor for a, b in zip(records, records[1:])) >= 2
