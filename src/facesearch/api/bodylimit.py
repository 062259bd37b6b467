"""A cap on the size of request bodies, enforced before the body is read.

Starlette parses a multipart upload completely (spooling it to a temporary file) before a route
sees it, so the route's own size check (``max_upload_bytes``) comes after the bytes have been
received and written. This middleware refuses a request whose ``Content-Length`` is over the cap
with 413 and the catalogue's ``image_too_large`` body without reading any of it, and cuts off a
body sent without a length (chunked) as soon as it passes the cap. The caps: one upload plus
1 MiB of form fields for every route, and ``MAX_PHOTOS`` uploads for the privacy officer's
requests (several photos of one person).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException

from facesearch.config import Settings
from facesearch.errors import ImageTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FORM_ALLOWANCE = 1024 * 1024
_MULTI_PHOTO_PREFIXES = ("/api/v1/privacy/", "/privacy/")


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body without a length passes the cap; an HTTP error, so that
    the framework answers it (413, ``too_large``) instead of taking it for a malformed body."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request is larger than {limit:,} bytes")


def limits_for(settings: Settings) -> Callable[[str], int]:
    try:
        from facesearch.services.privacy import MAX_PHOTOS
    except ImportError:  # pragma: no cover - an installation without privacy requests
        MAX_PHOTOS = 1
    one = settings.max_upload_bytes + FORM_ALLOWANCE
    many = settings.max_upload_bytes * MAX_PHOTOS + FORM_ALLOWANCE

    def limit(path: str) -> int:
        return many if path.startswith(_MULTI_PHOTO_PREFIXES) else one

    return limit


class BodySizeLimit:
    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        length = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                too_big = False  # the server refuses a malformed length itself
            if too_big:
                await _refuse(send, limit)
                return
            await self.app(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _refuse(send, limit)


async def _refuse(send: Send, limit: int) -> None:
    import json

    err = ImageTooLarge(f"the request is larger than {limit:,} bytes")
    body = json.dumps({"error": {"code": err.code, "message": err.message}}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), (b"x-content-type-options", b"nosniff"),
                            (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
