"""Agencies, users, sign-in and tokens: the use cases behind `facesearch agency/user add`,
`POST /api/v1/auth/login` and every authenticated request."""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from facesearch.audit import AuditAction, AuditOutcome
from facesearch.auth import (Argon2Params, DEFAULT_LOCKOUT_POLICY, LockoutState, check_password_policy,
                             dummy_verify, hash_password, hash_token, new_secret, normalise_user_name,
                             verify_password)
from facesearch.auth.permissions import OPERATOR_ROLES, Perm, Principal, Role, require
from facesearch.auth.totp import TotpCredential, accept
from facesearch.errors import (AuthenticationFailed, Conflict, Forbidden, InvalidInput, NotFound,
                               TokenExpired, TokenInvalid)
from facesearch.services.context import AppContext
from facesearch.store.tables import Agency, Token, User


def public_id() -> str:
    """Random identifiers for URLs: never sequential, never guessable."""
    return secrets.token_hex(16)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def _aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


@dataclass(frozen=True)
class AgencyInfo:
    id: int
    public_id: str
    name: str
    case_pattern: str
    purposes: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"agency_id": self.public_id, "name": self.name, "case_pattern": self.case_pattern,
                "purposes": list(self.purposes)}


@dataclass(frozen=True)
class NewUser:
    user_id: str
    username: str
    role: str
    agency: str | None
    totp_secret: str  # shown once, at creation, for enrolment
    totp_uri: str

    def to_json(self) -> dict[str, object]:
        return {"user_id": self.user_id, "username": self.username, "role": self.role,
                "agency": self.agency, "totp_secret": self.totp_secret, "totp_uri": self.totp_uri}


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int

    def to_json(self) -> dict[str, object]:
        return {"access_token": self.access_token, "token_type": "bearer",  # nosec B105 - OAuth token type name
                "expires_in": self.expires_in}


def _agency_info(a: Agency) -> AgencyInfo:
    return AgencyInfo(a.id, a.public_id, a.name, a.case_pattern, tuple(json.loads(a.purposes)))


