"""The authorization matrix: every endpoint x every role x own and foreign agency, against
the live server. Allowed answers 2xx, a foreign agency's resource answers 404 (exactly like a
missing one), a role without the permission answers 403, no token answers 401."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import httpx
import pytest

from facesearch.auth.permissions import Perm, Role, allowed
from tests.api.conftest import CASE, PASSWORD, PURPOSE, Live

_seq = itertools.count()


@dataclass(frozen=True)
class Endpoint:
    name: str
    perm: Perm
    scoped: bool  # a resource of agency A: foreign agencies get 404
    call: Callable[[httpx.Client, dict], httpx.Response]


def _search(c: httpx.Client, ctx: dict) -> httpx.Response:
    with open(ctx["probe"], "rb") as fh:
        return c.post("/api/v1/searches", data={"gallery": "bookings-a", "case_number": CASE, "purpose": PURPOSE},
                      files={"image": ("p.jpg", fh, "image/jpeg")})


def _photos(path) -> list:  # noqa: ANN001
    with open(path, "rb") as fh:
        return [("photos", ("p.jpg", fh.read(), "image/jpeg"))]


ENDPOINTS = [
    Endpoint("list galleries", Perm.GALLERY_LIST, False, lambda c, x: c.get("/api/v1/galleries")),
    Endpoint("search gallery A", Perm.SEARCH_CREATE, True, _search),
    Endpoint("list searches", Perm.SEARCH_READ, False, lambda c, x: c.get("/api/v1/searches")),
    Endpoint("read search", Perm.SEARCH_READ, True, lambda c, x: c.get(f"/api/v1/searches/{x['sid']}")),
    Endpoint("review", Perm.REVIEW_CREATE, True, lambda c, x: c.post(
        f"/api/v1/searches/{x['sid']}/reviews", json={"candidate_id": x["cid"], "decision": "reject", "note": ""})),
    Endpoint("thumbnail", Perm.CANDIDATE_VIEW, True, lambda c, x: c.get(f"/api/v1/candidates/{x['cid']}/thumbnail")),
    Endpoint("add agency", Perm.AGENCY_CREATE, False, lambda c, x: c.post(
        "/api/v1/agencies", json={"name": f"Agency N{next(_seq)}"})),
    Endpoint("add user", Perm.USER_MANAGE, False, lambda c, x: c.post("/api/v1/users", json={
        "username": f"new_user_{next(_seq)}", "password": PASSWORD,
        "role": "agency_admin" if x["role"] == "sysadmin" else "investigator", "agency": "Agency A"})),
    Endpoint("grant gallery", Perm.GALLERY_GRANT, False, lambda c, x: c.post(
        "/api/v1/galleries/bookings-a/grants", json={"agency": "Agency C"})),
    Endpoint("verify audit", Perm.AUDIT_VERIFY, False, lambda c, x: c.get("/api/v1/audit/verify")),
    Endpoint("oversight", Perm.OVERSIGHT_READ, False, lambda c, x: c.get("/api/v1/oversight")),
    Endpoint("case export", Perm.CASE_EXPORT, True, lambda c, x: c.get(f"/api/v1/cases/{CASE}/export.pdf")),
    # privacy requests: operator-level, no agency scope
    Endpoint("file erasure", Perm.ERASURE_REQUEST, False, lambda c, x: c.post(
        "/api/v1/privacy/erasure-requests", files=_photos(x["probe"]))),
    Endpoint("list erasures", Perm.ERASURE_MATCHES, False, lambda c, x: c.get("/api/v1/privacy/erasure-requests")),
    Endpoint("read erasure", Perm.ERASURE_MATCHES, False, lambda c, x: c.get(
        f"/api/v1/privacy/erasure-requests/{x['erasure']['request_id']}")),
    Endpoint("erasure thumbnail", Perm.ERASURE_MATCHES, False, lambda c, x: c.get(
        x["erasure"]["matches"][0]["thumbnail_url"])),
    Endpoint("confirm erasure", Perm.ERASURE_CONFIRM, False, lambda c, x: c.post(
        f"/api/v1/privacy/erasure-requests/{x['to_confirm']}/confirm")),
    Endpoint("cancel erasure", Perm.ERASURE_REQUEST, False, lambda c, x: c.post(
        f"/api/v1/privacy/erasure-requests/{x['to_cancel']}/cancel")),
    Endpoint("access request", Perm.ACCESS_REPORT, False, lambda c, x: c.post(
        "/api/v1/privacy/access-requests", files=_photos(x["probe"]))),
    Endpoint("access request pdf", Perm.ACCESS_REPORT, False, lambda c, x: c.post(
        "/api/v1/privacy/access-requests.pdf", files=_photos(x["probe"]))),
    Endpoint("list suppressions", Perm.SUPPRESSION_LIST, False, lambda c, x: c.get("/api/v1/privacy/suppressions")),
    Endpoint("lift suppression", Perm.SUPPRESSION_LIFT, False, lambda c, x: c.post(
        f"/api/v1/privacy/suppressions/{x['suppression']}/lift", json={"reason": "authorization matrix"})),
]
WHO = {"root": (Role.SYSADMIN, None), "admin_a": (Role.AGENCY_ADMIN, "A"), "sup_a": (Role.SUPERVISOR, "A"),
       "inv_a2": (Role.INVESTIGATOR, "A"), "inv_b": (Role.INVESTIGATOR, "B"), "sup_b": (Role.SUPERVISOR, "B"),
       "privacy": (Role.PRIVACY_OFFICER, None), None: (None, None)}


@pytest.fixture(scope="module")
def resource(live: Live, dev_labels) -> dict:  # noqa: ANN001
    with live.client("inv_a1") as c:
        body = _search(c, {"probe": live.probe}).json()
    # privacy requests: one to read (the gallery's person: never confirmed), one to cancel, and
    # one of a person no gallery holds (confirming it erases nothing), whose suppression is lifted
    stranger = dev_labels["dlib_John_Schneider"][0]
    with live.client("privacy") as c:
        erasure = c.post("/api/v1/privacy/erasure-requests", files=_photos(live.probe)).json()
        to_cancel = c.post("/api/v1/privacy/erasure-requests", files=_photos(live.probe)).json()["request_id"]
        to_confirm = c.post("/api/v1/privacy/erasure-requests", files=_photos(stranger)).json()
        assert to_confirm["images"] == 0, to_confirm
        lifted = c.post("/api/v1/privacy/erasure-requests", files=_photos(stranger)).json()["request_id"]
        assert c.post(f"/api/v1/privacy/erasure-requests/{lifted}/confirm").status_code == 200
        suppression = next(s["suppression_id"] for s in c.get("/api/v1/privacy/suppressions").json()["suppressions"]
                           if s["request_id"] == lifted)
    return {"sid": body["search_id"], "cid": body["candidates"][0]["candidate_id"], "probe": live.probe,
            "erasure": erasure, "to_cancel": to_cancel, "to_confirm": to_confirm["request_id"],
            "suppression": suppression}


def expected(ep: Endpoint, who: str | None) -> int | str:
    role, agency = WHO[who]
    if role is None:
        return 401
    if not allowed(role, ep.perm):
        return 403
    if ep.scoped and agency != "A":
        return 404
    return "2xx"


@pytest.mark.parametrize("who", list(WHO), ids=lambda w: w or "anonymous")
@pytest.mark.parametrize("ep", ENDPOINTS, ids=lambda e: e.name)
def test_authorization_matrix(live: Live, resource: dict, ep: Endpoint, who: str | None) -> None:
    role = WHO[who][0]
    with live.client(who) as c:
        r = ep.call(c, {**resource, "role": role.value if role else None})
    want = expected(ep, who)
    if want == "2xx":
        assert 200 <= r.status_code < 300, (ep.name, who, r.status_code, r.text)
    else:
        assert r.status_code == want, (ep.name, who, r.status_code, r.text)
        if want == 404:
            assert r.json()["error"]["code"].endswith("not_found")  # same answer as a missing resource
