"""The tenant policy (issue 19 item 7, issue 21 item 2): each row a spec and the operator's settings, and the exact
refusals and warnings `policy.evaluate` gives; the settings that carry it; the Authenticated and NotAllowed
conditions; the policy as an input of the plan and its outputs (writes, status, Events, fetches). Pure: no cluster,
no clock."""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

import pytest
from test_operator_plan import CONFIG, NOW, converged_children
from test_operator_plan import condition as plan_condition
from test_operator_plan import llmservice as plan_llmservice
from test_operator_plan import observe as plan_observe
from test_operator_policy import observed

from kubellm.settings import SettingsError
from kubellm_operator.api import LLMService, ServiceType
from kubellm_operator.config import OperatorSettings, load_settings
from kubellm_operator.plan import plan
from kubellm_operator.policy import (
    PolicyRefusal,
    PolicyVerdict,
    PolicyWarning,
    TenantPolicy,
    evaluate,
    image_allowed,
)
from kubellm_operator.status import compute_status, condition


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("KUBELLM_OPERATOR_"):
            monkeypatch.delenv(key)


def service(**spec: Any) -> LLMService:
    return LLMService.model_validate(
        {"metadata": {"name": "tiny", "namespace": "team-a"}, "spec": {"model": {"name": "m"}, **spec}}
    )


AUTH = {"apiKeySecretRef": {"name": "key", "key": "token"}}
PUBLIC_LB = PolicyWarning(
    "PublicWithoutAuth",
    "spec.service.type LoadBalancer exposes the inference routes outside the cluster without an API key; set "
    "spec.auth.apiKeySecretRef",
)
PUBLIC_NODE_PORT = PolicyWarning(
    "PublicWithoutAuth",
    "spec.service.type NodePort exposes the inference routes outside the cluster without an API key; set "
    "spec.auth.apiKeySecretRef",
)
KUBELLM_ONLY = {"allowed_image_prefixes": ["ghcr.io/kubellm/"]}


@pytest.mark.parametrize(
    ("spec", "settings", "verdict"),
    [
        # The defaults allow what an LLMService could always ask, and say so when it is public without auth.
        ({}, {}, PolicyVerdict()),
        ({"image": "docker.io/anyone/anything:latest"}, {}, PolicyVerdict()),
        ({"service": {"type": "LoadBalancer"}}, {}, PolicyVerdict(warnings=(PUBLIC_LB,))),
        ({"service": {"type": "NodePort"}}, {}, PolicyVerdict(warnings=(PUBLIC_NODE_PORT,))),
        ({"service": {"type": "LoadBalancer"}, "auth": AUTH}, {}, PolicyVerdict()),
        ({"service": {"type": "ClusterIP"}}, {"allow_public_without_auth": False}, PolicyVerdict()),
        ({"storage": {"claimName": "models"}, "env": [{"name": "X", "value": "1"}]}, {}, PolicyVerdict()),
        # Images.
        ({"image": "ghcr.io/kubellm/inference:0.2.0"}, KUBELLM_ONLY, PolicyVerdict()),
        ({}, KUBELLM_ONLY, PolicyVerdict()),  # the operator's default image is the admin's choice
        (
            {"image": "ghcr.io/evil/inference:0.1.0"},
            KUBELLM_ONLY,
            PolicyVerdict(
                refusals=(
                    PolicyRefusal(
                        "spec.image",
                        "--allowed-image-prefixes",
                        "spec.image ghcr.io/evil/inference:0.1.0 is not allowed by the operator's "
                        "--allowed-image-prefixes (ghcr.io/kubellm/); name an image under one of them, or none for "
                        "the operator's default",
                    ),
                )
            ),
        ),
        # Service types, and the refusal of a type taking precedence over its exposure warning.
        (
            {"service": {"type": "LoadBalancer"}},
            {"allowed_service_types": [ServiceType.cluster_ip, ServiceType.node_port]},
            PolicyVerdict(
                refusals=(
                    PolicyRefusal(
                        "spec.service.type",
                        "--allowed-service-types",
                        "spec.service.type LoadBalancer is not allowed by the operator's --allowed-service-types "
                        "(ClusterIP, NodePort)",
                    ),
                )
            ),
        ),
        # Public without auth, refused.
        (
            {"service": {"type": "NodePort"}},
            {"allow_public_without_auth": False},
            PolicyVerdict(
                refusals=(
                    PolicyRefusal(
                        "spec.auth",
                        "--allow-public-without-auth",
                        "spec.auth is required for spec.service.type NodePort: the operator runs with "
                        "--no-allow-public-without-auth; set spec.auth.apiKeySecretRef or use ClusterIP",
                    ),
                )
            ),
        ),
        ({"service": {"type": "NodePort"}, "auth": AUTH}, {"allow_public_without_auth": False}, PolicyVerdict()),
        # Claims and env names.
        (
            {"storage": {"claimName": "models"}},
            {"allow_storage_claims": False},
            PolicyVerdict(
                refusals=(
                    PolicyRefusal(
                        "spec.storage.claimName",
                        "--allow-storage-claims",
                        "spec.storage.claimName models is not allowed: the operator runs with "
                        "--no-allow-storage-claims; leave it unset for an emptyDir cache (spec.storage.cacheSize)",
                    ),
                )
            ),
        ),
        (
            {"env": [{"name": "OMP_NUM_THREADS", "value": "4"}, {"name": "PYTHONPATH", "value": "/cache"}]},
            {"allowed_env_names": ["OMP_*", "TOKENIZERS_PARALLELISM"]},
            PolicyVerdict(
                refusals=(
                    PolicyRefusal(
                        "spec.env[1].name",
                        "--allowed-env-names",
                        "spec.env[1].name PYTHONPATH is not allowed by the operator's --allowed-env-names "
                        "(OMP_*, TOKENIZERS_PARALLELISM)",
                    ),
                )
            ),
        ),
    ],
)
def test_policy_table(spec: dict[str, Any], settings: dict[str, Any], verdict: PolicyVerdict) -> None:
    assert evaluate(service(**spec), OperatorSettings(**settings).tenant_policy) == verdict


