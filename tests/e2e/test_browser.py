"""The web UI in a real Chromium against a live server: sign-in with enrolment and one-time
codes, a safeguarded search with thumbnails, dual review to match_confirmed, the supervisor's
dashboard, case history and case PDF, user administration; plus the session and CSRF rules."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import httpx

from facesearch.auth.totp import code_at
from facesearch.services.keys import key_source
from facesearch.store.crypto import Keyring
from tests.api.conftest import CASE, PASSWORD, PURPOSE
from tests.api.conftest import Live as WebLive

RESULTS_PNG = "/tmp/facesearch-results.png"


def _code(live: WebLive, who: str) -> str:
    return code_at(live.accounts[who].secret, datetime.now(timezone.utc))


def _sign_in(page, live: WebLive, who: str) -> None:  # noqa: ANN001
    page.goto(f"{live.url}/")
    assert "/login" in page.url  # pages need a session
    page.get_by_label("User name").fill(who)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("One-time code").fill(_code(live, who))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"^(?!.*/login).*$"))


def _session_cookie(context) -> str:  # noqa: ANN001
    return next(c for c in context.cookies() if c["name"] == "fs_session")["value"]


def test_two_investigators_confirm_a_match_and_the_supervisor_exports_the_case(chromium, web_live: WebLive) -> None:  # noqa: ANN001
    live = web_live

    # investigator A1: first sign-in sets up the authenticator (QR), then searches ----------------
    a1 = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = a1.new_page()
    response = page.goto(f"{live.url}/search")
    assert re.search(r"/login\?next=%2Fsearch$", page.url)
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "'unsafe-inline'" not in csp
    page.get_by_label("User name").fill("inv_a1")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()  # no code yet: enrolment
    page.get_by_role("heading", name="Set up your authenticator").wait_for()
    qr = page.get_by_role("img", name=re.compile("QR code"))
    assert qr.evaluate("img => img.complete && img.naturalWidth > 0")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("One-time code").fill(_code(live, "inv_a1"))
    page.get_by_role("button", name="Confirm and sign in").click()
    page.wait_for_url(f"{live.url}/search")
    cookie = next(c for c in a1.cookies() if c["name"] == "fs_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # user names are encrypted at rest: the row is found by the name's blind index
    inv_a1 = Keyring(key_source(live.settings)).blind_index("user", "inv_a1")
    assert live.sql("SELECT kind, revoked_at IS NULL FROM tokens WHERE user_id = "
                    "(SELECT id FROM users WHERE username_bi = :bi) ORDER BY created_at", bi=inv_a1) == [
        ("api", False), ("session", True)]  # the login's API token was swapped for a session

    page.get_by_label("Gallery").select_option("bookings-a")
    page.get_by_label("Case number").fill(CASE)
    page.get_by_label("Purpose").select_option(PURPOSE)
    page.get_by_label("Authorization reference").fill("W-2026-17")
    page.get_by_label("Probe photo").set_input_files(str(live.probe))
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(r"/searches/[0-9a-f]{32}\?new=1$"), timeout=30_000)
    search_url = page.url.split("?")[0]
    page.locator(".notice").get_by_text("Candidates are investigative leads, not identifications").wait_for()
    assert page.get_by_text("non-mated searches returns a candidate above this").count() == 1  # threshold meaning
    cards = page.locator("li.candidate")
    assert cards.count() >= 1
    top = cards.first
    assert "dlib_John_Simm" in top.get_by_role("heading").inner_text()
    assert "State booking records" in top.inner_text()
    page.wait_for_function("() => [...document.querySelectorAll('img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=RESULTS_PNG, full_page=True)

    top.get_by_label("Note on candidate 1").fill("Same scar above the left eyebrow")
    top.get_by_role("button", name="Confirm candidate 1").click()
    page.get_by_text("Your review was recorded.").wait_for()
    assert page.locator("#status-h .status-value").inner_text() == "unreviewed"  # one confirmation is not a match
    assert "Same scar above the left eyebrow" in page.locator("#reviews").inner_text()

    # the CSRF token is required on every form, and a session token is no bearer token ----------
    token = _session_cookie(a1)
    candidate = top.get_attribute("data-candidate-id")
    with httpx.Client(base_url=live.url, cookies={"fs_session": token}) as c:
        r = c.post(f"{search_url.removeprefix(live.url)}/reviews", data={"candidate_id": candidate,
                                                                         "decision": "confirm"})
        assert r.status_code == 403 and "csrf_rejected" in r.text
        r = c.post(f"{search_url.removeprefix(live.url)}/reviews", data={
            "candidate_id": candidate, "decision": "confirm", "csrf": "0" * 64})
        assert r.status_code == 403
    assert httpx.get(f"{live.url}/api/v1/galleries", headers={"Authorization": f"Bearer {token}"}).status_code == 401

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/login\?signed_out=1$"))
    r = httpx.get(f"{live.url}/search", cookies={"fs_session": token})
    assert r.status_code == 303 and r.headers["location"].startswith("/login")  # revoked at logout
    a1.close()

    # investigator A2 confirms the same candidate: a match ---------------------------------------
    a2 = chromium.new_context()
    page = a2.new_page()
    _sign_in(page, live, "inv_a2")
    page.goto(search_url)
    page.locator("li.candidate").first.get_by_role("button", name="Confirm candidate 1").click()
    page.get_by_text("Your review was recorded.").wait_for()
    assert page.locator("#status-h .status-value").inner_text() == "match_confirmed"
    assert page.locator("#reviews tbody tr").count() == 2
    a2.close()

    # the supervisor: dashboard, case history, case PDF --------------------------------------------
    sup = chromium.new_context(accept_downloads=True)
    page = sup.new_page()
    _sign_in(page, live, "sup_a")
    assert page.url == f"{live.url}/dashboard"
    page.get_by_role("heading", name="Supervisor dashboard").wait_for()
    assert page.locator("#cases-h + table").get_by_role("link", name=CASE).count() == 1
    assert "inv_a1" in page.locator("#users-h + table").inner_text()
    page.locator("#cases-h + table").get_by_role("link", name=CASE).click()
    page.get_by_role("heading", name=f"Searches of case {CASE}").wait_for()
    row = page.locator("tbody tr").first
    assert "inv_a1" in row.inner_text() and "match_confirmed" in row.inner_text()
    assert page.get_by_role("button", name="Confirm candidate 1").count() == 0
    with page.expect_download() as dl:
        page.get_by_role("link", name="Download the case PDF").click()
    with open(dl.value.path(), "rb") as fh:
        assert fh.read(5) == b"%PDF-"

    # a session idle for more than 30 minutes is refused
    live.sql("UPDATE tokens SET last_used_at = :t WHERE hash = (SELECT hash FROM tokens WHERE kind = 'session' "
             "AND revoked_at IS NULL AND user_id = (SELECT id FROM users WHERE username_bi = :bi))",
             t=datetime.now(timezone.utc) - timedelta(minutes=31),
             bi=Keyring(key_source(live.settings)).blind_index("user", "sup_a"))
    page.goto(f"{live.url}/dashboard")
    assert "/login?" in page.url and "expired=1" in page.url
    page.get_by_text("Your session has expired").wait_for()
    sup.close()


def test_an_agency_admin_creates_a_user_and_sees_the_secret_once(chromium, web_live: WebLive) -> None:  # noqa: ANN001
    ctx = chromium.new_context()
    page = ctx.new_page()
    _sign_in(page, web_live, "admin_a")
    assert page.url == f"{web_live.url}/admin/users"
    page.get_by_label("User name").fill("inv_a3")
    page.get_by_label("Initial password").fill(PASSWORD)
    page.get_by_label("Role").select_option("investigator")
    page.get_by_role("button", name="Create user").click()
    page.get_by_role("heading", name="User inv_a3 created").wait_for()
    assert page.get_by_role("img", name=re.compile("QR code")).count() == 1
    assert re.fullmatch(r"[A-Z2-7]{32}", page.locator(".created code.secret").inner_text())
    # a domain error is a page with its catalogue code, not a stack trace
    page.get_by_label("User name").fill("inv_a3")
    page.get_by_label("Initial password").fill(PASSWORD)
    page.get_by_role("button", name="Create user").click()
    page.get_by_text("Error code: conflict").wait_for()
    # an investigator's page is not for an admin
    response = page.goto(f"{web_live.url}/search")
    assert response.status == 403 and page.get_by_text("Error code: forbidden").count() == 1
    ctx.close()
