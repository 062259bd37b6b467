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
from facesearch.api.routes import admin, auth, bootstrap, searches, transparency, web
from facesearch.config import Settings
from facesearch.services.context import AppContext


async def _retention_schedule(ctx: AppContext) -> None:
    """The retention schedule inside the server: run at start, then every interval."""
    from facesearch.services.retention import run_retention

    while True:
        try:
            await asyncio.to_thread(run_retention, ctx)
        except Exception:  # noqa: BLE001 - logged; the schedule keeps going
            logging.getLogger("facesearch.retention").exception("retention run failed")
        await asyncio.sleep(ctx.settings.retention_interval_s)


def create_app(settings: Settings, ctx: AppContext | None = None) -> FastAPI:
    ctx = ctx or AppContext(settings)
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
    errors.install(app)

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
    return app
