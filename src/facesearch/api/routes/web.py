"""The investigator web UI: server-rendered pages over the same services as the API.

Routes only translate forms into service calls (:class:`Casework`, :class:`Oversight`,
:class:`WebSessions`); the services decide permissions and write the audit trail. Pages need a
session cookie (``fs_session``, see :mod:`facesearch.services.web_sessions`); without one a page
request is redirected to ``/login``. Every POST form carries the session's CSRF token, checked
before anything else happens (403 otherwise). Domain errors render an error page with the
catalogue code; every response of this router carries a Content-Security-Policy that allows no
inline script or style.
"""
from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from facesearch.api.deps import CtxDep, RequestId, client_address, get_limits
from facesearch.api.ratelimit import Action
from facesearch.auth.lockout import normalise_user_name
from facesearch.auth.permissions import Perm, Principal, Role, allowed, require
from facesearch.auth.totp import qr_svg
from facesearch.errors import (AccountLocked, AuthenticationFailed, FaceSearchError, NotFound, RateLimited,
                               SessionExpired)
from facesearch.services.accounts import Accounts
from facesearch.services.casework import NOTICE, Casework, Oversight
from facesearch.services.casework import model_notices
from facesearch.services.web_sessions import (LOGIN_CSRF_COOKIE, SESSION_COOKIE, CsrfRejected, WebSessions,
                                              check_csrf, cookie_secure, create_user, csrf_for,
                                              roles_creatable_by, same_value)
from facesearch.web import render, static_files

log = logging.getLogger("facesearch.web")

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

STATUS_TEXT = {
    "unreviewed": "Unreviewed: no candidate has been confirmed by two reviewers",
    "match_confirmed": "Match confirmed: two different reviewers confirmed the same candidate",
    "no_match": "No match: every candidate was rejected",
}
ROLE_TEXT = {"sysadmin": "system administrator", "agency_admin": "agency administrator",
             "supervisor": "supervisor", "investigator": "investigator", "privacy_officer": "privacy officer"}


# -- plumbing --------------------------------------------------------------------------------------
class SignInRequired(Exception):
    def __init__(self, expired: bool = False) -> None:
        super().__init__("sign in first")
        self.expired = expired


def _local_path(target: str | None, default: str = "/") -> str:
    """Only paths of this site (no scheme, no host, no ``//``) are followed after sign-in."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


def _when(dt: datetime | None) -> str:
    if dt is None:
        return ""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _error_page(exc: FaceSearchError, status: int | None = None) -> HTMLResponse:
    response = _html("error.html", None, status=status or exc.http_status, code=exc.code, message=exc.message)
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


def _html(template: str, user: WebUser | None, *, status: int = 200, **context: object) -> HTMLResponse:
    context.setdefault("active", "")
    body = render(template, user=user, csrf=user.csrf if user else "", role_text=ROLE_TEXT, when=_when,
                  Perm=Perm, **context)
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


class WebRoute(APIRoute):
    """Turns what a page handler raises into a page: sign-in redirects, the error page (with
    the catalogue code), and adds the security headers to every response."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired as e:
                q = {"next": _local_path(request.url.path if request.method == "GET" else "/")}
                if request.method == "GET" and request.url.query:
                    q["next"] = _local_path(f"{request.url.path}?{request.url.query}")
                if e.expired:
                    q["expired"] = "1"
                response = RedirectResponse(f"/login?{urlencode(q)}", status_code=303)
                if e.expired:
                    response.delete_cookie(SESSION_COOKIE, path="/")
            except FaceSearchError as e:
                response = _error_page(e)
            except RequestValidationError as e:
                fields = sorted({str(err.get("loc", ("", "?"))[-1]) for err in e.errors()})
                response = _html("error.html", None, status=422, code="invalid_request",
                                 message=f"missing or invalid: {', '.join(fields)}")
            except StarletteHTTPException:
                raise
            except Exception:
                log.exception("unexpected error in page %s (request %s)", request.url.path,
                              getattr(request.state, "request_id", "?"))
                response = _html("error.html", None, status=500, code="internal_error",
                                 message="the server failed; the error was logged")
            return _security_headers(response)

        return route


