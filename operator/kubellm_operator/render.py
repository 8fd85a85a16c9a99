"""The pure manifest renderer: one LLMService in, its Deployment and Service out, as plain dicts.

No I/O and no clock: the same LLMService gives the same manifests, byte for byte once dumped, so the operator
can apply them idempotently and ``kubellm render`` previews exactly what the operator would create. The
operator adds ownerReferences (``kopf.adopt``); everything else about the children is decided here.
"""

from __future__ import annotations

import math
from typing import Any

from kubellm.contract import (
    DEFAULT_CACHE_DIR,
    DEFAULT_TERMINATION_MESSAGE_PATH,
    LIVENESS_PROBE_COMMAND,
    LIVEZ_PATH,
    METRICS_PATH,
    READYZ_PATH,
    SERVE_COMMAND,
    Device,
    ServerSettings,
    env_name,
)
from kubellm.quantity import to_quantity
from kubellm_operator.api import GROUP, LivenessMode, LLMService, RolloutStrategy, SecretKeyRef, StoragePlan

# The operator's default inference image (its settings reuse this), and `kubellm render`'s default --image.
DEFAULT_INFERENCE_IMAGE = "ghcr.io/kubellm/inference:0.1.0"
# The default for LLMServices that request a GPU and name no image: the CPU image's torch has no CUDA, and its server
# refuses KUBELLM_DEVICE=cuda. Built from Dockerfile.inference with TORCH_INDEX_URL set to a CUDA wheel index.
DEFAULT_GPU_INFERENCE_IMAGE = "ghcr.io/kubellm/inference:0.1.0-cuda"
# progressDeadlineSeconds beyond the startup budget: the Deployment default (600 s), for scheduling and the image pull.
PROGRESS_DEADLINE_MARGIN_SECONDS = 600
CONTAINER_NAME = "inference"
PORT_NAME = "http"
CACHE_VOLUME = "model-cache"
TMP_VOLUME = "tmp"
HF_HOME = f"{DEFAULT_CACHE_DIR}/huggingface"  # hub downloads land on the cache volume, not the read-only root
HOME_DIR = "/tmp"  # libraries that write under $HOME find a writable place
RUN_AS_USER = 10001  # the inference image's unprivileged user

# The server drains in-flight requests for drain_grace_s after SIGTERM; the kubelet's grace period adds room
# for the process to exit after that, so a drain is never cut short by SIGKILL.
DRAIN_GRACE_SECONDS = int(ServerSettings.model_fields["drain_grace_s"].default)
EXIT_HEADROOM_SECONDS = 15

# The instance label alone is not unique across apps; this one is kubellm's and never changes for a service.
SELECTOR_LABEL = f"{GROUP}/llmservice"


def selector_labels(name: str) -> dict[str, str]:
    """The labels that select an LLMService's pods (Deployment selector, Service selector, status.selector)."""
    return {SELECTOR_LABEL: name}


