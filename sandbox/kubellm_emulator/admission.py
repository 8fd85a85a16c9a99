"""Admission of custom resources against their CRD's structural schema, as the apiextensions apiserver does it.

Order: drop nulls of non-nullable fields, prune unknown fields (unless `x-kubernetes-preserve-unknown-fields`),
apply defaults, validate (types, int-or-string, enum, bounds, lengths, patterns, required, list types) and evaluate the
`x-kubernetes-validations` CEL rules with the Kubernetes CEL extensions kubellm uses (`quantity()`, `isQuantity()`).
A rejection is the apiserver's 422: `Kind.group "name" is invalid: spec.replicas: Invalid value: -1: ...`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import re
from decimal import Decimal
from typing import Any

import cel

from kubellm.quantity import parse_quantity
from kubellm_emulator import errors
from kubellm_emulator.errors import FieldError, render_value
from kubellm_emulator.resources import ResourceType

JsonObject = dict[str, Any]
_ROOT_KEPT = ("apiVersion", "kind", "metadata")
_QUANTITY_TAG = "\x00quantity:"


# ---------------------------------------------------------------------------------------------------------------
# Pruning and defaulting


def _schema_type(schema: JsonObject) -> str | None:
    kind = schema.get("type")
    return kind if isinstance(kind, str) else None


def _is_object_schema(schema: JsonObject) -> bool:
    return _schema_type(schema) == "object" or "properties" in schema or "additionalProperties" in schema


def _prune(value: Any, schema: JsonObject, path: str, dropped: list[str], *, root: bool = False) -> Any:
    """Removes unknown fields and nulls of non-nullable fields; `dropped` collects the unknown fields' paths."""
    if isinstance(value, dict) and _is_object_schema(schema):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
        embedded = schema.get("x-kubernetes-embedded-resource") is True
        for key in list(value):
            child_path = f"{path}.{key}" if path else key
            if (root or embedded) and key in _ROOT_KEPT:
                continue
            if key in properties:
                child_schema = properties[key]
            elif isinstance(additional, dict):
                child_schema = additional
                child_path = f"{path}[{key}]"
            elif preserve or additional is True:
                continue
            else:
                dropped.append(child_path)
                del value[key]
                continue
            if value[key] is None and not child_schema.get("nullable"):
                del value[key]  # the apiserver drops nulls of non-nullable fields before defaulting
                continue
            value[key] = _prune(value[key], child_schema, child_path, dropped)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_prune(item, schema["items"], f"{path}[{index}]", dropped) for index, item in enumerate(value)]
    return value


def _default(value: Any, schema: JsonObject) -> Any:
    if isinstance(value, dict) and _is_object_schema(schema):
        for key, child_schema in (schema.get("properties") or {}).items():
            if key not in value and "default" in child_schema:
                value[key] = copy.deepcopy(child_schema["default"])
            if key in value:
                value[key] = _default(value[key], child_schema)
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            properties = schema.get("properties") or {}
            for key in value:
                if key not in properties:
                    value[key] = _default(value[key], additional)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_default(item, schema["items"]) for item in value]
    return value


def unknown_fields(schema: JsonObject, obj: JsonObject) -> list[str]:
    """The fields that pruning would drop (what `fieldValidation=Strict` rejects)."""
    dropped: list[str] = []
    _prune(copy.deepcopy(obj), schema, "", dropped, root=True)
    return dropped


# ---------------------------------------------------------------------------------------------------------------
# Validation


