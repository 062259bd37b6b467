"""The first system administrator: a one-time link printed by the first `facesearch serve`.

Only the SHA-256 of the link's token is kept (in the home folder); it is deleted when used.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from facesearch.errors import AuthenticationFailed
from facesearch.services.accounts import Accounts, NewUser
from facesearch.services.context import AppContext


def _path(ctx: AppContext) -> Path:
    return ctx.settings.home / "bootstrap.sha256"


def issue_bootstrap(ctx: AppContext) -> str | None:
    """A new one-time token when no system administrator exists yet, else None."""
    if Accounts(ctx).has_sysadmin():
        return None
    token = secrets.token_urlsafe(32)
    p = _path(ctx)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(hashlib.sha256(token.encode()).hexdigest())
    os.chmod(tmp, 0o600)
    os.replace(tmp, p)
    return token


def redeem_bootstrap(ctx: AppContext, token: str, username: str, password: str) -> NewUser:
    p = _path(ctx)
    expected = p.read_text().strip() if p.exists() else ""
    given = hashlib.sha256((token or "").encode()).hexdigest()
    if not expected or not hmac.compare_digest(expected, given) or Accounts(ctx).has_sysadmin():
        raise AuthenticationFailed("this bootstrap link is not valid (used already, or replaced)")
    user = Accounts(ctx).add_user(username, password, "sysadmin", None, actor="bootstrap")
    p.unlink(missing_ok=True)
    return user
