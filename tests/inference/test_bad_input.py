"""Bad input gets one JSON error envelope with a 4xx that names the field, never a 500."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inference_support import RunningServer

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "tiny", "prompt": "hi"}


def assert_envelope(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"]
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
        assert param.split(".")[0] in error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({}, "text", "required"),
        ({"text": ""}, "text", "at least 1"),
        ({"text": 42}, "text", "string"),
        ({"text": None}, "text", "string"),
        ({"text": ["hi"]}, "text", "string"),
        ({"text": "hi", "max_new_tokens": 0}, "max_new_tokens", "greater than or equal to 1"),
        ({"text": "hi", "max_new_tokens": 65}, "max_new_tokens", "over this server's limit of 64"),
        ({"text": "hi", "max_new_tokens": "5"}, "max_new_tokens", "integer"),
        ({"text": "hi", "temperature": -0.1}, "temperature", "greater than or equal to 0"),
        ({"text": "hi", "temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"text": "hi", "top_p": 0}, "top_p", "greater than 0"),
        ({"text": "hi", "stream": "yes"}, "stream", "boolean"),
        ({"text": "hi", "prompt": "x"}, "prompt", "unsupported parameter"),
    ],
)
def test_ask_rejects_bad_fields(server: RunningServer, body: dict[str, Any], param: str, fragment: str) -> None:
    with server.client() as client:
        error = assert_envelope(client.post("/ask", json=body), 400, param)
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("content", "headers", "fragment"),
    [
        (b"{not json", {"Content-Type": "application/json"}, "not valid JSON"),
        (b"[1, 2]", {"Content-Type": "application/json"}, "must be a JSON object"),
        (b'"text"', {"Content-Type": "application/json"}, "must be a JSON object"),
        (b"", {"Content-Type": "application/json"}, "needs a JSON body"),
        (b"text=hi", {"Content-Type": "application/x-www-form-urlencoded"}, "Content-Type: application/json"),
    ],
)
def test_ask_rejects_bodies_that_are_not_json_objects(
    server: RunningServer, content: bytes, headers: dict[str, str], fragment: str
) -> None:
    with server.client() as client:
        error = assert_envelope(client.post("/ask", content=content, headers=headers), 400)
    assert fragment in error["message"]


def test_ask_reads_a_json_body_sent_without_content_type(server: RunningServer) -> None:
    with server.client() as client:
        response = client.post("/ask", content=json.dumps({"text": "hi", "max_new_tokens": 1}).encode())
    assert response.status_code == 200


def test_input_over_the_limit_is_413(server: RunningServer) -> None:
    with server.client() as client:
        long_text = "word " * 400  # far over the 256 tokens of the test settings
        error = assert_envelope(client.post("/ask", json={"text": long_text}), 413, "text")
        assert "over the limit of 256" in error["message"]
        # Under the body cap, over what 256 tokens can hold in characters: refused before it is tokenized.
        huge = assert_envelope(client.post("/ask", json={"text": "x" * 20_000}), 413, "text")
        assert huge["code"] == "input_too_long"
        # Over the body cap (256 x 64 bytes + 64 KiB): refused before it is read.
        body_cap = server.state.settings.body_limit
        too_big = assert_envelope(client.post("/ask", json={"text": "x" * body_cap}), 413)
        assert too_big["code"] == "body_too_large" and str(body_cap) in too_big["message"]
        prompt = assert_envelope(client.post("/v1/completions", json={**COMPLETION, "prompt": long_text}), 413)
        assert prompt["param"] == "prompt"
        chat_long = {**CHAT, "messages": [{"role": "user", "content": long_text}]}
        assert assert_envelope(client.post("/v1/chat/completions", json=chat_long), 413)["param"] == "messages"


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "model": "gpt-4"}, 404, "model"),
        ("/v1/completions", {**COMPLETION, "model": "gpt-4"}, 404, "model"),
        ("/v1/chat/completions", {"messages": CHAT["messages"]}, 400, "model"),
        ("/v1/chat/completions", {**CHAT, "messages": []}, 400, "messages"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user"}]}, 400, "messages.0.content"),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            400,
            None,
        ),
        ("/v1/chat/completions", {**CHAT, "tools": []}, 400, "tools"),
        ("/v1/chat/completions", {**CHAT, "n": 2}, 400, "n"),
        ("/v1/chat/completions", {**CHAT, "logprobs": True}, 400, "logprobs"),
        ("/v1/chat/completions", {**CHAT, "presence_penalty": 0.5}, 400, "presence_penalty"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 1000}, 400, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 1000}, 400, "max_completion_tokens"),
        ("/v1/chat/completions", {**CHAT, "temperature": 3}, 400, "temperature"),
        ("/v1/chat/completions", {**CHAT, "top_p": 1.5}, 400, "top_p"),
        ("/v1/chat/completions", {**CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ("/v1/chat/completions", {**CHAT, "stop": [""]}, 400, "stop"),
        ("/v1/chat/completions", {**CHAT, "seed": -1}, 400, "seed"),
        ("/v1/completions", {"model": "tiny"}, 400, "prompt"),
        ("/v1/completions", {**COMPLETION, "prompt": ""}, 400, "prompt"),
        ("/v1/completions", {**COMPLETION, "prompt": ["a", "b"]}, 400, "prompt"),
        ("/v1/completions", {**COMPLETION, "echo": True}, 400, "echo"),
        ("/v1/completions", {**COMPLETION, "best_of": 3}, 400, "best_of"),
        ("/v1/completions", {**COMPLETION, "suffix": "x"}, 400, "suffix"),
        ("/v1/completions", {**COMPLETION, "max_tokens": 0}, 400, "max_tokens"),
    ],
)
def test_openai_routes_reject_bad_requests(
    server: RunningServer, path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    with server.client() as client:
        error = assert_envelope(client.post(path, json=body), status)
    if param is not None:
        assert error["param"] == param
    if status == 404:
        assert error["code"] == "model_not_found"


def test_unknown_routes_and_methods_use_the_envelope(server: RunningServer) -> None:
    with server.client() as client:
        assert assert_envelope(client.get("/nowhere"), 404)["type"] == "not_found_error"
        assert_envelope(client.get("/ask"), 405)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/ask", "/v1/completions", "/v1/chat/completions"]),
    body=st.dictionaries(
        st.sampled_from(
            ["text", "prompt", "messages", "model", "max_tokens", "max_new_tokens", "temperature", "top_p", "stop"]
        )
        | st.text(max_size=8),
        json_values,
        max_size=4,
    ),
)
def test_arbitrary_json_never_gets_a_server_error(server: RunningServer, path: str, body: dict[str, Any]) -> None:
    # Generations are capped small so that the bodies that happen to be valid stay quick.
    if "max_new_tokens" not in body and path == "/ask":
        body["max_new_tokens"] = 1
    if "max_tokens" not in body and path != "/ask":
        body["max_tokens"] = 1
    body.pop("stream", None)
    with server.client() as client:
        response = client.post(path, json=body)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_envelope(response, response.status_code)