router = APIRouter(tags=["web"], include_in_schema=False, route_class=WebRoute)


@dataclass(frozen=True)
class WebUser:
    principal: Principal
    token: str
    csrf: str
    model_notices: tuple[str, ...] = ()  # licence terms of restricted model packs in use

    def can(self, perm: Perm | str) -> bool:
        return allowed(self.principal.role, Perm(perm))

    def need(self, perm: Perm) -> None:
        """The page-level permission (the services check again)."""
        require(self.principal, perm)


def web_user(request: Request, ctx: CtxDep) -> WebUser:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise SignInRequired()
    try:
        p = WebSessions(ctx).authenticate(token)
    except SessionExpired:
        raise SignInRequired(expired=True) from None
    except AuthenticationFailed:
        raise SignInRequired() from None
    return WebUser(p, token, csrf_for(token), model_notices(ctx, p))


def web_user_posting(user: Annotated[WebUser, Depends(web_user)],
                     csrf: Annotated[str, Form()] = "") -> WebUser:
    """A signed-in user submitting a form: the form's CSRF token must be the session's."""
    check_csrf(user.token, csrf)
    return user


User = Annotated[WebUser, Depends(web_user)]
Posting = Annotated[WebUser, Depends(web_user_posting)]


def _source(request: Request) -> str | None:
    return client_address(request)  # the peer, or a trusted proxy's X-Forwarded-For (api/ratelimit.py)


def _limit(request: Request, action: Action, account: str) -> None:
    get_limits(request).hit(action, account=account, address=_source(request))


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# -- static files --------------------------------------------------------------------------------------
@router.get("/static/{name}")
def static(name: str) -> Response:
    found = static_files().get(name)
    if found is None:
        raise NotFound(f"no static file {name!r}")
    body, media_type = found
    return Response(body, media_type=media_type, headers={"Cache-Control": "public, max-age=300"})


# -- sign-in ---------------------------------------------------------------------------------------------
def _login_page(ctx_next: str, *, status: int = 200, error: FaceSearchError | None = None,
                notice: str | None = None, username: str = "", login_csrf: str | None = None,
                secure: bool = False) -> HTMLResponse:
    token = login_csrf or secrets.token_urlsafe(24)
    response = _html("login.html", None, status=status, next=ctx_next, error=error, notice=notice,
                     username=username, login_csrf=token)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, path="/login", httponly=True, samesite="strict",
                        secure=secure)
    return response


@router.get("/login")
def login_form(request: Request, ctx: CtxDep, next: str = "/", expired: str | None = None,
               signed_out: str | None = None) -> Response:
    notice = None
    if expired:
        notice = "Your session has expired. Sign in again."
    elif signed_out:
        notice = "You are signed out."
    return _login_page(_local_path(next), notice=notice, secure=cookie_secure(ctx),
                       login_csrf=request.cookies.get(LOGIN_CSRF_COOKIE))


