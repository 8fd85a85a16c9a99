"""The error envelope every kubellm HTTP component answers with (the inference server, the gateway), in OpenAI's
shape so that its clients parse it too: ``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``.

It lives in the shared package so that the gateway, which ships in the operator image, uses the server's envelope
without the inference package.
"""

from __future__ import annotations

from typing import Any

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
