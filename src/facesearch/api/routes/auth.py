from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from facesearch.api.deps import ClientAddress, CtxDep, CurrentPrincipal, Limits, RequestId
from facesearch.api.ratelimit import Action
from facesearch.auth.lockout import normalise_user_name
from facesearch.services.accounts import Accounts

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class LoginIn(BaseModel):
    username: str
    password: str
    totp: str


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


@router.post("/login", response_model=TokenOut)
def login(body: LoginIn, ctx: CtxDep, rid: RequestId, limits: Limits, source: ClientAddress) -> dict[str, object]:
    """Password and one-time code for a short-lived bearer token. Rate limited per source
    address and per (normalised) user name: 429 with ``Retry-After``."""
    limits.hit(Action.LOGIN, account=normalise_user_name(body.username), address=source)
    return Accounts(ctx).login(body.username, body.password, body.totp, request_id=rid, source=source).to_json()


@router.post("/logout", status_code=204)
def logout(principal: CurrentPrincipal, ctx: CtxDep, rid: RequestId, request: Request) -> None:
    """Revoke the token used for this request."""
    token = request.headers.get("authorization", "").split(" ", 1)[-1]
    Accounts(ctx).logout(token, principal, request_id=rid)
