"""Request and response bodies of the seed API (/ask) and the OpenAI-compatible API (/v1).

Validation lives here, not in the handlers: unknown fields are refused by name (``extra="forbid"``), types are
strict (a number is not a string), ranges are checked. Limits that depend on the server's settings (the
largest ``max_tokens``, the input length) are checked by ``generation.sampling_params``.

Every list and string has an upper bound, so that no field makes the server do unbounded work before the token
limit applies: the body cap (``guard.RequestGuard``) bounds the bytes, these bound what the bytes may hold.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

Temperature = Annotated[StrictFloat | StrictInt, Field(ge=0.0, le=2.0)]
TopP = Annotated[StrictFloat | StrictInt, Field(gt=0.0, le=1.0)]
TokenCount = Annotated[StrictInt, Field(ge=1)]
Seed = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]

# OpenAI's own limit on a conversation's messages (its API refuses more with "array too long").
MAX_MESSAGES = 2048
# One text field (a prompt, a message's content): far past any context this server is configured for, so the
# token limit decides (413); this bound only keeps a raised body cap from admitting unbounded text.
MAX_TEXT_CHARS = 1 << 20
MAX_CONTENT_PARTS = 64
MAX_STOP_SEQUENCES = 4
# A stop string is compared against the text generated so far at every step, and text that may still grow into
# one is held back from the stream: a long one costs every step and delays the stream by its length.
MAX_STOP_CHARS = 256
# Names: the model id, a message's name, the end-user id.
MAX_NAME_CHARS = 256

Text = Annotated[StrictStr, Field(max_length=MAX_TEXT_CHARS)]
Name = Annotated[StrictStr, Field(max_length=MAX_NAME_CHARS)]
StopString = Annotated[StrictStr, Field(max_length=MAX_STOP_CHARS)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AskRequest(_Request):
    """The seed's request, ``{"text": ...}``, plus optional generation controls."""

    text: Text = Field(min_length=1)
    max_new_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: StrictBool = False


class AskResponse(BaseModel):
    response: str


class StreamOptions(_Request):
    include_usage: StrictBool = False


def _check_stop(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if any(not s for s in stops):
        raise ValueError("stop sequences must not be empty")
    return tuple(stops)


class OpenAIRequestBase(_Request):
    """Fields the chat and the text completion requests share."""

    model: Name = Field(min_length=1)
    max_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Literal[1] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: Seed | None = None
    user: Name | None = None
    # Accepted only at their neutral value: the server has no penalties.
    presence_penalty: StrictFloat | StrictInt | None = None
    frequency_penalty: StrictFloat | StrictInt | None = None
    # vLLM's extension: keep generating past the end-of-sequence token (benchmarks force a length with it).
    ignore_eos: StrictBool = False

    @field_validator("stop")
    @classmethod
    def _stop_sequences(cls, value: str | list[str] | None) -> str | list[str] | None:
        _check_stop(value)
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalties(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("penalties are not supported by this server; send 0 or leave it out")
        return value

    def stop_sequences(self) -> tuple[str, ...]:
        return _check_stop(self.stop)


class TextPart(_Request):
    type: Literal["text"]
    text: Text


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant", "developer"]
    content: Text | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)]
    name: Name | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(OpenAIRequestBase):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: TokenCount | None = None
    logprobs: Literal[False] | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(OpenAIRequestBase):
    # One prompt per request: a list is accepted when it holds exactly one string.
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]
    echo: Literal[False] | None = None
    logprobs: None = None
    suffix: None = None
    best_of: Literal[1] | None = None

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        if not (value if isinstance(value, str) else value[0]):
            raise ValueError("the prompt must not be empty")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def token_limit(self) -> int | None:
        return self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kubellm"
    # kubellm's own fields (OpenAI clients ignore unknown ones); absent while the model is still loading.
    dtype: str | None = Field(None, description="The dtype the weights are served in (what `auto` resolved to)")
    quantization: str | None = Field(None, description="Weight-only quantization: none, int8 or int4")
    compile: str | None = Field(None, description="The compile setting: auto or off")
    step: str | None = Field(None, description="The decode step serving now: eager, or compiled once built")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
