"""Patch semantics as pure functions: JSON patch, merge patch, strategic merge patch directives, apply ownership."""

from __future__ import annotations

from typing import Any

import pytest

from kubellm_emulator.apply import (
    builtin_list_rule,
    decode_fields,
    encode_fields,
    field_paths,
    server_side_apply,
)
from kubellm_emulator.patching import (
    PatchError,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
)

POD_SPEC: dict[str, Any] = {
    "spec": {
        "containers": [
            {"name": "a", "image": "x", "args": ["1", "2"], "env": [{"name": "E", "value": "1"}]},
            {"name": "b", "image": "y"},
        ],
        "volumes": [{"name": "cache", "emptyDir": {}}],
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
    },
    "metadata": {"finalizers": ["one", "two"]},
}


def test_json_patch_operations() -> None:
    doc = {"a": {"b": [1, 2]}, "c": 1}
    patched = apply_json_patch(
        doc,
        [
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/c", "value": 2},
            {"op": "move", "from": "/c", "path": "/d"},
            {"op": "copy", "from": "/d", "path": "/e"},
            {"op": "remove", "path": "/a/b/0"},
            {"op": "test", "path": "/a/b", "value": [2, 3]},
            {"op": "add", "path": "/k~1x", "value": True},
        ],
    )
    assert patched == {"a": {"b": [2, 3]}, "d": 2, "e": 2, "k/x": True}
    assert doc == {"a": {"b": [1, 2]}, "c": 1}  # the input is not modified
    with pytest.raises(PatchError) as failed:
        apply_json_patch(doc, [{"op": "test", "path": "/c", "value": 9}])
    assert failed.value.test_failed
    with pytest.raises(PatchError, match="not found"):
        apply_json_patch(doc, [{"op": "remove", "path": "/missing"}])


def test_merge_patch_replaces_lists_and_deletes_nulls() -> None:
    assert apply_merge_patch({"a": [1], "b": {"c": 1, "d": 2}}, {"a": [2], "b": {"c": None}}) == {
        "a": [2],
        "b": {"d": 2},
    }


def test_strategic_merge_patch_directives() -> None:
    patched = apply_strategic_merge_patch(
        POD_SPEC,
        {
            "spec": {
                "containers": [{"name": "b", "$patch": "delete"}, {"name": "c", "image": "z"}],
                "volumes": [{"$patch": "replace"}, {"name": "data", "emptyDir": {}}],
                "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
            },
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["one"], "finalizers": ["three"]},
        },
    )
    assert [c["name"] for c in patched["spec"]["containers"]] == ["a", "c"]
    assert patched["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]
    assert patched["spec"]["strategy"] == {"type": "Recreate"}
    assert patched["metadata"]["finalizers"] == ["two", "three"]
    replaced = apply_strategic_merge_patch(POD_SPEC, {"spec": {"strategy": {"$patch": "replace", "type": "Recreate"}}})
    assert replaced["spec"]["strategy"] == {"type": "Recreate"}
    args = apply_strategic_merge_patch(POD_SPEC, {"spec": {"containers": [{"name": "a", "args": ["3"]}]}})
    assert args["spec"]["containers"][0]["args"] == ["3"]  # args is atomic: replaced, not merged


def test_service_ports_merge_by_port_and_container_ports_by_container_port() -> None:
    service = {"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}}
    patched = apply_strategic_merge_patch(service, {"spec": {"ports": [{"port": 80, "targetPort": 8080}]}})
    assert patched["spec"]["ports"] == [
        {"port": 80, "name": "http", "targetPort": 8080},
        {"port": 443, "name": "https"},
    ]


def test_apply_field_sets_round_trip_through_fields_v1() -> None:
    paths = field_paths(POD_SPEC, builtin_list_rule)
    assert ("f:spec", "f:containers", 'k:{"name":"a"}', "f:image") in paths
    assert ("f:spec", "f:containers", 'k:{"name":"a"}', "f:args") in paths  # atomic list: one leaf
    assert ("f:metadata", "f:finalizers", 'v:"one"', ".") in paths
    assert decode_fields(encode_fields(paths)) == paths


def test_apply_removes_only_what_the_manager_dropped() -> None:
    first, owned = server_side_apply({}, POD_SPEC, set(), builtin_list_rule)
    by_hand = {**first, "spec": {**first["spec"], "nodeName": "n1"}}
    second_config = {"spec": {"containers": [{"name": "a", "image": "x2"}]}}
    second, _ = server_side_apply(by_hand, second_config, owned, builtin_list_rule)
    assert second["spec"] == {"containers": [{"name": "a", "image": "x2"}], "nodeName": "n1"}
    assert second["metadata"] == {}  # its finalizers were dropped; metadata itself stays