def test_every_refusal_of_one_spec_is_named() -> None:
    settings = OperatorSettings(
        allowed_image_prefixes=["ghcr.io/kubellm/"],
        allowed_service_types=[ServiceType.cluster_ip],
        allow_storage_claims=False,
    )
    verdict = evaluate(
        service(image="quay.io/x/y", service={"type": "NodePort"}, storage={"claimName": "c"}), settings.tenant_policy
    )
    assert [(r.field, r.setting) for r in verdict.refusals] == [
        ("spec.image", "--allowed-image-prefixes"),
        ("spec.service.type", "--allowed-service-types"),
        ("spec.storage.claimName", "--allow-storage-claims"),
    ]
    assert not verdict.allowed and verdict.warnings == ()
    assert verdict.message == "; ".join(r.message for r in verdict.refusals)


@pytest.mark.parametrize(
    ("image", "prefixes", "allowed"),
    [
        ("ghcr.io/kubellm/inference:0.1.0", ["ghcr.io/kubellm/"], True),
        ("ghcr.io/kubellm/inference:0.1.0", ["ghcr.io/kubellm"], True),  # a boundary after the prefix
        ("ghcr.io/kubellm-mirror/inference:0.1.0", ["ghcr.io/kubellm"], False),  # not a neighbour's name
        ("ghcr.io/kubellm/inference@sha256:" + "a" * 64, ["ghcr.io/kubellm/inference"], True),
        ("ghcr.io/kubellm/inference-debug:1", ["ghcr.io/kubellm/inference"], False),
        ("ghcr.io/kubellm/inference:0.1.0", ["ghcr.io/kubellm/inference:0.1.0"], True),  # one exact image
        ("ghcr.io/kubellm/inference:0.1.0-evil", ["ghcr.io/kubellm/inference:0.1.0"], False),
        ("kubellm/inference", ["docker.io/kubellm/"], False),  # no implied registry: write it out
        ("anything", [], True),
    ],
)
def test_image_prefixes_match_at_a_name_boundary(image: str, prefixes: list[str], allowed: bool) -> None:
    assert image_allowed(image, prefixes) is allowed