@router.post("/login")
def login(request: Request, ctx: CtxDep, rid: RequestId,  # nosec B107 - empty form defaults, not passwords
          username: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",
          code: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "",
          next: Annotated[str, Form()] = "/") -> Response:
    """Password and one-time code for a session cookie. Without a code, an account that has not
    set up its authenticator yet gets its enrolment page (QR code) instead."""
    secure = cookie_secure(ctx)
    target = _local_path(next)
    if not same_value(request.cookies.get(LOGIN_CSRF_COOKIE), csrf):
        raise CsrfRejected("the form is missing its security token or it is wrong: reload the page and try again")
    sessions = WebSessions(ctx)
    try:
        _limit(request, Action.LOGIN, normalise_user_name(username))  # shared with the API's sign-in
        if not code.strip():
            uri = sessions.enrolment(username, password, request_id=rid, source=_source(request))
            secret = parse_qs(urlsplit(uri).query).get("secret", [""])[0]
            qr = base64.b64encode(qr_svg(uri).encode("utf-8")).decode("ascii")
            return _html("enrol.html", None, qr_data_uri=f"data:image/svg+xml;base64,{qr}",
                         secret=" ".join(secret[i:i + 4] for i in range(0, len(secret), 4)),
                         username=username, next=target, login_csrf=csrf)
        session = sessions.sign_in(username, password, code, request_id=rid, source=_source(request))
    except (AuthenticationFailed, AccountLocked, RateLimited) as e:
        response = _login_page(target, status=e.http_status, error=e, username=username, login_csrf=csrf,
                               secure=secure)
        if isinstance(e, (AccountLocked, RateLimited)):
            response.headers["Retry-After"] = str(e.retry_after_s)
        return response
    response = _see_other(target)
    response.set_cookie(SESSION_COOKIE, session.token, max_age=session.max_age_s, path="/", httponly=True,
                        samesite="strict", secure=secure)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(user: Posting, ctx: CtxDep, rid: RequestId) -> Response:
    WebSessions(ctx).sign_out(user.token, user.principal, request_id=rid)
    response = _see_other("/login?signed_out=1")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/")
def home(user: User) -> Response:
    if user.can(Perm.SEARCH_CREATE):
        return _see_other("/search")
    if user.can(Perm.OVERSIGHT_READ):
        return _see_other("/dashboard")
    if user.can(Perm.USER_MANAGE):
        return _see_other("/admin/users")
    if user.can(Perm.ERASURE_REQUEST):
        return _see_other("/privacy")
    return _html("error.html", user, status=403, code="forbidden", message="your role has no pages here")


