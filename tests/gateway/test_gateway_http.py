"""The gateway over real HTTP: real inference servers on the tiny model behind pods in the API emulator, and the
gateway watching them as deploy/'s ServiceAccount. Every server is stopped by its fixture, every wait bounded."""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket
import time

from gateway_support import closed_port, get, install, put_llmservice, put_pod, running_gateway, set_status
from inference_support import RunningServer

from kubellm_emulator import Emulator
from kubellm_emulator.testing import wait_until
from kubellm_operator.autoscale import HELD_ANNOTATION_PREFIX, held_requests

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def _port(server: RunningServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


async def test_routes_by_model_and_relays(
    emulator: Emulator, tmp_path: pathlib.Path, fast_server: RunningServer
) -> None:
    install(emulator)
    put_llmservice(emulator, "tiny")
    put_llmservice(emulator, "hidden", gateway={"enabled": False})
    put_pod(emulator, "tiny", "tiny-a", _port(fast_server))
    put_pod(emulator, "hidden", "hidden-a", _port(fast_server))
    async with running_gateway(emulator, tmp_path) as gateway, gateway.client() as client:
        await gateway.served("default/tiny", ready=1)
        models = (await client.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["default/tiny"]  # the opted-out one is not listed

        for model in ("default/tiny", "tiny"):
            answer = await client.post("/v1/chat/completions", json=CHAT | {"model": model})
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["role"] == "assistant"
        completion = await client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert completion.status_code == 200 and completion.json()["object"] == "text_completion"
        ask = await client.post("/llms/default/tiny/ask", json={"text": "hi", "max_new_tokens": 2})
        assert ask.status_code == 200 and "response" in ask.json()

        # Server-sent events relayed as they come, ending with [DONE].
        events = []
        async with client.stream("POST", "/v1/chat/completions", json=CHAT | {"model": "tiny", "stream": True}) as s:
            assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
            async for line in s.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        assert events[-1] == "[DONE]" and json.loads(events[0])["object"] == "chat.completion.chunk"

        for model in ("default/hidden", "nope"):
            missing = await client.post("/v1/chat/completions", json=CHAT | {"model": model})
            assert missing.status_code == 404 and "GET /v1/models" in missing.json()["error"]["message"]
        bad = await client.post(
            "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
        big = await client.post("/v1/chat/completions", content=b"x" * (2 << 20))
        assert big.status_code == 413
        no_model = await client.post("/v1/chat/completions", json=CHAT)
        assert no_model.status_code == 400 and "model" in no_model.json()["error"]["message"]
        for path in ("/v1/chat/completions", "/llms/default/tiny/ask"):
            wrong = await client.get(path)
            assert wrong.status_code == 405 and wrong.json()["error"]["message"] == f"GET is not allowed on {path}"
        unknown = await client.post("/llms/default/tiny/ask/more", json={})
        assert (
            unknown.status_code == 404 and unknown.json()["error"]["message"] == "no route /llms/default/tiny/ask/more"
        )

        exposition = (await client.get("/metrics")).text
        for name in (
            'kubellm_gateway_requests_total{code="200",model="default/tiny"}',
            'kubellm_gateway_requests_total{code="404",model="unknown"}',
            'kubellm_gateway_requests_in_flight{model="default/tiny"} 0.0',
            "kubellm_gateway_upstream_latency_seconds_bucket",
            'kubellm_gateway_routing_errors_total{model="unknown",reason="model_not_found"}',
        ):
            assert name in exposition, name


async def test_retries_another_pod_and_passes_authorization(
    emulator: Emulator, tmp_path: pathlib.Path, fast_server: RunningServer, secured_server: RunningServer
) -> None:
    install(emulator)
    put_llmservice(emulator, "tiny")
    # "tiny-a" sorts first and has nothing listening: the gateway tries it, cannot connect, and goes on to "tiny-b".
    put_pod(emulator, "tiny", "tiny-a", closed_port())
    put_pod(emulator, "tiny", "tiny-b", _port(fast_server))
    put_llmservice(emulator, "secured")
    put_pod(emulator, "secured", "secured-a", _port(secured_server))
    async with running_gateway(emulator, tmp_path) as gateway, gateway.client() as client:
        await gateway.served("default/tiny", ready=2)
        await gateway.served("default/secured", ready=1)
        answer = await client.post("/v1/chat/completions", json=CHAT | {"model": "tiny"})
        assert answer.status_code == 200, answer.text
        assert (
            gateway.sample("kubellm_gateway_routing_errors_total", model="default/tiny", reason="connect_failed") == 1
        )

        # Each LLMService's own auth decides: the client's Authorization header goes through.
        refused = await client.post("/v1/chat/completions", json=CHAT | {"model": "secured"})
        assert refused.status_code == 401
        allowed = await client.post(
            "/v1/chat/completions", json=CHAT | {"model": "secured"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert allowed.status_code == 200, allowed.text


async def test_client_leaving_cancels_the_generation(
    emulator: Emulator, tmp_path: pathlib.Path, slow_server: RunningServer
) -> None:
    install(emulator)
    put_llmservice(emulator, "slow")
    put_pod(emulator, "slow", "slow-a", _port(slow_server))
    before = slow_server.metric("kubellm_generated_tokens_total")
    async with running_gateway(emulator, tmp_path) as gateway, gateway.client() as client:
        await gateway.served("default/slow", ready=1)
        body = CHAT | {"model": "slow", "stream": True, "max_tokens": 64, "ignore_eos": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    break  # leave after the first token
        await wait_until(
            lambda: slow_server.metric("kubellm_batch_size") == 0 and slow_server.metric("kubellm_queue_depth") == 0,
            timeout=10,
            what="the server to drop the generation",
        )
        # 64 steps of 50 ms would take 3.2 s; the generation stopped long before its end.
        assert slow_server.metric("kubellm_generated_tokens_total") - before < 64
        await wait_until(
            lambda: gateway.sample("kubellm_gateway_requests_in_flight", model="default/slow") == 0,
            timeout=5,
            what="the gateway to count the request done",
        )


async def test_holds_wakes_shows_progress_then_answers(
    emulator: Emulator, tmp_path: pathlib.Path, fast_server: RunningServer
) -> None:
    install(emulator)
    autoscaled = {"autoscaling": {"minReplicas": 0, "maxReplicas": 2}}
    put_llmservice(emulator, "sleepy", **autoscaled)
    put_llmservice(emulator, "nofit", **autoscaled)
    set_status(
        emulator,
        "LLMService",
        "nofit",
        {
            "conditions": [
                {
                    "type": "StorageReady",
                    "status": "False",
                    "reason": "InsufficientStorage",
                    "message": "needs 30Gi free; best node has 8Gi",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ]
        },
    )
    put_llmservice(emulator, "fixed", replicas=0)
    async with running_gateway(emulator, tmp_path) as gateway, gateway.client() as client:
        await gateway.served("default/sleepy")
        await gateway.served("default/nofit")

        # A storage verdict of "no node fits" answers at once with that message, instead of holding for nothing.
        nofit = await client.post("/v1/chat/completions", json=CHAT | {"model": "nofit"})
        assert nofit.status_code == 503 and "best node has 8Gi" in nofit.json()["error"]["message"]
        assert nofit.headers["retry-after"]
        # At zero without autoscaling, nothing will come: 503 at once, saying why.
        fixed = await client.post("/v1/chat/completions", json=CHAT | {"model": "fixed"})
        assert fixed.status_code == 503 and fixed.json()["error"]["code"] == "scaled_to_zero"

        lines: list[str] = []
        body = CHAT | {"model": "sleepy", "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as stream:
            assert stream.status_code == 200
            reader = stream.aiter_lines()

            async def next_line() -> str:
                while True:
                    line = await asyncio.wait_for(anext(reader), 10)
                    if line:
                        lines.append(line)
                        return line

            # The wake signal: the held request is on the LLMService for the operator within a second.
            held = await wait_until(
                lambda: held_requests(
                    get(emulator, "LLMService", "sleepy")["metadata"].get("annotations") or {}, time.time()
                ),
                timeout=1.0,
                what="the held request to be published",
            )
            assert held == 1
            assert (
                f"{HELD_ANNOTATION_PREFIX}gateway-test"
                in get(emulator, "LLMService", "sleepy")["metadata"]["annotations"]
            )
            assert (await next_line()).startswith(": kubellm: waiting for a Ready replica of default/sleepy")
            # The load progress, as the operator writes it, reaches the held client as an SSE comment.
            set_status(emulator, "LLMService", "sleepy", {"loading": {"message": "Downloading 6.2/14.5Gi (43%)"}})
            while not (line := await next_line()).startswith(": kubellm: Downloading 6.2/14.5Gi (43%)"):
                assert line.startswith(": kubellm:"), line
            put_pod(emulator, "sleepy", "sleepy-a", _port(fast_server))
            while (line := await next_line()) != "data: [DONE]":
                assert line.startswith((": kubellm:", "data: {")), line
        assert any('"chat.completion.chunk"' in line for line in lines)
        # Nothing held any more: the annotation is removed (after at most a second).
        await wait_until(
            lambda: (
                not any(
                    k.startswith(HELD_ANNOTATION_PREFIX)
                    for k in get(emulator, "LLMService", "sleepy")["metadata"].get("annotations") or {}
                )
            ),
            timeout=5,
            what="the held annotation to go",
        )
        assert gateway.sample("kubellm_gateway_hold_seconds_count", model="default/sleepy") == 1
        assert gateway.sample("kubellm_gateway_requests_held", model="default/sleepy") == 0


async def test_held_stream_relays_a_refusal_as_an_event_and_frees_the_pod(
    emulator: Emulator, tmp_path: pathlib.Path, secured_server: RunningServer
) -> None:
    """A held streaming client whose pod, once Ready, refuses it (here: 401, no API key) gets the pod's error as an
    event after its 200; the pod's slot in the gateway's least-busy count is given back (it once was not)."""
    install(emulator)
    put_llmservice(emulator, "locked", autoscaling={"minReplicas": 0, "maxReplicas": 1})
    async with running_gateway(emulator, tmp_path) as gateway, gateway.client() as client:
        await gateway.served("default/locked")
        body = CHAT | {"model": "locked", "stream": True}
        events: list[str] = []
        async with client.stream("POST", "/v1/chat/completions", json=body) as stream:
            assert stream.status_code == 200
            put_pod(emulator, "locked", "locked-a", _port(secured_server))
            async with asyncio.timeout(10):
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
        assert events[-1] == "[DONE]" and json.loads(events[0])["error"]["code"] == "invalid_api_key", events
        assert gateway.app.state.gateway.in_flight == {}


async def test_the_listening_socket_gives_accepted_connections_tcp_nodelay() -> None:
    """uvicorn serves on the socket main() binds; asyncio sets TCP_NODELAY on accepted sockets only when the
    listener's proto says TCP. With Nagle on, a chunk relayed right after the headers of a kept-alive response
    waited for the client's delayed ACK (+40 ms to the first token)."""
    from kubellm_gateway.main import listening_socket

    sock = listening_socket("127.0.0.1", 0)
    seen: asyncio.Queue[int] = asyncio.Queue()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("socket")
        seen.put_nowait(peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=sock)
    try:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        assert await asyncio.wait_for(seen.get(), timeout=5) == 1
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