_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _type_matches(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    return True


def _validate(value: Any, schema: JsonObject, path: str, problems: list[FieldError]) -> bool:
    """Appends what is wrong with `value`; False when its type is wrong (nested checks are then skipped)."""
    if value is None:
        if not schema.get("nullable"):
            problems.append(
                FieldError(
                    path,
                    "Invalid value",
                    f'{path} in body must be of type {schema.get("type", "object")}: "null"',
                    "null",
                )
            )
            return False
        return True
    kind = _schema_type(schema)
    if schema.get("x-kubernetes-int-or-string"):
        if not _type_matches(value, "integer") and not isinstance(value, str):
            problems.append(
                FieldError(
                    path,
                    "Invalid value",
                    f'{path} in body must be of type integer,string: "{_json_type(value)}"',
                    _json_type(value),
                )
            )
            return False
    elif kind is not None and not _type_matches(value, kind):
        problems.append(
            FieldError(
                path,
                "Invalid value",
                f'{path} in body must be of type {kind}: "{_json_type(value)}"',
                _json_type(value),
            )
        )
        return False
    enum = schema.get("enum")
    if enum is not None and value not in enum:
        supported = ", ".join(render_value(option) for option in enum)
        problems.append(FieldError(path, "Unsupported value", f"supported values: {supported}", value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_bounds(value, schema, path, problems)
    if isinstance(value, str):
        _check_string(value, schema, path, problems)
    if isinstance(value, list):
        _check_array(value, schema, path, problems)
    if isinstance(value, dict):
        _check_object(value, schema, path, problems)
    for combinator in ("allOf", "anyOf", "oneOf"):
        _check_combinator(value, schema.get(combinator), combinator, path, problems)
    if isinstance(schema.get("not"), dict):
        probe: list[FieldError] = []
        _validate(value, schema["not"], path, probe)
        if not probe:
            problems.append(
                FieldError(path, "Invalid value", f"{path} in body must not validate the schema (not)", value)
            )
    return True


def _check_bounds(value: float, schema: JsonObject, path: str, problems: list[FieldError]) -> None:
    minimum, maximum = schema.get("minimum"), schema.get("maximum")
    if minimum is not None:
        if schema.get("exclusiveMinimum") and value <= minimum:
            problems.append(
                FieldError(path, "Invalid value", f"{path} in body should be greater than {minimum}", value)
            )
        elif value < minimum:
            problems.append(
                FieldError(path, "Invalid value", f"{path} in body should be greater than or equal to {minimum}", value)
            )
    if maximum is not None:
        if schema.get("exclusiveMaximum") and value >= maximum:
            problems.append(FieldError(path, "Invalid value", f"{path} in body should be less than {maximum}", value))
        elif value > maximum:
            problems.append(
                FieldError(path, "Invalid value", f"{path} in body should be less than or equal to {maximum}", value)
            )
    multiple = schema.get("multipleOf")
    if multiple and Decimal(str(value)) % Decimal(str(multiple)):
        problems.append(FieldError(path, "Invalid value", f"{path} in body should be a multiple of {multiple}", value))


@functools.lru_cache(maxsize=512)
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


def _check_string(value: str, schema: JsonObject, path: str, problems: list[FieldError]) -> None:
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        problems.append(
            FieldError(path, "Too long", f"may not be more than {schema['maxLength']} bytes", value, show_value=False)
        )
    if "minLength" in schema and len(value) < schema["minLength"]:
        problems.append(
            FieldError(
                path, "Invalid value", f"{path} in body should be at least {schema['minLength']} chars long", value
            )
        )
    if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
        problems.append(FieldError(path, "Invalid value", f"{path} in body should match '{schema['pattern']}'", value))


def _check_array(value: list[Any], schema: JsonObject, path: str, problems: list[FieldError]) -> None:
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        problems.append(FieldError(path, "Too many", f"must have at most {schema['maxItems']} items", len(value)))
    if "minItems" in schema and len(value) < schema["minItems"]:
        problems.append(
            FieldError(
                path, "Invalid value", f"{path} in body should have at least {schema['minItems']} items", len(value)
            )
        )
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen: set[str] = set()
        for index, item in enumerate(value):
            if isinstance(item, dict):
                identity = json.dumps([item.get(key) for key in keys])
                if identity in seen:
                    shown = json.dumps({key: item.get(key) for key in keys}, separators=(",", ":"))
                    problems.append(FieldError(f"{path}[{index}]", "Duplicate value", "", shown, show_value=True))
                seen.add(identity)
    elif list_type == "set" or schema.get("uniqueItems"):
        seen_items: list[Any] = []
        for index, item in enumerate(value):
            if item in seen_items:
                problems.append(FieldError(f"{path}[{index}]", "Duplicate value", "", item))
            seen_items.append(item)
    items = schema.get("items")
    if isinstance(items, dict):
        for index, item in enumerate(value):
            _validate(item, items, f"{path}[{index}]", problems)


def _check_object(value: JsonObject, schema: JsonObject, path: str, problems: list[FieldError]) -> None:
    for required in schema.get("required") or []:
        if required not in value:
            problems.append(FieldError(f"{path}.{required}" if path else required, "Required value", ""))
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        problems.append(FieldError(path, "Too many", f"must have at most {schema['maxProperties']} items", len(value)))
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        problems.append(
            FieldError(
                path,
                "Invalid value",
                f"{path} in body should have at least {schema['minProperties']} properties",
                len(value),
            )
        )
    properties = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    for key, child in value.items():
        if not path and key == "metadata" and isinstance(child, dict):
            # A CRD may restrict only metadata.name and metadata.generateName; other metadata is not its business.
            declared = (properties.get("metadata") or {}).get("properties") or {}
            for field in ("name", "generateName"):
                if field in declared and field in child:
                    _validate(child[field], declared[field], f"metadata.{field}", problems)
            continue
        if not path and key in _ROOT_KEPT:
            continue
        if key in properties:
            _validate(child, properties[key], f"{path}.{key}" if path else key, problems)
        elif isinstance(additional, dict):
            _validate(child, additional, f"{path}[{key}]", problems)


def _check_combinator(value: Any, options: Any, combinator: str, path: str, problems: list[FieldError]) -> None:
    if not isinstance(options, list) or not options:
        return
    outcomes = []
    for option in options:
        probe: list[FieldError] = []
        # Only value validations may sit under a structural schema's combinators: types there are informative.
        _validate(
            value, {k: v for k, v in option.items() if k != "type"} if combinator != "allOf" else option, path, probe
        )
        outcomes.append(probe)
    if combinator == "allOf":
        for probe in outcomes:
            problems.extend(probe)
    elif combinator == "anyOf" and all(outcomes):
        problems.extend(outcomes[0])
    elif combinator == "oneOf" and sum(1 for probe in outcomes if not probe) != 1:
        problems.append(
            FieldError(path, "Invalid value", f"{path} in body must validate one and only one schema (oneOf)", value)
        )


# ---------------------------------------------------------------------------------------------------------------
# CEL rules (x-kubernetes-validations)


def _quantity(text: Any) -> str:
    parse_quantity(str(text))
    return _QUANTITY_TAG + str(text)


def _untag(value: Any) -> Decimal:
    if isinstance(value, str) and value.startswith(_QUANTITY_TAG):
        return parse_quantity(value[len(_QUANTITY_TAG) :])
    raise ValueError(f"{value!r} is not a quantity")


def _is_quantity(text: Any) -> bool:
    try:
        parse_quantity(str(text))
    except ValueError:
        return False
    return True


def _compare(left: Any, right: Any) -> int:
    a, b = _untag(left), _untag(right)
    return (a > b) - (a < b)


def _cel_context(variables: JsonObject) -> cel.Context:
    context = cel.Context()
    context.add_function("quantity", _quantity)
    context.add_function("isQuantity", _is_quantity)
    context.add_function("compareTo", _compare)
    context.add_function("isGreaterThan", lambda a, b: _compare(a, b) > 0)
    context.add_function("isLessThan", lambda a, b: _compare(a, b) < 0)
    context.add_function("asInteger", lambda a: int(_untag(a)))
    context.add_function("asApproximateFloat", lambda a: float(_untag(a)))
    context.add_function("isInteger", lambda a: _untag(a) % 1 == 0)
    context.add_function("sign", lambda a: (_untag(a) > 0) - (_untag(a) < 0))
    context.add_function("add", lambda a, b: _QUANTITY_TAG + str(_untag(a) + (_untag(b) if isinstance(b, str) else b)))
    context.add_function("sub", lambda a, b: _QUANTITY_TAG + str(_untag(a) - (_untag(b) if isinstance(b, str) else b)))
    for name, value in variables.items():
        context.add_variable(name, value)
    return context


@functools.lru_cache(maxsize=1024)
def _program(rule: str) -> Any:
    return cel.compile(rule)


def _rule_path(path: str, field_path: str | None) -> str:
    if not field_path:
        return path
    suffix = field_path if field_path.startswith((".", "[")) else f".{field_path}"
    return f"{path}{suffix}" if path else suffix.lstrip(".")


def _run_rules(value: Any, old: Any, schema: JsonObject, path: str, problems: list[FieldError]) -> None:
    for rule in schema.get("x-kubernetes-validations") or []:
        source = rule.get("rule", "")
        uses_old = "oldSelf" in source
        if uses_old and old is None and not rule.get("optionalOldSelf"):
            continue  # transition rules apply to updates only
        variables: JsonObject = {"self": value}
        if uses_old:
            variables["oldSelf"] = old
        shown = "object" if isinstance(value, dict) else ("array" if isinstance(value, list) else value)
        target = _rule_path(path, rule.get("fieldPath"))
        try:
            passed = _program(source).execute(_cel_context(variables))
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            problems.append(
                FieldError(target or "<root>", "Invalid value", f"{error} evaluating rule: {source}", shown)
            )
            continue
        if passed is True:
            continue
        message = rule.get("message") or f"failed rule: {source}"
        if rule.get("messageExpression"):
            with contextlib.suppress(KeyError, ValueError, TypeError, RuntimeError):
                message = str(_program(rule["messageExpression"]).execute(_cel_context(variables)))
        reason = {"FieldValueForbidden": "Forbidden", "FieldValueRequired": "Required value"}.get(
            rule.get("reason", "")
        )
        if reason is not None:
            problems.append(FieldError(target, reason, message))
        else:
            problems.append(FieldError(target or "<root>", "Invalid value", message, shown))


def _walk_rules(value: Any, old: Any, schema: JsonObject, path: str, problems: list[FieldError]) -> None:
    if value is None:
        return
    _run_rules(value, old, schema, path, problems)
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, child in value.items():
            if not path and key in _ROOT_KEPT:
                continue
            old_child = old.get(key) if isinstance(old, dict) else None
            if key in properties:
                _walk_rules(child, old_child, properties[key], f"{path}.{key}" if path else key, problems)
            elif isinstance(additional, dict):
                _walk_rules(child, old_child, additional, f"{path}[{key}]", problems)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            # Correlating old items by index is a simplification (the apiserver correlates map lists by key).
            old_item = old[index] if isinstance(old, list) and index < len(old) else None
            _walk_rules(item, old_item, schema["items"], f"{path}[{index}]", problems)


# ---------------------------------------------------------------------------------------------------------------


def admit_custom_resource(rtype: ResourceType, obj: JsonObject, old: JsonObject | None) -> JsonObject:
    """The object as stored (pruned, defaulted) or the 422 Invalid error naming every bad field."""
    if not rtype.custom or not rtype.schema:
        return obj
    admitted = copy.deepcopy(obj)
    _prune(admitted, rtype.schema, "", [], root=True)
    _default(admitted, rtype.schema)
    problems: list[FieldError] = []
    if _validate(admitted, rtype.schema, "", problems):
        _walk_rules(admitted, old, rtype.schema, "", problems)
    if problems:
        raise errors.invalid(rtype.kind, rtype.group, (admitted.get("metadata") or {}).get("name", ""), problems)
    return admitted
