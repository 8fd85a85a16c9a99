"""What the server refuses before any route runs: the API key from the headers, the body's size while it
arrives, slow request heads and more connections than the server takes.

Two layers, because FastAPI reads and parses a whole body before a route's dependencies run:

- ``RequestGuard``, a plain ASGI middleware (outermost), answers 401 from the headers alone, 413 from the
  Content-Length alone, and otherwise reads the body itself, counting the bytes as they arrive: past the cap it
  answers 413 and reads no further, past ``body_timeout_s`` 408. The body it read is handed on to the app.
- ``guarded_protocol(settings)``, uvicorn's h11 protocol with a timer per connection: the request head must be
  complete within ``header_timeout_s`` of the connection opening (or of its previous answer), else the
  connection is closed. uvicorn starts no timer on a new connection and its keep-alive timer stops at the first
  byte, so a client that trickles a header line every few seconds would hold a connection forever. It also
  applies ``limit_concurrency`` itself so that the probes' paths are exempt: a client holding many idle
  connections must not get the pod restarted by failing its liveness probe.

Every refusal is the server's one error envelope (``errors.APIError``) and closes the connection: the client may
still be sending a body nobody will read (a 401's body of at most 64 KiB is read and dropped first, so that the
close does not reset the connection before the client read the refusal).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterable
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from kubellm.contract import METRICS_PATH, PROBE_PATHS, ServerSettings
from kubellm_inference.errors import APIError
from kubellm_inference.generation import RETRY_AFTER_S

_CLOSE = {"Connection": "close"}


def api_key_matches(headers: Iterable[tuple[bytes, bytes]], expected: bytes) -> bool:
    """Whether the request's ``Authorization: Bearer <key>`` carries ``expected`` (compared in constant time)."""
    value = next((v for k, v in headers if k.lower() == b"authorization"), b"")
    scheme, _, token = value.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), expected)


def request_has_api_key(scope: Scope, settings: ServerSettings) -> bool:
    """True when no key is configured or the request carries it: what an open route may show."""
    if settings.api_key is None:
        return True
    return api_key_matches(scope.get("headers", ()), settings.api_key.get_secret_value().encode())


async def _refuse(send: Send, error: APIError) -> None:
    response = error.response()
    for name, value in _CLOSE.items():
        response.headers[name] = value
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


DRAIN_BYTES = 64 << 10  # a refused request's body read anyway when it declares at most this much
DRAIN_S = 1.0


def _declared_length(scope: Scope) -> int | None:
    """The request's Content-Length (h11 has already refused a malformed or repeated one, so it is a number)."""
    declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
    return None if declared is None else int(declared)


async def _drain_small_body(scope: Scope, receive: Receive) -> None:
    """Read (and drop) a refused request's small body before answering: the connection is closed after the
    refusal, and a body still arriving at a closed socket makes the kernel answer with a reset, which can reach
    the client before it read the refusal (it then sees "connection reset", not the 401). A body over
    DRAIN_BYTES, or one not whole within DRAIN_S, is not waited for: the refusal is not a way to make the server
    read a large body."""
    declared = _declared_length(scope)
    if declared is None or declared > DRAIN_BYTES:
        return
    read = 0
    try:
        async with asyncio.timeout(DRAIN_S):
            while read <= DRAIN_BYTES:
                message = await receive()
                read += len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
    except TimeoutError:
        return


class _Refused(Exception):
    def __init__(self, error: APIError) -> None:
        super().__init__(error.message)
        self.error = error


class RequestGuard:
    """Auth from the headers, then the body read under a byte cap and a deadline, before the app sees anything."""

    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self.key = settings.api_key.get_secret_value().encode() if settings.api_key is not None else None
        # Default deny: with a key, every path needs it except the probes' (and /metrics unless told otherwise).
        self.open_paths = PROBE_PATHS if settings.metrics_require_api_key else PROBE_PATHS | {METRICS_PATH}
        self.max_body = settings.body_limit
        self.body_timeout_s = settings.body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check_headers(scope)
            body = await self._read_body(receive)
        except _Refused as refused:
            if refused.error.status == 401:
                await _drain_small_body(scope, receive)
            await _refuse(send, refused.error)
            return
        if body is None:
            return  # the client left before its body was whole: nobody to answer, nothing to run
        await self.app(scope, _replay(body, receive), send)

    def _check_headers(self, scope: Scope) -> None:
        headers = scope.get("headers", ())
        if self.key is not None and scope["path"] not in self.open_paths and not api_key_matches(headers, self.key):
            raise _Refused(
                APIError(
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            )
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_body:
            raise _Refused(self._too_large(f"{declared} bytes"))

    def _too_large(self, size: str) -> APIError:
        return APIError(
            413,
            f"the request body ({size}) is over this server's limit of {self.max_body} bytes",
            code="body_too_large",
        )

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None when the client disconnected first."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        raise _Refused(self._too_large("sent without a Content-Length"))
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise _Refused(
                APIError(408, f"the request body did not arrive within {self.body_timeout_s:g}s", code="body_timeout")
            ) from None
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` that hands over the body already read as one message, then passes on to the real one (which
    reports the client's disconnect)."""
    pending: list[bytes] = [body]

    async def replay() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replay


async def _over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    await _refuse(
        send,
        APIError(
            503,
            "the server is at its connection limit; retry later",
            code="over_capacity",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ),
    )


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head timer per connection and a probe-exempt concurrency limit.

    ``header_timeout_s`` and ``connection_limit`` are set on the subclass ``guarded_protocol`` makes, because
    uvicorn builds protocols from the class with its own arguments only.
    """

    header_timeout_s: float = 10.0
    connection_limit: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._header_timer: asyncio.TimerHandle | None = None
        self._app: ASGIApp | None = None
        super().__init__(*args, **kwargs)

    # uvicorn picks ``self.app`` for each request right after it has parsed the request head into ``self.scope``;
    # its own limit_concurrency (left unset) would answer probes 503 as well, in plain text.
    @property
    def app(self) -> Any:
        limit = self.connection_limit
        scope = self.scope
        if (
            limit is not None
            and scope is not None
            and scope.get("path") not in PROBE_PATHS
            and (len(self.connections) > limit or len(self.tasks) >= limit)
        ):
            return _over_capacity
        return self._app

    @app.setter
    def app(self, value: Any) -> None:
        self._app = value

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            # The request head is complete; the body has its own deadline (RequestGuard).
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            # Kept alive: the next request head gets the same time as the first.
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.debug(
                "closing a connection whose request head did not arrive within %ss", self.header_timeout_s
            )
            self.transport.close()


def guarded_protocol(settings: ServerSettings) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn's ``http`` option, carrying ``settings``' timer and limit."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_s": settings.header_timeout_s, "connection_limit": settings.limit_concurrency},
    )
