"""The FastAPI application factory: ``create_app(settings)``.

The lifespan starts the generation engine, whose worker thread loads the model in the background, so the port
answers /healthz and /livez at once while /readyz says 503 until the model can generate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubellm.contract import HEALTHZ_PATH, LIVEZ_PATH, LOADZ_PATH, METRICS_PATH, READYZ_PATH, ServerSettings
from kubellm_inference.engine import GenerationEngine
from kubellm_inference.errors import install_error_handlers
from kubellm_inference.guard import RequestGuard
from kubellm_inference.loading import LoadedModel, load_model
from kubellm_inference.metrics import ServerMetrics
from kubellm_inference.progress import LoadProgress, ProgressCollector
from kubellm_inference.routes import health, loading, metrics, openai_api, seed
from kubellm_inference.state import ServerState

log = logging.getLogger(__name__)

_PROBE_PATHS = frozenset({HEALTHZ_PATH, READYZ_PATH, LIVEZ_PATH, METRICS_PATH, LOADZ_PATH})


def create_app(settings: ServerSettings, *, loader: Callable[[], LoadedModel] | None = None) -> FastAPI:
    """The server for ``settings``; nothing loads until the app's lifespan starts.

    ``loader`` replaces ``load_model(settings)``; tests use it to hold the real load back behind a gate.
    """
    server_metrics = ServerMetrics()
    progress = LoadProgress()
    server_metrics.registry.register(ProgressCollector(progress))
    server_metrics.queue_capacity.set(settings.queue_size)
    engine = GenerationEngine(
        loader or (lambda: load_model(settings, progress)),
        queue_size=settings.queue_size,
        max_batch_size=settings.max_batch_size,
        stuck_step_timeout_s=settings.stuck_step_timeout_s,
        debug_step_delay_s=settings.debug_step_delay_s,
        metrics=server_metrics,
        compile_mode=settings.compile,
        # On the model cache volume, so a restart finds what the last start compiled.
        compile_cache_dir=settings.cache_dir / "compiled",
        compile_prebuilt_dir=settings.prebuilt_dir / "compiled" if settings.prebuilt_dir is not None else None,
        progress=progress,
    )
    state = ServerState(settings=settings, metrics=server_metrics, engine=engine, progress=progress)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.engine.start()
        try:
            yield
        finally:
            # Whatever is still queued or running is answered with 503 before the process goes.
            state.engine.stop(timeout=max(settings.drain_grace_s, 5.0))

    app = FastAPI(
        title="kubellm inference server",
        summary="Seed-compatible /ask and an OpenAI-compatible API over one batched generation engine",
        lifespan=lifespan,
        # A body without a Content-Type is read as JSON (clients that forget the header still work).
        strict_content_type=False,
    )
    app.state.kubellm = state
    install_error_handlers(app)
    for router in (seed.router, openai_api.router, health.router, metrics.router, loading.router):
        app.include_router(router)
    # Added first, so it runs inside the metrics middleware: refusals are counted too.
    app.add_middleware(RequestGuard, settings=settings)
    app.add_middleware(RequestMetricsMiddleware, metrics=server_metrics)
    return app


class RequestMetricsMiddleware:
    """Counts every answer by route and status, and times inference requests until their last byte
    (a plain ASGI middleware: it must not buffer streamed answers)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            # The route's template, not the raw path: unknown paths must not create new label values.
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(route=name, status=str(status)).inc()
            if name not in _PROBE_PATHS and name != "unmatched":
                self.metrics.request_duration.labels(route=name).observe(time.monotonic() - started)
