"""OpenAPI documents."""

from __future__ import annotations

from typing import Any

JsonObject = dict[str, Any]


def openapi_document(store: Any, path: str, query: Any) -> JsonObject | None:
    return None
