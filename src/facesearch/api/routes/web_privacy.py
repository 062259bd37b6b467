"""The privacy officer's pages (erasure and access requests by photo) and the system
administrator's suppression list, over :class:`PrivacyDesk`, with the session, CSRF and error
page mechanism of :mod:`facesearch.api.routes.web`."""
from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi.responses import HTMLResponse

from facesearch.api.deps import CtxDep, RequestId
from facesearch.api.routes.privacy import read_uploads
from facesearch.api.routes.web import Posting, User, WebRoute, WebUser, _html, _see_other
from facesearch.auth.permissions import Perm
from facesearch.errors import FaceSearchError
from facesearch.services.privacy import MAX_PHOTOS, NOTICE, PrivacyDesk

router = APIRouter(tags=["web"], include_in_schema=False, route_class=WebRoute)

STATUS_TEXT = {
    "pending_confirmation": "Awaiting confirmation: nothing has been deleted yet",
    "pending": "Erasing: the erasure completes even if the server stops now",
    "done": "Erased: the images, faces and index entries are deleted and the person is suppressed",
    "cancelled": "Cancelled: nothing was deleted",
    "expired": "Expired: it was not confirmed within 30 days; nothing was deleted",
}


def _privacy_page(ctx: CtxDep, user: WebUser, *, status: int = 200, error: FaceSearchError | None = None,
                  error_form: str = "") -> HTMLResponse:
    return _html("privacy.html", user, status=status, error=error, error_form=error_form, active="privacy",
                 requests=PrivacyDesk(ctx).recent(user.principal), status_text=STATUS_TEXT,
                 max_photos=MAX_PHOTOS, max_mb=ctx.settings.max_upload_bytes // (1024 * 1024))


@router.get("/privacy")
def privacy(user: User, ctx: CtxDep) -> Response:
    user.need(Perm.ERASURE_REQUEST)
    return _privacy_page(ctx, user)


@router.post("/privacy/erasure-requests")
def file_erasure(user: Posting, ctx: CtxDep, rid: RequestId,
                 photos: Annotated[list[UploadFile], File()]) -> Response:
    user.need(Perm.ERASURE_REQUEST)
    data = [d for d in read_uploads(photos, ctx.settings.max_upload_bytes) if d]
    try:
        view = PrivacyDesk(ctx).file(user.principal, data, request_id=rid)
    except FaceSearchError as e:
        return _privacy_page(ctx, user, status=e.http_status, error=e, error_form="erasure")
    return _see_other(f"/privacy/erasure-requests/{quote(view.request_id)}")


@router.get("/privacy/erasure-requests/{request_id}")
def erasure_request(request_id: str, user: User, ctx: CtxDep, rid: RequestId, erased: str | None = None,
                    cancelled: str | None = None) -> Response:
    view = PrivacyDesk(ctx).get(user.principal, request_id, request_id=rid)
    flash = None
    if erased is not None:
        flash = f"Erased {erased} image(s); the person is on the suppression list."
    elif cancelled:
        flash = "The request was cancelled; nothing was deleted."
    return _html("erasure.html", user, active="privacy", view=view, notice=NOTICE, flash=flash,
                 status_text=STATUS_TEXT.get(view.status, view.status),
                 can_confirm=user.can(Perm.ERASURE_CONFIRM))


@router.get("/privacy/erasure-requests/{request_id}/images/{image_id}.jpg")
def erasure_thumbnail(request_id: str, image_id: str, user: User, ctx: CtxDep, rid: RequestId) -> Response:
    jpeg = PrivacyDesk(ctx).thumbnail(user.principal, request_id, image_id, request_id=rid)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.post("/privacy/erasure-requests/{request_id}/confirm")
def confirm_erasure(request_id: str, user: Posting, ctx: CtxDep, rid: RequestId) -> Response:
    outcome = PrivacyDesk(ctx).confirm(user.principal, request_id, request_id=rid)
    return _see_other(f"/privacy/erasure-requests/{quote(request_id)}?erased={outcome.erased_images}")


@router.post("/privacy/erasure-requests/{request_id}/cancel")
def cancel_erasure(request_id: str, user: Posting, ctx: CtxDep, rid: RequestId) -> Response:
    PrivacyDesk(ctx).cancel(user.principal, request_id, request_id=rid)
    return _see_other(f"/privacy/erasure-requests/{quote(request_id)}?cancelled=1")


@router.post("/privacy/access-requests")
def access_request(user: Posting, ctx: CtxDep, rid: RequestId, photos: Annotated[list[UploadFile], File()],
                   format: Annotated[str, Form()] = "pdf") -> Response:
    """The access report as a download: PDF (the letter) or JSON."""
    user.need(Perm.ACCESS_REPORT)
    data = [d for d in read_uploads(photos, ctx.settings.max_upload_bytes) if d]
    desk = PrivacyDesk(ctx)
    try:
        if format == "json":
            body = json.dumps(desk.access_report(user.principal, data, request_id=rid).to_json(), indent=2)
            return Response(body, media_type="application/json",
                            headers={"Content-Disposition": 'attachment; filename="access-request.json"'})
        pdf = desk.access_report_pdf(user.principal, data, request_id=rid)
    except FaceSearchError as e:
        return _privacy_page(ctx, user, status=e.http_status, error=e, error_form="access")
    return Response(pdf, media_type="application/pdf",
                    headers={"Content-Disposition": 'attachment; filename="access-request.pdf"'})


# -- the suppression list (system administrators lift) ----------------------------------------------
@router.get("/admin/suppressions")
def suppressions(user: User, ctx: CtxDep, rid: RequestId, lifted: str | None = None) -> Response:
    entries = PrivacyDesk(ctx).suppressions(user.principal, request_id=rid)
    return _html("suppressions.html", user, active="suppressions", entries=entries,
                 can_lift=user.can(Perm.SUPPRESSION_LIFT), error=None,
                 flash="The suppression was lifted; the decision is in the audit trail." if lifted else None)


@router.post("/admin/suppressions/{suppression_id}/lift")
def lift(suppression_id: str, user: Posting, ctx: CtxDep, rid: RequestId,
         reason: Annotated[str, Form()] = "") -> Response:
    desk = PrivacyDesk(ctx)
    try:
        desk.lift(user.principal, suppression_id, reason, request_id=rid)
    except FaceSearchError as e:
        entries = desk.suppressions(user.principal, request_id=rid)
        return _html("suppressions.html", user, status=e.http_status, active="suppressions", entries=entries,
                     can_lift=user.can(Perm.SUPPRESSION_LIFT), error=e, flash=None)
    return _see_other("/admin/suppressions?lifted=1")
