"""kubellm_operator.egress: the operator's one outbound GET, against loopback stand-ins that count what reaches
them. No test aims at a link-local, metadata or private address: the connect hook proves nothing is dialled."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import ValidationError

from kubellm.modelfiles import HubFailure
from kubellm_operator.api import LLMService, validation_messages
from kubellm_operator.egress import (
    EgressHTTPError,
    EgressPolicy,
    EgressRefused,
    EgressTimeout,
    EgressTooLarge,
    base_url_problem,
    fetch,
)
from kubellm_operator.modelplan import fetch_loadz, loadz_address, plan_model
from kubellm_operator.resolve import ModelResolver

Handler = Callable[[BaseHTTPRequestHandler], None]


class Counting:
    """A connect hook that records every address it is asked to dial, and dials only loopback."""

    def __init__(self) -> None:
        self.dialled: list[tuple[str, int]] = []

    def __call__(self, address: tuple[str, int], timeout: float) -> socket.socket:
        self.dialled.append(address)
        assert address[0].startswith("127."), f"a test tried to dial {address}"
        return socket.create_connection(address, timeout=timeout)


class Stand(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


@contextmanager
def serving(handle: Handler) -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server answering every GET with ``handle``; yields its origin and the paths it was asked."""
    seen: list[str] = []

    class One(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            handle(self)

        def log_message(self, *_: Any) -> None:
            pass

    server = Stand(("127.0.0.1", 0), One)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def answer(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    def handle(request: BaseHTTPRequestHandler) -> None:
        request.send_response(status)
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    return handle


LOOPBACK = EgressPolicy(allow_loopback=True)


def test_a_plain_get_returns_the_body() -> None:
    hook = Counting()
    with serving(answer(b'{"ok": true}')) as (origin, seen):
        body = fetch(
            f"{origin}/x?y=1", deadline_s=5, max_bytes=100, policy=EgressPolicy(allow_loopback=True, connect=hook)
        )
    assert body == b'{"ok": true}' and seen == ["/x?y=1"] and len(hook.dialled) == 1


@pytest.mark.parametrize(
    ("url", "resolved", "allowed"),
    [
        ("http://169.254.169.254/latest/meta-data/", None, {"allow_loopback": True, "allow_private": True}),
        ("http://metadata.google.internal/", ["169.254.169.254"], {"allow_loopback": True, "allow_private": True}),
        ("http://[fe80::1]:8080/", None, {"allow_loopback": True, "allow_private": True}),
        ("http://[::ffff:169.254.169.254]/", None, {"allow_loopback": True, "allow_private": True}),
        ("http://[fd00:ec2::254]/", None, {"allow_loopback": True, "allow_private": True}),
        ("http://100.100.100.200/", None, {"allow_loopback": True, "allow_private": True}),
        ("http://0.0.0.0:5000/", None, {"allow_loopback": True, "allow_private": True}),
        ("http://127.0.0.1:5000/", None, {}),
        ("http://localhost:5000/", ["127.0.0.1", "::1"], {}),
        ("http://10.0.0.7:5000/", None, {"allow_loopback": True}),
        ("http://mirror.internal/", ["192.168.1.4"], {"allow_loopback": True}),
        ("http://[fd12::1]/", None, {"allow_loopback": True}),
    ],
)
def test_refused_addresses_are_never_dialled(url: str, resolved: list[str] | None, allowed: dict[str, bool]) -> None:
    hook = Counting()
    looked_up: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return resolved or []

    policy = EgressPolicy(connect=hook, resolve=resolve, **allowed)
    with pytest.raises(EgressRefused) as refused:
        fetch(url, deadline_s=2, max_bytes=100, policy=policy)
    assert hook.dialled == []
    assert "address" in str(refused.value)
    if resolved is not None:
        assert looked_up  # the policy judged the resolved address, not the name


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "http://user:pw@127.0.0.1/", "file:///etc/passwd", "http:///nohost"]
)
def test_urls_of_other_shapes_are_refused_before_any_lookup(url: str) -> None:
    hook = Counting()

    def resolve(host: str, port: int) -> list[str]:
        raise AssertionError("looked up")

    with pytest.raises(EgressRefused):
        fetch(url, deadline_s=2, max_bytes=100, policy=EgressPolicy(allow_loopback=True, connect=hook, resolve=resolve))
    assert hook.dialled == []


