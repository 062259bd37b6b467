"""Opaque bearer tokens and browser sessions.

A token is ``secrets.token_urlsafe(32)`` (256 random bits) handed to the client once; the server
keeps only its SHA-256 hex digest (:func:`hash_token`). A plain, unsalted hash is enough here:
the token is random and long, so the digest cannot be reversed by guessing, and being
deterministic it can be the lookup key (``repository.find(hash_token(presented))``).

Two kinds of record, both frozen dataclasses that a repository persists as rows:

* :class:`TokenRecord` - short-lived API tokens: valid until ``expires_at`` unless revoked.
* :class:`SessionRecord` - interactive sessions: valid while used at least every
  ``idle_timeout_s`` (30 min) and never beyond the absolute ``expires_at`` (12 h by default);
  :func:`touch` on every use, :func:`revoke` on logout.

All functions take the time as an argument (an aware ``datetime``); nothing reads the clock.
State changes return new records (``dataclasses.replace``); the caller persists them.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import TypeVar

from facesearch.errors import SessionExpired, TokenExpired, TokenInvalid

__all__ = [
    "Clock", "utc_now", "hash_token", "new_token",
    "TokenRecord", "DEFAULT_TOKEN_TTL_S", "MAX_TOKEN_TTL_S", "issue", "check",
    "SessionPolicy", "DEFAULT_SESSION_POLICY", "SessionRecord", "start_session",
    "check_session", "touch", "use_session", "revoke",
]

Clock = Callable[[], datetime]
"""Anything that returns the current time as an aware datetime; inject a fake one in tests."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


DEFAULT_TOKEN_TTL_S = 15 * 60
MAX_TOKEN_TTL_S = 24 * 3600


def _check_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("times must be timezone-aware (use datetime.now(timezone.utc))")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """SHA-256 hex digest of the token: what is stored and looked up, never the token itself."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _same_token(token: str, token_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), token_hash)


@dataclass(frozen=True)
class TokenRecord:
    token_hash: str
    user_id: str
    issued_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None
    label: str = ""  # e.g. the API client's name, for listing and revoking

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def issue(
    user_id: str, ttl_s: int, now: datetime, *, label: str = "",
    max_ttl_s: int = MAX_TOKEN_TTL_S,
) -> tuple[str, TokenRecord]:
    """A new API token for ``user_id`` valid ``ttl_s`` seconds (``DEFAULT_TOKEN_TTL_S`` is the
    suggested value): ``(token for the client, record to store)``."""
    _check_aware(now)
    if not 0 < ttl_s <= max_ttl_s:
        raise ValueError(f"ttl_s must be between 1 and {max_ttl_s} seconds")
    token = new_token()
    record = TokenRecord(
        token_hash=hash_token(token), user_id=user_id, issued_at=now,
        expires_at=now + timedelta(seconds=ttl_s), label=label,
    )
    return token, record


def check(token: str, record: TokenRecord | None, now: datetime) -> TokenRecord:
    """Return ``record`` when ``token`` is its token, not revoked and not expired.

    Raises :class:`TokenInvalid` (unknown, mismatched or revoked) or :class:`TokenExpired`.
    """
    _check_aware(now)
    if record is None or not _same_token(token, record.token_hash) or record.revoked:
        raise TokenInvalid()
    if now >= record.expires_at:
        raise TokenExpired()
    return record


@dataclass(frozen=True)
class SessionPolicy:
    idle_timeout_s: int = 30 * 60
    absolute_lifetime_s: int = 12 * 3600


DEFAULT_SESSION_POLICY = SessionPolicy()


@dataclass(frozen=True)
class SessionRecord:
    token_hash: str
    user_id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime  # absolute end, whatever the activity
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def idle_expires_at(self, policy: SessionPolicy = DEFAULT_SESSION_POLICY) -> datetime:
        return min(self.last_seen_at + timedelta(seconds=policy.idle_timeout_s), self.expires_at)


def start_session(
    user_id: str, now: datetime, policy: SessionPolicy = DEFAULT_SESSION_POLICY
) -> tuple[str, SessionRecord]:
    """A new session after a complete login (password and TOTP): ``(token, record)``.

    The token goes into a ``Secure; HttpOnly; SameSite=Strict`` cookie; the record is stored.
    """
    _check_aware(now)
    token = new_token()
    record = SessionRecord(
        token_hash=hash_token(token), user_id=user_id, created_at=now, last_seen_at=now,
        expires_at=now + timedelta(seconds=policy.absolute_lifetime_s),
    )
    return token, record


def check_session(
    token: str, record: SessionRecord | None, now: datetime,
    policy: SessionPolicy = DEFAULT_SESSION_POLICY,
) -> SessionRecord:
    """Return ``record`` when the session is usable at ``now``.

    Raises :class:`TokenInvalid` (unknown, mismatched or revoked) or :class:`SessionExpired`
    (idle for ``idle_timeout_s`` or past the absolute lifetime).
    """
    _check_aware(now)
    if record is None or not _same_token(token, record.token_hash) or record.revoked:
        raise TokenInvalid()
    if now >= record.idle_expires_at(policy):
        raise SessionExpired()
    return record


_R = TypeVar("_R", TokenRecord, SessionRecord)


def touch(record: SessionRecord, now: datetime) -> SessionRecord:
    """The session with ``last_seen_at = now`` (call after a successful :func:`check_session`)."""
    _check_aware(now)
    return replace(record, last_seen_at=max(record.last_seen_at, now))


def use_session(
    token: str, record: SessionRecord | None, now: datetime,
    policy: SessionPolicy = DEFAULT_SESSION_POLICY,
) -> SessionRecord:
    """:func:`check_session` then :func:`touch`: the record to persist for this request."""
    return touch(check_session(token, record, now, policy), now)


def revoke(record: _R, now: datetime) -> _R:
    """The record marked revoked at ``now`` (logout, or an administrator's revocation).
    Revoking twice keeps the first time."""
    _check_aware(now)
    if record.revoked_at is not None:
        return record
    return replace(record, revoked_at=now)
