"""Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP).

Defaults are what authenticator apps expect: HMAC-SHA-1, 6 digits, 30-second steps, secrets as
unpadded base32 of 20 random bytes.

:func:`verify` accepts the current step and ``drift`` steps either side (±1 by default) and
returns the step that matched. The caller stores it as ``last_used_step``; a code whose step is
not after ``last_used_step`` is refused, so a code observed by someone else cannot be replayed
within its validity window (and an older code cannot be used after a newer one).

The secret has to be stored readable (the server recomputes codes), so the store must keep it
under field encryption, never in logs. Guessing is bounded by the login lockout: every failed
code counts as a failed login attempt.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

if TYPE_CHECKING:
    import segno

__all__ = [
    "DIGITS", "PERIOD_S", "new_secret", "hotp", "code_at", "step_at", "verify",
    "provisioning_uri", "qr_svg", "qr_png", "TotpCredential", "accept",
]

DIGITS = 6
PERIOD_S = 30
_ALGORITHMS = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}


def new_secret(nbytes: int = 20) -> str:
    """A fresh random secret as unpadded upper-case base32 (20 bytes = 160 bits, RFC 4226)."""
    if nbytes < 16:
        raise ValueError("a TOTP secret needs at least 16 random bytes")
    return base64.b32encode(secrets.token_bytes(nbytes)).decode("ascii").rstrip("=")


def _secret_bytes(secret: str) -> bytes:
    s = "".join(secret.split()).upper().rstrip("=")
    try:
        return base64.b32decode(s + "=" * (-len(s) % 8))
    except ValueError as exc:  # binascii.Error is a ValueError
        raise ValueError("the TOTP secret is not valid base32") from exc


def _check_aware(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("times must be timezone-aware (use datetime.now(timezone.utc))")


def hotp(key: bytes, counter: int, *, digits: int = DIGITS, algorithm: str = "SHA1") -> str:
    """RFC 4226 HOTP value of ``counter`` under the raw ``key``, zero-padded to ``digits``."""
    if not 6 <= digits <= 10:
        raise ValueError("digits must be between 6 and 10")
    mac = hmac.new(key, struct.pack(">Q", counter), _ALGORITHMS[algorithm.upper()]).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def step_at(at: datetime, *, period: int = PERIOD_S) -> int:
    """The RFC 6238 time step ``T = floor(unix_time / period)`` of the aware datetime ``at``."""
    _check_aware(at)
    return int(at.timestamp()) // period


def code_at(
    secret: str, at: datetime, *, digits: int = DIGITS, period: int = PERIOD_S,
    algorithm: str = "SHA1",
) -> str:
    """The code an authenticator app shows at ``at`` (for enrolment checks and tests)."""
    return hotp(_secret_bytes(secret), step_at(at, period=period), digits=digits,
                algorithm=algorithm)


def verify(
    secret: str, code: str, *, at: datetime, last_used_step: int | None,
    drift: int = 1, digits: int = DIGITS, period: int = PERIOD_S, algorithm: str = "SHA1",
) -> int | None:
    """The time step ``code`` belongs to, or None when it is wrong, outside ``±drift`` steps of
    ``at``, or its step is ``<= last_used_step`` (a replay). Store the returned step as the new
    ``last_used_step`` (``None`` means no code was ever accepted).

    Spaces in ``code`` are ignored. All candidate steps are compared in constant time.
    """
    key = _secret_bytes(secret)
    submitted = "".join(code.split())
    if len(submitted) != digits or not submitted.isascii() or not submitted.isdigit():
        return None
    now_step = step_at(at, period=period)
    found: int | None = None
    for step in range(now_step - drift, now_step + drift + 1):
        expected = hotp(key, step, digits=digits, algorithm=algorithm)
        fresh = last_used_step is None or step > last_used_step
        if hmac.compare_digest(expected, submitted) and fresh and found is None:
            found = step
    return found


@dataclass(frozen=True)
class TotpCredential:
    """What a repository stores per account: the secret (encrypted at rest) and the step of
    the last accepted code. ``confirmed`` turns True once the user proved enrolment."""

    secret: str
    last_used_step: int | None = None
    confirmed: bool = False


def accept(
    cred: TotpCredential, code: str, *, at: datetime, drift: int = 1
) -> TotpCredential | None:
    """:func:`verify` on a stored credential: the updated credential to persist, or None."""
    step = verify(cred.secret, code, at=at, last_used_step=cred.last_used_step, drift=drift)
    if step is None:
        return None
    return replace(cred, last_used_step=step, confirmed=True)


def provisioning_uri(
    secret: str, account: str, issuer: str = "facesearch", *, digits: int = DIGITS,
    period: int = PERIOD_S,
) -> str:
    """The ``otpauth://totp/...`` key URI that authenticator apps import (usually as a QR code).

    This URI contains the secret: show it once, at enrolment, and never log it.
    """
    if ":" in issuer or ":" in account:
        raise ValueError("issuer and account must not contain ':'")
    _secret_bytes(secret)  # validate
    label = f"{quote(issuer, safe='')}:{quote(account, safe='@')}"
    query = urlencode(
        {"secret": "".join(secret.split()).upper().rstrip("="), "issuer": issuer,
         "algorithm": "SHA1", "digits": digits, "period": period},
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"


def _qr(uri: str) -> segno.QRCode:
    try:
        import segno
    except ImportError as exc:  # pragma: no cover - segno is a declared dependency
        raise RuntimeError("QR rendering needs the 'segno' package") from exc
    return segno.make(uri, error="m", micro=False)


def qr_svg(uri: str, *, scale: int = 4) -> str:
    """The key URI as a standalone SVG document (text), for the enrolment page."""
    import io

    buf = io.BytesIO()
    _qr(uri).save(buf, kind="svg", scale=scale, xmldecl=False)
    return buf.getvalue().decode("utf-8")


def qr_png(uri: str, *, scale: int = 6) -> bytes:
    """The key URI as PNG bytes."""
    import io

    buf = io.BytesIO()
    _qr(uri).save(buf, kind="png", scale=scale)
    return buf.getvalue()
