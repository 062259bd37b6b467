"""Secrets never leave the server: after sign-in (right and wrong), TOTP, searches, reviews,
exports and errors through the live server, its log output, the /metrics body, every error answer
and every audit record hold no password, TOTP secret or code, bearer token, user name, case number
or probe bytes."""
from __future__ import annotations

from sqlalchemy import text

from facesearch.store.db import make_engine
from tests.security.flow import Flow, code_found, found_in, slices


def _audit_text(flow: Flow) -> str:
    engine = make_engine(flow.db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT actor, agency, action, target, outcome, request_id, details "
                                     "FROM audit_log ORDER BY seq")).all()
    finally:
        engine.dispose()
    assert len(rows) > 20  # logins, searches, views, reviews, exports, audit reads were recorded
    return "\n".join(" ".join(str(v) for v in r) for r in rows)


def test_no_secret_in_logs_metrics_errors_or_audit(drill_flow: Flow) -> None:
    flow = drill_flow
    channels = {"server log": flow.server_log.read_text(errors="replace"), "metrics": flow.metrics,
                "error answers": "\n".join(flow.error_bodies), "audit trail": _audit_text(flow)}
    assert flow.error_bodies and flow.metrics
    words = (flow.secrets["password"] + flow.secrets["totp_secret"] + flow.secrets["token"]
             + flow.known["user"] + flow.known["case"] + flow.known["agency"])
    hits = [f"{w!r} in {name}" for w in words for name, body in channels.items()
            if found_in(body.encode(), w)]
    codes = set(flow.secrets["totp_code"]) | {"000000", "999999", "123456"}
    hits += [f"TOTP code {c} in {name}" for c in codes for name, body in channels.items()
             if code_found(body, c)]
    probe = flow.probe.read_bytes()
    log_bytes = flow.server_log.read_bytes()
    hits += ["probe bytes in the server log" for part in slices(probe) + slices(flow.probe_stored_jpeg)
             if part in log_bytes]
    assert not hits, hits
