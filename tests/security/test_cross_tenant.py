"""Cross-tenant suite against the live server: users of agency B, in every role (and the
operator roles), try agency A's searches, reviews, candidates and thumbnails, ungranted gallery,
case export, users and audit through every endpoint of the OpenAPI document and every web route
that takes an identifier. Success is zero: each answer is exactly the answer to a random identifier
that does not exist (same status, same body once the identifier itself is masked), so not even the
existence of A's resource leaks.

The endpoint list comes from ``/openapi.json`` and from the application's (non-schema) web routes:
a path parameter this suite does not know fails the test, so a new endpoint cannot be forgotten.
"""
from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest

from facesearch.auth.permissions import OPERATOR_ROLES, Role
from facesearch.auth.totp import code_at
from tests.api.conftest import CASE, PASSWORD, PURPOSE, login
from tests.security.conftest import FuzzServer

PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")
NOT_TENANT_DATA = {"/static/{name}"}  # the UI's own CSS and script
# parameters naming operator-level resources (the public's erasure requests, the suppression
# list): not any agency's; agency users must still get exactly the missing-resource answer
OPERATOR_PARAMS = {"request_id", "image_id", "suppression_id"}


def _hex() -> str:
    return secrets.token_hex(16)


@dataclass
class Tenant:
    """Agency A's resources and the attackers' credentials."""
    ids: dict[str, str]  # path parameter -> A's value
    fakes: dict[str, Callable[[], str]]  # path parameter -> a random value that does not exist
    api: dict[str, httpx.Client]  # role -> client with a bearer token (agency B / operator)
    web: dict[str, httpx.Client]  # role -> client with a signed-in session cookie
    csrf: dict[str, str]
    a_names: list[str]  # strings that would betray agency A in a body
    extra_ids: list[str] = field(default_factory=list)


def _web_session(url: str, username: str, secret: str) -> tuple[httpx.Client, str]:
    from datetime import datetime, timezone

    c = httpx.Client(base_url=url, timeout=60, follow_redirects=False)
    page = c.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = c.post("/login", data={"username": username, "password": PASSWORD, "csrf": csrf, "next": "/",
                               "code": code_at(secret, datetime.now(timezone.utc))})
    assert r.status_code == 303 and "fs_session" in c.cookies, r.text[:500]
    home = c.get("/search") if c.get("/").status_code == 303 else c.get("/")
    m = re.search(r'name="csrf" value="([^"]+)"', home.text) or re.search(r'name="csrf" value="([^"]+)"',
                                                                          c.get("/dashboard").text)
    return c, m.group(1) if m else ""


@pytest.fixture(scope="module")
def tenant(fuzz_server: FuzzServer) -> Tenant:
    from facesearch.config import Settings
    from facesearch.services.accounts import Accounts
    from facesearch.services.context import AppContext

    url = fuzz_server.url
    a1 = httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Bearer {fuzz_server.token('inv_a1')}"})
    sids, cids = [], []
    for _ in range(3):
        with open(fuzz_server.probe, "rb") as fh:
            r = a1.post("/api/v1/searches", data={"gallery": "bookings-a", "case_number": CASE, "purpose": PURPOSE},
                        files={"image": ("p.jpg", fh, "image/jpeg")})
        assert r.status_code == 200, r.text
        sids.append(r.json()["search_id"])
        cids += [c["candidate_id"] for c in r.json()["candidates"]]
    r = a1.post(f"/api/v1/searches/{sids[0]}/reviews", json={"candidate_id": cids[0], "decision": "confirm",
                                                               "note": "agency A's review"})
    assert r.status_code == 201, r.text
    # one user per role (and per interface: a TOTP code is accepted once), in agency B where the
    # role has an agency, none for the operator roles
    ctx = AppContext(Settings(home=fuzz_server.home, argon2_memory_kib=1024, argon2_time_cost=1))
    secrets_: dict[str, str] = {}
    try:
        acc = Accounts(ctx)
        for role in Role:
            for kind in ("api", "web"):
                name = f"xt_{kind}_{role.value}_{secrets.token_hex(3)}"
                agency = None if role in OPERATOR_ROLES else "Agency B"
                secrets_[f"{kind}:{role.value}"] = acc.add_user(name, PASSWORD, role.value, agency).totp_secret
                secrets_[f"{kind}:{role.value}:name"] = name
    finally:
        ctx.close()
    from tests.api.conftest import Account

    api, web, csrf = {}, {}, {}
    for role in Role:
        name = secrets_[f"api:{role.value}:name"]
        token = login(url, Account(name, role.value, None, secrets_[f"api:{role.value}"]))
        api[role.value] = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"})
        web[role.value], csrf[role.value] = _web_session(url, secrets_[f"web:{role.value}:name"],
                                                         secrets_[f"web:{role.value}"])
    ids = {"search_id": sids[0], "candidate_id": cids[0], "case_number": CASE, "name": "bookings-a"}
    fakes: dict[str, Callable[[], str]] = {
        "search_id": _hex, "candidate_id": _hex, "request_id": _hex, "image_id": _hex, "suppression_id": _hex,
        "case_number": lambda: f"2026-{secrets.randbelow(900000) + 100000}",
        "name": lambda: f"gallery-{secrets.token_hex(4)}"}
    # an operator-level resource to aim at: an erasure request filed by a privacy officer
    po = api[Role.PRIVACY_OFFICER.value]
    with open(fuzz_server.probe, "rb") as fh:
        r = po.post("/api/v1/privacy/erasure-requests", files=[("photos", ("p.jpg", fh, "image/jpeg"))])
    assert r.status_code == 201, r.text
    er = r.json()
    ids["request_id"] = er.get("request_id") or er.get("id")
    image_ids = re.findall(r'"image_id":\s*"([0-9a-f]{16,})"', httpx.Response(200, json=er).text)
    ids["image_id"] = image_ids[0] if image_ids else _hex()
    sup = po.get("/api/v1/privacy/suppressions").json()
    sup_ids = re.findall(r'"(?:suppression_id|id)":\s*"([0-9a-f]{16,})"', str(sup).replace("'", '"'))
    ids["suppression_id"] = sup_ids[0] if sup_ids else _hex()
    return Tenant(ids, fakes, api, web, csrf, ["Agency A", "inv_a1", "inv_a2", "sup_a", "admin_a", "bookings-a",
                                                "agency A's review", *sids, *cids], sids + cids)


