"""The generated CRD: committed copy current, structural, valid for the apiserver, examples accepted by it."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from crd_schema import CRD_PATH, committed_crd, crd_errors, open_api_schema, to_json_schema
from llmservice_cases import REPO

from kubellm_operator.api import LLMService
from kubellm_operator.crd import api_reference, crd, crd_yaml

INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
FORBIDDEN_KEYWORDS = {"$ref", "$defs", "allOf", "oneOf", "not", "title", "const", "prefixItems"}


def test_committed_crd_is_the_generated_one() -> None:
    assert CRD_PATH.read_text() == crd_yaml(), "crds/ is stale: run `kubellm crd > crds/kubellm.dev_llmservices.yaml`"


def test_committed_api_reference_is_current() -> None:
    doc = REPO / "docs" / "api.md"
    assert doc.read_text() == api_reference(), "docs/api.md is stale: run `kubellm crd --reference > docs/api.md`"


def _nodes(node: dict[str, Any], path: str = "") -> Any:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


ALL_NODES = list(_nodes(open_api_schema()))


@pytest.mark.parametrize(("path", "node"), ALL_NODES, ids=[path or "." for path, _ in ALL_NODES])
def test_schema_node_is_structural(path: str, node: dict[str, Any]) -> None:
    assert not FORBIDDEN_KEYWORDS & node.keys()
    if node.get("x-kubernetes-int-or-string"):
        assert "type" not in node
        assert node["anyOf"] == INT_OR_STRING
        assert "pattern" in node
    else:
        assert "anyOf" not in node
        assert node["type"] in {"object", "array", "string", "integer", "number", "boolean"}
    assert node.get("nullable", True) is True
    if "properties" in node:
        assert "additionalProperties" not in node, "additionalProperties beside properties is not structural"
    assert not isinstance(node.get("additionalProperties"), bool)
    if node.get("type") == "object":
        assert {"properties", "additionalProperties", "x-kubernetes-preserve-unknown-fields"} & node.keys(), (
            "an object without properties would be pruned empty"
        )
    if node.get("x-kubernetes-preserve-unknown-fields"):
        assert path == ".spec.affinity", "preserve-unknown-fields switches validation off; affinity only"
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        assert isinstance(node.get(key, True), bool)
    if "default" in node:
        jsonschema.validate(node["default"], to_json_schema(node))
    if node.get("x-kubernetes-list-type") == "map":
        item = node["items"]
        for key in node["x-kubernetes-list-map-keys"]:
            assert key in item.get("required", []) or "default" in item["properties"][key]
    for rule in node.get("x-kubernetes-validations", []):
        assert rule["rule"] and rule["message"]
        if "fieldPath" in rule:
            assert rule["fieldPath"].lstrip(".") in node["properties"]


@pytest.mark.parametrize("version", ["1.32.0", kubernetes_validate.utils.latest_version()])
def test_crd_passes_the_official_customresourcedefinition_schema(version: str) -> None:
    kubernetes_validate.validate(crd(), version, strict=True)


def test_names_subresources_and_printer_columns() -> None:
    spec = committed_crd()["spec"]
    assert spec["group"] == "kubellm.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "LLMService",
        "listKind": "LLMServiceList",
        "plural": "llmservices",
        "singular": "llmservice",
        "shortNames": ["llms"],
        "categories": ["kubellm"],
    }
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = {column["name"]: column for column in version["additionalPrinterColumns"]}
    assert list(columns) == ["Model", "Ready", "Desired", "Phase", "Reason", "Progress", "Endpoint", "Age"]
    assert columns["Desired"]["jsonPath"] == ".status.autoscaling.desiredReplicas"
    assert columns["Model"]["jsonPath"] == ".spec.model.name"
    assert columns["Ready"]["jsonPath"] == ".status.ready"
    assert columns["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert columns["Endpoint"]["priority"] == 1
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    # Every column's path exists in the schema, so `kubectl get` never shows a column that stays empty.
    properties = open_api_schema()["properties"]
    for column in columns.values():
        if column["jsonPath"].startswith(".metadata."):
            continue
        head, *rest = column["jsonPath"].split("[")[0].strip(".").split(".")
        node = properties[head]
        for part in rest:
            node = node["properties"][part]


def test_storage_rule_keeps_the_kubernetes_quantity_library() -> None:
    rules = open_api_schema()["properties"]["spec"]["properties"]["storage"]["x-kubernetes-validations"]
    assert any("quantity(string(self.limit)).compareTo(quantity(string(self.request)))" in r["rule"] for r in rules)


def test_every_example_is_accepted_by_the_crd_and_the_model(example: dict[str, Any]) -> None:
    assert crd_errors(example) == []
    llms = LLMService.from_object(example)
    assert llms.spec.problems() == []
    # What the model writes back is what it read: the operator can round-trip a resource without loss.
    dumped = llms.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert LLMService.from_object(dumped) == llms
    assert _paths(dumped["spec"]) == _paths(example["spec"])


def _paths(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        return {p for key, child in value.items() for p in _paths(child, f"{prefix}.{key}")}
    if isinstance(value, list):
        return {p for index, child in enumerate(value) for p in _paths(child, f"{prefix}[{index}]")}
    return {prefix}
