"""Every endpoint of the server over real HTTP, on the tiny model: answers, shapes, streaming framing, the
official openai client, probes and metrics."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
from inference_support import RunningServer


def sse_events(response: httpx.Response) -> list[Any]:
    """The data payloads of a server-sent event stream, checking its framing on the way."""
    assert response.headers["content-type"].startswith("text/event-stream")
    body = response.read().decode()
    assert body.endswith("\n\n"), "every event ends with a blank line"
    payloads: list[Any] = []
    for block in body.split("\n\n")[:-1]:
        assert block.startswith("data: "), f"not a data event: {block!r}"
        assert "\n" not in block, f"one line per event: {block!r}"
        data = block.removeprefix("data: ")
        payloads.append(data if data == "[DONE]" else json.loads(data))
    assert payloads[-1] == "[DONE]", "a stream ends with [DONE]"
    assert payloads.count("[DONE]") == 1
    return payloads[:-1]


def test_ask_answers_like_the_seed(server: RunningServer) -> None:
    with server.client() as client:
        response = client.post("/ask", json={"text": "What is the capital of France?"})
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["response"]
    assert isinstance(body["response"], str)


def test_ask_greedy_is_deterministic_and_honours_max_new_tokens(server: RunningServer) -> None:
    request = {"text": "Tell me a joke", "max_new_tokens": 8, "temperature": 0}
    with server.client() as client:
        first = client.post("/ask", json=request).json()["response"]
        second = client.post("/ask", json=request).json()["response"]
        longer = client.post("/ask", json={**request, "max_new_tokens": 20}).json()["response"]
    assert first == second
    assert longer.startswith(first) or longer == first


def test_ask_stream_sends_text_then_finish_then_done(server: RunningServer) -> None:
    request = {"text": "Hello", "max_new_tokens": 6, "temperature": 0}
    with server.client() as client:
        whole = client.post("/ask", json=request).json()["response"]
        with client.stream("POST", "/ask", json={**request, "stream": True}) as response:
            assert response.status_code == 200
            events = sse_events(response)
    assert all(set(e) <= {"response", "finish_reason"} for e in events)
    assert events[-1]["finish_reason"] in {"stop", "length"}
    assert "".join(e["response"] for e in events) == whole


def test_models_lists_the_served_model(server: RunningServer) -> None:
    with server.client() as client:
        listing = client.get("/v1/models").json()
        one = client.get(f"/v1/models/{server.model_id}")
        other = client.get("/v1/models/gpt-4")
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["tiny"]
    assert one.status_code == 200 and one.json()["id"] == "tiny"
    # The served precision, as loaded (the shared server pins float32, see conftest.py).
    assert (listing["data"][0]["dtype"], listing["data"][0]["quantization"]) == ("float32", "none")
    info = {"dtype": "float32", "quantization": "none", "device": "cpu", "compile": "off"}
    assert server.metric("kubellm_model_info", **info) == 1
    assert (listing["data"][0]["compile"], listing["data"][0]["step"]) == ("off", "eager")
    assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"


def test_chat_completion_shape_and_usage(server: RunningServer) -> None:
    request = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "ignore_eos": True}
    with server.client() as client:
        body = client.post("/v1/chat/completions", json=request).json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 5
    # The chat template wraps the message: more prompt tokens than the bare word.
    assert usage["prompt_tokens"] > 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_stream_chunks_and_usage(server: RunningServer) -> None:
    request = {
        "model": "tiny",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": 4,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with server.client() as client:
        with client.stream("POST", "/v1/chat/completions", json=request) as response:
            chunks = sse_events(response)
        plain = client.post("/v1/chat/completions", json={**request, "stream": False}).json()
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    *content, final, usage = chunks
    assert final["choices"][0]["finish_reason"] == "length" and final["choices"][0]["delta"] == {}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in content)
    assert text == plain["choices"][0]["message"]["content"]


def test_completion_with_stop_string(server: RunningServer) -> None:
    base = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    with server.client() as client:
        full = client.post("/v1/completions", json=base).json()
        text = full["choices"][0]["text"]
        assert full["object"] == "text_completion" and full["choices"][0]["finish_reason"] == "length"
        # A stop string taken from the middle of the greedy answer cuts it right there.
        middle = len(text) // 2
        stop = next(text[i : i + 2] for i in range(middle, len(text) - 1) if "\ufffd" not in text[i : i + 2])
        cut = client.post("/v1/completions", json={**base, "stop": [stop]}).json()
        with client.stream("POST", "/v1/completions", json={**base, "stop": stop, "stream": True}) as response:
            chunks = sse_events(response)
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["text"] == text[: text.index(stop)]
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    assert streamed == cut["choices"][0]["text"], "a stream never shows text past the stop string"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_seeded_sampling_is_reproducible(server: RunningServer) -> None:
    request = {"model": "tiny", "prompt": "Hello", "max_tokens": 12, "temperature": 1.5, "seed": 7, "ignore_eos": True}
    with server.client() as client:
        answers = {client.post("/v1/completions", json=request).json()["choices"][0]["text"] for _ in range(2)}
        other = client.post("/v1/completions", json={**request, "seed": 8}).json()["choices"][0]["text"]
    assert len(answers) == 1
    assert other not in answers


def test_openai_client_works_unchanged(server: RunningServer) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=30)
    assert [m.id for m in client.models.list()] == ["tiny"]
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage is not None and chat.usage.completion_tokens <= 5
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == chat.choices[0].message.content
    completion = client.completions.create(model="tiny", prompt="Hello", max_tokens=3, temperature=0)
    assert completion.choices[0].finish_reason in {"stop", "length"}
    try:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
    except openai.NotFoundError as error:
        assert "not served here" in str(error)
    else:
        raise AssertionError("an unknown model must be refused")


def test_health_endpoints_when_ready(server: RunningServer) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        live = client.get("/livez")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert live.status_code == 200 and live.json()["status"] == "alive"


def test_metrics_count_requests_tokens_and_latency(server: RunningServer) -> None:
    before = server.metric("kubellm_generated_tokens_total")
    requests_before = server.metric("kubellm_requests_total", route="/ask", status="200")
    with server.client() as client:
        client.post("/ask", json={"text": "Hi", "max_new_tokens": 3, "temperature": 0})
        client.post("/ask", json={"text": ""})
        exposition = client.get("/metrics")
    assert exposition.headers["content-type"].startswith("text/plain")
    text = exposition.text
    for name in (
        "kubellm_requests_total",
        "kubellm_request_duration_seconds_bucket",
        "kubellm_time_to_first_token_seconds_bucket",
        "kubellm_prompt_tokens_total",
        "kubellm_generated_tokens_total",
        "kubellm_queue_depth",
        "kubellm_batch_size",
        "kubellm_model_load_seconds",
        "kubellm_ready 1.0",
    ):
        assert name in text, name
    assert 'kubellm_requests_total{route="/ask",status="400"}' in text
    assert server.metric("kubellm_requests_total", route="/ask", status="200") == requests_before + 1
    assert 1 <= server.metric("kubellm_generated_tokens_total") - before <= 3
    assert server.metric("kubellm_model_load_seconds") > 0
    # A server that serves is past its load: its phase is ready (it said "warming up" for good before issue 23).
    assert server.metric("kubellm_load_phase", phase="ready") == 1
    assert sum(server.metric("kubellm_load_phase", phase=p) for p in ("starting", "loading", "warming up")) == 0
    assert server.metric("kubellm_queue_capacity") == server.state.settings.queue_size
