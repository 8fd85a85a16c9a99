"""The renderer: official-schema validity, determinism, and the probes/resources/volumes each spec asks for."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml
from llmservice_cases import IMAGE, llms, load_example, minimal

from kubellm.contract import (
    DEFAULT_CACHE_DIR,
    LIVENESS_PROBE_COMMAND,
    LIVEZ_PATH,
    READYZ_PATH,
    SERVE_COMMAND,
    env_name,
)
from kubellm_operator.api import RESERVED_ENV_NAMES
from kubellm_operator.render import (
    CACHE_VOLUME,
    DEFAULT_GPU_INFERENCE_IMAGE,
    DEFAULT_INFERENCE_IMAGE,
    child_labels,
    deployment_strategy,
    endpoint,
    render,
    selector_labels,
    selector_string,
)

# kubectl here is 1.32; the newest schemas kubernetes-validate ships catch fields removed since.
K8S_VERSIONS = ["1.32.0", kubernetes_validate.utils.latest_version()]

VARIANTS: dict[str, dict[str, Any]] = {
    "minimal": minimal(),
    "gpu-requests-only": minimal(resources={"requests": {"nvidia.com/gpu": 2, "cpu": 4}}),
    "pvc-cache": minimal(storage={"claimName": "models", "request": "5Gi"}),
    "nodeport": minimal(service={"type": "NodePort", "nodePort": 30500, "port": 8080}),
    "auth-and-env": minimal(
        auth={"apiKeySecretRef": {"name": "key", "key": "token"}},
        env=[
            {"name": "KUBELLM_QUEUE_SIZE", "value": "8"},
            {"name": "EXTRA", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ],
    ),
    "affinity": minimal(
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
                }
            }
        },
        tolerations=[{"operator": "Exists"}],
    ),
    "no-namespace": {**minimal(), "metadata": {"name": "demo"}},
    "seed": load_example("seed-mistral-7b.yaml"),
    "tiny": load_example("tiny-smollm2.yaml"),
    "gpu": load_example("gpu-mistral-7b.yaml"),
}


def rendered(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment, service = render(llms(VARIANTS[name]), image_default=IMAGE)
    return deployment, service


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in container(deployment)["env"]}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_manifest_passes_the_official_schema(variant: str, version: str) -> None:
    for manifest in rendered(variant):
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendering_is_deterministic(variant: str) -> None:
    first = yaml.safe_dump_all(render(llms(VARIANTS[variant]), image_default=IMAGE), sort_keys=False)
    again = yaml.safe_dump_all(render(llms(VARIANTS[variant]), image_default=IMAGE), sort_keys=False)
    assert first.encode() == again.encode()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_shape_shared_by_every_variant(variant: str) -> None:
    deployment, service = rendered(variant)
    name = VARIANTS[variant]["metadata"]["name"]
    pod = deployment["spec"]["template"]
    main = container(deployment)
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == name
    assert deployment["metadata"].get("namespace") == VARIANTS[variant]["metadata"].get("namespace")
    assert "ownerReferences" not in deployment["metadata"]
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"] == selector_labels(name)
    assert pod["metadata"]["labels"] == deployment["metadata"]["labels"] == child_labels(name)
    assert deployment["spec"]["strategy"] == deployment_strategy(llms(VARIANTS[variant]))
    # The progress deadline covers the whole startup budget: a slow first start is not "failed" mid-download.
    startup = llms(VARIANTS[variant]).spec.probes.startup
    assert deployment["spec"]["progressDeadlineSeconds"] >= startup.budget_seconds + 600
    assert main["command"] == SERVE_COMMAND
    assert "initialDelaySeconds" not in yaml.safe_dump(deployment)
    # Hardened pod: non-root, no escalation, no capabilities, seccomp, read-only root with writable mounts.
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in main["volumeMounts"]} == {DEFAULT_CACHE_DIR, "/tmp"}
    # A failed model load exits with its reason in the termination message; a crash leaves its last log lines.
    assert main["terminationMessagePath"] == "/dev/termination-log"
    assert main["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # The container listens where the Service sends traffic.
    port = VARIANTS[variant]["spec"].get("service", {}).get("port", 5000)
    assert main["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert env_of(deployment)[env_name("port")] == str(port)
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    # kubellm's own variables are sorted and come first; none of them is hand-typed anywhere but settings.py.
    names = [var["name"] for var in main["env"]]
    own = names[: len(names) - len(VARIANTS[variant]["spec"].get("env", []))]
    assert own == sorted(own)
    assert set(own) <= set(RESERVED_ENV_NAMES)


def test_seed_example_probes_resources_and_volumes() -> None:
    deployment, service = rendered("seed")
    main = container(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert main["startupProbe"] == {
        "httpGet": {"path": READYZ_PATH, "port": "http"},
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 360,  # budgetSeconds 3600 / periodSeconds 10
    }
    assert main["readinessProbe"]["httpGet"] == {"path": READYZ_PATH, "port": "http"}
    assert main["livenessProbe"] == {
        "exec": {"command": LIVENESS_PROBE_COMMAND},
        "periodSeconds": 60,
        "timeoutSeconds": 50,
        "failureThreshold": 3,
    }
    assert main["resources"] == {
        "requests": {"cpu": "6", "ephemeral-storage": "20Gi", "memory": "40Gi"},
        "limits": {"ephemeral-storage": "24Gi", "memory": "48Gi"},
    }
    assert deployment["spec"]["template"]["spec"]["volumes"] == [
        {"name": CACHE_VOLUME, "emptyDir": {"sizeLimit": "18Gi"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    env = env_of(deployment)
    assert env[env_name("model")] == "mistralai/Mistral-7B-Instruct-v0.2"
    assert env[env_name("device")] == "cpu"
    assert env[env_name("cache_dir")] == DEFAULT_CACHE_DIR
    assert env["HF_HOME"].startswith(DEFAULT_CACHE_DIR + "/")
    assert env[env_name("hub_token")] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    # A public LoadBalancer: the example is authenticated (issue 21).
    assert env[env_name("api_key")] == {"secretKeyRef": {"name": "mistral-7b-api-key", "key": "key"}}
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"] == [{"name": "http", "port": 5000, "targetPort": "http", "protocol": "TCP"}]


@pytest.mark.parametrize(
    ("variant", "requests", "limits", "device"),
    [
        ("minimal", {"ephemeral-storage": "21Gi"}, {"ephemeral-storage": "21Gi"}, "cpu"),
        (
            "gpu-requests-only",
            {"cpu": "4", "ephemeral-storage": "21Gi"},
            {"ephemeral-storage": "21Gi", "nvidia.com/gpu": "2"},
            "cuda",
        ),
        ("gpu", {"cpu": "4", "ephemeral-storage": "20Gi", "memory": "32Gi"}, None, "cuda"),
        ("pvc-cache", {"ephemeral-storage": "5Gi"}, {"ephemeral-storage": "5Gi"}, "cpu"),
    ],
)
def test_resources_and_device(
    variant: str, requests: dict[str, str], limits: dict[str, str] | None, device: str
) -> None:
    deployment, _ = rendered(variant)
    resources = container(deployment)["resources"]
    assert resources["requests"] == requests
    if limits is not None:
        assert resources["limits"] == limits
    assert env_of(deployment)[env_name("device")] == device


@pytest.mark.parametrize(
    ("variant", "cache"),
    [
        ("minimal", {"emptyDir": {"sizeLimit": "20Gi"}}),
        ("tiny", {"emptyDir": {"sizeLimit": "1Gi"}}),
        ("pvc-cache", {"persistentVolumeClaim": {"claimName": "models"}}),
    ],
)
def test_cache_volume(variant: str, cache: dict[str, Any]) -> None:
    deployment, _ = rendered(variant)
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert volumes[0] == {"name": CACHE_VOLUME, **cache}


def test_liveness_http_mode_and_startup_rounding() -> None:
    doc = minimal(probes={"startup": {"periodSeconds": 7, "budgetSeconds": 100}, "liveness": {"mode": "http"}})
    main = container(render(llms(doc), image_default=IMAGE)[0])
    assert main["startupProbe"]["failureThreshold"] == 15  # ceil(100 / 7): the budget is never cut short
    assert main["livenessProbe"]["httpGet"] == {"path": LIVEZ_PATH, "port": "http"}
    assert "exec" not in main["livenessProbe"]


def test_user_env_follows_kubellm_env_in_user_order() -> None:
    deployment, _ = rendered("auth-and-env")
    names = [var["name"] for var in container(deployment)["env"]]
    assert names[-2:] == ["KUBELLM_QUEUE_SIZE", "EXTRA"]
    assert env_of(deployment)[env_name("api_key")] == {"secretKeyRef": {"name": "key", "key": "token"}}


def test_image_pull_replicas_and_passthrough() -> None:
    doc = minimal(image="registry.local/inference:1", imagePullPolicy="Never", replicas=3)
    deployment, _ = render(llms(doc), image_default=IMAGE, replicas=0)
    assert deployment["spec"]["replicas"] == 0  # the operator's override (storage enforcement)
    assert container(deployment)["image"] == "registry.local/inference:1"
    assert container(deployment)["imagePullPolicy"] == "Never"
    assert container(rendered("minimal")[0])["image"] == IMAGE
    pod = rendered("affinity")[0]["spec"]["template"]["spec"]
    assert pod["affinity"] == VARIANTS["affinity"]["spec"]["affinity"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert DEFAULT_INFERENCE_IMAGE.startswith("ghcr.io/kubellm/inference:")


def test_nodeport_service() -> None:
    _, service = rendered("nodeport")
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP", "nodePort": 30500}
    ]


def test_endpoint_and_selector_string() -> None:
    assert endpoint(llms(VARIANTS["seed"])) == "mistral-7b.default.svc.cluster.local:5000"
    assert endpoint(llms(VARIANTS["nodeport"])) == "demo.ml.svc.cluster.local:8080"
    assert selector_string("demo") == "kubellm.dev/llmservice=demo"


SURGE = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
NO_SURGE = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
RECREATE = {"type": "Recreate"}


@pytest.mark.parametrize(
    ("spec", "strategy", "effective"),
    [
        ({}, SURGE, "Surge"),
        ({"resources": {"limits": {"nvidia.com/gpu": 1}}}, NO_SURGE, "NoSurge"),
        ({"storage": {"claimName": "models"}}, RECREATE, "Recreate"),
        ({"storage": {"claimName": "models"}, "rollout": {"strategy": "Surge"}}, SURGE, "Surge"),
        ({"resources": {"limits": {"nvidia.com/gpu": 1}}, "rollout": {"strategy": "Surge"}}, SURGE, "Surge"),
        ({"rollout": {"strategy": "Recreate"}}, RECREATE, "Recreate"),
        ({"rollout": {"strategy": "NoSurge"}}, NO_SURGE, "NoSurge"),
    ],
)
def test_rollout_strategy_automatic_default_and_forced(spec: dict[str, Any], strategy: Any, effective: str) -> None:
    service = llms(minimal(**spec))
    deployment, _ = render(service, image_default=IMAGE)
    assert deployment["spec"]["strategy"] == strategy
    chosen, why = service.spec.effective_rollout()
    assert chosen.value == effective
    assert why.startswith("set by spec.rollout" if "rollout" in spec else "automatic:")


def test_a_gpu_request_gets_the_cuda_image_unless_an_image_is_named() -> None:
    gpu = minimal(resources={"limits": {"nvidia.com/gpu": 1}})
    assert container(render(llms(gpu), image_default=IMAGE)[0])["image"] == DEFAULT_GPU_INFERENCE_IMAGE
    assert container(render(llms(gpu), image_default=IMAGE, gpu_image_default="cuda:1")[0])["image"] == "cuda:1"
    named = minimal(image="mine:cuda", resources={"limits": {"nvidia.com/gpu": 1}})
    assert container(render(llms(named), image_default=IMAGE)[0])["image"] == "mine:cuda"
    assert container(render(llms(minimal()), image_default=IMAGE)[0])["image"] == IMAGE
    # The GPU example names the CUDA image it needs rather than relying on any default.
    assert "cuda" in str(load_example("gpu-mistral-7b.yaml")["spec"]["image"])
