"""Requests of the people in the galleries, over HTTP: erasure by face (file, review, confirm,
cancel), access reports (JSON and PDF) and the suppression list. Privacy officers file and
confirm; lifting a suppression is a system administrator's decision. The routes translate HTTP
only: :class:`PrivacyDesk` checks the permissions again and writes the audit trail."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Response, UploadFile
from pydantic import BaseModel, Field

from facesearch.api.deps import CtxDep, RequestId, allowed_principal
from facesearch.auth.permissions import Perm
from facesearch.errors import InvalidInput
from facesearch.services.privacy import MAX_PHOTOS, PrivacyDesk

router = APIRouter(prefix="/api/v1/privacy", tags=["privacy requests"])

Photos = Annotated[list[UploadFile], File(description=f"photos of the person (1 to {MAX_PHOTOS}; JPEG, PNG, "
                                                      "WebP, BMP); kept only in memory")]


def read_uploads(photos: list[UploadFile], limit: int) -> list[bytes]:
    """The uploads' bytes (one byte over the limit is enough for the service to refuse it)."""
    if len(photos) > MAX_PHOTOS:
        raise InvalidInput(f"give at most {MAX_PHOTOS} photos")
    return [p.file.read(limit + 1) for p in photos]


@router.post("/erasure-requests", status_code=201)
def file_erasure(ctx: CtxDep, rid: RequestId, principal: allowed_principal(Perm.ERASURE_REQUEST),
                 photos: Photos) -> dict[str, object]:
    """Find every image of the person in every gallery; nothing is deleted before ``confirm``.
    Answers the request (``status: pending_confirmation``) with its ``matches``."""
    data = read_uploads(photos, ctx.settings.max_upload_bytes)
    return PrivacyDesk(ctx).file(principal, data, request_id=rid).to_json()


@router.get("/erasure-requests")
def list_erasures(ctx: CtxDep, principal: allowed_principal(Perm.ERASURE_MATCHES)) -> dict[str, object]:
    """The latest erasure requests, newest first."""
    return {"erasure_requests": [v.to_json() for v in PrivacyDesk(ctx).recent(principal)]}


@router.get("/erasure-requests/{request_id}")
def get_erasure(request_id: str, ctx: CtxDep, rid: RequestId,
                principal: allowed_principal(Perm.ERASURE_MATCHES)) -> dict[str, object]:
    return PrivacyDesk(ctx).get(principal, request_id, request_id=rid).to_json()


@router.get("/erasure-requests/{request_id}/images/{image_id}/thumbnail",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
def erasure_thumbnail(request_id: str, image_id: str, ctx: CtxDep, rid: RequestId,
                      principal: allowed_principal(Perm.ERASURE_MATCHES)) -> Response:
    jpeg = PrivacyDesk(ctx).thumbnail(principal, request_id, image_id, request_id=rid)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.post("/erasure-requests/{request_id}/confirm")
def confirm_erasure(request_id: str, ctx: CtxDep, rid: RequestId,
                    principal: allowed_principal(Perm.ERASURE_CONFIRM)) -> dict[str, object]:
    """Delete the listed images, faces and index entries and suppress the person."""
    return PrivacyDesk(ctx).confirm(principal, request_id, request_id=rid).to_json()


@router.post("/erasure-requests/{request_id}/cancel")
def cancel_erasure(request_id: str, ctx: CtxDep, rid: RequestId,
                   principal: allowed_principal(Perm.ERASURE_REQUEST)) -> dict[str, object]:
    return PrivacyDesk(ctx).cancel(principal, request_id, request_id=rid).to_json()


@router.post("/access-requests")
def access_request(ctx: CtxDep, rid: RequestId, principal: allowed_principal(Perm.ACCESS_REPORT),
                   photos: Photos) -> dict[str, object]:
    """Everything held about the person: images, sources, legal bases, and how many searches
    returned each (never who searched)."""
    data = read_uploads(photos, ctx.settings.max_upload_bytes)
    return PrivacyDesk(ctx).access_report(principal, data, request_id=rid).to_json()


@router.post("/access-requests.pdf", response_class=Response,
             responses={200: {"content": {"application/pdf": {}}}})
def access_request_pdf(ctx: CtxDep, rid: RequestId, principal: allowed_principal(Perm.ACCESS_REPORT),
                       photos: Photos) -> Response:
    data = read_uploads(photos, ctx.settings.max_upload_bytes)
    pdf = PrivacyDesk(ctx).access_report_pdf(principal, data, request_id=rid)
    return Response(pdf, media_type="application/pdf",
                    headers={"Content-Disposition": 'attachment; filename="access-request.pdf"',
                             "Cache-Control": "no-store"})


@router.get("/suppressions")
def list_suppressions(ctx: CtxDep, rid: RequestId,
                      principal: allowed_principal(Perm.SUPPRESSION_LIST)) -> dict[str, object]:
    """Suppression entries (ids, dates, lift decisions; the embeddings stay encrypted)."""
    return {"suppressions": [v.to_json() for v in PrivacyDesk(ctx).suppressions(principal, request_id=rid)]}


class LiftIn(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


@router.post("/suppressions/{suppression_id}/lift")
def lift_suppression(suppression_id: str, body: LiftIn, ctx: CtxDep, rid: RequestId,
                     principal: allowed_principal(Perm.SUPPRESSION_LIFT)) -> dict[str, object]:
    """Lift a suppression (system administrators; the reason goes into the audit trail)."""
    return PrivacyDesk(ctx).lift(principal, suppression_id, body.reason, request_id=rid).to_json()
