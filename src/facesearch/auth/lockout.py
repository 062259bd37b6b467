"""Account lockout after repeated failed logins.

Policy (defaults): 5 failed attempts within a 15-minute window lock the account for 15 minutes.
The window is fixed: it opens at the first failure and, once it has passed without a lock, the
next failure opens a new one. A lock is not extended by attempts made while it holds (the caller
refuses those without checking the password, see below), so an attacker cannot keep an account
locked for longer than by sending 5 bad attempts every 15 minutes.

The key is the normalised user name (:func:`normalise_user_name`): NFKC, case folding, invisible
format characters removed, surrounding whitespace stripped and inner runs of whitespace collapsed,
so ``"Alice"``, ``" alice "`` and ``"ＡＬＩＣＥ"`` share one counter. Keep a state for names
that have no account as well, so that the lock itself does not reveal which accounts exist.

Intended use at login (``policy.check`` first, so nothing is verified while locked)::

    state = repo.lockout(normalise_user_name(name)) or LockoutState(key)
    policy.check(state, now)                       # raises AccountLocked
    ok = <password and TOTP both right>            # dummy_verify for unknown users
    state = policy.register_success(state, now) if ok else policy.register_failure(state, now)
    repo.save(state)

Everything here is a pure function of the state and the time; the caller persists the state.
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from facesearch.errors import AccountLocked

__all__ = ["normalise_user_name", "LockoutState", "LockoutPolicy", "DEFAULT_LOCKOUT_POLICY"]

_WS = re.compile(r"\s+")


def normalise_user_name(name: str) -> str:
    """The canonical form of a user name: NFKC + casefold (twice NFKC, as Unicode's
    NFKC_Casefold needs), format characters (zero-width spaces, joiners, bidi marks) removed,
    whitespace stripped at both ends and collapsed to one space inside."""
    s = unicodedata.normalize("NFKC", name)
    s = unicodedata.normalize("NFKC", s.casefold())
    s = "".join(ch for ch in s if unicodedata.category(ch) != "Cf")
    return _WS.sub(" ", s).strip()


def _check_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("times must be timezone-aware (use datetime.now(timezone.utc))")


@dataclass(frozen=True)
class LockoutState:
    """The persisted lockout counters of one normalised user name."""

    key: str
    failures: int = 0
    window_started_at: datetime | None = None
    locked_until: datetime | None = None

    @classmethod
    def for_user(cls, user_name: str) -> LockoutState:
        return cls(key=normalise_user_name(user_name))


@dataclass(frozen=True)
class LockoutPolicy:
    max_failures: int = 5
    window_s: int = 15 * 60
    lock_s: int = 15 * 60

    def is_locked(self, state: LockoutState, now: datetime) -> bool:
        _check_aware(now)
        return state.locked_until is not None and now < state.locked_until

    def retry_after_s(self, state: LockoutState, now: datetime) -> int:
        """Whole seconds until the lock ends (rounded up); 0 when not locked."""
        if not self.is_locked(state, now):
            return 0
        assert state.locked_until is not None  # nosec B101 - narrows the type; is_locked() just checked it
        return max(1, math.ceil((state.locked_until - now).total_seconds()))

    def check(self, state: LockoutState, now: datetime) -> None:
        """Raise :class:`facesearch.errors.AccountLocked` while the lock holds."""
        if self.is_locked(state, now):
            raise AccountLocked(self.retry_after_s(state, now))

    def register_failure(self, state: LockoutState, now: datetime) -> LockoutState:
        """The state after one more failed attempt; locks on the ``max_failures``-th failure
        inside the window."""
        _check_aware(now)
        if self.is_locked(state, now):
            return state  # attempts during a lock neither count nor extend it
        window_open = (
            state.window_started_at is not None
            and state.locked_until is None
            and now < state.window_started_at + timedelta(seconds=self.window_s)
        )
        if window_open:
            failures, started = state.failures + 1, state.window_started_at
        else:  # first failure, the window has passed, or a lock has ended
            failures, started = 1, now
        locked_until = None
        if failures >= self.max_failures:
            locked_until = now + timedelta(seconds=self.lock_s)
        return replace(state, failures=failures, window_started_at=started,
                       locked_until=locked_until)

    def register_success(self, state: LockoutState, now: datetime) -> LockoutState:
        """The state after a complete, successful login: counters cleared. A success is never
        registered while locked (``check`` refuses first); if it is, the lock stays."""
        if self.is_locked(state, now):
            return state
        return LockoutState(key=state.key)


DEFAULT_LOCKOUT_POLICY = LockoutPolicy()
