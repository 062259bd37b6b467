from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from facesearch.api.deps import CtxDep, CurrentPrincipal, RequestId
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
def login(body: LoginIn, ctx: CtxDep, rid: RequestId, request: Request) -> dict[str, object]:
    """Password and one-time code for a short-lived bearer token."""
    source = request.client.host if request.client else None
    return Accounts(ctx).login(body.username, body.password, body.totp, request_id=rid, source=source).to_json()


@router.post("/logout", status_code=204)
def logout(principal: CurrentPrincipal, ctx: CtxDep, rid: RequestId, request: Request) -> None:
    """Revoke the token used for this request."""
    token = request.headers.get("authorization", "").split(" ", 1)[-1]
    Accounts(ctx).logout(token, principal, request_id=rid)
