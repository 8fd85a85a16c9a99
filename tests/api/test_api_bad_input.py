"""Invalid LLMServices: each is rejected by the pydantic model AND by the CRD, and both name the field."""

from __future__ import annotations

from typing import Any

import pytest
from crd_schema import crd_errors
from llmservice_cases import minimal
from pydantic import ValidationError

from kubellm_operator.api import LLMService, validation_messages


def _with_metadata(**metadata: Any) -> dict[str, Any]:
    doc = minimal()
    doc["metadata"] = metadata
    return doc


# (case id, document, the field both must name)
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("replicas-wrong-type", minimal(replicas="two"), "spec.replicas"),
    ("replicas-negative", minimal(replicas=-1), "spec.replicas"),
    ("port-out-of-range", minimal(service={"port": 70000}), "spec.service.port"),
    ("service-type-unknown", minimal(service={"type": "Ingress"}), "spec.service.type"),
    ("probe-mode-unknown", minimal(probes={"liveness": {"mode": "tcp"}}), "spec.probes.liveness.mode"),
    ("probe-period-zero", minimal(probes={"readiness": {"periodSeconds": 0}}), "spec.probes.readiness.periodSeconds"),
    ("dtype-unknown", minimal(model={"name": "m", "dtype": "int8"}), "spec.model.dtype"),
    ("quantization-unknown", minimal(model={"name": "m", "quantization": "int2"}), "spec.model.quantization"),
    ("temperature-too-high", minimal(model={"name": "m", "temperature": 3}), "spec.model.temperature"),
    ("model-missing", {**minimal(), "spec": {"replicas": 1}}, "spec.model"),
    ("model-name-wrong-type", minimal(model={"name": ["a"]}), "spec.model.name"),
    ("quantity-malformed", minimal(storage={"request": "20 GB"}), "spec.storage.request"),
    ("quantity-negative", minimal(resources={"limits": {"memory": "-1Gi"}}), "spec.resources.limits.memory"),
    ("quantity-float", minimal(resources={"requests": {"cpu": 0.5}}), "spec.resources.requests.cpu"),
    ("quantity-wrong-type", minimal(model={"name": "m", "sizeHint": True}), "spec.model.sizeHint"),
    ("storage-limit-below-request", minimal(storage={"request": "20Gi", "limit": "10Gi"}), "spec.storage.limit"),
    (
        "storage-claim-and-cache-size",
        minimal(storage={"claimName": "models", "cacheSize": "10Gi"}),
        "spec.storage.claimName",
    ),
    ("node-port-on-cluster-ip", minimal(service={"nodePort": 30080}), "spec.service.nodePort"),
    ("node-port-out-of-range", minimal(service={"type": "NodePort", "nodePort": 80}), "spec.service.nodePort"),
    ("unknown-spec-field", minimal(modle={"name": "m"}), "spec.modle"),
    ("unknown-nested-field", minimal(storage={"cachesize": "1Gi"}), "spec.storage.cachesize"),
    ("unknown-resource", minimal(resources={"limits": {"amd.com/gpu": 1}}), "spec.resources.limits.amd.com/gpu"),
    ("env-reserved-name", minimal(env=[{"name": "KUBELLM_PORT", "value": "80"}]), "spec.env"),
    (
        "env-duplicate-name",
        minimal(env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),
        "spec.env[1]",
    ),
    ("env-bad-name", minimal(env=[{"name": "1=A", "value": "x"}]), "spec.env[0].name"),
    ("toleration-no-key-equal", minimal(tolerations=[{"effect": "NoSchedule"}]), "spec.tolerations[0].operator"),
    (
        "toleration-seconds-without-no-execute",
        minimal(tolerations=[{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 30}]),
        "spec.tolerations[0].tolerationSeconds",
    ),
    ("affinity-not-an-object", minimal(affinity={"nodeAffinity": "x"}), "spec.affinity.nodeAffinity"),
    ("affinity-unknown-field", minimal(affinity={"nodeAfinity": {}}), "spec.affinity.nodeAfinity"),
    (
        "affinity-in-without-values",
        minimal(
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In"}]}]
                    }
                }
            }
        ),
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
        ".matchExpressions[0].values",
    ),
    (
        "affinity-list-where-a-string-belongs",
        minimal(
            affinity={"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": ["z"]}]}}
        ),
        "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey",
    ),
    ("rollout-strategy-unknown", minimal(rollout={"strategy": "BlueGreen"}), "spec.rollout.strategy"),
    (
        "toleration-effect-unknown",
        minimal(tolerations=[{"operator": "Exists", "effect": "Sometimes"}]),
        "spec.tolerations[0].effect",
    ),
    ("secret-ref-missing-key", minimal(auth={"apiKeySecretRef": {"name": "s"}}), "spec.auth.apiKeySecretRef.key"),
    ("name-not-dns-1035", _with_metadata(name="7b-model"), "metadata.name"),
    ("node-selector-bad-key", minimal(nodeSelector={"bad key": "x"}), "spec.nodeSelector"),
    ("node-selector-bad-value", minimal(nodeSelector={"gpu": "yes please"}), "spec.nodeSelector.gpu"),
    ("annotation-bad-key", minimal(service={"annotations": {"-lb": "x"}}), "spec.service.annotations"),
    (
        "secret-name-not-dns",
        minimal(auth={"apiKeySecretRef": {"name": "My_Secret", "key": "k"}}),
        "spec.auth.apiKeySecretRef.name",
    ),
]


