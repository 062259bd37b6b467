"""The privacy officer's pages in a real Chromium against a live server: an access report (PDF),
an erasure request by photo reviewed with thumbnails and confirmed, the person gone from search
and suppressed; the system administrator lifts the suppression with a reason; an investigator
is refused the privacy pages."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

from facesearch.auth.totp import code_at
from tests.api.conftest import CASE, PASSWORD, PURPOSE, Live

PERSON = "dlib_John_Simm"  # 3 images in bookings-a of this module's own server


def _sign_in(page, live: Live, who: str) -> None:  # noqa: ANN001
    page.goto(f"{live.url}/")
    page.get_by_label("User name").fill(who)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("One-time code").fill(code_at(live.accounts[who].secret, datetime.now(timezone.utc)))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"^(?!.*/login).*$"))


def _subjects_found(live: Live, probe: Path) -> set[str]:
    with live.client("inv_a1") as c, probe.open("rb") as fh:
        r = c.post("/api/v1/searches", data={"gallery": "bookings-a", "case_number": CASE, "purpose": PURPOSE},
                   files={"image": ("p.jpg", fh, "image/jpeg")})
    assert r.status_code == 200, r.text
    return {c["subject"] for c in r.json()["candidates"]}


def test_privacy_officer_erases_a_person_and_the_sysadmin_lifts_the_suppression(chromium, web_live: Live,
                                                                                dev_labels) -> None:  # noqa: ANN001
    live, photos = web_live, dev_labels[PERSON]
    assert PERSON in _subjects_found(live, photos[5])

    officer = chromium.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = officer.new_page()
    _sign_in(page, live, "privacy")
    page.wait_for_url(f"{live.url}/privacy")  # the privacy officer's home
    page.get_by_role("link", name="Privacy requests").wait_for()
    assert page.get_by_role("link", name="New search").count() == 0  # a privacy officer never searches

    # access request: the PDF letter ------------------------------------------------------------
    page.get_by_label("Photos of the person asking").set_input_files([str(photos[3])])
    page.get_by_label("Report format").select_option("pdf")
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download the report").click()
    assert Path(dl.value.path()).read_bytes().startswith(b"%PDF")

    # erasure: file, review the matches with their thumbnails, confirm ---------------------------
    page.get_by_label("Photos of the person", exact=True).set_input_files([str(photos[3]), str(photos[4])])
    page.get_by_role("button", name="Find matches").click()
    page.wait_for_url(re.compile(r"/privacy/erasure-requests/[0-9a-f]{32}$"), timeout=60_000)
    request_url = page.url
    assert page.locator(".status-value").inner_text() == "pending_confirmation"
    cards = page.locator("li.match")
    assert cards.count() == 3
    assert all(PERSON in cards.nth(i).get_by_role("heading").inner_text() for i in range(3))
    assert "State booking records" in cards.first.inner_text()
    page.wait_for_function("() => [...document.querySelectorAll('img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
    page.get_by_role("button", name="Erase these images").click()  # the check box is required first
    assert page.url == request_url and page.locator(".status-value").inner_text() == "pending_confirmation"
    page.get_by_label("I checked every image above").check()
    page.get_by_role("button", name="Erase these images").click()
    page.wait_for_url(re.compile(r"\?erased=3$"), timeout=60_000)
    page.get_by_text("Erased 3 image(s); the person is on the suppression list.").wait_for()
    assert page.locator(".status-value").inner_text() == "done"
    assert page.get_by_role("button", name="Erase these images").count() == 0
    assert PERSON not in _subjects_found(live, photos[5])  # gone from search

    # access request after the erasure (JSON): nothing held, and suppressed ---------------------
    page.goto(f"{live.url}/privacy")
    page.get_by_role("link", name=re.compile("^Open")).first.wait_for()
    page.get_by_label("Photos of the person asking").set_input_files([str(photos[3])])
    page.get_by_label("Report format").select_option("json")
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download the report").click()
    report = json.loads(Path(dl.value.path()).read_text())
    assert report["total_images"] == 0 and report["suppressed"] is True
    officer.close()

    # the system administrator lifts the suppression, with a reason ------------------------------
    admin = chromium.new_context()
    page = admin.new_page()
    _sign_in(page, live, "root")
    page.get_by_role("link", name="Suppressions").click()
    page.wait_for_url(f"{live.url}/admin/suppressions")
    rows = page.locator("tr[data-suppression-id]")
    assert rows.count() == 1 and "Active" in rows.first.inner_text()
    page.get_by_label("Reason for lifting entry 1").fill("court ruling 2026/77")
    page.get_by_role("button", name="Lift").click()
    page.wait_for_url(re.compile(r"/admin/suppressions\?lifted=1$"))
    assert re.search(r"Lifted .* by root: court ruling 2026/77", rows.first.inner_text())
    # the audit trail names the sysadmin by public id only (names stay encrypted in users)
    assert live.sql("SELECT count(*) FROM audit_log WHERE actor LIKE 'user:%' AND details LIKE :d",
                    d="%suppression_lifted%court ruling 2026/77%") == [(1,)]
    # and provisions another privacy officer, who belongs to no agency
    page.get_by_role("link", name="Users").click()
    page.get_by_label("User name").fill("privacy2")
    page.get_by_label("Initial password").fill(PASSWORD)
    page.get_by_label("Role").select_option("privacy_officer")
    page.get_by_role("button", name="Create user").click()
    page.get_by_role("heading", name="User privacy2 created").wait_for()
    assert "Role privacy officer." in page.locator("section.created").inner_text()
    admin.close()

    # an investigator is refused the privacy pages -----------------------------------------------
    inv = chromium.new_context()
    page = inv.new_page()
    _sign_in(page, live, "inv_a2")
    response = page.goto(f"{live.url}/privacy")
    assert response.status == 403 and page.get_by_text("Error code: forbidden").count() == 1
    assert page.goto(request_url).status == 403
    assert page.goto(f"{live.url}/admin/suppressions").status == 403
    inv.close()
