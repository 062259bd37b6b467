"""Domain errors to HTTP, in one place: ``{"error": {"code", "message"}}`` with the error's
status; ``Retry-After`` for lockouts and rate limits. Unexpected errors answer 500 without
details (they are logged with the request id, never the request body)."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from facesearch.errors import AccountLocked, AuthenticationFailed, FaceSearchError, RateLimited

log = logging.getLogger("facesearch.api")


def error_body(code: str, message: str) -> dict[str, object]:
    return {"error": {"code": code, "message": message}}


def install(app: FastAPI) -> None:
    @app.exception_handler(FaceSearchError)
    async def _domain(request: Request, exc: FaceSearchError) -> JSONResponse:
        headers = {}
        if isinstance(exc, (AccountLocked, RateLimited)):
            headers["Retry-After"] = str(exc.retry_after_s)
        if isinstance(exc, AuthenticationFailed):
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.http_status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # the framework's own answers (unknown route, wrong method, unparsable body) in our format
        codes = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "too_large"}
        message = exc.detail if isinstance(exc.detail, str) else "the request was refused"
        return JSONResponse(error_body(codes.get(exc.status_code, "http_error"), message),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = sorted({".".join(str(x) for x in e.get("loc", ())[1:]) or "body" for e in exc.errors()})
        return JSONResponse(error_body("invalid_request", f"missing or invalid: {', '.join(fields)}"),
                            status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in request %s", getattr(request.state, "request_id", "?"))
        return JSONResponse(error_body("internal_error", "the server failed; the error was logged"),
                            status_code=500)
