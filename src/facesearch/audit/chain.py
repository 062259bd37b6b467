"""The audit trail's canonical form and hash chain: pure functions, no database.

A record's hash is ``SHA-256(canonical_bytes(fields))`` in lowercase hex, where ``fields`` are
the record's own fields *including the previous record's hash*:

* one JSON object with exactly these keys: ``action``, ``actor``, ``agency``, ``at``,
  ``details``, ``outcome``, ``prev_hash``, ``request_id``, ``seq``, ``target``, ``v``;
* ``v`` is the integer ``1`` (the version of this form); ``seq`` is an integer (1, 2, 3, ...);
* ``at`` is the time in UTC as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always six fraction digits);
* ``details`` is the record's details exactly as stored: a *string* holding JSON text (see
  :func:`details_text`), not a nested object, so that any change of its bytes changes the hash;
* ``agency``, ``target`` and ``request_id`` are strings or ``null``; the others are strings;
* ``prev_hash`` is the previous record's hash, or :data:`GENESIS_HASH` (64 zeros) for seq 1;
* keys sorted, no whitespace (separators ``,`` and ``:``), non-ASCII characters written as
  themselves, ``"`` ``\\`` and control characters escaped as JSON requires (``\\n``, ``\\u001f``,
  lowercase hex), the whole encoded as UTF-8. For this fixed set of ASCII keys this is the
  same text as RFC 8785 (JSON Canonicalization Scheme) gives, so a verifier in another language
  can recompute it.

A hash chain without a secret proves order and integrity *relative to its head*: someone who can
write to the table can rewrite every record from some point on and recompute all hashes, and
someone who removes the newest records leaves a shorter, valid chain. Both are caught only by
comparing with a head ``(seq, hash)`` kept somewhere else (see ``AuditLog.head`` and
``AuditLog.verify(expected_head=...)``).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

CANONICAL_VERSION = 1
GENESIS_HASH = "0" * 64
_AT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_at(at: datetime) -> str:
    """A timezone-aware time as canonical UTC text, e.g. ``2026-05-09T07:35:25.000123Z``."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("audit times must be timezone-aware")
    return at.astimezone(timezone.utc).strftime(_AT_FORMAT)


def parse_at(text: str) -> datetime:
    """The inverse of :func:`format_at` (strict: only the canonical form is accepted)."""
    at = datetime.strptime(text, _AT_FORMAT).replace(tzinfo=timezone.utc)
    if format_at(at) != text:
        raise ValueError(f"not a canonical audit time: {text!r}")
    return at


def details_text(details: Mapping[str, Any] | None) -> str:
    """The JSON text stored for a record's details: sorted keys, no whitespace, UTF-8 as is.

    Raises ``TypeError``/``ValueError`` for what JSON cannot hold exactly (sets, bytes, NaN,
    infinities, non-string keys).
    """
    if details is None:
        details = {}
    if not isinstance(details, Mapping):
        raise TypeError("details must be a mapping (a JSON object)")
    _check_keys(details)
    return json.dumps(dict(details), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def _check_keys(value: Any) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"details keys must be strings, not {type(k).__name__}")
            _check_keys(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_keys(v)


def canonical_fields(*, seq: int, at: datetime, actor: str, agency: str | None, action: str,
                     target: str | None, outcome: str, request_id: str | None, details: str,
                     prev_hash: str) -> dict[str, Any]:
    """The object that is serialised and hashed (``details`` is the stored JSON *text*)."""
    if type(seq) is not int or seq < 1:
        raise ValueError(f"seq must be a positive integer, not {seq!r}")
    for name, value in (("actor", actor), ("action", action), ("outcome", outcome),
                        ("details", details), ("prev_hash", prev_hash)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    for name, value in (("agency", agency), ("target", target), ("request_id", request_id)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string or None, not {type(value).__name__}")
    return {"v": CANONICAL_VERSION, "seq": seq, "at": format_at(at), "actor": actor,
            "agency": agency, "action": action, "target": target, "outcome": outcome,
            "request_id": request_id, "details": details, "prev_hash": prev_hash}


def canonical_bytes(fields: Mapping[str, Any]) -> bytes:
    """UTF-8 JSON, keys sorted, no whitespace (see the module's docstring)."""
    text = json.dumps(dict(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return text.encode("utf-8")  # a lone surrogate cannot be encoded: refused here


def record_hash(**fields: Any) -> str:
    """SHA-256 (lowercase hex) of a record's canonical form; takes :func:`canonical_fields`'s
    keyword arguments."""
    return hashlib.sha256(canonical_bytes(canonical_fields(**fields))).hexdigest()


def is_hash(value: object) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))
