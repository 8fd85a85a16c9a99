"""Table responses for `kubectl get`."""

from __future__ import annotations

from typing import Any

from kubellm_sandbox.emulator.resources import ResourceType

JsonObject = dict[str, Any]


def render_table(rtype: ResourceType, items: list[JsonObject], *, list_metadata: JsonObject) -> JsonObject:
    raise NotImplementedError
