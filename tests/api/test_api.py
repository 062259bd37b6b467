"""The investigator API against a live server process (SQLite and PostgreSQL): sign-in, safeguarded
search, dual review, thumbnails, audit, operations endpoints, and bad input."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest

from facesearch.auth.tokens import hash_token
from facesearch.auth.totp import code_at
from tests.api.conftest import CASE, PASSWORD, PURPOSE, Live


def search(live: Live, who: str, **form: str) -> httpx.Response:
    data = {"gallery": "bookings-a", "case_number": CASE, "purpose": PURPOSE, **form}
    with live.client(who) as c, open(live.probe, "rb") as fh:
        return c.post("/api/v1/searches", data=data, files={"image": ("probe.jpg", fh, "image/jpeg")})


def test_login_answers_the_token_contract(live: Live) -> None:
    acc = live.accounts["sup_b"]
    r = httpx.post(f"{live.url}/api/v1/auth/login", json={
        "username": acc.username, "password": PASSWORD, "totp": code_at(acc.secret, datetime.now(timezone.utc))})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer" and body["expires_in"] > 0
    acc.token = body["access_token"]


def test_wrong_code_or_password_is_one_generic_401(live: Live) -> None:
    for payload in ({"username": "inv_b", "password": PASSWORD, "totp": "000000"},
                    {"username": "inv_b", "password": "wrong password 123", "totp": "123456"},
                    {"username": "nobody", "password": PASSWORD, "totp": "123456"}):
        r = httpx.post(f"{live.url}/api/v1/auth/login", json=payload)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "authentication_failed"


def test_five_failures_lock_the_account_whatever_the_case_or_spaces(live: Live) -> None:
    variants = ["lockme", "LOCKME", " lockme", "LockMe ", "lockme"]
    for name in variants:
        r = httpx.post(f"{live.url}/api/v1/auth/login", json={"username": name, "password": "x" * 12, "totp": "1"})
        assert r.status_code == 401
    acc = live.accounts["lockme"]
    r = httpx.post(f"{live.url}/api/v1/auth/login", json={
        "username": "lockme", "password": PASSWORD, "totp": code_at(acc.secret, datetime.now(timezone.utc))})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 800
    assert r.json()["error"]["code"] == "account_locked"


def test_search_answers_the_contract_with_leads_and_provenance(live: Live) -> None:
    r = search(live, "inv_a1", authorization_ref="warrant 77/2026")
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"search_id", "notice", "threshold", "candidates"} <= set(body)
    assert "investigative leads, not identifications" in body["notice"]
    top = body["candidates"][0]
    assert {"candidate_id", "subject", "score", "thumbnail_url", "source_uri", "legal_basis"} <= set(top)
    assert top["subject"] == "dlib_John_Simm"
    assert top["legal_basis"] == "State booking records, statute 12-3"
    assert len({c["candidate_id"] for c in body["candidates"]}) == len(body["candidates"])
    assert not body["search_id"].isdigit() and len(body["search_id"]) == 32  # random, not sequential
    with live.client("inv_a1") as c:
        t = c.get(top["thumbnail_url"])
    assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg" and t.content[:2] == b"\xff\xd8"


@pytest.mark.parametrize("form,code,status", [
    ({"case_number": ""}, "missing_case_info", 422),
    ({"purpose": ""}, "missing_case_info", 422),
    ({"case_number": "ABC"}, "case_number_rejected", 422),
    ({"purpose": "curiosity"}, "purpose_rejected", 422),
    ({"gallery": "bookings-b"}, "gallery_not_found", 404),
    ({"gallery": "no-such-gallery"}, "gallery_not_found", 404),
])
def test_search_safeguards_refuse_with_a_catalogued_error(live: Live, form: dict, code: str, status: int) -> None:
    r = search(live, "inv_a1", **form)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_bad_uploads_get_clear_4xx(live: Live) -> None:
    base = {"gallery": "bookings-a", "case_number": CASE, "purpose": PURPOSE}
    with live.client("inv_a1") as c:
        r = c.post("/api/v1/searches", data=base, files={"image": ("x.jpg", b"not an image at all", "image/jpeg")})
        assert r.status_code == 422 and r.json()["error"]["code"] == "not_an_image"
        before = live.sql("select count(*) from searches")[0][0]
        with open(live.noface, "rb") as fh:
            r = c.post("/api/v1/searches", data=base, files={"image": ("wall.png", fh, "image/png")})
        assert r.status_code == 422 and r.json()["error"]["code"] == "no_face"
        # a refusal writes nothing but its audit record
        assert live.sql("select count(*) from searches")[0][0] == before
        assert live.sql("select outcome, details from audit_log order by seq desc limit 1")[0][0] == "failure"
        with open(live.probe, "rb") as fh:
            r = c.post("/api/v1/searches", data={**base, "face_index": "3"},
                       files={"image": ("p.jpg", fh, "image/jpeg")})
        assert r.status_code == 422 and r.json()["error"]["code"] == "face_index_out_of_range"
        r = c.post("/api/v1/searches", data=base)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        big = b"\xff\xd8\xff" + b"\0" * (21 * 1024 * 1024)
        r = c.post("/api/v1/searches", data=base, files={"image": ("big.jpg", big, "image/jpeg")})
        assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"


def test_a_match_needs_two_distinct_confirming_users(live: Live) -> None:
    body = search(live, "inv_a1").json()
    sid, cid = body["search_id"], body["candidates"][0]["candidate_id"]

    def review(who: str, decision: str = "confirm") -> dict:
        with live.client(who) as c:
            r = c.post(f"/api/v1/searches/{sid}/reviews", json={"candidate_id": cid, "decision": decision,
                                                                "note": f"checked by {who}"})
        assert r.status_code == 201, r.text
        return r.json()

    assert review("inv_a1")["status"] == "unreviewed"
    assert review("inv_a1")["status"] == "unreviewed"  # the same user twice does not count
    out = review("inv_a2")
    assert out["status"] == "match_confirmed"
    with live.client("sup_a") as c:
        got = c.get(f"/api/v1/searches/{sid}").json()
    assert got["status"] == "match_confirmed" and len(got["reviews"]) == 3
    assert {"search_id", "notice", "threshold", "candidates", "status", "reviews"} <= set(got)
    with live.client("inv_a1") as c:
        r = c.post(f"/api/v1/searches/{sid}/reviews", json={"candidate_id": cid, "decision": "maybe", "note": ""})
    assert r.status_code == 422


def test_rejecting_every_candidate_means_no_match(live: Live) -> None:
    body = search(live, "inv_a2").json()
    for cand in body["candidates"]:
        with live.client("inv_a1") as c:
            r = c.post(f"/api/v1/searches/{body['search_id']}/reviews",
                       json={"candidate_id": cand["candidate_id"], "decision": "reject", "note": ""})
    assert r.json()["status"] == "no_match"


def test_audit_trail_records_and_verifies(live: Live) -> None:
    with live.client("sup_a") as c:
        r = c.get("/api/v1/audit/verify")
    assert r.status_code == 200 and r.json()["ok"] is True
    # an agency sees whether the chain holds, not how many records every agency made
    assert r.json()["checked"] is None and r.json()["head"]["seq"] is None
    assert len(r.json()["head"]["hash"]) == 64
    with live.client("root") as c:
        whole = c.get("/api/v1/audit/verify").json()
    assert whole["ok"] is True and whole["checked"] >= 1 and whole["head"]["seq"] >= whole["checked"]
    actions = {a for (a,) in live.sql("select distinct action from audit_log")}
    outcomes = {o for (o,) in live.sql("select distinct outcome from audit_log where action='login'")}
    details = " ".join(d for (d,) in live.sql("select details from audit_log"))
    assert {"login", "search", "review", "candidate_view", "user_change", "audit_read"} <= actions
    assert {"success", "failure"} <= outcomes
    assert PASSWORD not in details


def test_logout_revokes_and_expired_tokens_are_refused(live: Live) -> None:
    acc = live.accounts["sup_b"]
    token = acc.token or live.token("sup_b")
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.get("/api/v1/galleries").status_code == 200
        assert c.post("/api/v1/auth/logout").status_code == 204
        r = c.get("/api/v1/galleries")
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_invalid"
    acc.token = None
    # an expired token: move its expiry into the past, as time would
    tok = live.token("inv_b")
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    live.sql("update tokens set expires_at = :past where hash = :h", past=past, h=hash_token(tok))
    with live.client("inv_b") as c:
        r = c.get("/api/v1/galleries")
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"
    live.accounts["inv_b"].token = None


def test_operations_endpoints(live: Live) -> None:
    assert httpx.get(f"{live.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{live.url}/docs").status_code == 200
    spec = httpx.get(f"{live.url}/openapi.json").json()
    assert "/api/v1/searches" in spec["paths"]
    metrics = httpx.get(f"{live.url}/metrics").text
    assert "facesearch_http_requests_total" in metrics
    for personal in (CASE, "inv_a1", "dlib_John_Simm", "Agency A"):
        assert personal not in metrics


def test_supervisor_oversight_and_case_pdf(live: Live) -> None:
    search(live, "inv_a1")
    with live.client("sup_a") as c:
        rep = c.get("/api/v1/oversight")
        pdf = c.get(f"/api/v1/cases/{CASE}/export.pdf")
    assert rep.status_code == 200, rep.text
    body = rep.json()
    assert body["per_user"].get("inv_a1", 0) >= 1 and body["per_case"].get(CASE, 0) >= 1
    # the same probe photo was searched under one case number only: no such flag yet
    assert all(f["kind"] != "same_face_different_cases" for f in body["flags"])
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    from io import BytesIO

    import pypdf

    reader = pypdf.PdfReader(BytesIO(pdf.content))
    text = " ".join(page.extract_text() for page in reader.pages)
    assert CASE in text and "investigative leads" in text and "dlib_John_Simm" in text
    assert sum(len(page.images) for page in reader.pages) >= 2  # probe and candidate thumbnails
    # the probe is kept encrypted: its JPEG never appears in the database
    blob = live.sql("select ciphertext from probe_images limit 1")[0][0]
    assert bytes(blob)[:1] == b"\x02" and b"JFIF" not in bytes(blob)
    # a second case number for the same photo is flagged
    search(live, "inv_a1", case_number="2026-000999")
    with live.client("sup_a") as c:
        flags = c.get("/api/v1/oversight").json()["flags"]
    assert any(f["kind"] == "same_face_different_cases" for f in flags)


def test_a_granted_gallery_becomes_searchable_by_the_other_agency(live: Live) -> None:
    data = {"gallery": "bookings-a", "case_number": CASE, "purpose": PURPOSE}
    with live.client("inv_c") as c:
        assert all(g["name"] != "bookings-b" for g in c.get("/api/v1/galleries").json()["galleries"])
        with open(live.probe, "rb") as fh:
            r = c.post("/api/v1/searches", data={**data, "gallery": "bookings-b"},
                       files={"image": ("p.jpg", fh, "image/jpeg")})
        assert r.status_code == 404
    with live.client("root") as c:
        assert c.post("/api/v1/galleries/bookings-b/grants", json={"agency": "Agency C"}).status_code == 201
    with live.client("inv_c") as c:
        assert any(g["name"] == "bookings-b" and not g["own"] for g in c.get("/api/v1/galleries").json()["galleries"])
        with open(live.probe, "rb") as fh:
            r = c.post("/api/v1/searches", data={**data, "gallery": "bookings-b"},
                       files={"image": ("p.jpg", fh, "image/jpeg")})
        assert r.status_code == 200, r.text
    actions = {a for (a,) in live.sql("select distinct action from audit_log")}
    assert {"gallery_grant", "ingest"} <= actions


def test_framework_errors_use_the_error_catalogue_format(live: Live) -> None:
    r = httpx.get(f"{live.url}/api/v1/no-such-route")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.delete(f"{live.url}/api/v1/searches")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.post(f"{live.url}/api/v1/agencies", content=b"\xff\x1d", headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 401, 422) and "error" in r.json()


def test_public_transparency_notice_is_generated_from_the_configuration(live: Live) -> None:
    n = httpx.get(f"{live.url}/api/v1/transparency").json()  # no sign-in
    assert n["holdings"]["galleries"] >= 2 and n["holdings"]["images"] >= 9
    assert any("State booking records, statute 12-3" in g["legal_bases"] for g in n["holdings"]["by_gallery"])
    assert n["retention"]["probe_images_days"] == 90 and n["retention"]["search_records_days"] == 365
    page = httpx.get(f"{live.url}/transparency")
    assert page.status_code == 200 and "Transparency notice" in page.text and "90 days" in page.text
    for secret in ("Agency A", "inv_a1", CASE):  # no client list, no users, no cases
        assert secret not in page.text and secret not in str(n)
