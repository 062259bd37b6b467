"""Authentication primitives of the investigator service.

Pure library code: no web framework, no database, no clock reads (every function takes ``now``
or ``at``, an aware ``datetime``; :data:`tokens.Clock` / :func:`tokens.utc_now` for callers).
State lives in frozen dataclasses (:class:`LockoutState`, :class:`TotpCredential`,
:class:`TokenRecord`, :class:`SessionRecord`) that a repository persists.

A login, as the service should compose it (every account has password + TOTP)::

    key = normalise_user_name(name)
    state = repo.lockout_state(key) or LockoutState(key)
    policy.check(state, now)                      # AccountLocked (429, retry_after_s)
    user = repo.user_by_name(key)
    if user is None:
        dummy_verify(password); ok = False        # same cost as a wrong password
    else:
        ok, rehash = verify_password(password, user.password_hash)
        cred = accept(user.totp, code, at=now) if ok else None   # TOTP only after the password
        ok = cred is not None
    state = policy.register_success(state, now) if ok else policy.register_failure(state, now)
    repo.save(state)
    if not ok: raise AuthenticationFailed()       # one message for every wrong part
    repo.save(cred); rehash and repo.set_hash(...)
    token, session = start_session(user.id, now)

Requests then call ``use_session(token, repo.session(hash_token(token)), now)`` and persist the
touched record; logout is ``revoke(session, now)``. API clients get ``issue(user_id, ttl_s,
now)`` tokens checked with ``check``.
"""
from __future__ import annotations

from facesearch.auth.lockout import (
    DEFAULT_LOCKOUT_POLICY, LockoutPolicy, LockoutState, normalise_user_name,
)
from facesearch.auth.passwords import (
    Argon2Params, PasswordRules, check_password_policy, dummy_verify, hash_password,
    password_policy_violations, verify_password,
)
from facesearch.auth.tokens import (
    DEFAULT_SESSION_POLICY, Clock, SessionPolicy, SessionRecord, TokenRecord, check,
    check_session, hash_token, issue, revoke, start_session, touch, use_session, utc_now,
)
from facesearch.auth.totp import TotpCredential, accept, new_secret, provisioning_uri

__all__ = [
    "DEFAULT_LOCKOUT_POLICY", "LockoutPolicy", "LockoutState", "normalise_user_name",
    "Argon2Params", "PasswordRules", "check_password_policy", "dummy_verify", "hash_password",
    "password_policy_violations", "verify_password",
    "DEFAULT_SESSION_POLICY", "Clock", "SessionPolicy", "SessionRecord", "TokenRecord", "check",
    "check_session", "hash_token", "issue", "revoke", "start_session", "touch", "use_session",
    "utc_now",
    "TotpCredential", "accept", "new_secret", "provisioning_uri",
]