def test_policy_settings_from_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings([])
    assert defaults.allowed_image_prefixes == [] and defaults.allowed_env_names == []
    assert defaults.allowed_service_types == [ServiceType.cluster_ip, ServiceType.node_port, ServiceType.load_balancer]
    assert defaults.allow_public_without_auth and defaults.allow_storage_claims
    assert defaults.tenant_policy == TenantPolicy()  # the defaults allow what an LLMService could always ask
    monkeypatch.setenv("KUBELLM_OPERATOR_ALLOWED_SERVICE_TYPES", "ClusterIP, NodePort")
    monkeypatch.setenv("KUBELLM_OPERATOR_ALLOW_PUBLIC_WITHOUT_AUTH", "false")
    settings = load_settings(
        ["--allowed-image-prefixes", "ghcr.io/kubellm/,registry.corp/llm/", "--no-allow-storage-claims"]
    )
    assert settings.allowed_service_types == [ServiceType.cluster_ip, ServiceType.node_port]
    assert settings.allowed_image_prefixes == ["ghcr.io/kubellm/", "registry.corp/llm/"]
    assert not settings.allow_public_without_auth and not settings.allow_storage_claims
    assert settings.describe_policy() == (
        "images ghcr.io/kubellm/,registry.corp/llm/; service types ClusterIP,NodePort; public without auth refused; "
        "storage claims refused; env names any"
    )


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["--allowed-image-prefixes", "registry.corp/"],
            "--inference-image ghcr.io/kubellm/inference:0.1.0 is outside --allowed-image-prefixes (registry.corp/)",
        ),
        (
            ["--allowed-image-prefixes", "registry.corp/", "--inference-image", "registry.corp/i:1"],
            "--gpu-inference-image ghcr.io/kubellm/inference:0.1.0-cuda is outside --allowed-image-prefixes",
        ),
        (["--allowed-service-types", "Ingress"], "--allowed-service-types / KUBELLM_OPERATOR_ALLOWED_SERVICE_TYPES"),
        (["--allowed-service-types", ""], "--allowed-service-types / KUBELLM_OPERATOR_ALLOWED_SERVICE_TYPES"),
        (["--allowed-env-names", "OMP_ *"], "--allowed-env-names / KUBELLM_OPERATOR_ALLOWED_ENV_NAMES"),
    ],
)
def test_bad_policy_settings_fail_at_start(argv: list[str], said: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(argv)
    assert said in str(error.value)


@pytest.mark.parametrize(
    ("exposure", "expected"),
    [
        ((ServiceType.load_balancer, False), ("False", "PublicWithoutAuth")),
        ((ServiceType.node_port, False), ("False", "PublicWithoutAuth")),
        ((ServiceType.cluster_ip, False), ("False", "ClusterInternal")),
        ((ServiceType.load_balancer, True), ("True", "ApiKeyRequired")),
        ((ServiceType.cluster_ip, True), ("True", "ApiKeyRequired")),
        (None, ("Unknown", "InvalidSpec")),
    ],
)
def test_authenticated_condition(exposure: Any, expected: tuple[str, str]) -> None:
    status = compute_status(observed(exposure=exposure), None, "T")
    found = condition(status, "Authenticated") or {}
    assert (found["status"], found["reason"]) == expected
    assert found["observedGeneration"] == 1 and found["lastTransitionTime"] == "T"


def test_not_allowed_is_degraded_and_keeps_the_last_allowed_pods_serving() -> None:
    said = "spec.image x is not allowed by the operator's --allowed-image-prefixes (y/)"
    nothing = compute_status(observed(not_allowed=said), None, "T")
    assert nothing["phase"] == "Degraded"
    for kind, state in (("Degraded", "True"), ("Ready", "False"), ("Progressing", "False")):
        found = condition(nothing, kind) or {}
        assert (found["status"], found["reason"], found["message"]) == (state, "NotAllowed", said)
    serving = {"status": {"readyReplicas": 1, "replicas": 1, "updatedReplicas": 1}}
    kept = compute_status(observed(not_allowed=said, deployment=serving), None, "T")
    assert (condition(kept, "Ready") or {})["reason"] == "MinimumReplicasAvailable"
    assert (condition(kept, "Degraded") or {})["reason"] == "NotAllowed"


def test_hf_endpoint_cannot_be_set_through_env() -> None:
    """Without spec.model.hub.endpoint the server sends the hub token to HF_ENDPOINT: an address set there would
    bypass the operator's allowed hub endpoints, so the API refuses the name as it refuses the ones it renders."""
    from pydantic import ValidationError

    from kubellm_operator.api import validation_messages

    with pytest.raises(ValidationError) as error:
        service(env=[{"name": "HF_ENDPOINT", "value": "http://collector.example"}])
    assert validation_messages(error.value) == [
        "spec.env[0].name: HF_ENDPOINT is set by kubellm; set it through the LLMService fields (model, service.port, "
        "auth, ...) instead"
    ]


# The policy in the plan: a pure input (PlanConfig.policy) and pure outputs (writes, status, Events, fetches).

KUBELLM_IMAGES = TenantPolicy(allowed_image_prefixes=("kubellm/",))
NO_PUBLIC = TenantPolicy(allow_public_without_auth=False)
NOT_ALLOWED_IMAGE = (
    "spec.image quay.io/x/y:1 is not allowed by the operator's --allowed-image-prefixes (kubellm/); name an image "
    "under one of them, or none for the operator's default"
)
NOT_ALLOWED_PUBLIC = (
    "spec.auth is required for spec.service.type LoadBalancer: the operator runs with --no-allow-public-without-auth; "
    "set spec.auth.apiKeySecretRef or use ClusterIP"
)


@pytest.mark.parametrize(
    ("spec", "tenant", "writes", "degraded", "events"),
    [
        ({}, TenantPolicy(), ["Deployment", "Service"], ("False", "Healthy"), []),
        ({"image": "kubellm/inference:2"}, KUBELLM_IMAGES, ["Deployment", "Service"], ("False", "Healthy"), []),
        (
            {"image": "quay.io/x/y:1"},
            KUBELLM_IMAGES,
            [],
            ("True", "NotAllowed"),
            [("Warning", "NotAllowed", NOT_ALLOWED_IMAGE)],
        ),
        # A hub model outside the policy: not resolved either (no request, so no token is read or sent).
        (
            {"image": "quay.io/x/y:1", "model": {"name": "acme/tiny", "hub": {"endpoint": "http://127.0.0.1:9"}}},
            KUBELLM_IMAGES,
            [],
            ("True", "NotAllowed"),
            [("Warning", "NotAllowed", NOT_ALLOWED_IMAGE)],
        ),
        (
            {"service": {"type": "NodePort"}},
            TenantPolicy(),
            ["Deployment", "Service"],
            ("False", "Healthy"),
            [("Warning", "PublicWithoutAuth", PUBLIC_NODE_PORT.message)],
        ),
        (
            {"service": {"type": "LoadBalancer"}},
            NO_PUBLIC,
            [],
            ("True", "NotAllowed"),
            [("Warning", "NotAllowed", NOT_ALLOWED_PUBLIC)],
        ),
        (
            {"service": {"type": "LoadBalancer"}, "auth": AUTH},
            NO_PUBLIC,
            ["Deployment", "Service"],
            ("False", "Healthy"),
            [],
        ),
    ],
)
def test_plan_table(
    spec: dict[str, Any],
    tenant: TenantPolicy,
    writes: list[str],
    degraded: tuple[str, str],
    events: list[tuple[str, str, str]],
) -> None:
    config = dataclasses.replace(CONFIG, policy=tenant)
    decided = plan(plan_observe(plan_llmservice(**spec), config=config), None, NOW)
    assert [child.kind for child in decided.writes] == writes
    found = plan_condition(decided, "Degraded")
    assert (found["status"], found["reason"]) == degraded
    assert [(e.type, e.reason, e.message) for e in decided.events] == events
    assert decided.fetches == ()
    assert (decided.not_allowed is not None) == (degraded[1] == "NotAllowed")


def test_the_public_without_auth_event_is_posted_once_and_the_condition_stays() -> None:
    first = plan(plan_observe(plan_llmservice(service={"type": "LoadBalancer"})), None, NOW)
    assert [e.reason for e in first.events] == ["PublicWithoutAuth"]
    later = plan(
        plan_observe(plan_llmservice(service={"type": "LoadBalancer"}), children=converged_children(first)),
        first.status,
        NOW + datetime.timedelta(seconds=5),
    )
    assert later.events == () and later.status_patch is None
    assert (plan_condition(later, "Authenticated")["reason"], plan_condition(later, "Authenticated")["status"]) == (
        "PublicWithoutAuth",
        "False",
    )


def test_a_spec_moved_outside_the_policy_leaves_its_children_as_they_are() -> None:
    allowed = plan(plan_observe(), None, NOW)
    config = dataclasses.replace(CONFIG, policy=KUBELLM_IMAGES)
    moved = plan(
        plan_observe(plan_llmservice(image="quay.io/x/y:1"), children=converged_children(allowed), config=config),
        allowed.status,
        NOW,
    )
    assert moved.writes == () and moved.not_allowed == NOT_ALLOWED_IMAGE
    assert plan_condition(moved, "Degraded")["reason"] == "NotAllowed"