def test_a_redirect_to_another_origin_is_refused_and_not_followed() -> None:
    hook = Counting()
    with serving(answer(b"elsewhere")) as (other, other_seen):
        redirect = answer(b"", 302, {"Location": f"{other}/latest/meta-data/"})
        with serving(redirect) as (origin, _), pytest.raises(EgressRefused) as refused:
            fetch(f"{origin}/a", deadline_s=5, max_bytes=100, policy=EgressPolicy(allow_loopback=True, connect=hook))
    assert other_seen == [] and len(hook.dialled) == 1
    assert "another origin" in str(refused.value)


def test_redirects_within_the_origin_and_to_allowed_hosts_are_followed_without_credentials() -> None:
    headers: list[str | None] = []

    def cdn(request: BaseHTTPRequestHandler) -> None:
        headers.append(request.headers.get("Authorization"))
        answer(b"weights")(request)

    with serving(cdn) as (other, _):

        def hub(request: BaseHTTPRequestHandler) -> None:
            headers.append(request.headers.get("Authorization"))
            if request.path == "/first":
                answer(b"", 307, {"Location": "/second"})(request)
            else:
                answer(b"", 302, {"Location": f"{other}/blob"})(request)

        with serving(hub) as (origin, seen):
            policy = EgressPolicy(allow_loopback=True, redirect_hosts=frozenset({"127.0.0.1"}))
            body = fetch(f"{origin}/first", deadline_s=5, max_bytes=100, policy=policy, headers={"Authorization": "t"})
    assert body == b"weights" and seen == ["/first", "/second"]
    assert headers == ["t", "t", None]  # the token stays with its origin


def test_a_trickling_server_hits_the_deadline_of_the_whole_exchange() -> None:
    stop = threading.Event()

    def trickle(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Length", "1000")
        request.end_headers()
        for _ in range(1000):  # a byte every 0.1 s: every socket read succeeds, the whole never ends
            if stop.wait(0.1):
                return
            try:
                request.wfile.write(b"x")
                request.wfile.flush()
            except OSError:
                return

    with serving(trickle) as (origin, _):
        started = time.monotonic()
        with pytest.raises(EgressTimeout) as late:
            fetch(origin, deadline_s=1.0, max_bytes=10_000, policy=LOOPBACK)
        took = time.monotonic() - started
        stop.set()
    assert "within 1s" in str(late.value)
    assert took < 3.0  # the deadline, not 1000 reads of 0.1 s


def test_trickled_headers_hit_the_deadline_too() -> None:
    stop = threading.Event()

    def trickle(request: BaseHTTPRequestHandler) -> None:
        for char in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 500:
            if stop.wait(0.05):
                return
            try:
                request.wfile.write(bytes([char]))
                request.wfile.flush()
            except OSError:
                return

    with serving(trickle) as (origin, _):
        with pytest.raises(EgressTimeout):
            fetch(origin, deadline_s=0.8, max_bytes=10_000, policy=LOOPBACK)
        stop.set()


def test_an_oversized_answer_hits_the_byte_cap() -> None:
    def chunked(request: BaseHTTPRequestHandler) -> None:
        request.protocol_version = "HTTP/1.1"
        request.send_response(200)
        request.send_header("Transfer-Encoding", "chunked")
        request.end_headers()
        for _ in range(64):
            request.wfile.write(b"400\r\n" + b"z" * 1024 + b"\r\n")
        request.wfile.write(b"0\r\n\r\n")

    with serving(answer(b"a" * 5000)) as (origin, _), pytest.raises(EgressTooLarge, match="5000 bytes"):
        fetch(origin, deadline_s=5, max_bytes=4096, policy=LOOPBACK)
    with serving(chunked) as (origin, _):
        with pytest.raises(EgressTooLarge):
            fetch(origin, deadline_s=5, max_bytes=4096, policy=LOOPBACK)
        assert len(fetch(origin, deadline_s=5, max_bytes=65536, policy=LOOPBACK)) == 65536


def test_an_error_status_carries_the_hubs_error_code() -> None:
    failing = answer(b"{}", 404, {"X-Error-Code": "RepoNotFound"})
    with serving(failing) as (origin, _), pytest.raises(EgressHTTPError) as error:
        fetch(origin, deadline_s=5, max_bytes=100, policy=LOOPBACK)
    assert error.value.status == 404 and error.value.headers["X-Error-Code"] == "RepoNotFound"


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("https://huggingface.co", None),
        ("http://hub.internal:8090/", None),
        ("http://[fd00::1]:8090", None),
        ("http://169.254.169.254/latest/meta-data/#", "a path, a fragment"),
        ("https://hub.example/?x=1", "a query"),
        ("https://user:pw@hub.example", "user information"),
        ("https://hub.example/mirror", "a path"),
    ],
)
def test_hub_endpoints_are_bare_base_urls(endpoint: str, problem: str | None) -> None:
    found = base_url_problem(endpoint)
    assert (found is None) == (problem is None)
    if problem is not None:
        assert found is not None and problem in found
        with pytest.raises(ValidationError) as refused:
            LLMService.from_object(
                {
                    "apiVersion": "kubellm.dev/v1alpha1",
                    "kind": "LLMService",
                    "metadata": {"name": "x"},
                    "spec": {"model": {"name": "acme/tiny", "hub": {"endpoint": endpoint}}},
                }
            )
        messages = validation_messages(refused.value)
        assert len(messages) == 1 and messages[0].startswith("spec.model.hub.endpoint: ")
        assert "bare base URL" in messages[0]


