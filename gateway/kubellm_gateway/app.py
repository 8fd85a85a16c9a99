"""The gateway's ASGI app: one OpenAI endpoint in front of every served LLMService.

- ``POST /v1/chat/completions``, ``POST /v1/completions``: routed by the body's ``model`` (``NAMESPACE/NAME`` or a
  unique ``NAME``), rewritten to the id the pods serve; ``GET /v1/models`` lists the served ids.
- ``POST /llms/NAMESPACE/NAME/ask``: the seed API of one LLMService.
- ``/healthz`` (the process answers), ``/readyz`` (the watches have listed once), ``/metrics``.

The body is untrusted: its size is capped before it is parsed, and only ``model`` and ``stream`` are read. Answers
are relayed chunk by chunk as they come (server-sent events included); the client leaving closes the upstream
connection, which cancels the generation on the pod. The relay is the gateway's hot path, and on a CPU node its
every cycle is taken from the model: the pods are asked through aiohttp (its HTTP parser is compiled) and each chunk
goes straight to the server's ``send`` (:class:`Relayed`). The client's ``Authorization`` header is passed through, so
each LLMService's own ``auth`` decides. Every routing decision is a pure function of :mod:`kubellm_gateway.routing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

# The inference server's envelope (OpenAI's shape): the gateway's own answers read like the pods'.
from kubellm.envelope import error_body
from kubellm_gateway.catalog import Catalog
from kubellm_gateway.config import GatewaySettings
from kubellm_gateway.held import HeldPublisher
from kubellm_gateway.kube import Kube, load_configuration
from kubellm_gateway.metrics import UNKNOWN_MODEL, GatewayMetrics
from kubellm_gateway.routing import (
    Attempt,
    Backend,
    Outcome,
    RoutingError,
    Verdict,
    admit,
    after_attempt,
    pick,
    progress_comment,
    resolve,
)

logger = logging.getLogger("kubellm.gateway")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Headers passed to the pod, and back: nothing hop-by-hop, no lengths (the body is relayed as it comes).
_TO_POD = ("authorization", "accept", "user-agent")
_FROM_POD = ("content-type", "cache-control", "retry-after", "x-accel-buffering", "www-authenticate")


def error_response(error: RoutingError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return JSONResponse(error_body(error.status, error.message, code=error.code), error.status, headers=headers)


def sse_error(error: RoutingError) -> bytes:
    return f"data: {json.dumps(error_body(error.status, error.message, code=error.code))}\n\ndata: [DONE]\n\n".encode()


class BadRequest(Exception):
    def __init__(self, error: RoutingError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class Gateway:
    """The running gateway's state, shared by its routes."""

    settings: GatewaySettings
    catalog: Catalog
    publisher: HeldPublisher
    metrics: GatewayMetrics
    upstream: aiohttp.ClientSession  # to the pods
    in_flight: dict[str, int]  # pod address -> requests this gateway has in flight there

    async def read_body(self, request: Request) -> bytes:
        cap = self.settings.max_body_bytes
        too_large = RoutingError(413, f"the request body is larger than {cap} bytes", "body_too_large")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise BadRequest(too_large)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cap:
                raise BadRequest(too_large)
        return bytes(body)


