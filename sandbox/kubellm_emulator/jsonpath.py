"""The subset of kubectl's JSONPath that CRD printer columns use: `.a.b`, `[0]`, `[*]`, `[?(@.type=="Ready")].x`."""

from __future__ import annotations

import json
import re
from typing import Any

_TOKEN = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_\-$]+)"""
    r"""|\[(?P<index>-?\d+)\]"""
    r"""|\[(?P<star>\*)\]"""
    r"""|\['(?P<quoted>[^']*)'\]"""
    r"""|\[\?\(@(?P<path>(?:\.[A-Za-z0-9_\-]+)+)\s*(?P<op>==|!=)\s*(?P<literal>"[^"]*"|'[^']*'|-?\d+(?:\.\d+)?|true|false)\s*\)\]"""
)


class JsonPathError(ValueError):
    pass


def _parse(expression: str) -> list[re.Match[str]]:
    text = expression.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    text = text.removeprefix("$")
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise JsonPathError(f"unsupported JSONPath {expression!r} at {text[position:]!r}")
        tokens.append(match)
        position = match.end()
    return tokens


def _literal(text: str) -> Any:
    if text[0] in "\"'":
        return text[1:-1]
    return json.loads(text)


def _dig(value: Any, dotted: str) -> Any:
    for part in dotted.strip(".").split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def evaluate(expression: str, document: Any) -> list[Any]:
    """All values the expression selects (an empty list when a step finds nothing)."""
    current = [document]
    for token in _parse(expression):
        selected: list[Any] = []
        for value in current:
            if token["field"] is not None or token["quoted"] is not None:
                key = token["field"] if token["field"] is not None else token["quoted"]
                if isinstance(value, dict) and key in value:
                    selected.append(value[key])
            elif token["index"] is not None:
                index = int(token["index"])
                if isinstance(value, list) and -len(value) <= index < len(value):
                    selected.append(value[index])
            elif token["star"] is not None:
                if isinstance(value, list):
                    selected.extend(value)
                elif isinstance(value, dict):
                    selected.extend(value.values())
            else:
                wanted, equal = _literal(token["literal"]), token["op"] == "=="
                if isinstance(value, list):
                    selected.extend(
                        item
                        for item in value
                        if isinstance(item, dict) and (_dig(item, token["path"]) == wanted) is equal
                    )
        current = selected
    return current
