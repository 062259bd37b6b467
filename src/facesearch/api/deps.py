"""Request dependencies: the application context, the authenticated principal, and the
permission each route declares (decided in ``auth.permissions``, deny by default)."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from facesearch.api.ratelimit import RateLimiter
from facesearch.auth.permissions import Perm, Principal, require
from facesearch.errors import TokenInvalid
from facesearch.services.accounts import Accounts
from facesearch.services.context import AppContext

_bearer = HTTPBearer(auto_error=False)


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


def request_id(request: Request) -> str:
    return request.state.request_id


def get_limits(request: Request) -> RateLimiter:
    return request.app.state.limits


def client_address(request: Request) -> str | None:
    """The source address of the request (a trusted proxy's X-Forwarded-For, see ``ratelimit``)."""
    peer = request.client.host if request.client else None
    return get_limits(request).client_address(peer, request.headers.get("x-forwarded-for"))


CtxDep = Annotated[AppContext, Depends(get_ctx)]
RequestId = Annotated[str, Depends(request_id)]
Limits = Annotated[RateLimiter, Depends(get_limits)]
ClientAddress = Annotated[str | None, Depends(client_address)]


def current_principal(ctx: CtxDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
                      ) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise TokenInvalid("sign in first: this endpoint needs a bearer token")
    return Accounts(ctx).authenticate(creds.credentials)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


class Requires:
    """``Depends(Requires(Perm.X))``: the caller is authenticated and their role has ``X``."""

    def __init__(self, perm: Perm) -> None:
        self.perm = perm

    def __call__(self, principal: CurrentPrincipal) -> Principal:
        require(principal, self.perm)
        return principal


def allowed_principal(perm: Perm):  # noqa: ANN201 - a typed dependency alias
    return Annotated[Principal, Depends(Requires(perm))]