# -- search ----------------------------------------------------------------------------------------------
def _search_form(ctx: CtxDep, user: WebUser, *, status: int = 200, error: FaceSearchError | None = None,
                 values: dict[str, str] | None = None) -> HTMLResponse:
    galleries = Casework(ctx).galleries(user.principal)
    purposes = Accounts(ctx).agency_by_id(user.principal.agency_id).purposes if user.principal.agency_id else ()
    return _html("search_form.html", user, status=status, galleries=galleries, purposes=purposes, error=error,
                 values=values or {}, max_mb=ctx.settings.max_upload_bytes // (1024 * 1024))


@router.get("/search")
def search_form(user: User, ctx: CtxDep) -> Response:
    user.need(Perm.SEARCH_CREATE)
    return _search_form(ctx, user)


@router.post("/search")
def search(request: Request, user: Posting, ctx: CtxDep, rid: RequestId,
           photo: Annotated[UploadFile, File()],
           gallery: Annotated[str, Form()] = "", case_number: Annotated[str, Form()] = "",
           purpose: Annotated[str, Form()] = "", authorization_ref: Annotated[str, Form()] = "") -> Response:
    _limit(request, Action.SEARCH, user.principal.public_id)
    limit = ctx.settings.max_upload_bytes
    data = photo.file.read(limit + 1)
    try:
        view = Casework(ctx).search(user.principal, data, gallery, case_number, purpose,
                                    authorization_ref.strip() or None, request_id=rid)
    except FaceSearchError as e:
        values = {"gallery": gallery, "case_number": case_number, "purpose": purpose,
                  "authorization_ref": authorization_ref}
        return _search_form(ctx, user, status=e.http_status, error=e, values=values)
    return _see_other(f"/searches/{quote(view.search_id)}?new=1")


@router.get("/searches/{search_id}")
def search_detail(search_id: str, user: User, ctx: CtxDep, rid: RequestId, new: str | None = None,
                  reviewed: str | None = None) -> Response:
    view = Casework(ctx).get(user.principal, search_id, request_id=rid)
    subjects = {c.candidate_id: (c.subject or "(no subject)") for c in view.candidates}
    ranks = {c.candidate_id: c.rank for c in view.candidates}
    return _html("search.html", user, view=view, notice=NOTICE, status_text=STATUS_TEXT.get(view.status, view.status),
                 can_review=user.can(Perm.REVIEW_CREATE), subjects=subjects, ranks=ranks,
                 flash=("Search done." if new else "Your review was recorded." if reviewed else None))


@router.post("/searches/{search_id}/reviews")
def review(search_id: str, user: Posting, ctx: CtxDep, rid: RequestId,
           candidate_id: Annotated[str, Form()], decision: Annotated[str, Form()],
           note: Annotated[str, Form()] = "") -> Response:
    Casework(ctx).review(user.principal, search_id, candidate_id, decision, note, request_id=rid)
    return _see_other(f"/searches/{quote(search_id)}?reviewed=1#reviews")


@router.get("/thumbnails/{candidate_id}.jpg")
def thumbnail(candidate_id: str, user: User, ctx: CtxDep, rid: RequestId) -> Response:
    jpeg = Casework(ctx).thumbnail(user.principal, candidate_id, request_id=rid)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


# -- cases and oversight -------------------------------------------------------------------------------
@router.get("/cases")
def cases(user: User, ctx: CtxDep, case: str = "") -> Response:
    """One case's searches (or the agency's latest searches when no case is given)."""
    case = case.strip()
    views = Casework(ctx).list(user.principal, case_number=case or None, limit=200 if case else 50)
    return _html("cases.html", user, case=case, views=views, status_text=STATUS_TEXT,
                 can_export=user.can(Perm.CASE_EXPORT), export_url=f"/cases/export.pdf?{urlencode({'case': case})}")


@router.get("/cases/export.pdf")
def case_pdf(request: Request, user: User, ctx: CtxDep, rid: RequestId, case: str = "") -> Response:
    _limit(request, Action.EXPORT, user.principal.public_id)
    pdf = Oversight(ctx).case_pdf(user.principal, case.strip(), request_id=rid)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in case.strip())[:80] or "case"
    return Response(pdf, media_type="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="case-{safe}.pdf"'})


@router.get("/dashboard")
def dashboard(user: User, ctx: CtxDep, rid: RequestId) -> Response:
    report = Oversight(ctx).report(user.principal, request_id=rid)
    return _html("dashboard.html", user, report=report)


# -- user administration ---------------------------------------------------------------------------------
def _users_page(user: WebUser, *, status: int = 200, error: FaceSearchError | None = None,
                values: dict[str, str] | None = None, created: object = None, qr_data_uri: str = "") -> HTMLResponse:
    return _html("users.html", user, status=status, roles=roles_creatable_by(user.principal), error=error,
                 values=values or {}, created=created, qr_data_uri=qr_data_uri,
                 is_sysadmin=user.principal.role == Role.SYSADMIN)


@router.get("/admin/users")
def users_form(user: User) -> Response:
    user.need(Perm.USER_MANAGE)
    return _users_page(user)


@router.post("/admin/users")
def add_user(user: Posting, ctx: CtxDep, username: Annotated[str, Form()] = "",  # nosec B107 - empty form defaults
             password: Annotated[str, Form()] = "", role: Annotated[str, Form()] = "",
             agency: Annotated[str, Form()] = "") -> Response:
    try:
        created = create_user(ctx, user.principal, username, password, role, agency)
    except FaceSearchError as e:
        values = {"username": username, "role": role, "agency": agency}
        return _users_page(user, status=e.http_status, error=e, values=values)
    qr = base64.b64encode(qr_svg(created.totp_uri).encode("utf-8")).decode("ascii")
    return _users_page(user, created=created, qr_data_uri=f"data:image/svg+xml;base64,{qr}")
