"""The protobuf request bodies the emulator decodes (pure): the envelope, maps, repeated fields, omitted empties."""

from __future__ import annotations

import pytest

from kubellm_emulator import protobuf
from kubellm_emulator.errors import ApiError


def varint(value: int) -> bytes:
    out = b""
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            return out + bytes([low])
        out += bytes([low | 0x80])


def field(number: int, payload: bytes | str | int) -> bytes:
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return varint(number << 3 | 2) + varint(len(data)) + data


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = field(1, api_version) + field(2, kind)
    return protobuf.MAGIC + field(1, type_meta) + field(2, raw) + field(3, "") + field(4, "")


def test_a_namespace_with_labels_owners_and_finalizers_decodes_as_its_json() -> None:
    metadata = (
        field(1, "team-a")
        + field(2, "")  # Go writes empty optional fields; JSON omits them
        + field(7, 0)
        + field(8, b"")
        + field(11, field(1, "tier") + field(2, "gold"))
        + field(11, field(1, "empty"))
        + field(13, field(1, "LLMService") + field(3, "tiny") + field(4, "u-1") + field(6, 1))
        + field(14, "example.com/keep")
    )
    body = envelope("v1", "Namespace", field(1, metadata) + field(2, field(1, "kubernetes")) + field(3, field(1, "")))
    assert protobuf.decode(body) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "team-a",
            "labels": {"tier": "gold", "empty": ""},
            "ownerReferences": [{"kind": "LLMService", "name": "tiny", "uid": "u-1", "controller": True}],
            "finalizers": ["example.com/keep"],
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {},
    }


def test_secret_bytes_become_base64_and_timestamps_rfc3339() -> None:
    metadata = field(1, "s") + field(8, field(1, 1_700_000_000))
    body = envelope("v1", "Secret", field(1, metadata) + field(2, field(1, "k") + field(2, b"\x00\xff")))
    decoded = protobuf.decode(body)
    assert decoded["data"] == {"k": "AP8="}
    assert decoded["metadata"]["creationTimestamp"] == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        (envelope("apps/v1", "Deployment", b""), 415, "apps/v1/Deployment in protobuf is not decoded"),
        (envelope("v1", "ConfigMap", field(9, "x")), 415, "field 9 of ConfigMap in protobuf is not decoded"),
        (b'{"kind": "Namespace"}', 400, "does not start with the k8s\\0 envelope"),
        (protobuf.MAGIC + b"\x0a\x7f", 400, "runs past the end of the body"),
    ],
)
def test_what_is_not_decoded_is_refused_naming_it(body: bytes, status: int, names: str) -> None:
    with pytest.raises(ApiError) as refused:
        protobuf.decode(body)
    assert refused.value.code == status
    assert names in refused.value.status()["message"], refused.value.status()
