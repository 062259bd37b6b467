"""Privacy requests over the API against a live server: a privacy officer erases a person with
3 images across 2 galleries (not found by search afterwards, re-ingest reports them
suppressed), cancels a request, gets an access report (JSON and PDF); a system administrator
lifts the suppression with an audited reason; no other role gets in."""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from facesearch.config import Settings
from tests.api.conftest import CASE, FAST_ARGON2, PURPOSE, Live, provision, scratch_database, start_server

PERSON = "dlib_John_Shimkus"  # 2 images in bookings-a, 1 in bookings-b; nobody else's tests use them


def _files(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def _cli(live: Live, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **FAST_ARGON2, "FACESEARCH_HOME": str(live.home)}
    if not live.db_url.startswith("sqlite"):
        env["FACESEARCH_DATABASE_URL"] = live.db_url
    return subprocess.run([sys.executable, "-m", "facesearch.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def _audit(live: Live, target_prefix: str) -> list[tuple[str, str, str, str, dict]]:
    rows = live.sql("SELECT action, actor, target, outcome, details FROM audit_log WHERE target LIKE :t "
                    "ORDER BY seq", t=f"{target_prefix}%")
    return [(a, actor, t, o, json.loads(d)) for a, actor, t, o, d in rows]


def _search_subjects(live: Live, who: str, gallery: str, probe: Path) -> set[str]:
    with live.client(who) as c, probe.open("rb") as fh:
        r = c.post("/api/v1/searches", data={"gallery": gallery, "case_number": CASE, "purpose": PURPOSE},
                   files={"image": ("p.jpg", fh, "image/jpeg")})
    assert r.status_code == 200, r.text
    return {c["subject"] for c in r.json()["candidates"]}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def plive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, dev_labels
          ) -> Iterator[Live]:  # noqa: ANN001
    """A server of its own (this module erases people): the API suite's provisioning plus
    PERSON in both agencies' galleries."""
    home = tmp_path_factory.mktemp(f"privacy-home-{request.param}")
    with scratch_database(request.param, "fs_priv") as db_url:
        accounts, probe, noface = provision(home, dev_labels, db_url)
        from facesearch.facade import FaceSearch

        settings = Settings(home=home, workers=1, database_url=db_url)
        with FaceSearch(settings=settings) as fs:
            for gallery, photos in (("bookings-a", dev_labels[PERSON][:2]), ("bookings-b", dev_labels[PERSON][2:3])):
                folder = home / "photos-extra" / gallery / PERSON
                folder.mkdir(parents=True)
                for p in photos:
                    (folder / p.name).write_bytes(p.read_bytes())
                fs.ingest(folder.parent, gallery=gallery, legal_basis="State booking records, statute 12-3",
                          subject_from_folder=True)
        proc, url = start_server(home, db_url)
        try:
            yield Live(url, home, accounts, probe, noface, settings, settings.db_url)
        finally:
            proc.terminate()
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def erased(plive: Live, dev_labels) -> dict:  # noqa: ANN001
    """The erasure through the API, step by step; what each step answered."""
    live, photos = plive, dev_labels[PERSON]
    out: dict = {"images_before": live.sql("SELECT count(*) FROM images")[0][0]}
    # before: the person is found by search in both galleries (so the checks after can fail)
    out["found_before"] = (PERSON in _search_subjects(live, "inv_a1", "bookings-a", photos[5])
                           and PERSON in _search_subjects(live, "inv_b", "bookings-b", photos[5]))
    with live.client("privacy") as c:
        r = c.post("/api/v1/privacy/erasure-requests", files=_files(photos[3], photos[4]))
        assert r.status_code == 201, r.text
        out["filed"] = r.json()
        rid = out["filed"]["request_id"]
        out["thumbnails"] = [c.get(m["thumbnail_url"]) for m in out["filed"]["matches"]]
        out["stored_while_pending"] = live.sql("SELECT probes, matches FROM erasure_requests WHERE public_id = :r",
                                               r=rid)[0]
        out["confirmed"] = c.post(f"/api/v1/privacy/erasure-requests/{rid}/confirm")
        out["confirmed_again"] = c.post(f"/api/v1/privacy/erasure-requests/{rid}/confirm")
        out["after"] = c.get(f"/api/v1/privacy/erasure-requests/{rid}").json()
        out["thumbnail_after"] = c.get(out["filed"]["matches"][0]["thumbnail_url"])
    out["images_after"] = live.sql("SELECT count(*) FROM images")[0][0]
    out["stored_after"] = live.sql("SELECT probes, matches, status FROM erasure_requests WHERE public_id = :r",
                                   r=rid)[0]
    return out


def test_the_privacy_officer_sees_every_match_across_galleries_before_anything_is_deleted(erased: dict) -> None:
    assert erased["found_before"]
    filed = erased["filed"]
    assert filed["status"] == "pending_confirmation" and len(filed["request_id"]) == 32
    assert filed["images"] == 3 and filed["galleries"] == 2
    assert {m["gallery"] for m in filed["matches"]} == {"bookings-a", "bookings-b"}
    assert {m["subject"] for m in filed["matches"]} == {PERSON}
    for m in filed["matches"]:
        assert set(m) >= {"image_id", "gallery", "source_uri", "legal_basis", "score", "thumbnail_url"}
        assert len(m["image_id"]) == 32 and m["legal_basis"] == "State booking records, statute 12-3"
    for r in erased["thumbnails"]:
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    probes, matches = erased["stored_while_pending"]
    assert probes is not None and matches is not None
    assert PERSON not in str(matches) and b"shape" not in bytes(probes)  # encrypted, never the photos


def test_confirming_erases_the_person_from_search_database_and_gallery(plive: Live, erased: dict,
                                                                     dev_labels) -> None:  # noqa: ANN001
    c = erased["confirmed"]
    assert c.status_code == 200, c.text
    assert c.json() == {"request_id": erased["filed"]["request_id"], "status": "done", "erased_images": 3,
                        "galleries": 2, "suppressions": 1}
    assert erased["confirmed_again"].status_code == 409
    assert erased["confirmed_again"].json()["error"]["code"] == "erasure_not_pending"
    assert erased["after"]["status"] == "done" and erased["after"]["matches"] == []
    assert erased["after"]["confirmed_by"] == "privacy"
    assert erased["thumbnail_after"].status_code == 404
    assert erased["images_after"] == erased["images_before"] - 3  # not in the database
    assert erased["stored_after"] == (None, None, "done")  # nothing of the person stays with the request
    photos = dev_labels[PERSON]
    assert PERSON not in _search_subjects(plive, "inv_a1", "bookings-a", photos[5])  # not found by search
    assert PERSON not in _search_subjects(plive, "inv_b", "bookings-b", photos[5])
    # re-ingest of the same photos: reported as suppressed, nothing stored
    folder = plive.home / "reingest" / PERSON
    folder.mkdir(parents=True)
    for p in photos[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    r = _cli(plive, "ingest", str(folder.parent), "--gallery", "bookings-a", "--legal-basis", "statute 12-3",
             "--subject-from-folder", "--workers", "1", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["suppressed"] == 3 and summary["ingested"] == 0
    assert plive.sql("SELECT count(*) FROM images")[0][0] == erased["images_after"]
    # the audit trail: filed, viewed, thumbnails, erased; never photo bytes
    audit = _audit(plive, f"erasure:{erased['filed']['request_id']}")
    steps = [d.get("step") for a, actor, t, o, d in audit if a == "erasure"]
    actors = {actor for _, actor, *_ in audit}  # one officer, named by public id only (never the name)
    assert steps[0] == "filed" and "erased" in steps and len(actors) == 1
    assert re.fullmatch(r"user:[0-9a-f]{32}", actors.pop())
    assert sum(1 for a, *_ in audit if a == "candidate_view") == 3
    assert all(len(json.dumps(d)) < 300 for *_, d in audit)


def test_a_cancelled_request_deletes_nothing(plive: Live, dev_labels) -> None:  # noqa: ANN001
    before = plive.sql("SELECT count(*) FROM images")[0][0]
    with plive.client("privacy") as c:
        filed = c.post("/api/v1/privacy/erasure-requests", files=_files(dev_labels["dlib_John_Simm"][3])).json()
        assert filed["status"] == "pending_confirmation" and filed["images"] == 3
        r = c.post(f"/api/v1/privacy/erasure-requests/{filed['request_id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["matches"] == []
        r = c.post(f"/api/v1/privacy/erasure-requests/{filed['request_id']}/confirm")
        assert r.status_code == 409
        assert c.get("/api/v1/privacy/erasure-requests/" + "0" * 32).status_code == 404
        r = c.post("/api/v1/privacy/erasure-requests", files=_files(plive.noface))
        assert r.status_code == 422 and r.json()["error"]["code"] == "no_face"
    assert plive.sql("SELECT count(*) FROM images")[0][0] == before
    assert plive.sql("SELECT probes, matches FROM erasure_requests WHERE public_id = :r",
                     r=filed["request_id"]) == [(None, None)]
    assert "dlib_John_Simm" in _search_subjects(plive, "inv_a1", "bookings-a", dev_labels["dlib_John_Simm"][5])


def test_access_request_reports_what_is_held_as_json_and_pdf(plive: Live, dev_labels) -> None:  # noqa: ANN001
    simm = dev_labels["dlib_John_Simm"]
    _search_subjects(plive, "inv_a1", "bookings-a", simm[5])  # one search returns the person
    with plive.client("privacy") as c:
        r = c.post("/api/v1/privacy/access-requests", files=_files(simm[3], simm[4]))
        assert r.status_code == 200, r.text
        rep = r.json()
        pdf = c.post("/api/v1/privacy/access-requests.pdf", files=_files(simm[3]))
    assert rep["total_images"] == 3 and rep["suppressed"] is False
    assert {i["gallery"] for i in rep["images"]} == {"bookings-a"}
    assert {i["legal_basis"] for i in rep["images"]} == {"State booking records, statute 12-3"}
    assert sum(i["searches_returned"] for i in rep["images"]) >= 1
    assert "inv_a1" not in r.text and CASE not in r.text  # never who searched, nor the case
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    formats = [d.get("format") for a, actor, t, o, d in _audit(plive, "access_request") if actor.startswith("user:")]
    assert formats[-2:] == ["json", "pdf"]


def test_lifting_a_suppression_is_a_sysadmin_decision_with_an_audited_reason(plive: Live, erased: dict) -> None:
    rid = erased["filed"]["request_id"]
    with plive.client("privacy") as c:
        sup = c.get("/api/v1/privacy/suppressions").json()["suppressions"]
        entry = next(s for s in sup if s["request_id"] == rid)
        assert entry["active"] is True and set(entry) >= {"suppression_id", "created_at", "lifted_at"}
        assert c.post(f"/api/v1/privacy/suppressions/{entry['suppression_id']}/lift",
                      json={"reason": "mine"}).status_code == 403
    with plive.client("root") as c:
        url = f"/api/v1/privacy/suppressions/{entry['suppression_id']}/lift"
        assert c.post(url, json={"reason": ""}).status_code == 422
        r = c.post(url, json={"reason": "court ruling 2026/77 reinstates the booking record"})
        assert r.status_code == 200, r.text
        assert r.json()["active"] is False and r.json()["lifted_by"] == "root"
        again = c.post(url, json={"reason": "twice"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "suppression_already_lifted"
        assert c.post("/api/v1/privacy/suppressions/" + "0" * 32 + "/lift",
                      json={"reason": "x"}).status_code == 404
    audit = _audit(plive, f"suppression:{entry['suppression_id']}")
    assert len(audit) == 1 and re.fullmatch(r"user:[0-9a-f]{32}", audit[0][1])  # the name stays in users
    assert [(a, o, d) for a, actor, t, o, d in audit] == [
        ("erasure", "success", {"change": "suppression_lifted",
                                        "reason": "court ruling 2026/77 reinstates the booking record"})]


@pytest.mark.parametrize("who", ["root", "admin_a", "sup_a", "inv_a1", "inv_b", None])
def test_no_other_role_files_confirms_or_reads_privacy_requests(plive: Live, who: str | None,
                                                               dev_labels) -> None:  # noqa: ANN001
    want = 401 if who is None else 403
    photo = dev_labels["dlib_John_Simm"][3]
    with plive.client(who) as c:
        assert c.post("/api/v1/privacy/erasure-requests", files=_files(photo)).status_code == want
        assert c.get("/api/v1/privacy/erasure-requests").status_code == want
        assert c.post("/api/v1/privacy/erasure-requests/" + "0" * 32 + "/confirm").status_code == want
        assert c.post("/api/v1/privacy/access-requests", files=_files(photo)).status_code == want
        assert c.post("/api/v1/privacy/access-requests.pdf", files=_files(photo)).status_code == want
        sup = c.get("/api/v1/privacy/suppressions").status_code
        assert sup == (200 if who == "root" else want)


def test_only_the_sysadmin_creates_privacy_officers_and_they_belong_to_no_agency(plive: Live) -> None:
    body = {"username": "privacy2", "password": "correct horse battery 9", "role": "privacy_officer"}
    with plive.client("root") as c:
        assert c.post("/api/v1/users", json={**body, "agency": "Agency A"}).status_code == 422
        r = c.post("/api/v1/users", json=body)
        assert r.status_code == 201, r.text
        assert r.json()["role"] == "privacy_officer" and r.json()["agency"] is None
        assert c.post("/api/v1/users", json={**body, "username": "inv_new", "role": "investigator",
                                             "agency": "Agency A"}).status_code == 403
    with plive.client("admin_a") as c:
        r = c.post("/api/v1/users", json={**body, "username": "privacy3"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_a_request_left_unconfirmed_expires_and_keeps_nothing_of_the_person(plive: Live, dev_labels) -> None:  # noqa: ANN001
    from datetime import datetime, timedelta, timezone

    from facesearch.facade import FaceSearch
    from facesearch.services.privacy import expire_pending

    with plive.client("privacy") as c:
        fresh = c.post("/api/v1/privacy/erasure-requests", files=_files(dev_labels["dlib_John_Simm"][3])).json()
        old = c.post("/api/v1/privacy/erasure-requests", files=_files(dev_labels["dlib_John_Simm"][4])).json()
    plive.sql("UPDATE erasure_requests SET created_at = :t WHERE public_id = :r",
              t=datetime.now(timezone.utc) - timedelta(days=31), r=old["request_id"])
    with FaceSearch(settings=plive.settings) as fs:
        assert expire_pending(fs.ctx) == 1
    assert plive.sql("SELECT status, probes, matches FROM erasure_requests WHERE public_id = :r",
                     r=old["request_id"]) == [("expired", None, None)]
    with plive.client("privacy") as c:
        assert c.post(f"/api/v1/privacy/erasure-requests/{old['request_id']}/confirm").status_code == 409
        assert c.get(f"/api/v1/privacy/erasure-requests/{fresh['request_id']}").json()["status"] == \
            "pending_confirmation"
        assert c.post(f"/api/v1/privacy/erasure-requests/{fresh['request_id']}/cancel").status_code == 200