# -- the endpoint list ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    kind: str  # "api" | "web"
    method: str
    path: str

    @property
    def params(self) -> list[str]:
        return PARAM.findall(self.path)


def _api_routes(url: str) -> list[Route]:
    spec = httpx.get(f"{url}/openapi.json").json()
    return [Route("api", m.upper(), p) for p, ops in spec["paths"].items() for m in ops
            if m in ("get", "post", "put", "patch", "delete")]


def _web_routes() -> list[Route]:
    from facesearch.api.routes import bootstrap, transparency, web

    routers = [web.router, bootstrap.router, transparency.router]
    try:
        from facesearch.api.routes import web_privacy

        routers.append(web_privacy.router)
    except ImportError:  # pragma: no cover - an installation without the privacy pages
        pass
    out = []
    for router in routers:
        for r in router.routes:
            if getattr(r, "include_in_schema", True):
                continue
            for m in sorted(getattr(r, "methods", ()) or ()):
                if m != "HEAD":
                    out.append(Route("web", m, r.path))
    return out


def _mask(text: str, *values: str) -> str:
    for v in sorted({v for v in values if v}, key=len, reverse=True):
        text = text.replace(v, "<id>").replace(httpx.URL("/x/" + v).path[3:], "<id>")
    return re.sub(r"[0-9a-f]{16}(?=\W)", "<rid>", text)  # request ids, where a page shows one


def _call(t: Tenant, route: Route, role: str, values: dict[str, str]) -> httpx.Response:
    path = PARAM.sub(lambda m: values[m.group(1)], route.path)
    c = t.api[role] if route.kind == "api" else t.web[role]
    body = {"candidate_id": values.get("_candidate", t.ids["candidate_id"]), "decision": "reject",
            "note": "cross-tenant", "agency": "Agency B", "reason": "cross-tenant", "csrf": t.csrf[role]}
    if route.method == "GET":
        return c.get(path)
    if route.kind == "api":
        return c.request(route.method, path, json=body)
    return c.request(route.method, path, data=body)


def _same(a: httpx.Response, b: httpx.Response, values_a: list[str], values_b: list[str]) -> bool:
    if a.status_code != b.status_code:
        return False
    return _mask(a.text, *values_a) == _mask(b.text, *values_b)


def test_every_identifier_endpoint_answers_like_a_missing_resource(fuzz_server: FuzzServer, tenant: Tenant,
                                                                    security_figure, fuzz_report) -> None:  # noqa: ANN001
    routes = [r for r in _api_routes(fuzz_server.url) + _web_routes()
              if r.params and r.path not in NOT_TENANT_DATA]
    unknown = sorted({(r.method, r.path) for r in routes if set(r.params) - set(tenant.fakes)})
    assert not unknown, f"endpoints with identifiers this suite does not cover (add them): {unknown}"
    assert {"/api/v1/searches/{search_id}", "/api/v1/candidates/{candidate_id}/thumbnail",
            "/api/v1/cases/{case_number}/export.pdf", "/searches/{search_id}"} <= {r.path for r in routes}
    attempts, successes, leaks = 0, 0, []
    statuses: dict[int, int] = {}
    told_missing: set[str] = set()
    for route in routes:
        for role in Role:
            if role in OPERATOR_ROLES and set(route.params) & (OPERATOR_PARAMS | {"name"}):
                continue  # the operator's own resources (requests, suppressions, grants): not a tenant's
            real = {p: tenant.ids[p] for p in route.params}
            fake = {p: tenant.fakes[p]() for p in route.params}
            r_real = _call(tenant, route, role.value, real)
            r_fake = _call(tenant, route, role.value, fake)
            attempts += 1
            statuses[r_real.status_code] = statuses.get(r_real.status_code, 0) + 1
            if r_real.status_code == 404:
                told_missing.add(route.path)
            ok = (not 200 <= r_real.status_code < 400 and r_real.status_code in (401, 403, 404)
                  and _same(r_real, r_fake, list(real.values()), list(fake.values())))
            if not ok:
                successes += 1
                leaks.append((route.kind, route.method, route.path, role.value, r_real.status_code,
                              r_fake.status_code, r_real.text[:200], r_fake.text[:200]))
    security_figure("cross_tenant_attempts", attempts)
    security_figure("cross_tenant_successes", successes)
    fuzz_report(f"cross-tenant: {attempts} attempts on {len(routes)} identifier routes, {successes} successes "
                f"(answers: {dict(sorted(statuses.items()))})")
    # on tenant data, the roles allowed to ask were told "not found" (the others: not allowed)
    tenant_routes = {r.path for r in routes if not set(r.params) & (OPERATOR_PARAMS | {"name"})}
    assert tenant_routes <= told_missing, tenant_routes - told_missing
    assert 401 not in statuses, statuses  # every attacker was signed in: the refusals are authorization
    assert not leaks, leaks


