"""Decoding of the protobuf request bodies kubectl sends for a few built-in kinds, into the JSON-shaped dicts the
store takes.

kubectl (1.32) sends the objects of `kubectl create namespace|configmap|secret|serviceaccount` and the access
reviews of `kubectl auth can-i|whoami` as `application/vnd.kubernetes.protobuf`, and client-go falls back to JSON only for CBOR, so an emulator that refuses
protobuf breaks those verbs. The body is the apiserver's envelope: the magic `k8s\\0`, then a `runtime.Unknown`
message (typeMeta, raw, contentEncoding, contentType) whose `raw` is the object in the field numbering of
k8s.io/api's generated.proto. Only the kinds below are decoded, field by field; any other kind or field is refused
with 415 naming it, as are the verbs' other kinds. Go's encoder writes every optional field, empty ones included,
so empty scalars are dropped here, as Go's JSON encoder drops them (`omitempty`), while nested objects
stay, empty or not, as they do in JSON.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Union

from kubellm_emulator import errors

CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

# A field's value type: a scalar name, a nested message's schema, or ("map", key type, value type).
Scalar = str  # "string" | "bytes" | "int" | "bool" | "time"
ValueType = Union[Scalar, "Message", tuple[str, Scalar, Scalar]]


@dataclass(frozen=True)
class Field:
    name: str
    value: ValueType
    repeated: bool = False


Message = Mapping[int, Field]

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5

TIME: Scalar = "time"  # metav1.Time: seconds (1) and nanos (2), written as RFC 3339 seconds
OWNER_REFERENCE: Message = {
    1: Field("kind", "string"),
    3: Field("name", "string"),
    4: Field("uid", "string"),
    5: Field("apiVersion", "string"),
    6: Field("controller", "bool"),
    7: Field("blockOwnerDeletion", "bool"),
}
OBJECT_META: Message = {
    1: Field("name", "string"),
    2: Field("generateName", "string"),
    3: Field("namespace", "string"),
    4: Field("selfLink", "string"),
    5: Field("uid", "string"),
    6: Field("resourceVersion", "string"),
    7: Field("generation", "int"),
    8: Field("creationTimestamp", TIME),
    9: Field("deletionTimestamp", TIME),
    10: Field("deletionGracePeriodSeconds", "int"),
    11: Field("labels", ("map", "string", "string")),
    12: Field("annotations", ("map", "string", "string")),
    13: Field("ownerReferences", OWNER_REFERENCE, repeated=True),
    14: Field("finalizers", "string", repeated=True),
}
OBJECT_REFERENCE: Message = {
    1: Field("kind", "string"),
    2: Field("namespace", "string"),
    3: Field("name", "string"),
    4: Field("uid", "string"),
    5: Field("apiVersion", "string"),
    6: Field("resourceVersion", "string"),
    7: Field("fieldPath", "string"),
}
KINDS: Mapping[tuple[str, str], Message] = {
    ("v1", "Namespace"): {
        1: Field("metadata", OBJECT_META),
        2: Field("spec", {1: Field("finalizers", "string", repeated=True)}),
        3: Field("status", {1: Field("phase", "string")}),
    },
    ("v1", "ConfigMap"): {
        1: Field("metadata", OBJECT_META),
        2: Field("data", ("map", "string", "string")),
        3: Field("binaryData", ("map", "string", "bytes")),
        4: Field("immutable", "bool"),
    },
    ("v1", "Secret"): {
        1: Field("metadata", OBJECT_META),
        2: Field("data", ("map", "string", "bytes")),
        3: Field("type", "string"),
        4: Field("stringData", ("map", "string", "string")),
        5: Field("immutable", "bool"),
    },
    ("v1", "ServiceAccount"): {
        1: Field("metadata", OBJECT_META),
        2: Field("secrets", OBJECT_REFERENCE, repeated=True),
        3: Field("imagePullSecrets", {1: Field("name", "string")}, repeated=True),
        4: Field("automountServiceAccountToken", "bool"),
    },
}
# authorization.k8s.io/v1 and authentication.k8s.io/v1 reviews (what `kubectl auth can-i` and `whoami` send).
RESOURCE_ATTRIBUTES: Message = {
    1: Field("namespace", "string"),
    2: Field("verb", "string"),
    3: Field("group", "string"),
    4: Field("version", "string"),
    5: Field("resource", "string"),
    6: Field("subresource", "string"),
    7: Field("name", "string"),
    8: Field("fieldSelector", {1: Field("rawSelector", "string")}),
    9: Field("labelSelector", {1: Field("rawSelector", "string")}),
}
NON_RESOURCE_ATTRIBUTES: Message = {1: Field("path", "string"), 2: Field("verb", "string")}
ACCESS_REVIEW_STATUS: Message = {
    1: Field("allowed", "bool"),
    2: Field("reason", "string"),
    3: Field("evaluationError", "string"),
    4: Field("denied", "bool"),
}
KINDS = {
    **KINDS,
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): {
        1: Field("metadata", OBJECT_META),
        2: Field(
            "spec",
            {
                1: Field("resourceAttributes", RESOURCE_ATTRIBUTES),
                2: Field("nonResourceAttributes", NON_RESOURCE_ATTRIBUTES),
            },
        ),
        3: Field("status", ACCESS_REVIEW_STATUS),
    },
    ("authorization.k8s.io/v1", "SubjectAccessReview"): {
        1: Field("metadata", OBJECT_META),
        2: Field(
            "spec",
            {
                1: Field("resourceAttributes", RESOURCE_ATTRIBUTES),
                2: Field("nonResourceAttributes", NON_RESOURCE_ATTRIBUTES),
                3: Field("user", "string"),
                4: Field("groups", "string", repeated=True),
                6: Field("uid", "string"),
            },
        ),
        3: Field("status", ACCESS_REVIEW_STATUS),
    },
    ("authorization.k8s.io/v1", "SelfSubjectRulesReview"): {
        1: Field("metadata", OBJECT_META),
        2: Field("spec", {1: Field("namespace", "string")}),
        3: Field("status", {3: Field("incomplete", "bool"), 4: Field("evaluationError", "string")}),
    },
    ("authentication.k8s.io/v1", "SelfSubjectReview"): {
        1: Field("metadata", OBJECT_META),
        2: Field("status", {1: Field("userInfo", {1: Field("username", "string"), 2: Field("uid", "string")})}),
    },
}
_ENVELOPE: Message = {
    1: Field("typeMeta", {1: Field("apiVersion", "string"), 2: Field("kind", "string")}),
    2: Field("raw", "bytes"),
    3: Field("contentEncoding", "string"),
    4: Field("contentType", "string"),
}


class _Unsupported(Exception):
    """The body holds something this module does not decode; the message says what."""


def decode(body: bytes) -> dict[str, Any]:
    """The object in a protobuf request body, as the JSON body would carry it; 415 for what is not decoded."""
    try:
        return _decode_object(body)
    except _Unsupported as error:
        raise errors.unsupported_media_type(
            CONTENT_TYPE, ["application/json", "application/yaml"], str(error)
        ) from None
    except (IndexError, ValueError, UnicodeDecodeError) as error:
        raise errors.bad_request(f"the request body is not valid {CONTENT_TYPE}: {error}") from None


def _decode_object(body: bytes) -> dict[str, Any]:
    if not body.startswith(MAGIC):
        raise ValueError("it does not start with the k8s\\0 envelope")
    envelope = _message(body[len(MAGIC) :], _ENVELOPE, raw=True)
    type_meta = envelope.get("typeMeta", {})
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    if envelope.get("contentEncoding"):
        raise _Unsupported(f"content encoding {envelope['contentEncoding']!r}")
    schema = KINDS.get((api_version, kind))
    if schema is None:
        decoded = ", ".join(f"{v}/{k}" for v, k in KINDS)
        raise _Unsupported(f"{api_version}/{kind} in protobuf is not decoded (only {decoded}); send it as JSON")
    return {"apiVersion": api_version, "kind": kind, **_message(envelope.get("raw", b""), schema, what=kind)}


def _message(data: bytes, schema: Message, *, what: str = "", raw: bool = False) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for number, wire_type, value in _fields(data):
        field = schema.get(number)
        if field is None:
            raise _Unsupported(f"field {number} of {what} in protobuf is not decoded; send it as JSON")
        path = f"{what}.{field.name}" if what else field.name
        if isinstance(field.value, tuple):
            key_type, value_type = field.value[1], field.value[2]
            entry = _message(_bytes(wire_type, value), {1: Field("key", key_type), 2: Field("value", value_type)})
            decoded.setdefault(field.name, {})[entry.get("key", "")] = entry.get("value", _empty(value_type))
            continue
        item = _value(wire_type, value, field.value, path, raw=raw)
        if field.repeated:
            decoded.setdefault(field.name, []).append(item)
        elif not _is_empty(item):
            decoded[field.name] = item
    return decoded


def _value(wire_type: int, value: int | bytes, value_type: ValueType, path: str, *, raw: bool) -> Any:
    if isinstance(value_type, Mapping):
        return _message(_bytes(wire_type, value), value_type, what=path)
    if value_type == "string":
        return _bytes(wire_type, value).decode()
    if value_type == "bytes":
        data = _bytes(wire_type, value)
        return data if raw else base64.b64encode(data).decode()
    if value_type == TIME:
        moment = _message(_bytes(wire_type, value), {1: Field("seconds", "int"), 2: Field("nanos", "int")})
        if not moment:
            return None
        stamp = datetime.datetime.fromtimestamp(moment.get("seconds", 0), tz=datetime.UTC)
        return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    if wire_type != _VARINT or not isinstance(value, int):
        raise ValueError(f"{path}: expected a varint")
    if value_type == "bool":
        return bool(value)
    return value - (1 << 64) if value >= 1 << 63 else value  # int64 two's complement


def _empty(value_type: Scalar) -> Any:
    return "" if value_type in ("string", "bytes") else None


def _is_empty(item: Any) -> bool:
    """What Go's JSON encoder omits: empty strings and numbers (`omitempty`) and an unset timestamp. Booleans here are
    pointers, written to protobuf only when set, so a false one stays; nested structs always stay."""
    return item is None or item == "" or item == b"" or (type(item) is int and item == 0)


def _bytes(wire_type: int, value: int | bytes) -> bytes:
    if wire_type != _LENGTH or not isinstance(value, bytes):
        raise ValueError("expected a length-delimited field")
    return value


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field in a message, in order."""
    position = 0
    while position < len(data):
        tag, position = _varint(data, position)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == _VARINT:
            value, position = _varint(data, position)
            yield number, wire_type, value
        elif wire_type == _LENGTH:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise ValueError("a field runs past the end of the body")
            yield number, wire_type, data[position : position + length]
            position += length
        elif wire_type in (_FIXED64, _FIXED32):
            size = 8 if wire_type == _FIXED64 else 4
            yield number, wire_type, int.from_bytes(data[position : position + size], "little")
            position += size
        else:
            raise ValueError(f"unknown wire type {wire_type}")


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
