"""What the routes share between submitting a prompt and answering: prompt building and limits, admission into the engine (429/503), waiting for a whole answer (504, disconnects) and streaming."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from kubellm.contract import BODY_BYTES_PER_TOKEN, BODY_HEADROOM
from kubellm_inference.engine import (
    FinishReason,
    GenerationEvent,
    NotAcceptingError,
    QueueFullError,
    RequestHandle,
    SamplingParams,
)
from kubellm_inference.errors import APIError
from kubellm_inference.state import ServerState, server_state

# How long a client told "queue full" or "not ready" should wait before retrying.
RETRY_AFTER_S = 1
# The event loop's own deadline sits a little after the worker's: normally the worker reports the timeout, but
# a stuck worker must not hold the client forever.
_DEADLINE_SLACK_S = 1.0

State = Annotated[ServerState, Depends(server_state)]


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


def sampling_params(
    state: ServerState,
    *,
    max_new_tokens: int | None,
    max_tokens_param: str,
    temperature: float | None,
    top_p: float | None,
    stop: tuple[str, ...] = (),
    seed: int | None = None,
    ignore_eos: bool = False,
) -> SamplingParams:
    settings = state.settings
    if max_new_tokens is None:
        # The default never exceeds the limit, even when an operator lowered only the limit.
        max_new_tokens = min(settings.default_max_new_tokens, settings.max_new_tokens)
    limit = max_new_tokens
    if limit > settings.max_new_tokens:
        raise APIError(
            400,
            f"{max_tokens_param}: {limit} is over this server's limit of {settings.max_new_tokens}",
            param=max_tokens_param,
            code="invalid_value",
        )
    return SamplingParams(
        max_new_tokens=limit,
        temperature=float(temperature if temperature is not None else settings.default_temperature),
        top_p=float(top_p if top_p is not None else 1.0),
        stop=stop,
        seed=seed,
        ignore_eos=ignore_eos,
    )


def _require_loaded(state: ServerState) -> None:
    if not state.engine.ready:
        why = "the server is shutting down" if state.engine.draining else "the model is not ready yet"
        raise APIError(503, why, code="not_ready", headers={"Retry-After": str(RETRY_AFTER_S)})


# A token is rarely longer than this many characters: a text longer than the limit's worth of them is over it.
_CHARS_PER_TOKEN_BOUND = BODY_BYTES_PER_TOKEN * BODY_HEADROOM


def _check_raw_length(state: ServerState, chars: int, param: str) -> None:
    """413 for a text far longer than the token limit allows, before anything tokenizes or renders it: a huge
    text must not occupy a thread."""
    limit = state.settings.max_input_tokens
    if chars > limit * _CHARS_PER_TOKEN_BOUND:
        raise APIError(413, f"{param} is too long (limit: {limit} tokens)", param=param, code="input_too_long")


def _check_tokens(state: ServerState, ids: list[int], param: str) -> list[int]:
    limit = state.settings.max_input_tokens
    if not ids:
        raise APIError(400, f"{param} is empty once tokenized", param=param, code="invalid_value")
    if len(ids) > limit:
        raise APIError(
            413, f"{param} has {len(ids)} tokens, over the limit of {limit}", param=param, code="input_too_long"
        )
    return ids


async def encode_prompt(state: ServerState, text: str, param: str) -> list[int]:
    """Token ids of a prompt, tokenized off the event loop; 413 when over ``max_input_tokens``."""
    _require_loaded(state)
    _check_raw_length(state, len(text), param)
    return _check_tokens(state, await asyncio.to_thread(state.engine.encode, text), param)


async def encode_chat(state: ServerState, messages: list[dict[str, str]], param: str) -> list[int]:
    """Token ids of a conversation's prompt (see ``chat_prompt``); 413 when over ``max_input_tokens``.

    The template is rendered in a thread with the tokenization (a long conversation takes the Jinja template
    seconds), after a pre-check on the raw length that needs no rendering: every message costs at least one
    token of the template's markers, so it counts as a token's worth of characters besides its content."""
    _require_loaded(state)
    _check_raw_length(state, sum(len(m["content"]) + _CHARS_PER_TOKEN_BOUND for m in messages), param)

    def render_and_encode() -> list[int]:
        prompt = chat_prompt(state, messages)
        # The same bound the route applies to a raw prompt: a template may add more than the pre-check assumed.
        _check_raw_length(state, len(prompt), param)
        return state.engine.encode(prompt)

    return _check_tokens(state, await asyncio.to_thread(render_and_encode), param)


def chat_prompt(state: ServerState, messages: list[dict[str, str]]) -> str:
    """The prompt text for a conversation: the tokenizer's chat template when it has one."""
    tokenizer = state.engine.loaded.tokenizer
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert isinstance(prompt, str)
        return prompt
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])