class Accounts:
    def __init__(self, ctx: AppContext, clock=now_utc) -> None:  # noqa: ANN001
        self.ctx = ctx
        self.clock = clock
        s = ctx.settings
        self.argon2 = Argon2Params(time_cost=s.argon2_time_cost, memory_cost_kib=s.argon2_memory_kib,
                                   parallelism=2)

    # agencies ----------------------------------------------------------------------------------
    def add_agency(self, name: str, case_pattern: str | None = None, purposes: list[str] | None = None,
                   actor: str = "cli") -> AgencyInfo:
        name = name.strip()
        if not name:
            raise InvalidInput("an agency needs a name")
        pattern = case_pattern or self.ctx.settings.default_case_pattern
        try:
            re.compile(pattern)
        except re.error as e:
            raise InvalidInput(f"case number pattern is not a valid regular expression: {e}") from None
        purposes = purposes or [p.strip() for p in self.ctx.settings.default_purposes.split(",") if p.strip()]
        with self.ctx.repo() as repo:
            if repo.agency_by_name(name) is not None:
                raise Conflict("an agency of this name exists already")
            a = Agency(public_id=public_id(), name=name, case_pattern=pattern, purposes=json.dumps(purposes),
                       created_at=self.clock())
            repo.s.add(a)
            repo.s.flush()
            info = _agency_info(a)
        self.ctx.audit.append(AuditAction.USER_CHANGE, actor=actor, agency=info.public_id,
                              target=f"agency:{info.public_id}",
                              outcome=AuditOutcome.SUCCESS, request_id=None, details={"change": "agency_created"})
        return info

    def agency(self, name: str) -> AgencyInfo:
        with self.ctx.repo() as repo:
            a = repo.agency_by_name(name)
            if a is None:
                raise NotFound("no agency of this name exists")
            return _agency_info(a)

    def agency_by_id(self, agency_id: int) -> AgencyInfo:
        with self.ctx.repo() as repo:
            return _agency_info(repo.s.get(Agency, agency_id))

    # users -------------------------------------------------------------------------------------
    def add_user(self, username: str, password: str, role: str, agency: str | None,
                 actor: str = "cli", actor_agency_id: int | None = None) -> NewUser:
        try:
            role_ = Role(role)
        except ValueError:
            raise InvalidInput(f"unknown role {role!r} (roles: {', '.join(r.value for r in Role)})") from None
        key = normalise_user_name(username)
        if not key:
            raise InvalidInput("a user needs a user name")
        check_password_policy(password, user_name=key)
        agency_info = self.agency(agency) if agency else None
        if role_ not in OPERATOR_ROLES and agency_info is None:
            raise InvalidInput(f"a {role_.value} belongs to an agency: give --agency")
        if role_ in OPERATOR_ROLES and agency_info is not None:
            raise InvalidInput(f"a {role_.value} works for the operator and belongs to no agency")
        if actor_agency_id is not None and (agency_info is None or agency_info.id != actor_agency_id):
            raise NotFound("no agency of this name exists")  # an agency admin manages only its own
        secret = new_secret()
        with self.ctx.repo() as repo:
            if repo.user_by_name(key) is not None:
                raise Conflict("a user of this name exists already")
            u = User(public_id=public_id(), agency_id=agency_info.id if agency_info else None, username_key=key,
                     display_name=username.strip(), role=role_.value,
                     password_hash=hash_password(password, params=self.argon2), totp_secret=secret,
                     totp_last_step=None, totp_confirmed=False, disabled=False, created_at=self.clock())
            repo.s.add(u)
            repo.s.flush()
            uid = u.public_id
        self.ctx.audit.append(AuditAction.USER_CHANGE, actor=actor,
                              agency=agency_info.public_id if agency_info else None,
                              target=f"user:{uid}", outcome=AuditOutcome.SUCCESS, request_id=None,
                              details={"change": "user_created", "role": role_.value})
        from facesearch.auth import provisioning_uri

        return NewUser(uid, key, role_.value, agency_info.name if agency_info else None, secret,
                       provisioning_uri(secret, key))

    def create_user(self, p: Principal, username: str, password: str, role: str,
                    agency: str | None) -> NewUser:
        """A user created by ``p`` through the API or the web UI (the one place for these rules):
        system administrators create agency administrators of any agency and privacy officers
        (no agency); agency administrators create users of their own agency (another agency
        answers 'not found'), never system administrators or privacy officers."""
        require(p, Perm.USER_MANAGE)
        try:
            Role(role)
        except ValueError:
            raise InvalidInput(f"unknown role {role!r} (roles: {', '.join(r.value for r in Role)})") from None
        if role not in roles_creatable_by(p):
            raise Forbidden(f"a {p.role.value} cannot create a user with the role {role!r}")
        agency = (agency or "").strip() or None
        if p.role == Role.SYSADMIN:
            return self.add_user(username, password, role, agency, actor=p.audit_actor, actor_agency_id=None)
        return self.add_user(username, password, role, agency or p.agency_name, actor=p.audit_actor,
                             actor_agency_id=p.agency_id)

    def has_sysadmin(self) -> bool:
        with self.ctx.repo() as repo:
            return repo.s.scalar(select(User.id).where(User.role == Role.SYSADMIN.value).limit(1)) is not None

    # sign-in -----------------------------------------------------------------------------------
    def login(self, username: str, password: str, totp: str, *, request_id: str | None = None,
              source: str | None = None) -> IssuedToken:
        """Password and one-time code, or nothing. One message for every failure; 5 failures
        within 15 minutes lock the (normalised) user name for 15 minutes."""
        now = self.clock()
        key = normalise_user_name(username or "")
        policy = DEFAULT_LOCKOUT_POLICY
        with self.ctx.repo() as repo:
            row = repo.lockout(key)
            state = LockoutState(key=key) if row is None else LockoutState(
                key=key, failures=row.failures, window_started_at=_aware(row.window_started_at),
                locked_until=_aware(row.locked_until))
            ref = repo.name_ref(key)  # names never enter the audit trail: a keyed pseudonym
        audit = dict(actor=f"name:{ref}", target=f"login:{ref}", request_id=request_id)
        try:
            policy.check(state, now)
        except Exception:
            self.ctx.audit.append(AuditAction.LOGIN, agency=None, outcome=AuditOutcome.DENIED,
                                  details={"reason": "locked", "source": source}, **audit)
            raise
        with self.ctx.repo() as repo:
            user = repo.user_by_name(key)
            if user is not None:
                audit["actor"] = f"user:{user.public_id}"
            ok = False
            if user is None or user.disabled:
                dummy_verify(password or "", params=self.argon2)
            else:
                ok, _rehash = verify_password(password or "", user.password_hash, params=self.argon2)
                if ok:
                    cred = accept(TotpCredential(user.totp_secret, user.totp_last_step, user.totp_confirmed),
                                  (totp or "").strip(), at=now)
                    ok = cred is not None
                    if cred is not None:
                        user.totp_last_step = cred.last_used_step
                        user.totp_confirmed = True
            state = policy.register_success(state, now) if ok else policy.register_failure(state, now)
            row = repo.lockout_for_update(key)
            row.failures, row.window_started_at, row.locked_until = (
                state.failures, state.window_started_at, state.locked_until)
            agency_name = None
            if user is not None and user.agency_id:
                agency_name = repo.s.get(Agency, user.agency_id).public_id
            if ok:
                token = secrets.token_urlsafe(32)
                ttl = self.ctx.settings.token_ttl_s
                repo.s.add(Token(hash=hash_token(token), user_id=user.id, kind="api", created_at=now,
                                 expires_at=now + timedelta(seconds=ttl)))
        self.ctx.audit.append(AuditAction.LOGIN, agency=agency_name,
                              outcome=AuditOutcome.SUCCESS if ok else AuditOutcome.FAILURE,
                              details={"source": source}, **audit)
        if not ok:
            raise AuthenticationFailed("sign-in failed: wrong user name, password or one-time code")
        return IssuedToken(token, ttl)

    def authenticate(self, token: str) -> Principal:
        """The principal of a bearer token: valid, not revoked, not expired, user enabled."""
        now = self.clock()
        with self.ctx.repo() as repo:
            t = repo.s.get(Token, hash_token(token or ""))
            if t is None or t.revoked_at is not None or t.kind != "api":
                raise TokenInvalid("the access token is not valid")
            if now >= _aware(t.expires_at):
                raise TokenExpired("the access token has expired")
            u = repo.s.get(User, t.user_id)
            if u is None or u.disabled:
                raise TokenInvalid("the access token is not valid")
            t.last_used_at = now
            agency = repo.s.get(Agency, u.agency_id) if u.agency_id else None
            return Principal(u.id, u.public_id, u.username_key, Role(u.role), u.agency_id,
                             agency.name if agency else None, agency.public_id if agency else None)

    def logout(self, token: str, principal: Principal, request_id: str | None = None) -> None:
        with self.ctx.repo() as repo:
            t = repo.s.get(Token, hash_token(token))
            if t is not None:
                t.revoked_at = self.clock()
        self.ctx.audit.append(AuditAction.LOGIN, actor=principal.audit_actor, agency=principal.audit_agency,
                              target=f"logout:{principal.public_id}", outcome=AuditOutcome.SUCCESS,
                              request_id=request_id, details={"event": "logout"})


def roles_creatable_by(p: Principal) -> list[str]:
    """The roles ``p`` may give to a new user (API and web UI alike)."""
    if p.role == Role.SYSADMIN:
        return [Role.AGENCY_ADMIN.value, Role.PRIVACY_OFFICER.value]
    if p.role == Role.AGENCY_ADMIN:
        return [Role.INVESTIGATOR.value, Role.SUPERVISOR.value, Role.AGENCY_ADMIN.value]
    return []
