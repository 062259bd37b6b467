from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from facesearch.api.deps import CtxDep, RequestId, allowed_principal
from facesearch.audit import AuditAction, AuditOutcome
from facesearch.auth.permissions import Perm, Role
from facesearch.errors import Forbidden
from facesearch.services.accounts import Accounts

router = APIRouter(prefix="/api/v1", tags=["administration"])


class AgencyIn(BaseModel):
    name: str
    case_pattern: str | None = None
    purposes: list[str] | None = None


@router.post("/agencies", status_code=201)
def add_agency(body: AgencyIn, ctx: CtxDep, principal: allowed_principal(Perm.AGENCY_CREATE)) -> dict[str, object]:
    return Accounts(ctx).add_agency(body.name, body.case_pattern, body.purposes, actor=principal.username).to_json()


class UserIn(BaseModel):
    username: str
    password: str
    role: str
    agency: str | None = None


@router.post("/users", status_code=201)
def add_user(body: UserIn, ctx: CtxDep, principal: allowed_principal(Perm.USER_MANAGE)) -> dict[str, object]:
    """System administrators create agency administrators; agency administrators create the
    users of their own agency (never administrators of another agency or system administrators)."""
    if principal.role == Role.SYSADMIN:
        if body.role != Role.AGENCY_ADMIN.value:
            raise Forbidden("a system administrator creates only agency administrators")
        scope = None
    else:
        if body.role in (Role.SYSADMIN.value,):
            raise Forbidden("an agency administrator cannot create system administrators")
        scope = principal.agency_id
    return Accounts(ctx).add_user(body.username, body.password, body.role, body.agency,
                                  actor=principal.username, actor_agency_id=scope).to_json()


class GrantIn(BaseModel):
    agency: str


@router.post("/galleries/{name}/grants", status_code=201)
def grant(name: str, body: GrantIn, ctx: CtxDep, rid: RequestId,
          principal: allowed_principal(Perm.GALLERY_GRANT)) -> dict[str, object]:
    """Share a gallery with another agency."""
    from facesearch.services.casework import grant_gallery

    grant_gallery(ctx, name, body.agency, actor=principal.username, request_id=rid)
    return {"gallery": name, "agency": body.agency}


@router.get("/audit/verify")
def audit_verify(ctx: CtxDep, rid: RequestId, principal: allowed_principal(Perm.AUDIT_VERIFY)) -> dict[str, object]:
    """Check the whole audit chain; reports the first broken link."""
    report = ctx.audit.verify()
    ctx.audit.append(AuditAction.AUDIT_READ, actor=principal.username, agency=principal.agency_name,
                     target="audit:verify", outcome=AuditOutcome.SUCCESS, request_id=rid,
                     details={"ok": report.ok})
    return report.to_json()