def _parse(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        raise BadRequest(RoutingError(400, "the request body is not valid JSON", "invalid_json")) from None
    if not isinstance(parsed, dict):
        raise BadRequest(RoutingError(400, "the request body must be a JSON object", "invalid_body"))
    return parsed


async def _openai(gateway: Gateway, request: Request, path: str) -> Response:
    body = _parse(await gateway.read_body(request))
    model = body.get("model")
    if not isinstance(model, str) or not model:
        error = RoutingError(400, "model is required: NAMESPACE/NAME as GET /v1/models lists it", "missing_field")
        return _count(gateway, UNKNOWN_MODEL, error_response(error))
    found = resolve(model, gateway.catalog.backends())
    if isinstance(found, RoutingError):
        gateway.metrics.routing_errors.labels(model=UNKNOWN_MODEL, reason=found.code).inc()
        return _count(gateway, UNKNOWN_MODEL, error_response(found))
    body["model"] = found.served_model  # the id the pods know it by
    upstream = json.dumps(body, ensure_ascii=False).encode()
    return await _serve(gateway, request, found, path, upstream, body.get("stream") is True)


async def _ask(gateway: Gateway, request: Request, namespace: str, name: str) -> Response:
    raw = await gateway.read_body(request)
    body = _parse(raw)
    found = resolve(f"{namespace}/{name}", gateway.catalog.backends())
    if isinstance(found, RoutingError):
        gateway.metrics.routing_errors.labels(model=UNKNOWN_MODEL, reason=found.code).inc()
        return _count(gateway, UNKNOWN_MODEL, error_response(found))
    return await _serve(gateway, request, found, "/ask", raw, body.get("stream") is True)


def _count(gateway: Gateway, model: str, response: Response) -> Response:
    gateway.metrics.requests.labels(model=model, code=str(response.status_code)).inc()
    return response


async def _serve(
    gateway: Gateway, request: Request, backend: Backend, path: str, body: bytes, streaming: bool
) -> Response:
    """Route, hold or refuse; then relay the pod's answer."""
    model = backend.id
    metrics, settings = gateway.metrics, gateway.settings
    metrics.in_flight.labels(model=model).inc()
    done = _Once(lambda: metrics.in_flight.labels(model=model).dec())
    try:
        decision = admit(
            backend,
            held=gateway.publisher.held(model),
            max_held=settings.max_held,
            waited_s=0.0,
            hold_cap_s=settings.hold_cap_s,
            in_flight=gateway.in_flight,
        )
        if decision.verdict == Verdict.refuse:
            assert decision.error is not None
            metrics.routing_errors.labels(model=model, reason=decision.error.code).inc()
            done()
            return _count(gateway, model, error_response(decision.error))
        headers = {k: v for k, v in request.headers.items() if k.lower() in _TO_POD}
        headers["content-type"] = "application/json"
        if decision.verdict == Verdict.hold and streaming:
            stream = _held_stream(gateway, request, backend, path, body, headers, done)
            metrics.requests.labels(model=model, code="200").inc()  # the status is sent before the pod answers
            return Relayed(stream, media_type="text/event-stream", headers=SSE_HEADERS)
        if decision.verdict == Verdict.hold:
            held = await _hold(gateway, request, backend, None)
            if isinstance(held, RoutingError):
                done()
                return _count(gateway, model, error_response(held))
            backend = held
        opened = await _open(gateway, backend, path, body, headers)
        if isinstance(opened, RoutingError):
            done()
            return _count(gateway, model, error_response(opened))
        response, pod = opened
        metrics.requests.labels(model=model, code=str(response.status)).inc()
        passed = {k: v for k, v in response.headers.items() if k.lower() in _FROM_POD}
        return Relayed(_relay(gateway, response, pod, done), status_code=response.status, headers=passed)
    except BaseException:
        done()
        raise


class _Once:
    def __init__(self, action: Callable[[], None]) -> None:
        self._action: Callable[[], None] | None = action

    def __call__(self) -> None:
        if self._action is not None:
            action, self._action = self._action, None
            action()


class Relayed(StreamingResponse):
    """A streamed answer sent chunk by chunk straight to the server's ``send``.

    Starlette's StreamingResponse opens an anyio task group for the response and passes each chunk through its
    cancel scopes; with it and httpx the gateway spent 0.72 ms of CPU per relayed token, 0.27 ms with this and
    aiohttp (`bench/gateway_relay.py`).
    Here the client leaving (``http.disconnect``, which uvicorn's ``send`` does not report) cancels the pump, and the
    chunks' source is closed at once: its ``finally`` closes the pod's connection, which cancels the generation.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(_client_left(receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watch):
                task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
            closing = getattr(self.body_iterator, "aclose", None)
            if closing is not None:
                await closing()
        if not pump.cancelled() and (error := pump.exception()) is not None:
            raise error

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _client_left(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _hold(
    gateway: Gateway, request: Request, backend: Backend, on_wait: Callable[[Backend, float], Awaitable[None]] | None
) -> Backend | RoutingError:
    """Hold the request until ``backend`` has a Ready pod (then the fresh backend), or the reason it will not."""
    model, settings = backend.id, gateway.settings
    gateway.publisher.change(model, +1)
    gateway.metrics.held.labels(model=model).inc()
    started = time.monotonic()
    try:
        while True:
            waited = time.monotonic() - started
            current = gateway.catalog.backend(model)
            if current is None:
                return RoutingError(404, f"model {model!r} is no longer served by this gateway", "model_not_found")
            decision = admit(
                current,
                held=gateway.publisher.held(model) - 1,
                max_held=settings.max_held,
                waited_s=waited,
                hold_cap_s=settings.hold_cap_s,
                in_flight=gateway.in_flight,
            )
            if decision.verdict == Verdict.route:
                return current
            if decision.verdict == Verdict.refuse:
                assert decision.error is not None
                gateway.metrics.routing_errors.labels(model=model, reason=decision.error.code).inc()
                return decision.error
            if on_wait is not None:
                await on_wait(current, waited)
            elif await request.is_disconnected():
                return RoutingError(499, "the client left while held", "client_closed")
            # A pod turning Ready wakes this at once; capacity freed on a busy pod is seen within a quarter second.
            await gateway.catalog.wait_change(min(settings.progress_interval_s, 0.25))
    finally:
        gateway.publisher.change(model, -1)
        gateway.metrics.held.labels(model=model).dec()
        gateway.metrics.hold_seconds.labels(model=model).observe(time.monotonic() - started)


async def _held_stream(
    gateway: Gateway,
    request: Request,
    backend: Backend,
    path: str,
    body: bytes,
    headers: dict[str, str],
    done: _Once,
) -> AsyncIterator[bytes]:
    """A streaming client held: progress comments while it waits, then the pod's events (or the error as one)."""
    comments: asyncio.Queue[bytes] = asyncio.Queue()
    last_at, last_line = -1e9, ""

    async def on_wait(current: Backend, waited: float) -> None:
        # Every progress_interval_s (which also keeps proxies from timing the stream out), and when the progress
        # moves, but never more than once a second.
        nonlocal last_at, last_line
        now, line = time.monotonic(), current.progress or ""
        since = now - last_at
        if since >= gateway.settings.progress_interval_s or (line != last_line and since >= 1):
            last_at, last_line = now, line
            comments.put_nowait(progress_comment(current, waited))

    try:
        task = asyncio.create_task(_hold(gateway, request, backend, on_wait))
        while not task.done():
            getter = asyncio.create_task(comments.get())
            await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        while not comments.empty():
            comments.get_nowait()
        held = task.result()
        if isinstance(held, RoutingError):
            yield sse_error(held)
            return
        opened = await _open(gateway, held, path, body, headers)
        if isinstance(opened, RoutingError):
            yield sse_error(opened)
            return
        response, pod = opened
        if response.status != 200:
            try:
                text = (await response.content.read(65536)).decode(errors="replace")
            except (aiohttp.ClientError, TimeoutError) as exc:
                text = f"pod {pod} failed: {exc}"
            finally:
                response.close()
                _release(gateway, pod)
            yield f"data: {text}\n\ndata: [DONE]\n\n".encode()
            return
        async with contextlib.aclosing(_relay(gateway, response, pod, _Once(lambda: None))) as relay:
            async for chunk in relay:
                yield chunk
    finally:
        if "task" in locals() and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        done()


async def _open(
    gateway: Gateway, backend: Backend, path: str, body: bytes, headers: dict[str, str]
) -> tuple[aiohttp.ClientResponse, str] | RoutingError:
    """Send the request to the least busy Ready pod; a connect failure, a 503 or a 429 before the first byte is
    tried on another pod (bounded). The open response (status and headers read, body not) and its pod."""
    model, settings = backend.id, gateway.settings
    attempts: list[Attempt] = []
    tried: list[str] = []
    while True:
        pod = pick(backend.ready_pods(), gateway.in_flight, tried)
        if pod is None:
            if not attempts:
                return RoutingError(503, f"{model} has no Ready replica", "unavailable", 5)
            decision = after_attempt(tuple(attempts), 0, settings.max_attempts)
            assert decision.error is not None
            return decision.error
        tried.append(pod.address)
        gateway.in_flight[pod.address] = gateway.in_flight.get(pod.address, 0) + 1
        sent = time.monotonic()
        try:
            response = await gateway.upstream.post(f"http://{pod.address}{path}", data=body, headers=headers)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            attempt = Attempt(Outcome.connect_failed)
            logger.info("%s: cannot connect to pod %s (%s): %s", model, pod.name, pod.address, exc)
        except (aiohttp.ClientError, TimeoutError) as exc:
            _release(gateway, pod.address)
            gateway.metrics.routing_errors.labels(model=model, reason="upstream_failed").inc()
            return RoutingError(502, f"pod {pod.name} of {model} failed: {exc}", "upstream_failed")
        else:
            gateway.metrics.upstream_latency.labels(model=model).observe(time.monotonic() - sent)
            if response.status not in (429, 503):
                return response, pod.address
            outcome = Outcome.overloaded if response.status == 429 else Outcome.unavailable
            attempt = Attempt(outcome, _retry_after(response.headers.get("retry-after")))
            response.close()
        _release(gateway, pod.address)
        gateway.metrics.routing_errors.labels(model=model, reason=attempt.outcome.value).inc()
        attempts.append(attempt)
        pods_left = len([p for p in backend.ready_pods() if p.address not in tried])
        decision = after_attempt(tuple(attempts), pods_left, settings.max_attempts)
        if not decision.retry:
            assert decision.error is not None
            return decision.error


def _retry_after(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() and len(value) < 6 else None


def _release(gateway: Gateway, address: str) -> None:
    left = gateway.in_flight.get(address, 1) - 1
    if left > 0:
        gateway.in_flight[address] = left
    else:
        gateway.in_flight.pop(address, None)


async def _relay(
    gateway: Gateway, response: aiohttp.ClientResponse, address: str, done: _Once
) -> AsyncGenerator[bytes]:
    """The pod's answer as it comes, within the byte cap and the deadline. Read to its end, the connection goes back
    to the pool; cut short (the client left, the cap, the deadline, an error), it is closed, so the pod stops."""
    settings = gateway.settings
    deadline = time.monotonic() + settings.upstream_deadline_s
    relayed, whole = 0, False
    try:
        async for chunk in response.content.iter_any():
            relayed += len(chunk)
            if relayed > settings.max_response_bytes or time.monotonic() > deadline:
                logger.warning("answer from %s cut: over %d bytes or the deadline", address, relayed)
                return
            yield chunk
        whole = True
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.info("answer from %s ended early: %s", address, exc)
    finally:
        if whole:
            response.release()
        else:
            response.close()
        _release(gateway, address)
        done()


def _models(gateway: Gateway) -> dict[str, Any]:
    data = [
        {"id": key, "object": "model", "created": 0, "owned_by": "kubellm", "root": backend.served_model}
        for key, backend in sorted(gateway.catalog.backends().items())
    ]
    return {"object": "list", "data": data}


def create_app(
    settings: GatewaySettings, *, kube: Kube | None = None, metrics: GatewayMetrics | None = None
) -> GatewayApp:
    """The gateway app; its lifespan connects to the API, starts the watches and the held-requests publisher, and
    stops them. ``kube`` defaults to the settings' credentials (in-cluster, else the kubeconfig)."""
    metrics = metrics or GatewayMetrics()
    # No total: a stream lasts as long as the generation (the relay's own deadline bounds it); each read is bounded.
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api = kube or Kube(load_configuration(settings.kubeconfig), timeout_s=settings.api_timeout_s)
        catalog = Catalog(api, settings.namespaces, watch_timeout_s=settings.watch_timeout_s)
        publisher = HeldPublisher(api, settings.identity)
        # No connection limit (the pods' own admission answers 429), no proxy from the environment, bodies relayed
        # as the pod encoded them.
        upstream = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            timeout=timeout,
            auto_decompress=False,
            trust_env=False,
        )
        app.state.gateway = Gateway(settings, catalog, publisher, metrics, upstream, {})
        catalog.start()
        publisher.start()
        try:
            yield
        finally:
            await publisher.stop()
            await catalog.stop()
            await upstream.close()
            await api.close()

    app = FastAPI(title="kubellm gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def state(request: Request) -> Gateway:
        gateway: Gateway = request.app.state.gateway
        return gateway

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        return _models(state(request))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        if state(request).catalog.synced:
            return JSONResponse({"status": "ready", "models": len(state(request).catalog.backends())})
        return error_response(RoutingError(503, "the watches have not listed yet", "not_ready"))

    @app.get("/metrics")
    async def metrics_route(request: Request) -> Response:
        return Response(generate_latest(state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def on_http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        if error.status_code == 405:
            return _not_allowed(request.method, request.url.path)
        text = f"no route {request.url.path}" if error.status_code == 404 else str(error.detail)
        return JSONResponse(error_body(error.status_code, text), error.status_code)

    async def on_unexpected(request: Request, error: Exception) -> Response:
        return _internal_error(request)

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    return GatewayApp(app)


def _not_allowed(method: str, path: str) -> JSONResponse:
    return JSONResponse(error_body(405, f"{method} is not allowed on {path}"), 405)


def _internal_error(request: Request) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body(500, "internal error; the gateway's log has the details"), 500)


_ASK = re.compile(r"/llms/([^/]+)/([^/]+)/ask")


def _relaying_route(path: str) -> Callable[[Gateway, Request], Awaitable[Response]] | None:
    """The handler of a relaying route (POST only), or None for the routes FastAPI serves."""
    if path in ("/v1/chat/completions", "/v1/completions"):
        return lambda gateway, request: _openai(gateway, request, path)
    if (ask := _ASK.fullmatch(path)) is not None:
        namespace, name = ask.groups()
        return lambda gateway, request: _ask(gateway, request, namespace, name)
    return None


class GatewayApp:
    """The gateway's ASGI app. The relaying routes are dispatched here, straight to their handlers; FastAPI serves
    the rest (models, health, metrics, 404s). A relayed request thus skips FastAPI's routing, its dependency
    solving and its four middleware layers (whose wrapped ``send`` every chunk also went through): with the relay
    on aiohttp, 2.3 of the 15 ms of CPU the gateway still spent on a 48-token request (`bench/gateway_relay.py`)."""

    def __init__(self, api: FastAPI) -> None:
        self.api = api
        self.state = api.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = _relaying_route(scope["path"]) if scope["type"] == "http" else None
        if handler is None:
            await self.api(scope, receive, send)
            return
        request = Request(scope, receive)
        if request.method != "POST":
            response: Response = _not_allowed(request.method, request.url.path)
        else:
            gateway: Gateway = self.state.gateway
            try:
                response = await handler(gateway, request)
            except BadRequest as bad:
                response = _count(gateway, UNKNOWN_MODEL, error_response(bad.error))
            except Exception:
                response = _internal_error(request)
        await response(scope, receive, send)