def selector_string(name: str) -> str:
    """`selector_labels` as a label-selector string, for the /scale subresource's status.selector."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(name).items()))


def child_labels(name: str) -> dict[str, str]:
    """Labels on every object and pod kubellm creates for the LLMService `name` (recommended labels + selector)."""
    return {
        "app.kubernetes.io/name": "kubellm-inference",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/part-of": "kubellm",
        "app.kubernetes.io/managed-by": "kubellm",
        **selector_labels(name),
    }


def namespace_of(llms: LLMService) -> str:
    return llms.metadata.namespace or "default"


def endpoint(llms: LLMService) -> str:
    """The in-cluster address of the Service: ``<name>.<namespace>.svc.cluster.local:<port>``."""
    return f"{llms.metadata.name}.{namespace_of(llms)}.svc.cluster.local:{llms.spec.service.port}"


def _metadata(llms: LLMService) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": llms.metadata.name}
    if llms.metadata.namespace:
        meta["namespace"] = llms.metadata.namespace
    meta["labels"] = child_labels(llms.metadata.name)
    return meta


def _secret_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _env(llms: LLMService) -> list[dict[str, Any]]:
    spec = llms.spec
    model = spec.model
    server_max = int(ServerSettings.model_fields["max_new_tokens"].default)
    values: dict[str, str] = {
        env_name("model"): model.name,
        env_name("dtype"): model.dtype.value,
        env_name("quantization"): model.quantization.value,
        env_name("compile"): model.compile.value,
        env_name("device"): (Device.cuda if spec.gpu_count() else Device.cpu).value,
        env_name("cache_dir"): DEFAULT_CACHE_DIR,
        env_name("port"): str(spec.service.port),
        env_name("default_max_new_tokens"): str(model.max_new_tokens),
        env_name("default_temperature"): repr(model.temperature),
        # The server's upper bound must admit the spec's default, or every default request would be refused.
        env_name("max_new_tokens"): str(max(server_max, model.max_new_tokens)),
        env_name("drain_grace_s"): str(DRAIN_GRACE_SECONDS),
        "HF_HOME": HF_HOME,
        "HOME": HOME_DIR,
    }
    if model.revision is not None:
        values[env_name("revision")] = model.revision
    if model.hub is not None and model.hub.endpoint is not None:
        values[env_name("hub_endpoint")] = model.hub.endpoint
    env: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in values.items()]
    if model.hub_token_secret_ref is not None:
        env.append(_secret_env(env_name("hub_token"), model.hub_token_secret_ref))
    if spec.auth is not None:
        env.append(_secret_env(env_name("api_key"), spec.auth.api_key_secret_ref))
    env.sort(key=lambda var: var["name"])
    # The user's variables come after kubellm's, in the user's order: $(VAR) references may depend on it.
    # Names kubellm sets are refused by the API (RESERVED_ENV_NAMES), so nothing here overrides the spec.
    env.extend(var.model_dump(by_alias=True, exclude_none=True) for var in spec.env)
    return env


def _probes(llms: LLMService) -> dict[str, Any]:
    policy = llms.spec.probes
    startup, readiness, liveness = policy.startup, policy.readiness, policy.liveness
    live_action: dict[str, Any] = (
        {"exec": {"command": list(LIVENESS_PROBE_COMMAND)}}
        if liveness.mode == LivenessMode.inference
        else {"httpGet": {"path": LIVEZ_PATH, "port": PORT_NAME}}
    )
    return {
        # The startup probe owns the model download and load; liveness and readiness start after it succeeds.
        "startupProbe": {
            "httpGet": {"path": READYZ_PATH, "port": PORT_NAME},
            "periodSeconds": startup.period_seconds,
            "timeoutSeconds": startup.timeout_seconds,
            "failureThreshold": math.ceil(startup.budget_seconds / startup.period_seconds),
        },
        "readinessProbe": {
            "httpGet": {"path": READYZ_PATH, "port": PORT_NAME},
            "periodSeconds": readiness.period_seconds,
            "timeoutSeconds": readiness.timeout_seconds,
            "failureThreshold": readiness.failure_threshold,
        },
        "livenessProbe": {
            **live_action,
            "periodSeconds": liveness.period_seconds,
            "timeoutSeconds": liveness.timeout_seconds,
            "failureThreshold": liveness.failure_threshold,
        },
    }


def _resources(llms: LLMService, plan: StoragePlan) -> dict[str, Any]:
    spec = llms.spec
    requests = {k: v for k, v in spec.resources.requests.as_dict().items() if k != "nvidia.com/gpu"}
    limits = {k: v for k, v in spec.resources.limits.as_dict().items() if k != "nvidia.com/gpu"}
    requests["ephemeral-storage"] = to_quantity(plan.request)
    limits["ephemeral-storage"] = to_quantity(plan.limit)
    gpus = spec.gpu_count()
    if gpus is not None:
        # An extended resource's request must equal its limit; the limit alone implies the request.
        limits["nvidia.com/gpu"] = gpus
    return {"requests": dict(sorted(requests.items())), "limits": dict(sorted(limits.items()))}


def _volumes(llms: LLMService, plan: StoragePlan) -> list[dict[str, Any]]:
    storage = llms.spec.storage
    cache: dict[str, Any] = {"name": CACHE_VOLUME}
    if storage.claim_name is not None:
        cache["persistentVolumeClaim"] = {"claimName": storage.claim_name}
    else:
        assert plan.cache_size is not None  # storage_plan sizes the emptyDir whenever no claim holds the cache
        cache["emptyDir"] = {"sizeLimit": to_quantity(plan.cache_size)}
    return [cache, {"name": TMP_VOLUME, "emptyDir": {}}]


def _container(llms: LLMService, image: str, plan: StoragePlan) -> dict[str, Any]:
    spec = llms.spec
    container: dict[str, Any] = {"name": CONTAINER_NAME, "image": image}
    if spec.image_pull_policy is not None:
        container["imagePullPolicy"] = spec.image_pull_policy
    container |= {
        "command": list(SERVE_COMMAND),
        "ports": [{"name": PORT_NAME, "containerPort": spec.service.port, "protocol": "TCP"}],
        "env": _env(llms),
        "resources": _resources(llms, plan),
        **_probes(llms),
        "volumeMounts": [
            {"name": CACHE_VOLUME, "mountPath": DEFAULT_CACHE_DIR},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        # The server writes why it exits (a failed model load) there: lastState.terminated.message tells the user,
        # and the operator's Degraded condition. An unexpected crash leaves its last log lines instead.
        "terminationMessagePath": DEFAULT_TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return container


def image_for(llms: LLMService, *, image_default: str, gpu_image_default: str = DEFAULT_GPU_INFERENCE_IMAGE) -> str:
    """spec.image, else the GPU default when a GPU is requested, else the default."""
    if llms.spec.image is not None:
        return llms.spec.image
    return gpu_image_default if llms.spec.gpu_count() is not None else image_default


def progress_deadline_seconds(llms: LLMService) -> int:
    """Covers the startup probe's whole budget plus the Deployment default for scheduling and pulling the image,
    so a slow but healthy first start is not reported as ProgressDeadlineExceeded mid-download."""
    startup = llms.spec.probes.startup
    budget = math.ceil(startup.budget_seconds / startup.period_seconds) * startup.period_seconds
    return budget + startup.timeout_seconds + PROGRESS_DEADLINE_MARGIN_SECONDS


def deployment_strategy(llms: LLMService, rollout: tuple[RolloutStrategy, str] | None = None) -> dict[str, Any]:
    """The Deployment strategy for the rollout strategy in effect (see LLMServiceSpec.effective_rollout)."""
    strategy, _ = rollout or llms.spec.effective_rollout()
    if strategy == RolloutStrategy.recreate:
        return {"type": "Recreate"}
    if strategy == RolloutStrategy.no_surge:
        return {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    # Keep serving capacity during a rollout: a new pod must be Ready before an old one goes.
    return {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def render_deployment(
    llms: LLMService,
    *,
    image_default: str,
    gpu_image_default: str = DEFAULT_GPU_INFERENCE_IMAGE,
    replicas: int | None = None,
    storage: StoragePlan | None = None,
    rollout: tuple[RolloutStrategy, str] | None = None,
) -> dict[str, Any]:
    """The Deployment; `replicas` overrides spec.replicas (the operator holds it at 0 when storage is enforced, and
    sets it from load with spec.autoscaling); `storage` and `rollout` are the storage plan and rollout strategy in
    effect, when the caller computed them."""
    spec = llms.spec
    storage = storage or spec.storage_plan()
    name = llms.metadata.name
    image = image_for(llms, image_default=image_default, gpu_image_default=gpu_image_default)
    pod_spec: dict[str, Any] = {
        # Service links would inject KUBELLM_PORT=tcp://... for a Service named "kubellm" and clash with settings.
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": DRAIN_GRACE_SECONDS + EXIT_HEADROOM_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(llms, image, storage)],
        "volumes": _volumes(llms, storage),
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(spec.node_selector.items()))
    if spec.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in spec.tolerations
        ]
    if spec.affinity is not None:
        pod_spec["affinity"] = spec.affinity.model_dump(by_alias=True, exclude_none=True, mode="json")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(llms),
        "spec": {
            "replicas": spec.fixed_replicas() if replicas is None else replicas,
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": progress_deadline_seconds(llms),
            "selector": {"matchLabels": selector_labels(name)},
            "strategy": deployment_strategy(llms, rollout),
            "template": {
                "metadata": {
                    "labels": child_labels(name),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(spec.service.port),
                        "prometheus.io/path": METRICS_PATH,
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def render_service(llms: LLMService) -> dict[str, Any]:
    """The Service in front of the inference pods (port name `http`, targetPort the container's `http`)."""
    service = llms.spec.service
    port: dict[str, Any] = {"name": PORT_NAME, "port": service.port, "targetPort": PORT_NAME, "protocol": "TCP"}
    if service.node_port is not None:
        port["nodePort"] = service.node_port
    metadata = _metadata(llms)
    if service.annotations:
        metadata["annotations"] = dict(sorted(service.annotations.items()))
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {"type": service.type.value, "selector": selector_labels(llms.metadata.name), "ports": [port]},
    }


def render(
    llms: LLMService,
    *,
    image_default: str,
    gpu_image_default: str = DEFAULT_GPU_INFERENCE_IMAGE,
    replicas: int | None = None,
    storage: StoragePlan | None = None,
    rollout: tuple[RolloutStrategy, str] | None = None,
) -> list[dict[str, Any]]:
    """Every child of `llms`, in apply order: the Deployment, then the Service."""
    deployment = render_deployment(
        llms,
        image_default=image_default,
        gpu_image_default=gpu_image_default,
        replicas=replicas,
        storage=storage,
        rollout=rollout,
    )
    return [deployment, render_service(llms)]
