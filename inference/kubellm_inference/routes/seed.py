"""The seed's API: ``POST /ask {"text": ...}`` answers ``{"response": ...}``.

With ``"stream": true`` the answer comes as server-sent events ``data: {"response": "<more text>"}``, the last
one carrying ``finish_reason``, then ``data: [DONE]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from kubellm_inference import generation
from kubellm_inference.generation import State
from kubellm_inference.schemas import AskRequest, AskResponse

# Access (the API key) is checked before the body is read, by guard.RequestGuard.
router = APIRouter()


@router.post("/ask", response_model=AskResponse)
async def ask(body: AskRequest, request: Request, state: State) -> AskResponse | StreamingResponse:
    params = generation.sampling_params(
        state,
        max_new_tokens=body.max_new_tokens,
        max_tokens_param="max_new_tokens",
        temperature=body.temperature,
        top_p=body.top_p,
    )
    prompt_ids = await generation.encode_chat(state, [{"role": "user", "content": body.text}], "text")
    handle = generation.submit(state, prompt_ids, params)
    if not body.stream:
        completion = await generation.complete(state, handle, request)
        return AskResponse(response=completion.text)
    first = await generation.first_event(state, handle, request)

    async def chunks() -> AsyncIterator[bytes]:
        async for event in generation.stream_events(state, handle, first):
            if event.finish_reason is None:
                yield generation.sse({"response": event.text})
                continue
            error = generation.stream_error(event)
            if error is not None:
                yield error
            else:
                reason = generation.finish_reason_name(event.finish_reason)
                yield generation.sse({"response": event.text, "finish_reason": reason})
            yield generation.sse("[DONE]")

    return StreamingResponse(chunks(), media_type="text/event-stream", headers=generation.SSE_HEADERS)