def test_agency_a_data_never_appears_in_agency_b_listings_or_forms(fuzz_server: FuzzServer, tenant: Tenant,
                                                                    security_figure) -> None:  # noqa: ANN001
    attempts, successes = 0, []

    def check(name: str, r: httpx.Response, fake: httpx.Response | None = None, masks=()) -> None:  # noqa: ANN001
        nonlocal attempts
        attempts += 1
        text = r.text
        found = [s for s in tenant.a_names if s in text and s not in masks]
        if 200 <= r.status_code < 300 and fake is None and not found:
            return
        if fake is not None and r.status_code in (403, 404, 422) and _mask(r.text, *masks) == _mask(
                fake.text, *masks, "Agency Z", "gallery-zz") and not found:
            return
        if fake is None and r.status_code in (401, 403) and not found:
            return
        successes.append((name, r.status_code, found, r.text[:200], fake.text[:200] if fake is not None else None))

    for role in Role:
        api, web = tenant.api[role.value], tenant.web[role.value]
        check(f"{role} list searches of A's case", api.get("/api/v1/searches", params={"case_number": CASE}))
        check(f"{role} list searches", api.get("/api/v1/searches"))
        if role not in OPERATOR_ROLES:  # the sysadmin lists every gallery (to grant them): by design
            check(f"{role} galleries", api.get("/api/v1/galleries"))
        check(f"{role} oversight", api.get("/api/v1/oversight"))
        check(f"{role} audit", api.get("/api/v1/audit/verify"))
        with open(fuzz_server.probe, "rb") as fh:
            probe = fh.read()
        form = {"case_number": CASE, "purpose": PURPOSE}
        real = api.post("/api/v1/searches", data={**form, "gallery": "bookings-a"},
                        files={"image": ("p.jpg", probe, "image/jpeg")})
        fake = api.post("/api/v1/searches", data={**form, "gallery": "gallery-zz"},
                        files={"image": ("p.jpg", probe, "image/jpeg")})
        check(f"{role} search A's gallery", real, fake, masks=("bookings-a", "gallery-zz"))
        if role not in OPERATOR_ROLES:  # the sysadmin creates agency administrators of any agency
            user = {"username": f"xt_new_{secrets.token_hex(3)}", "password": PASSWORD, "role": "investigator"}
            real = api.post("/api/v1/users", json={**user, "agency": "Agency A"})
            fake = api.post("/api/v1/users", json={**user, "username": user["username"] + "z", "agency": "Agency Z"})
            check(f"{role} create a user in A", real, fake, masks=("Agency A", "Agency Z", user["username"]))
        check(f"{role} web cases of A's case", web.get("/cases", params={"case": CASE}))
        real = web.get("/cases/export.pdf", params={"case": CASE})
        fake = web.get("/cases/export.pdf", params={"case": "2026-999999"})
        check(f"{role} web export of A's case", real, fake, masks=(CASE, "2026-999999"))
        check(f"{role} web dashboard", web.get("/dashboard"))
    security_figure("cross_tenant_attempts", attempts)
    security_figure("cross_tenant_successes", len(successes))
    assert not successes, successes


def test_identifiers_in_urls_are_random_not_sequential(tenant: Tenant) -> None:
    ids = tenant.extra_ids
    assert len(ids) >= 6 and len(set(ids)) == len(ids)
    for i in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", i), i
    values = sorted(int(i, 16) for i in ids)
    gaps = {b - a for a, b in zip(values, values[1:])}
    assert min(gaps) > 2 ** 64  # 128 random bits: neighbours are astronomically far apart
    # and the same holds for users and agencies created through the API
    new = tenant.api[Role.SYSADMIN.value].post("/api/v1/agencies", json={"name": f"Agency X{secrets.token_hex(3)}"})
    assert new.status_code == 201 and re.fullmatch(r"[0-9a-f]{32}", new.json()["agency_id"])
