"""Password hashing (argon2id) and the minimum password policy.

Hashes are PHC strings (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``): the parameters travel
with each hash, so raising the cost later only needs :func:`verify_password`'s ``needs_rehash``
flag and a re-hash at the next successful login.

Passwords are normalised to Unicode NFKC before hashing and before the policy is checked, so
the same pass phrase typed on different keyboards/input methods gives the same hash.

Unknown users: call :func:`dummy_verify` with the submitted password so that a login for a
user that does not exist costs as much time as one with a wrong password.

Policy (see :class:`PasswordRules`), deliberately short, in the spirit of NIST SP 800-63B:

* at least 12 characters (code points after NFKC), at most 1024;
* at least 2 of the 4 character classes lower case, upper case, digit, other (a space counts
  as "other", so a pass phrase of several words with spaces passes);
* at least 5 distinct characters (refuses ``aaaaaaaaaaaa`` and ``ab12ab12ab12``);
* must not contain the user name (compared case-insensitively, user names of 3+ characters).

No forced composition beyond that and no forced periodic change. A breached-password list is
not checked (we have no offline copy); that is a TODO for the service layer.
"""
from __future__ import annotations

import functools
import secrets
import unicodedata
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from facesearch.errors import PasswordPolicy

__all__ = [
    "Argon2Params", "DEFAULT_PARAMS", "PasswordRules", "DEFAULT_RULES",
    "hash_password", "verify_password", "dummy_verify",
    "password_policy_violations", "check_password_policy",
]


@dataclass(frozen=True)
class Argon2Params:
    """argon2id cost parameters. The default is RFC 9106's second recommended option
    (64 MiB, 3 passes). Tests pass much smaller values to stay fast."""

    time_cost: int = 3
    memory_cost_kib: int = 64 * 1024
    parallelism: int = 4
    hash_len: int = 32
    salt_len: int = 16


DEFAULT_PARAMS = Argon2Params()


@functools.lru_cache(maxsize=8)
def _hasher(params: Argon2Params) -> PasswordHasher:
    return PasswordHasher(
        time_cost=params.time_cost,
        memory_cost=params.memory_cost_kib,
        parallelism=params.parallelism,
        hash_len=params.hash_len,
        salt_len=params.salt_len,
        type=Type.ID,
    )


@functools.lru_cache(maxsize=8)
def _dummy_hash(params: Argon2Params) -> str:
    # a hash of a random secret nobody knows, made with the same parameters as real hashes
    return _hasher(params).hash(secrets.token_urlsafe(32))


def _normalise(password: str) -> str:
    if not isinstance(password, str):
        raise TypeError("password must be a str")
    return unicodedata.normalize("NFKC", password)


def hash_password(password: str, *, params: Argon2Params = DEFAULT_PARAMS) -> str:
    """The argon2id PHC string of ``password`` with a fresh random salt.

    The policy is not checked here (use :func:`check_password_policy` where a password is set).
    """
    return _hasher(params).hash(_normalise(password))


def verify_password(
    password: str, stored_hash: str, *, params: Argon2Params = DEFAULT_PARAMS
) -> tuple[bool, bool]:
    """``(ok, needs_rehash)``.

    ``needs_rehash`` is True only when ``ok`` and the stored hash was made with parameters other
    than ``params`` (then store ``hash_password(password, params=params)``). A malformed stored
    hash is a failed verification (after a dummy verification, so it costs the usual time).
    """
    hasher = _hasher(params)
    try:
        hasher.verify(stored_hash, _normalise(password))
    except InvalidHashError:
        dummy_verify(password, params=params)
        return False, False
    except VerificationError:  # includes VerifyMismatchError
        return False, False
    return True, hasher.check_needs_rehash(stored_hash)


def dummy_verify(password: str = "", *, params: Argon2Params = DEFAULT_PARAMS) -> None:  # nosec B107 - any input
    """Spend the time of one real verification, for logins of unknown users. Always fails."""
    try:
        _hasher(params).verify(_dummy_hash(params), _normalise(password))
    except VerificationError:
        pass


@dataclass(frozen=True)
class PasswordRules:
    min_length: int = 12
    max_length: int = 1024
    min_classes: int = 2
    min_distinct: int = 5
    min_user_name_len: int = 3  # user names shorter than this are not searched for


DEFAULT_RULES = PasswordRules()


def _char_class(ch: str) -> str:
    if ch.isdigit():
        return "digit"
    if ch.islower():
        return "lower"
    if ch.isupper():
        return "upper"
    return "other"  # symbols, spaces, and letters without case (CJK, Arabic, ...)


def password_policy_violations(
    password: str, *, user_name: str | None = None, rules: PasswordRules = DEFAULT_RULES
) -> list[str]:
    """Human-readable reasons why ``password`` is refused; empty when it is acceptable."""
    pw = _normalise(password)
    out: list[str] = []
    if len(pw) < rules.min_length:
        out.append(f"must be at least {rules.min_length} characters long")
    if len(pw) > rules.max_length:
        out.append(f"must be at most {rules.max_length} characters long")
    classes = {_char_class(ch) for ch in pw}
    if len(classes) < rules.min_classes:
        out.append(
            f"must mix at least {rules.min_classes} of: lower case, upper case, digits, "
            "other characters (spaces and symbols)"
        )
    if len(set(pw)) < rules.min_distinct:
        out.append(f"must contain at least {rules.min_distinct} different characters")
    if user_name:
        name = unicodedata.normalize("NFKC", user_name).strip().casefold()
        if len(name) >= rules.min_user_name_len and name in pw.casefold():
            out.append("must not contain the user name")
    return out


def check_password_policy(
    password: str, *, user_name: str | None = None, rules: PasswordRules = DEFAULT_RULES
) -> None:
    """Raise :class:`facesearch.errors.PasswordPolicy` listing every broken rule."""
    violations = password_policy_violations(password, user_name=user_name, rules=rules)
    if violations:
        raise PasswordPolicy(violations)