def submit(state: ServerState, prompt_ids: list[int], params: SamplingParams) -> RequestHandle:
    """Queue a generation; 503 while loading or draining, 429 with Retry-After when the queue is full."""
    handle = RequestHandle(asyncio.get_running_loop())
    deadline = time.monotonic() + state.settings.request_timeout_s
    try:
        handle.request = state.engine.submit(prompt_ids, params, deadline, handle.sink)
    except QueueFullError as error:
        raise APIError(
            429, f"{error}; retry later", code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)}
        ) from error
    except NotAcceptingError as error:
        raise APIError(503, str(error), code="not_ready", headers={"Retry-After": str(RETRY_AFTER_S)}) from error
    return handle


def _finish_error(event: GenerationEvent) -> APIError | None:
    """The error a finished generation maps to, if it did not end normally."""
    reason = event.finish_reason
    if reason is FinishReason.timeout:
        return APIError(504, event.error or "the request's deadline passed", code="deadline_exceeded")
    if reason is FinishReason.shutdown:
        return APIError(503, event.error or "the server is shutting down", code="shutting_down")
    if reason is FinishReason.error:
        return APIError(500, f"generation failed: {event.error}", code="generation_failed")
    return None


async def _next_event(state: ServerState, handle: RequestHandle) -> GenerationEvent:
    if not handle.events.empty():
        # The common case while streaming: the worker is ahead; no timer needed.
        return handle.events.get_nowait()
    request = handle.request
    assert request is not None
    remaining = request.deadline + _DEADLINE_SLACK_S - time.monotonic()
    try:
        return await asyncio.wait_for(handle.events.get(), timeout=max(remaining, 0.0))
    except TimeoutError:
        handle.cancel()
        return GenerationEvent(text="", finish_reason=FinishReason.timeout, error="the request's deadline passed")


async def events(state: ServerState, handle: RequestHandle) -> AsyncIterator[GenerationEvent]:
    """A request's events until its last one; leaving early (a disconnect) cancels its generation."""
    try:
        while True:
            event = await _next_event(state, handle)
            yield event
            if event.finish_reason is not None:
                return
    finally:
        # Normal end: a no-op. A cancelled stream or an abandoned wait: the worker drops the row.
        handle.cancel()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def complete(state: ServerState, handle: RequestHandle, request: Request) -> Completion:
    """Wait for the whole answer while watching for the client to leave (which frees its batch slot)."""

    async def collect() -> Completion:
        parts: list[str] = []
        async for event in events(state, handle):
            parts.append(event.text)
            if event.finish_reason is not None:
                error = _finish_error(event)
                if error is not None:
                    raise error
                return Completion("".join(parts), event.finish_reason, event.prompt_tokens, event.completion_tokens)
        raise AssertionError("the event stream ended without a finish event")

    collecting = asyncio.ensure_future(collect())
    disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({collecting, disconnected}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnected.cancel()
    if not collecting.done():
        collecting.cancel()
        handle.cancel()
        # 499 in nginx's sense: nobody reads this answer; it only shows up in the access log and metrics.
        raise APIError(499, "the client closed the connection", code="client_closed")
    return collecting.result()


async def first_event(state: ServerState, handle: RequestHandle, request: Request) -> GenerationEvent:
    """Wait for a stream's first event before the status line goes out, so that a request that times out in
    the queue still gets its 504 (and a client that leaves while queued frees its place)."""
    waiting = asyncio.ensure_future(_next_event(state, handle))
    disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({waiting, disconnected}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnected.cancel()
    if not waiting.done():
        waiting.cancel()
        handle.cancel()
        raise APIError(499, "the client closed the connection", code="client_closed")
    event = waiting.result()
    error = _finish_error(event)
    if error is not None:
        raise error
    return event


async def stream_events(
    state: ServerState, handle: RequestHandle, first: GenerationEvent
) -> AsyncIterator[GenerationEvent]:
    """``first`` and then the rest of a request's events; see ``events``."""
    yield first
    if first.finish_reason is None:
        async for event in events(state, handle):
            yield event
    else:
        handle.cancel()


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event; a string payload is sent as is (the ``[DONE]`` sentinel)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def stream_error(event: GenerationEvent) -> bytes | None:
    """An error event for a stream that cannot end normally (the status line has already gone out)."""
    error = _finish_error(event)
    return sse(error.body()) if error is not None else None


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def finish_reason_name(reason: FinishReason) -> str:
    """OpenAI's finish_reason for a normal end."""
    return "length" if reason is FinishReason.length else "stop"
