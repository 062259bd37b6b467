from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from facesearch.api.deps import CtxDep, RequestId, allowed_principal
from facesearch.audit import AuditAction, AuditOutcome
from facesearch.auth.permissions import Perm, allowed
from facesearch.services.accounts import Accounts

router = APIRouter(prefix="/api/v1", tags=["administration"])


class AgencyIn(BaseModel):
    name: str
    case_pattern: str | None = None
    purposes: list[str] | None = None


@router.post("/agencies", status_code=201)
def add_agency(body: AgencyIn, ctx: CtxDep, principal: allowed_principal(Perm.AGENCY_CREATE)) -> dict[str, object]:
    return Accounts(ctx).add_agency(body.name, body.case_pattern, body.purposes, actor=principal.audit_actor).to_json()


class UserIn(BaseModel):
    username: str
    password: str
    role: str
    agency: str | None = None


@router.post("/users", status_code=201)
def add_user(body: UserIn, ctx: CtxDep, principal: allowed_principal(Perm.USER_MANAGE)) -> dict[str, object]:
    """Who may create which role is decided by :meth:`Accounts.create_user` (system
    administrators: agency administrators and privacy officers; agency administrators: the
    users of their own agency)."""
    return Accounts(ctx).create_user(principal, body.username, body.password, body.role, body.agency).to_json()


class GrantIn(BaseModel):
    agency: str


@router.post("/galleries/{name}/grants", status_code=201)
def grant(name: str, body: GrantIn, ctx: CtxDep, rid: RequestId,
          principal: allowed_principal(Perm.GALLERY_GRANT)) -> dict[str, object]:
    """Share a gallery with another agency."""
    from facesearch.services.casework import grant_gallery

    grant_gallery(ctx, name, body.agency, actor=principal.audit_actor, request_id=rid)
    return {"gallery": name, "agency": body.agency}


@router.get("/audit/verify")
def audit_verify(ctx: CtxDep, rid: RequestId, principal: allowed_principal(Perm.AUDIT_VERIFY)) -> dict[str, object]:
    """Check the whole audit chain; reports the first broken link."""
    report = ctx.audit.verify()
    ctx.audit.append(AuditAction.AUDIT_READ, actor=principal.audit_actor, agency=principal.audit_agency,
                     target="audit:verify", outcome=AuditOutcome.SUCCESS, request_id=rid,
                     details={"ok": report.ok})
    out = report.to_json()
    if not allowed(principal.role, Perm.AUDIT_VOLUME):
        # the record count and the head's sequence number would show another agency's activity
        out["checked"] = None
        out["head"]["seq"] = None
    return out