@pytest.mark.parametrize(("doc", "field"), [(doc, field) for _, doc, field in CASES], ids=[c[0] for c in CASES])
def test_rejected_by_the_model_with_the_field_named(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        LLMService.from_object(doc)
    lines = validation_messages(caught.value)
    assert any(
        line.startswith(f"{field}:") or line.startswith(f"{field}[") or line.startswith(f"{field}.") for line in lines
    ), lines
    assert all("Value error," not in line for line in lines)


@pytest.mark.parametrize(("doc", "field"), [(doc, field) for _, doc, field in CASES], ids=[c[0] for c in CASES])
def test_rejected_by_the_crd_with_the_field_named(doc: dict[str, Any], field: str) -> None:
    errors = crd_errors(doc)
    assert errors, "the CRD accepted it"

    def names_field(path: str, message: str) -> bool:
        # Unknown fields are reported at their parent with the name in the message, as the apiserver does.
        unknown = field.startswith(f"{path}.") and repr(field.removeprefix(f"{path}.")) in message
        return path.startswith(field) or unknown

    assert any(names_field(path, message) for path, message in errors), errors


def test_unknown_field_lists_what_is_allowed() -> None:
    with pytest.raises(ValidationError) as caught:
        LLMService.from_object(minimal(service={"typ": "NodePort"}))
    assert validation_messages(caught.value) == [
        "spec.service.typ: unknown field (allowed: annotations, nodePort, port, type)"
    ]


def test_enum_errors_say_what_is_allowed() -> None:
    with pytest.raises(ValidationError) as caught:
        LLMService.from_object(minimal(probes={"liveness": {"mode": "tcp"}}))
    (line,) = validation_messages(caught.value)
    assert "'http'" in line and "'inference'" in line


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"model": {"name": "m", "sizeHint": "15Gi"}, "storage": {"cacheSize": "10Gi"}}, "storage.cacheSize (10Gi)"),
        ({"model": {"name": "m", "sizeHint": "15Gi"}, "storage": {"limit": "12Gi"}}, "storage.limit (12Gi)"),
        ({"model": {"name": "m"}, "storage": {"cacheSize": "30Gi", "limit": "25Gi", "request": "25Gi"}}, "the cache"),
        ({"model": {"name": "m"}, "resources": {"limits": {"nvidia.com/gpu": "500m"}}}, "whole number"),
        (
            {"model": {"name": "m"}, "resources": {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 2}}},
            "must be equal",
        ),
    ],
)
def test_unworkable_specs_are_problems(spec: dict[str, Any], problem: str) -> None:
    """Specs the schema accepts but that can never run: the operator reports them, `kubellm render` refuses them."""
    doc = minimal()
    doc["spec"] = spec
    problems = LLMService.from_object(doc).spec.problems()
    assert any(problem in text for text in problems), problems


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        (
            {"nodeSelector": {"bad key": "x"}},
            "spec.nodeSelector.bad key (key): must be a label or annotation key: an optional DNS prefix and '/', "
            "then a name such as gpu.present",
        ),
        (
            {"auth": {"apiKeySecretRef": {"name": "My_Secret", "key": "k"}}},
            "spec.auth.apiKeySecretRef.name: must be a DNS subdomain: lowercase letters, digits, '-' and '.', "
            "such as hf-token",
        ),
        ({"env": [{"name": "A"}]}, "spec.env[0]: env A: set exactly one of value or valueFrom"),
        ({"replicas": "two"}, "spec.replicas: Input should be a valid integer, unable to parse string as an integer"),
        (
            {"replicas": 2, "autoscaling": {"maxReplicas": 3}},
            "spec.replicas: spec.replicas and spec.autoscaling exclude each other: with autoscaling the operator "
            "sets the replica count (remove replicas and use autoscaling.minReplicas and maxReplicas; kubectl "
            "scale and HPAs cannot set it either)",
        ),
        (
            {"autoscaling": {"minReplicas": 4, "maxReplicas": 3}},
            "spec.autoscaling.minReplicas: minReplicas (4) must not exceed maxReplicas (3)",
        ),
    ],
)
def test_messages_say_what_is_allowed(spec: dict[str, Any], line: str) -> None:
    with pytest.raises(ValidationError) as caught:
        LLMService.from_object(minimal(**spec))
    assert validation_messages(caught.value) == [line]