def test_a_disallowed_hub_endpoint_is_never_contacted() -> None:
    hook = Counting()
    read: list[object] = []
    with serving(answer(b"{}")) as (origin, seen):
        llms = LLMService.from_object(
            {
                "apiVersion": "kubellm.dev/v1alpha1",
                "kind": "LLMService",
                "metadata": {"name": "x", "namespace": "team-a"},
                "spec": {
                    "model": {
                        "name": "acme/tiny",
                        "hub": {"endpoint": origin},
                        "hubTokenSecretRef": {"name": "hf", "key": "token"},
                    }
                },
            }
        )
        resolver = ModelResolver(
            policy=EgressPolicy(allow_loopback=True, connect=hook),
            allowed_endpoints=frozenset({"https://huggingface.co"}),
        )
        plan = plan_model(llms, resolver, default_endpoint=None, bandwidth=1 << 20, read_token=read.append)
    assert plan.hold is not None and plan.hold[0] is HubFailure.HubEndpointNotAllowed
    assert origin in plan.hold[1] and "--allowed-hub-endpoints" in plan.hold[1]
    assert seen == [] and hook.dialled == [] and read == [] and resolver.resolutions == 0


def test_loadz_is_read_at_the_pod_ip_and_container_port_under_the_pod_policy() -> None:
    def pod(ip: str, port: int) -> dict[str, Any]:
        return {
            "metadata": {"annotations": {"sandbox.kubellm.dev/local-ports": "inference/5000=127.0.0.1:1"}},
            "spec": {"containers": [{"name": "inference", "ports": [{"containerPort": port}]}]},
            "status": {"podIP": ip},
        }

    assert loadz_address(pod("10.1.2.3", 5000)) == "10.1.2.3:5000"  # the annotation is not read
    assert loadz_address(pod("fd00::5", 5000)) == "[fd00::5]:5000"
    with serving(answer(b'{"phase": "downloading"}')) as (origin, seen):
        port = int(origin.rsplit(":", 1)[1])
        assert fetch_loadz(pod("127.0.0.1", port), EgressPolicy(allow_loopback=True)) == {"phase": "downloading"}
        assert fetch_loadz(pod("127.0.0.1", port), EgressPolicy(allow_private=True)) is None  # loopback not allowed
        assert seen == ["/loadz"]
    hook = Counting()
    assert (
        fetch_loadz(pod("169.254.169.254", 80), EgressPolicy(allow_loopback=True, allow_private=True, connect=hook))
        is None
    )
    assert hook.dialled == []
    with serving(answer(b"x" * (70 * 1024))) as (origin, _):
        port = int(origin.rsplit(":", 1)[1])
        assert fetch_loadz(pod("127.0.0.1", port), EgressPolicy(allow_loopback=True)) is None  # over 64 KiB
