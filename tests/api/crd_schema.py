"""Validate an object the way the apiserver validates an LLMService against the committed CRD, without one.

Three of the apiserver's steps, done here with real libraries: defaulting from the schema, JSON-schema
validation of the structural schema (nullable and int-or-string translated; unknown fields rejected as
`kubectl apply`'s strict field validation does), and the `x-kubernetes-validations` CEL rules, evaluated with
the `cel` package plus the Kubernetes `quantity()` library the StorageSpec rule uses.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import cel
import jsonschema
import yaml

from kubellm.quantity import parse_quantity
from kubellm_operator.api import format_path

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "kubellm.dev_llmservices.yaml"


@cache
def committed_crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return loaded


def open_api_schema() -> dict[str, Any]:
    schema: dict[str, Any] = committed_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A structural OpenAPI v3 schema node as JSON Schema (draft 2020-12)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_json_schema(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key == "anyOf":
            out[key] = [to_json_schema(member) for member in value]
        elif key == "nullable" or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = value
    if node.get("nullable"):
        if "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
        else:
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _walk(schema: dict[str, Any], value: Any, path: tuple[str | int, ...]) -> Any:
    """Yield (schema, value, path) for every node of `value` the schema describes, parents first."""
    yield schema, value, path
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                yield from _walk(child, value[name], (*path, name))
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from _walk(schema["items"], item, (*path, index))


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """The apiserver's defaulting: a missing property with a default gets it, below every present object."""
    value = copy.deepcopy(value)
    for node, item, _ in _walk(schema, value, ()):
        if isinstance(item, dict):
            for name, child in node.get("properties", {}).items():
                if name not in item and "default" in child:
                    item[name] = copy.deepcopy(child["default"])
    return value


def _quantity(text: str) -> dict[str, str]:
    return {"quantity": str(parse_quantity(text))}


def _compare_to(left: dict[str, str], right: dict[str, str]) -> int:
    a, b = Decimal(left["quantity"]), Decimal(right["quantity"])
    return (a > b) - (a < b)


def cel_errors(schema: dict[str, Any], value: Any) -> list[tuple[str, str]]:
    """(field path, message) for every failing x-kubernetes-validations rule, and duplicate list-map keys."""
    errors: list[tuple[str, str]] = []
    for node, item, path in _walk(schema, value, ()):
        if node.get("x-kubernetes-list-type") == "map" and isinstance(item, list):
            keys = [tuple(entry.get(k) for k in node["x-kubernetes-list-map-keys"]) for entry in item]
            for index, key in enumerate(keys):
                if key in keys[:index]:
                    errors.append((format_path((*path, index)), f"Duplicate value: {key}"))
        for rule in node.get("x-kubernetes-validations", []):
            context = cel.Context(variables={"self": item}, functions={"quantity": _quantity, "compareTo": _compare_to})
            if cel.evaluate(rule["rule"], context) is not True:
                field = format_path(path) + rule.get("fieldPath", "")
                errors.append((field, rule["message"]))
    return errors


def crd_errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """Everything the apiserver (with strict field validation) would reject in `doc`, as (path, message)."""
    schema = open_api_schema()
    defaulted = apply_defaults(schema, doc)
    json_schema = to_json_schema(schema)
    # ObjectMeta is validated by the apiserver itself; the CRD only narrows metadata.name.
    del json_schema["properties"]["metadata"]["additionalProperties"]
    validator = jsonschema.Draft202012Validator(json_schema)
    structural = [(format_path(tuple(e.absolute_path)), e.message) for e in validator.iter_errors(defaulted)]
    if structural:  # the apiserver runs CEL only on objects that passed the schema
        return structural
    return cel_errors(schema, defaulted)
