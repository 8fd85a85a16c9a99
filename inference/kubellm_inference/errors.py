"""One JSON error envelope for every 4xx and 5xx answer, in OpenAI's shape so that its clients parse it too:
``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kubellm.envelope import error_body

log = logging.getLogger(__name__)


class APIError(Exception):
    """An answer other than success; raised anywhere in a request, rendered by the handler below."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


_FIELD_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})


def _field_path(loc: Sequence[Any]) -> list[str]:
    """A pydantic error location without "body" and without the union member tags ("str", "list[str]") that
    pydantic inserts: what a client calls the field."""
    path: list[str] = []
    for part in loc:
        if isinstance(part, int) or (part != "body" and _FIELD_NAME.match(str(part)) and part not in _TYPE_TAGS):
            path.append(str(part))
    return path


def _most_telling(errors: Sequence[Any]) -> dict[str, Any]:
    """The error to report: the first, unless it is a union member's type mismatch and another member of the
    same field says something more specific (a list that is too long rather than "not a string")."""
    if not errors:
        return {}
    first: dict[str, Any] = dict(errors[0])
    if not str(first.get("type", "")).endswith("_type"):
        return first
    prefix = _field_path(first.get("loc", ()))
    for other in errors[1:]:
        same_field = _field_path(other.get("loc", ()))[: len(prefix)] == prefix
        if same_field and not str(other.get("type", "")).endswith("_type"):
            return dict(other)
    return first


def describe_validation_error(errors: Sequence[Any]) -> APIError:
    """A pydantic error as a 400 that names the field and says what is wrong with it."""
    first = _most_telling(errors)
    loc = _field_path(first.get("loc", ()))
    param = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return APIError(400, "the request body is not valid JSON", code="invalid_json")
    if kind == "model_attributes_type" and not loc and isinstance(first.get("input"), bytes):
        # FastAPI hands over the raw bytes when the Content-Type is neither absent nor JSON.
        return APIError(
            400, "the request body must be JSON, sent with Content-Type: application/json", code="invalid_body"
        )
    if kind in {"model_attributes_type", "dict_type", "model_type"} and not loc:
        return APIError(400, "the request body must be a JSON object", code="invalid_body")
    if kind == "missing" and not loc:
        return APIError(400, "the request needs a JSON body", code="invalid_body")
    if kind == "extra_forbidden":
        return APIError(400, f"unsupported parameter {param!r}", param=param, code="unsupported_parameter")
    if kind == "missing":
        return APIError(400, f"{param} is required", param=param, code="missing_field")
    message = first.get("msg", "invalid value")
    # pydantic prefixes custom errors with "Value error, "; the rest is our own sentence.
    message = message.removeprefix("Value error, ")
    return APIError(400, f"{param}: {message}" if param else message, param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, APIError)
        return error.response()

    async def on_validation_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return describe_validation_error(error.errors()).response()

    async def on_http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return APIError(
            error.status_code,
            message.get(error.status_code, str(error.detail)),
            headers=error.headers,
        ).response()

    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(500, "internal server error; the server log has the details").response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
