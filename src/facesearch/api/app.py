"""The application factory: ``create_app(settings)`` builds the context once and mounts the
routes; ``facesearch serve`` runs it with uvicorn."""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from facesearch import __version__
from facesearch.api import errors
from facesearch.api.bodylimit import BodySizeLimit, limits_for
from facesearch.api.ratelimit import RateLimiter
from facesearch.api.routes import admin, auth, bootstrap, privacy, searches, transparency, web, web_privacy
from facesearch.config import Settings
from facesearch.services.context import AppContext
from facesearch.services.web_sessions import cookie_secure


async def _retention_schedule(ctx: AppContext) -> None:
    """The retention schedule inside the server: run at start, then every interval."""
    from facesearch.services.retention import run_retention

    while True:
        try:
            await asyncio.to_thread(run_retention, ctx)
        except Exception:  # noqa: BLE001 - logged; the schedule keeps going
            logging.getLogger("facesearch.retention").exception("retention run failed")
        await asyncio.sleep(ctx.settings.retention_interval_s)


# Pages set their own policy (web.CSP; /bootstrap one with its script's hash); every other answer
# is data, which may load nothing and be framed nowhere. /docs and /redoc load Swagger UI and
# ReDoc from their CDN (FastAPI's defaults) and keep no policy, so that they keep working.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_DOC_PATHS = ("/docs", "/redoc")


def security_headers(request: Request, response: Response, *, hsts: bool) -> None:
    """The headers every answer carries (pages and API alike), unless a route set its own."""
    h = response.headers
    h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    h.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    h.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=(), interest-cohort=()")
    if not request.url.path.startswith(_DOC_PATHS):
        h.setdefault("Content-Security-Policy", API_CSP)
    if request.url.path.startswith("/api/"):
        h.setdefault("Cache-Control", "no-store")  # search results, users, audit: never cached
    if hsts:  # only behind TLS (FACESEARCH_COOKIE_SECURE=true), where it cannot lock out plain http
        h.setdefault("Strict-Transport-Security", "max-age=31536000")


def create_app(settings: Settings, ctx: AppContext | None = None) -> FastAPI:
    ctx = ctx or AppContext(settings)  # FACESEARCH_ENV=production: a proper key, or no context
    registry = CollectorRegistry()
    # Labels carry only the route template and status: never user names, case numbers or ids.
    requests = Counter("facesearch_http_requests_total", "HTTP requests", ["route", "method", "status"],
                       registry=registry)
    latency = Histogram("facesearch_http_request_seconds", "HTTP request latency", ["route"], registry=registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        task = asyncio.create_task(_retention_schedule(ctx))
        yield
        task.cancel()
        ctx.close()

    app = FastAPI(title="facesearch", version=__version__, lifespan=lifespan,
                  description="Face search over lawfully held galleries. Every search needs a case number "
                              "and a purpose; candidates are investigative leads, not identifications.")
    app.state.ctx = ctx
    app.state.limits = RateLimiter.from_settings(settings)  # rate limits, built once (api/ratelimit.py)
    app.add_middleware(BodySizeLimit, limit_for=limits_for(settings))  # before any body is read
    errors.install(app)

    hsts = cookie_secure(ctx)  # behind TLS

    @app.middleware("http")
    async def _request_context(request: Request, call_next):  # noqa: ANN001, ANN202
        request.state.request_id = secrets.token_hex(8)
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        requests.labels(template, request.method, str(response.status_code)).inc()
        latency.labels(template).observe(time.perf_counter() - start)
        response.headers["X-Request-ID"] = request.state.request_id
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        security_headers(request, response, hsts=hsts)
        return response

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        with ctx.repo() as repo:
            repo.list_galleries()
        return {"status": "ok"}

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(auth.router)
    app.include_router(searches.router)
    app.include_router(admin.router)
    app.include_router(bootstrap.router)
    app.include_router(web.router)
    app.include_router(transparency.router)
    app.include_router(privacy.router)
    app.include_router(web_privacy.router)
    return app
