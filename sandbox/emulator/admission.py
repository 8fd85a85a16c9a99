"""Admission of custom resources: structural-schema defaulting, pruning and validation, CEL rules."""

from __future__ import annotations

from typing import Any

from kubellm_sandbox.emulator.resources import ResourceType

JsonObject = dict[str, Any]


def admit_custom_resource(rtype: ResourceType, obj: JsonObject, old: JsonObject | None) -> JsonObject:
    return obj


def unknown_fields(schema: JsonObject, obj: JsonObject) -> list[str]:
    return []
