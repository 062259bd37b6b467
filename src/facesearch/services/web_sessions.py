"""Browser sessions of the web UI, on the ``tokens`` table (kind ``"session"``).

Sign-in reuses :meth:`Accounts.login` for every check (lockout, password, one-time code, replay,
audit) and converts its result: the short-lived API token it issued is revoked at once and a
new random session token is stored instead (only its SHA-256, like API tokens). A session is
refused after :attr:`SessionPolicy.idle_timeout_s` without use (``last_used_at``, touched on
every request) and after its absolute lifetime (``expires_at``), whichever comes first; the
rules are those of :mod:`facesearch.auth.tokens` (``start_session``, ``use_session``).
:meth:`Accounts.authenticate` refuses session tokens as bearer tokens, and
:meth:`WebSessions.authenticate` refuses API tokens as cookies.

CSRF: every state-changing form carries :func:`csrf_for` of the session token, an HMAC keyed
with the (secret, HttpOnly) session token, so it needs no server-side storage, dies with the
session, and a page that cannot read the cookie cannot compute it. The sign-in form, which has
no session yet, uses a random value in a short-lived cookie and the same value in the form
(double submit), checked with :func:`same_value`.

First sign-in: an account whose one-time codes are not confirmed yet (``users.totp_confirmed``)
may ask for its enrolment (:meth:`WebSessions.enrolment`) with its password alone; the answer is
the provisioning URI for the QR code. A wrong password counts as a failed sign-in (lockout) and
answers the same message as every other sign-in failure; a confirmed account never gets its
secret again this way.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import datetime, timezone


from facesearch.audit import AuditAction, AuditOutcome
from facesearch.auth import (DEFAULT_LOCKOUT_POLICY, LockoutState, dummy_verify, hash_token, normalise_user_name,
                             verify_password)
from facesearch.auth.permissions import Principal, Role
from facesearch.auth.tokens import (DEFAULT_SESSION_POLICY, SessionPolicy, SessionRecord, start_session,
                                    use_session)
from facesearch.auth.totp import provisioning_uri
from facesearch.errors import AuthenticationFailed, CsrfRejected, TokenInvalid
from facesearch.services.accounts import Accounts, NewUser, now_utc, roles_creatable_by
from facesearch.services.context import AppContext
from facesearch.store.tables import Agency, Token, User

SESSION_COOKIE = "fs_session"
LOGIN_CSRF_COOKIE = "fs_login_csrf"
_CSRF_LABEL = b"facesearch web form v1"


def csrf_for(session_token: str) -> str:
    """The CSRF token of a session: HMAC-SHA-256 keyed with the session token."""
    return hmac.new(session_token.encode("utf-8"), _CSRF_LABEL, hashlib.sha256).hexdigest()


def same_value(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; an empty or missing value never matches."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


def check_csrf(session_token: str, given: str | None) -> None:
    if not same_value(csrf_for(session_token), given):
        raise CsrfRejected("the form is missing its security token or it is wrong: reload the page and try again")


def cookie_secure(ctx: AppContext) -> bool:
    """``FACESEARCH_COOKIE_SECURE`` (default false, so that plain-http tests work); set it to
    true behind TLS."""
    extra = ctx.settings.model_extra or {}
    raw = os.environ.get("FACESEARCH_COOKIE_SECURE", extra.get("cookie_secure", "false"))
    return str(raw).strip().lower() in ("1", "true", "yes", "on")


def _aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


@dataclass(frozen=True)
class WebSession:
    token: str  # goes into the cookie, never stored
    csrf: str
    max_age_s: int


class WebSessions:
    def __init__(self, ctx: AppContext, clock=now_utc, policy: SessionPolicy = DEFAULT_SESSION_POLICY) -> None:  # noqa: ANN001
        self.ctx = ctx
        self.clock = clock
        self.policy = policy
        self.accounts = Accounts(ctx, clock=clock)

    # sign-in -----------------------------------------------------------------------------------
    def sign_in(self, username: str, password: str, totp: str, *, request_id: str | None = None,
                source: str | None = None) -> WebSession:
        """:meth:`Accounts.login` (all checks and the audit record), then its API token is
        swapped for a session token in one transaction."""
        issued = self.accounts.login(username, password, totp, request_id=request_id, source=source)
        now = self.clock()
        with self.ctx.repo() as repo:
            api = repo.s.get(Token, hash_token(issued.access_token))
            if api is None:  # pragma: no cover - login just stored it
                raise TokenInvalid("sign-in failed; try again")
            api.revoked_at = now
            token, rec = start_session(str(api.user_id), now, self.policy)
            repo.s.add(Token(hash=rec.token_hash, user_id=api.user_id, kind="session", created_at=now,
                             expires_at=rec.expires_at, last_used_at=now))
        return WebSession(token, csrf_for(token), self.policy.absolute_lifetime_s)

    def enrolment(self, username: str, password: str, *, request_id: str | None = None,
                  source: str | None = None) -> str:
        """The provisioning URI of an account that has not confirmed its one-time codes yet,
        given its password. Anything else (unknown user, wrong password, an account already
        enrolled) is a failed sign-in: counted by the lockout, audited, one message."""
        now = self.clock()
        key = normalise_user_name(username or "")
        policy = DEFAULT_LOCKOUT_POLICY
        with self.ctx.repo() as repo:
            row = repo.lockout(key)
            ref = repo.name_ref(key)  # names never enter the audit trail: a keyed pseudonym
            state = LockoutState(key=key) if row is None else LockoutState(
                key=key, failures=row.failures, window_started_at=_aware(row.window_started_at),
                locked_until=_aware(row.locked_until))
        audit = dict(actor=f"name:{ref}", target=f"login:{ref}", request_id=request_id)
        try:
            policy.check(state, now)
        except Exception:
            self.ctx.audit.append(AuditAction.LOGIN, agency=None, outcome=AuditOutcome.DENIED,
                                  details={"reason": "locked", "source": source, "step": "enrolment"}, **audit)
            raise
        uri = None
        agency_name = None
        with self.ctx.repo() as repo:
            user = repo.user_by_name(key)
            if user is None or user.disabled:
                dummy_verify(password or "", params=self.accounts.argon2)
            else:
                ok, _ = verify_password(password or "", user.password_hash, params=self.accounts.argon2)
                if ok and not user.totp_confirmed:
                    uri = provisioning_uri(user.totp_secret, user.username_key)
                if user.agency_id:
                    agency_name = repo.s.get(Agency, user.agency_id).public_id
            if uri is None:
                state = policy.register_failure(state, now)
                row = repo.lockout_for_update(key)
                row.failures, row.window_started_at, row.locked_until = (
                    state.failures, state.window_started_at, state.locked_until)
        self.ctx.audit.append(AuditAction.LOGIN, agency=agency_name,
                              outcome=AuditOutcome.SUCCESS if uri else AuditOutcome.FAILURE,
                              details={"source": source, "step": "enrolment"}, **audit)
        if uri is None:
            raise AuthenticationFailed("sign-in failed: wrong user name, password or one-time code")
        return uri

    # every request -----------------------------------------------------------------------------
    def authenticate(self, token: str) -> Principal:
        """The principal of a session cookie; refuses unknown, revoked, idle and expired
        sessions (:class:`TokenInvalid`, :class:`SessionExpired`) and touches ``last_used_at``."""
        now = self.clock()
        with self.ctx.repo() as repo:
            t = repo.s.get(Token, hash_token(token or ""))
            if t is None or t.kind != "session":
                raise TokenInvalid("sign in first")
            created = _aware(t.created_at)
            record = SessionRecord(token_hash=t.hash, user_id=str(t.user_id), created_at=created,
                                   last_seen_at=_aware(t.last_used_at) or created,
                                   expires_at=_aware(t.expires_at), revoked_at=_aware(t.revoked_at))
            record = use_session(token, record, now, self.policy)
            u = repo.s.get(User, t.user_id)
            if u is None or u.disabled:
                raise TokenInvalid("sign in first")
            t.last_used_at = record.last_seen_at
            agency = repo.s.get(Agency, u.agency_id) if u.agency_id else None
            return Principal(u.id, u.public_id, u.username_key, Role(u.role), u.agency_id,
                             agency.name if agency else None, agency.public_id if agency else None)

    def sign_out(self, token: str, principal: Principal, request_id: str | None = None) -> None:
        """Revoke the session (and audit the logout, as for API tokens)."""
        self.accounts.logout(token, principal, request_id=request_id)


# user administration -----------------------------------------------------------------------------
def create_user(ctx: AppContext, p: Principal, username: str, password: str, role: str,
                agency: str | None) -> NewUser:
    """A new user created by ``p``: the rules of :meth:`Accounts.create_user`, which the API's
    ``POST /api/v1/users`` uses too."""
    return Accounts(ctx).create_user(p, username, password, role, agency)


__all__ = ["SESSION_COOKIE", "LOGIN_CSRF_COOKIE", "CsrfRejected", "WebSession", "WebSessions", "check_csrf",
           "cookie_secure", "create_user", "csrf_for", "roles_creatable_by", "same_value"]

