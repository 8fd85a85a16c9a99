"""The OpenAI-compatible API: ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``.

Answers have OpenAI's shapes (ids, ``usage``, ``finish_reason``); ``stream: true`` sends ``data: {chunk}``
server-sent events and ``data: [DONE]``, with a final usage chunk when ``stream_options.include_usage`` is set.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from kubellm_inference import generation
from kubellm_inference.engine import NotAcceptingError, RequestHandle
from kubellm_inference.errors import APIError
from kubellm_inference.generation import State
from kubellm_inference.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    OpenAIRequestBase,
    Usage,
)
from kubellm_inference.state import ServerState

# Access (the API key) is checked before the body is read, by guard.RequestGuard.
router = APIRouter(prefix="/v1")


@router.get("/models", response_model=ModelList)
async def list_models(state: State) -> ModelList:
    return ModelList(data=[_model_card(state)])


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, state: State) -> ModelCard:
    _check_model(state, model_id)
    return _model_card(state)


def _model_card(state: ServerState) -> ModelCard:
    card = ModelCard(id=state.settings.model_id, created=state.started_at)
    try:
        loaded = state.engine.loaded
    except NotAcceptingError:
        return card  # still loading: the precision is not known yet
    card.dtype, card.quantization = loaded.dtype_name, loaded.quantization.value
    card.compile, card.step = state.settings.compile.value, state.engine.step.value
    return card


def _check_model(state: ServerState, model: str) -> None:
    if model != state.settings.model_id:
        raise APIError(
            404,
            f"model {model!r} is not served here; this server serves {state.settings.model_id!r}",
            param="model",
            code="model_not_found",
        )


def _params(state: ServerState, body: OpenAIRequestBase, limit: int | None, limit_param: str) -> Any:
    return generation.sampling_params(
        state,
        max_new_tokens=limit,
        max_tokens_param=limit_param,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_sequences(),
        seed=body.seed,
        ignore_eos=body.ignore_eos,
    )


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    ).model_dump()


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: State) -> Any:
    _check_model(state, body.model)
    limit_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    params = _params(state, body, body.token_limit(), limit_param)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    prompt_ids = await generation.encode_chat(state, messages, "messages")
    handle = generation.submit(state, prompt_ids, params)
    answer_id, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), state.settings.model_id

    if not body.stream:
        completion = await generation.complete(state, handle, request)
        return {
            "id": answer_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "logprobs": None,
                    "finish_reason": generation.finish_reason_name(completion.finish_reason),
                }
            ],
            "usage": _usage(completion.prompt_tokens, completion.completion_tokens),
        }

    def chunk(delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": answer_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    first_chunk = chunk({"role": "assistant", "content": ""}, None)
    return await _stream(
        state, handle, request, body, first_chunk, lambda text, reason: chunk({"content": text} if text else {}, reason)
    )


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, state: State) -> Any:
    _check_model(state, body.model)
    params = _params(state, body, body.token_limit(), "max_tokens")
    prompt_ids = await generation.encode_prompt(state, body.prompt_text(), "prompt")
    handle = generation.submit(state, prompt_ids, params)
    answer_id, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), state.settings.model_id

    def answer(text: str, finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": answer_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        }

    if not body.stream:
        completion = await generation.complete(state, handle, request)
        result = answer(completion.text, generation.finish_reason_name(completion.finish_reason))
        result["usage"] = _usage(completion.prompt_tokens, completion.completion_tokens)
        return result
    return await _stream(state, handle, request, body, None, answer)


async def _stream(
    state: ServerState,
    handle: RequestHandle,
    request: Request,
    body: OpenAIRequestBase,
    opening: dict[str, Any] | None,
    make_chunk: Callable[[str, str | None], dict[str, Any]],
) -> StreamingResponse:
    first = await generation.first_event(state, handle, request)
    include_usage = body.stream_options is not None and body.stream_options.include_usage

    async def chunks() -> AsyncIterator[bytes]:
        if opening is not None:
            yield generation.sse(opening)
        async for event in generation.stream_events(state, handle, first):
            if event.finish_reason is None:
                yield generation.sse(make_chunk(event.text, None))
                continue
            error = generation.stream_error(event)
            if error is not None:
                yield error
                yield generation.sse("[DONE]")
                return
            if event.text:
                yield generation.sse(make_chunk(event.text, None))
            yield generation.sse(make_chunk("", generation.finish_reason_name(event.finish_reason)))
            if include_usage:
                usage_chunk = make_chunk("", None)
                usage_chunk["choices"] = []
                usage_chunk["usage"] = _usage(event.prompt_tokens, event.completion_tokens)
                yield generation.sse(usage_chunk)
            yield generation.sse("[DONE]")

    return StreamingResponse(chunks(), media_type="text/event-stream", headers=generation.SSE_HEADERS)
