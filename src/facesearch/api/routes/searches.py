from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile
from pydantic import BaseModel

from facesearch.api.deps import ClientAddress, CtxDep, Limits, RequestId, allowed_principal
from facesearch.api.ratelimit import Action
from facesearch.auth.permissions import Perm
from facesearch.services.casework import Casework, Oversight

router = APIRouter(prefix="/api/v1", tags=["searches"])


@router.post("/searches")
async def create_search(
    ctx: CtxDep, rid: RequestId, principal: allowed_principal(Perm.SEARCH_CREATE),
    limits: Limits, source: ClientAddress,
    image: Annotated[UploadFile, File(description="probe photo (JPEG, PNG, WebP, BMP)")],
    gallery: Annotated[str, Form()],
    case_number: Annotated[str | None, Form()] = None,
    purpose: Annotated[str | None, Form()] = None,
    authorization_ref: Annotated[str | None, Form()] = None,
    face_index: Annotated[int | None, Form(ge=0)] = None,
) -> dict[str, object]:
    """Search a gallery with a probe photo. Requires a case number matching the agency's pattern
    and a purpose from the agency's list; candidates are investigative leads, not identifications.
    Rate limited per user and per source address (429 with ``Retry-After``)."""
    limits.hit(Action.SEARCH, account=principal.public_id, address=source)
    limit = ctx.settings.max_upload_bytes
    data = await image.read(limit + 1)
    view = Casework(ctx).search(principal, data, gallery, case_number, purpose, authorization_ref, face_index,
                                request_id=rid)
    return view.to_json(with_reviews=False)


@router.get("/searches")
def list_searches(ctx: CtxDep, principal: allowed_principal(Perm.SEARCH_READ),
                  case_number: str | None = None) -> dict[str, object]:
    """The agency's searches, newest first (optionally one case)."""
    return {"searches": [v.to_json() for v in Casework(ctx).list(principal, case_number)]}


@router.get("/searches/{search_id}")
def get_search(search_id: str, ctx: CtxDep, rid: RequestId,
               principal: allowed_principal(Perm.SEARCH_READ)) -> dict[str, object]:
    return Casework(ctx).get(principal, search_id, request_id=rid).to_json()


class ReviewIn(BaseModel):
    candidate_id: str
    decision: str
    note: str = ""


@router.post("/searches/{search_id}/reviews", status_code=201)
def review(search_id: str, body: ReviewIn, ctx: CtxDep, rid: RequestId,
           principal: allowed_principal(Perm.REVIEW_CREATE)) -> dict[str, object]:
    """Confirm or reject a candidate; a match needs two distinct confirming users."""
    return Casework(ctx).review(principal, search_id, body.candidate_id, body.decision, body.note,
                                request_id=rid).to_json()


@router.get("/candidates/{candidate_id}/thumbnail", response_class=Response)
def thumbnail(candidate_id: str, ctx: CtxDep, rid: RequestId,
              principal: allowed_principal(Perm.CANDIDATE_VIEW)) -> Response:
    jpeg = Casework(ctx).thumbnail(principal, candidate_id, request_id=rid)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.get("/galleries")
def galleries(ctx: CtxDep, principal: allowed_principal(Perm.GALLERY_LIST)) -> dict[str, object]:
    return {"galleries": Casework(ctx).galleries(principal)}


@router.get("/oversight")
def oversight(ctx: CtxDep, rid: RequestId, principal: allowed_principal(Perm.OVERSIGHT_READ)) -> dict[str, object]:
    """Searches per user, case and day, with flags: never reviewed, unusual volume, outside
    working hours, the same face under different case numbers."""
    return Oversight(ctx).report(principal, request_id=rid)


@router.get("/cases/{case_number}/export.pdf", response_class=Response)
def case_export(case_number: str, ctx: CtxDep, rid: RequestId,
                principal: allowed_principal(Perm.CASE_EXPORT), limits: Limits, source: ClientAddress) -> Response:
    """A PDF of the case: searches, candidates with thumbnails, reviews and an audit excerpt.
    Rate limited per user and per source address (429 with ``Retry-After``)."""
    limits.hit(Action.EXPORT, account=principal.public_id, address=source)
    pdf = Oversight(ctx).case_pdf(principal, case_number, request_id=rid)
    return Response(pdf, media_type="application/pdf",
                    headers={"Content-Disposition": 'attachment; filename="case.pdf"', "Cache-Control": "no-store"})
