"""The LLMService API (``kubellm.dev/v1alpha1``): pydantic models that are the one source of truth.

The CRD under ``crds/`` is generated from these models (``kubellm crd``), the renderer reads them, and the
operator validates every object it sees with them. Field names are camelCase on the wire (aliases) and
snake_case in Python. Constraints that span fields are written twice on purpose: as CEL rules for the
apiserver (``x-kubernetes-validations``) and as pydantic validators for the CLI, the operator and tests.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonDict, JsonValue

from kubellm.contract import CompileMode, DType, Quantization, env_name
from kubellm.quantity import QUANTITY_PATTERN, format_bytes, parse_quantity
from kubellm_operator.egress import BASE_URL_PATTERN, base_url_problem

GROUP = "kubellm.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LLMService"
PLURAL = "llmservices"
SINGULAR = "llmservice"
SHORT_NAMES = ["llms"]


def _check_quantity(value: Any) -> str:
    # A CRD int-or-string field rejects YAML floats (0.5), so the model does too, with the spelling that works.
    if isinstance(value, float):
        raise ValueError(f"{value!r} is a float; write a quantity string such as 500m or 1.5Gi")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a quantity such as 30Gi or 2, not {type(value).__name__}")
    parse_quantity(value)
    return str(value)


def _check_base_url(value: Any) -> Any:
    problem = base_url_problem(value) if isinstance(value, str) else None
    if problem is not None:
        raise ValueError(problem)
    return value


def _check_nonnegative_quantity(value: Any) -> str:
    text = _check_quantity(value)
    if parse_quantity(text) < 0:
        raise ValueError(f"{text!r} must not be negative")
    return text


# QUANTITY_PATTERN without the sign: the CRD rejects negative quantities just as the model does.
NONNEGATIVE_QUANTITY_PATTERN = QUANTITY_PATTERN.replace(r"^(\+|-)?", "^")

QUANTITY_MAX_LENGTH = 64

# In YAML, `cpu: 2` is an integer and `memory: 8Gi` a string; both are quantities.
Quantity = Annotated[
    str,
    BeforeValidator(_check_nonnegative_quantity),
    # maxLength also bounds the apiserver's cost estimate for the CEL rules that parse quantities.
    Field(
        max_length=QUANTITY_MAX_LENGTH,
        json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": NONNEGATIVE_QUANTITY_PATTERN},
    ),
]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# An LLMService's name becomes its Service's name, and a Service name must start with a letter (RFC 1035).
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# Label and annotation keys (an optional DNS-subdomain prefix and a name), and label values: the apiserver
# refuses a pod or Service whose nodeSelector or annotations break these, so the LLMService refuses them first.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# What the patterns mean, for messages the CRD's generated CEL rules give people.
PATTERN_MEANINGS = {
    QUALIFIED_NAME: "a label or annotation key: an optional DNS prefix and '/', then a name such as gpu.present",
    LABEL_VALUE: "a label value: letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
    DNS_SUBDOMAIN: "a DNS subdomain: lowercase letters, digits, '-' and '.', such as hf-token",
    DNS_1035_LABEL: "a DNS label: lowercase letters, digits and '-', starting with a letter, such as mistral-7b",
    ENV_NAME: "an environment variable name: letters, digits, '_', '-' and '.', not starting with a digit",
}
MAP_MAX_PROPERTIES = 64  # bounds the CEL cost of the key-format rule

QualifiedName = Annotated[str, StringConstraints(min_length=1, max_length=317, pattern=QUALIFIED_NAME)]
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE)]


class FieldError(ValueError):
    """A cross-field error that names the field at fault (a path relative to the model whose validator raised it).

    pydantic reports a model validator's error at the model itself; :func:`validation_messages` appends this path,
    so the user reads ``spec.storage.limit: ...`` rather than ``spec.storage: ...``.
    """

    def __init__(self, field: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.field = field


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields rejected (the CRD prunes or rejects them)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# ---------------------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------------------


class SecretKeyRef(_Model):
    """A key of a Secret in the LLMService's namespace."""

    name: str = Field(..., min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Secret name")
    key: str = Field(..., min_length=1, max_length=253, description="Key inside the Secret")


class HubSpec(_Model):
    """Where hub ids are resolved and downloaded from."""

    endpoint: Annotated[str, BeforeValidator(_check_base_url)] | None = Field(
        None,
        max_length=1024,
        json_schema_extra={"pattern": BASE_URL_PATTERN},
        description="Hub base URL, http(s)://host[:port] with no path, query or fragment (a mirror or an "
        "air-gapped proxy such as http://hub.internal:8090); it must be one the operator allows "
        "(allowedHubEndpoints). Default: the operator's hubEndpoint setting, else https://huggingface.co.",
    )


class ModelSpec(_Model):
    """Which model to serve, and the generation defaults for requests that name none."""

    name: str = Field(
        ...,
        min_length=1,
        max_length=512,
        description=(
            "Hugging Face repo id (mistralai/Mistral-7B-Instruct-v0.2), a path inside the image or cache "
            "volume, or embedded:smollm2-135m-instruct for the model shipped in the inference image."
        ),
    )
    revision: str | None = Field(None, max_length=256, description="Hub branch, tag or commit.")
    dtype: DType = Field(
        DType.auto,
        description="Weights dtype; auto picks bfloat16 on CPUs with native bf16 (AVX512-BF16 or AMX) and on GPUs "
        "that support it, float32 elsewhere.",
    )
    quantization: Quantization = Field(
        Quantization.none,
        description="Weight-only quantization of the linear layers at load time (CPU): none, int8 or int4.",
    )
    compile: CompileMode = Field(
        CompileMode.auto,
        description="Compiled decode step (torch.compile, Inductor): auto builds it in the background after the "
        "server is Ready, for CPU bfloat16/float32, and switches to it when built (cached on the model cache "
        "volume); off serves the eager step only.",
    )
    size_hint: Quantity | None = Field(
        None,
        description="Size of the weights (e.g. 15Gi), for storage planning. Default for hub models: the size the "
        "operator resolves from the hub (status.model.bytes); set it to work offline or to override.",
    )
    max_new_tokens: int = Field(256, ge=1, le=32768, description="Default max new tokens per request.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Default sampling temperature (0 = greedy).")
    hub_token_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding a Hugging Face token, for gated models such as Mistral."
    )
    hub: HubSpec | None = Field(None, description="The hub that serves model.name (a mirror or proxy).")


class ResourceList(_Model):
    """The resources kubellm lets an LLMService request or limit."""

    cpu: Quantity | None = None
    memory: Quantity | None = None
    ephemeral_storage: Quantity | None = Field(None, alias="ephemeral-storage")
    nvidia_gpu: Quantity | None = Field(None, alias="nvidia.com/gpu")

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump(by_alias=True, exclude_none=True).items()}


class Resources(_Model):
    """Container requests and limits (cpu, memory, ephemeral-storage, nvidia.com/gpu)."""

    requests: ResourceList = Field(default_factory=ResourceList)
    limits: ResourceList = Field(default_factory=ResourceList)

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> Resources:
        for key, request in self.requests.as_dict().items():
            limit = self.limits.as_dict().get(key)
            if limit is not None and parse_quantity(limit) < parse_quantity(request):
                raise FieldError(("limits", key), f"{limit} must be at least requests.{key} ({request})")
        return self


class EnvVarSource(_Model):
    """Where a variable's value comes from when it is not written inline."""

    secret_key_ref: SecretKeyRef | None = None


class EnvVar(_Model):
    """An extra environment variable for the inference container (a value, or a Secret key)."""

    name: str = Field(..., min_length=1, max_length=256, pattern=ENV_NAME)
    value: str | None = None
    value_from: EnvVarSource | None = None

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if (self.value is None) == (self.value_from is None):
            raise ValueError(f"env {self.name}: set exactly one of value or valueFrom")
        return self


class TolerationOperator(StrEnum):
    exists = "Exists"
    equal = "Equal"


class TaintEffect(StrEnum):
    no_schedule = "NoSchedule"
    prefer_no_schedule = "PreferNoSchedule"
    no_execute = "NoExecute"


class Toleration(_Model):
    """A core/v1 Toleration."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.key) || self.operator == 'Exists'",
                    "message": "a toleration without key needs operator Exists",
                    "fieldPath": ".operator",
                },
                {
                    "rule": "self.operator != 'Exists' || !has(self.value)",
                    "message": "a toleration with operator Exists takes no value",
                    "fieldPath": ".value",
                },
                {
                    "rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                    "message": "tolerationSeconds needs effect NoExecute",
                    "fieldPath": ".tolerationSeconds",
                },
            ]
        }
    )

    key: str | None = Field(None, max_length=317, description="Taint key (prefix/name); empty with operator Exists.")
    operator: TolerationOperator = TolerationOperator.equal
    value: str | None = Field(None, max_length=63)
    effect: TaintEffect | None = Field(None, description="Empty matches every effect.")
    toleration_seconds: int | None = Field(None, description="NoExecute only: how long the pod stays bound.")

    @model_validator(mode="after")
    def _operator_fits(self) -> Toleration:
        # The same rules the apiserver applies to a pod's tolerations (k8s.io/kubernetes pkg/apis/core/validation
        # validateTolerations), caught here rather than as a rejected Deployment at rollout.
        if self.key is None and self.operator != TolerationOperator.exists:
            raise FieldError(("operator",), "a toleration without key needs operator Exists")
        if self.operator == TolerationOperator.exists and self.value is not None:
            raise FieldError(("value",), "a toleration with operator Exists takes no value")
        if self.toleration_seconds is not None and self.effect != TaintEffect.no_execute:
            raise FieldError(("tolerationSeconds",), "tolerationSeconds needs effect NoExecute")
        return self


# ---------------------------------------------------------------------------------------------------------
# Affinity: core/v1 Affinity, typed, so the CRD and `kubellm render` refuse a malformed one naming the field,
# instead of the apiserver refusing the Deployment at rollout (or the storage check tripping over it).
# ---------------------------------------------------------------------------------------------------------


class NodeSelectorOperator(StrEnum):
    in_ = "In"
    not_in = "NotIn"
    exists = "Exists"
    does_not_exist = "DoesNotExist"
    gt = "Gt"
    lt = "Lt"


class LabelSelectorOperator(StrEnum):
    in_ = "In"
    not_in = "NotIn"
    exists = "Exists"
    does_not_exist = "DoesNotExist"


def _values_rule(with_numbers: bool) -> list[JsonValue]:
    rules: list[JsonValue] = [
        {
            "rule": "!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
            "message": "operator In and NotIn need at least one value",
            "fieldPath": ".values",
        },
        {
            "rule": "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",
            "message": "operator Exists and DoesNotExist take no values",
            "fieldPath": ".values",
        },
    ]
    if with_numbers:
        rules.append(
            {
                "rule": "!(self.operator in ['Gt', 'Lt']) || (has(self.values) && size(self.values) == 1 && "
                "self.values[0].matches('^-?[0-9]+$'))",
                "message": "operator Gt and Lt need exactly one integer value",
                "fieldPath": ".values",
            }
        )
    return rules


def _check_values(operator: str, values: list[str] | None) -> None:
    # k8s.io/kubernetes pkg/apis/core/validation validateNodeSelectorRequirement and
    # apimachinery validation ValidateLabelSelectorRequirement.
    count = len(values or [])
    if operator in ("In", "NotIn") and count == 0:
        raise FieldError(("values",), "operator In and NotIn need at least one value")
    if operator in ("Exists", "DoesNotExist") and count:
        raise FieldError(("values",), "operator Exists and DoesNotExist take no values")
    if operator in ("Gt", "Lt") and (count != 1 or not re.fullmatch(r"-?[0-9]+", (values or [""])[0])):
        raise FieldError(("values",), "operator Gt and Lt need exactly one integer value")


class NodeSelectorRequirement(_Model):
    """A node label (or field) requirement: key, operator, values."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _values_rule(True)})

    key: str = Field(..., min_length=1, max_length=317)
    operator: NodeSelectorOperator
    values: list[Annotated[str, StringConstraints(max_length=63)]] | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _values_fit(self) -> NodeSelectorRequirement:
        _check_values(self.operator.value, self.values)
        return self


class NodeSelectorTerm(_Model):
    """Requirements ANDed together; an empty term matches no node."""

    match_expressions: list[NodeSelectorRequirement] | None = Field(None, max_length=32)
    match_fields: list[NodeSelectorRequirement] | None = Field(None, max_length=32)


class NodeSelector(_Model):
    """Terms ORed together."""

    node_selector_terms: list[NodeSelectorTerm] = Field(..., min_length=1, max_length=32)


class PreferredSchedulingTerm(_Model):
    weight: int = Field(..., ge=1, le=100)
    preference: NodeSelectorTerm


class NodeAffinity(_Model):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = Field(
        None, max_length=32
    )


class LabelSelectorRequirement(_Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _values_rule(False)})

    key: QualifiedName
    operator: LabelSelectorOperator
    values: list[Annotated[str, StringConstraints(max_length=63)]] | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _values_fit(self) -> LabelSelectorRequirement:
        _check_values(self.operator.value, self.values)
        return self


class LabelSelector(_Model):
    match_labels: dict[QualifiedName, LabelValue] | None = Field(None, max_length=MAP_MAX_PROPERTIES)
    match_expressions: list[LabelSelectorRequirement] | None = Field(None, max_length=32)


class PodAffinityTerm(_Model):
    label_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    namespaces: list[Annotated[str, StringConstraints(max_length=63, pattern=DNS_LABEL)]] | None = Field(
        None, max_length=32
    )
    topology_key: str = Field(..., min_length=1, max_length=317, pattern=QUALIFIED_NAME)
    match_label_keys: list[QualifiedName] | None = Field(None, max_length=32)
    mismatch_label_keys: list[QualifiedName] | None = Field(None, max_length=32)


class WeightedPodAffinityTerm(_Model):
    weight: int = Field(..., ge=1, le=100)
    pod_affinity_term: PodAffinityTerm


class PodAffinity(_Model):
    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = Field(None, max_length=32)
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = Field(
        None, max_length=32
    )


class Affinity(_Model):
    """A core/v1 Affinity: node affinity, pod affinity and pod anti-affinity."""

    node_affinity: NodeAffinity | None = None
    pod_affinity: PodAffinity | None = None
    pod_anti_affinity: PodAffinity | None = None


class RolloutStrategy(StrEnum):
    auto = "Auto"
    surge = "Surge"
    no_surge = "NoSurge"
    recreate = "Recreate"


class RolloutSpec(_Model):
    """How a changed spec replaces the running pods."""

    strategy: RolloutStrategy = Field(
        RolloutStrategy.auto,
        description=(
            "Auto (default): Recreate with storage.claimName (a ReadWriteOnce claim cannot be mounted by a second "
            "pod on another node), NoSurge with a GPU request (a surge pod would wait for a spare GPU), Surge "
            "otherwise. Surge: one extra pod, never below spec.replicas ready. NoSurge: replace one pod at a "
            "time (one replica fewer during the rollout). Recreate: stop every old pod first."
        ),
    )


class ServiceType(StrEnum):
    cluster_ip = "ClusterIP"
    node_port = "NodePort"
    load_balancer = "LoadBalancer"


class ServiceSpec(_Model):
    """How the inference server is exposed."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.nodePort) || self.type != 'ClusterIP'",
                    "message": "nodePort needs service type NodePort or LoadBalancer",
                    "fieldPath": ".nodePort",
                }
            ]
        }
    )

    type: ServiceType = Field(ServiceType.cluster_ip, description="ClusterIP, NodePort or LoadBalancer.")
    port: int = Field(5000, ge=1, le=65535, description="Service port (the seed used 5000).")
    node_port: int | None = Field(None, ge=30000, le=32767, description="Fixed node port (NodePort/LoadBalancer).")
    annotations: dict[QualifiedName, str] = Field(
        default_factory=dict, max_length=MAP_MAX_PROPERTIES, description="Annotations for the Service."
    )

    @model_validator(mode="after")
    def _node_port_needs_type(self) -> ServiceSpec:
        if self.node_port is not None and self.type == ServiceType.cluster_ip:
            raise FieldError(("nodePort",), "nodePort needs service type NodePort or LoadBalancer")
        return self


class AuthSpec(_Model):
    """API-key authentication for inference routes; health and metrics stay open."""

    api_key_secret_ref: SecretKeyRef = Field(..., description="Secret key holding the API key (bearer token).")


class StartupProbe(_Model):
    """The startup probe owns the model load window: no guessed initialDelaySeconds."""

    period_seconds: int = Field(10, ge=1, le=3600)
    timeout_seconds: int = Field(5, ge=1, le=3600)
    budget_seconds: int = Field(
        1800, ge=10, le=86400, description="How long the model may take to download and load before a restart."
    )


class ReadinessProbe(_Model):
    """GET /readyz: the model is loaded and the generation loop answers."""

    period_seconds: int = Field(10, ge=1, le=3600)
    timeout_seconds: int = Field(5, ge=1, le=3600)
    failure_threshold: int = Field(3, ge=1, le=1000)


class LivenessMode(StrEnum):
    http = "http"
    inference = "inference"


class LivenessProbe(_Model):
    """http: the generation loop is alive (cheap). inference: one short real generation, like the seed's."""

    mode: LivenessMode = Field(LivenessMode.http, description="http (cheap /livez) or inference (a real generation).")
    period_seconds: int = Field(30, ge=1, le=3600)
    timeout_seconds: int = Field(10, ge=1, le=3600)
    failure_threshold: int = Field(3, ge=1, le=1000)


class ProbesSpec(_Model):
    """Probe policy: startup owns the load window, readiness means "can generate now", liveness "loop alive"."""

    startup: StartupProbe = Field(default_factory=StartupProbe)
    readiness: ReadinessProbe = Field(default_factory=ReadinessProbe)
    liveness: LivenessProbe = Field(default_factory=LivenessProbe)


class StorageSpec(_Model):
    """Ephemeral storage: what the pod needs on the node, and what the pre-flight check demands."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.limit) || !has(self.request) || "
                    "quantity(string(self.limit)).compareTo(quantity(string(self.request))) >= 0",
                    "message": "storage.limit must be at least storage.request",
                    "fieldPath": ".limit",
                },
                {
                    "rule": "!has(self.claimName) || !has(self.cacheSize)",
                    "message": "set either claimName (a PVC holds the cache) or cacheSize (an emptyDir), not both",
                    "fieldPath": ".claimName",
                },
            ]
        }
    )

    request: Quantity | None = Field(
        None,
        description="ephemeral-storage request of the pod. Default: cacheSize plus 1Gi (or 2Gi with claimName).",
    )
    limit: Quantity | None = Field(None, description="ephemeral-storage limit of the pod (eviction above it).")
    cache_size: Quantity | None = Field(
        None, description="sizeLimit of the emptyDir model cache. Default: 1.2 x model.sizeHint, else 20Gi."
    )
    claim_name: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN, description="Existing PVC for the model cache instead."
    )
    min_node_free: Quantity | None = Field(
        None, description="Free node storage the pre-flight check requires. Default: the request."
    )
    enforce: bool = Field(False, description="Hold replicas at 0 while no node passes the storage pre-flight check.")

    @model_validator(mode="after")
    def _consistent(self) -> StorageSpec:
        limit, request = self.limit, self.request
        if limit is not None and request is not None and parse_quantity(limit) < parse_quantity(request):
            raise FieldError(("limit",), f"storage.limit ({limit}) must be at least storage.request ({request})")
        if self.claim_name is not None and self.cache_size is not None:
            raise FieldError(
                ("claimName",), "set either claimName (a PVC holds the cache) or cacheSize (an emptyDir), not both"
            )
        return self


GIB = 2**30
DEFAULT_CACHE_SIZE = 20 * GIB
CACHE_OVER_SIZE_HINT = Decimal("1.2")  # room for tokenizer files, conversions and a partial re-download
POD_OVERHEAD = 1 * GIB  # logs, /tmp and the container's writable layer beside the cache
POD_OVERHEAD_WITH_CLAIM = 2 * GIB


@dataclass(frozen=True)
class StoragePlan:
    """The storage an LLMService needs, in bytes, with every default resolved."""

    cache_size: int | None  # emptyDir sizeLimit; None when a PVC holds the cache
    request: int  # ephemeral-storage request of the pod
    limit: int  # ephemeral-storage limit of the pod
    min_node_free: int  # what the pre-flight check requires of a node (before headroom)


def _ceil_bytes(value: Decimal) -> int:
    return math.ceil(value)


def _round_up_gib(value: Decimal) -> int:
    return math.ceil(value / GIB) * GIB


# The inference server settings the renderer always writes into the container, so a user's `env` cannot
# override them and silently disagree with the spec (the model, the port, the cache on its volume, the secrets).
RENDERED_SETTINGS = (
    "model",
    "revision",
    "dtype",
    "quantization",
    "compile",
    "device",
    "cache_dir",
    "hub_token",
    "hub_endpoint",
    "api_key",
    "port",
    "default_max_new_tokens",
    "default_temperature",
    "max_new_tokens",
    "drain_grace_s",
)
# HF_ENDPOINT is where the server sends the hub token when spec.model.hub.endpoint is unset: set through env, it
# would reach an address the operator never checked (issue 19: the allowed hub endpoints apply to the spec field).
RESERVED_ENV_NAMES = tuple(
    sorted([env_name(field) for field in RENDERED_SETTINGS] + ["HF_ENDPOINT", "HF_HOME", "HOME"])
)
_RESERVED_HINT = "set it through the LLMService fields (model, service.port, auth, ...) instead"
ENV_MAX_ITEMS = 100  # bounds the CEL cost of the reserved-name rule for the apiserver's estimator


def _env_rule() -> JsonDict:
    names = ", ".join(f"'{name}'" for name in RESERVED_ENV_NAMES)
    return {
        "rule": f"self.all(e, !(e.name in [{names}]))",
        "message": f"env names {', '.join(RESERVED_ENV_NAMES)} are set by kubellm; {_RESERVED_HINT}",
    }


class AutoscalingSpec(_Model):
    """Replicas from load: the operator sets the Deployment's replicas from the requests in flight and queued."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must not exceed maxReplicas",
                    "fieldPath": ".minReplicas",
                }
            ]
        }
    )

    min_replicas: int = Field(
        1, ge=0, le=1000, description="Fewest pods; 0 scales to zero when idle (the gateway wakes it on a request)."
    )
    max_replicas: int = Field(..., ge=1, le=1000, description="Most pods.")
    target_requests_per_replica: int = Field(
        8, ge=1, le=10000, description="Requests in flight and queued that one pod is meant to carry."
    )
    scale_down_delay_seconds: int = Field(
        300, ge=0, le=86400, description="How long demand must stay below the replicas before they are reduced."
    )

    @model_validator(mode="after")
    def _min_within_max(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise FieldError(
                ("minReplicas",), f"minReplicas ({self.min_replicas}) must not exceed maxReplicas ({self.max_replicas})"
            )
        return self


class GatewaySpec(_Model):
    """How the shared gateway (``kubellm gateway``) treats this LLMService."""

    enabled: bool = Field(
        True,
        description="Serve this LLMService on the shared OpenAI endpoint of the gateways that watch its namespace; "
        "false keeps it off (reachable on its own Service only).",
    )


DEFAULT_REPLICAS = 1
REPLICAS_WITH_AUTOSCALING = (
    "spec.replicas and spec.autoscaling exclude each other: with autoscaling the operator sets the replica count "
    "(remove replicas and use autoscaling.minReplicas and maxReplicas; kubectl scale and HPAs cannot set it either)"
)


class LLMServiceSpec(_Model):
    """The desired state of one served model."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.autoscaling) || !has(self.replicas)",
                    "message": REPLICAS_WITH_AUTOSCALING,
                    "fieldPath": ".replicas",
                }
            ]
        }
    )

    model: ModelSpec
    replicas: int | None = Field(
        None,
        ge=0,
        le=1000,
        description=f"Inference pods (0 allowed; /scale subresource). Default {DEFAULT_REPLICAS}; "
        "not with autoscaling, which sets the count itself.",
    )
    autoscaling: AutoscalingSpec | None = Field(
        None, description="Replicas from load (requests in flight and queued), between minReplicas and maxReplicas."
    )
    gateway: GatewaySpec = Field(default_factory=GatewaySpec, description="The shared gateway's view of it.")
    image: str | None = Field(None, max_length=1024, description="Inference image. Default: the operator's.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Pull policy of the inference image. Default: Kubernetes' (IfNotPresent unless :latest)."
    )
    resources: Resources = Field(
        default_factory=Resources,
        description="Requests and limits of the inference container; ephemeral-storage is best set in storage.",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=ENV_MAX_ITEMS,
        description="Extra environment for the inference container (names kubellm sets itself are refused).",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "x-kubernetes-validations": [_env_rule()],
        },
    )
    node_selector: dict[QualifiedName, LabelValue] = Field(
        default_factory=dict, max_length=MAP_MAX_PROPERTIES, description="Node labels the pods require."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Tolerations for the pods (GPU nodes are often tainted)."
    )
    affinity: Affinity | None = Field(None, description="A core/v1 Affinity for the pods.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="How a changed spec replaces the pods.")
    service: ServiceSpec = Field(default_factory=ServiceSpec, description="The Service in front of the pods.")
    auth: AuthSpec | None = Field(None, description="Require an API key on inference routes.")
    probes: ProbesSpec = Field(default_factory=ProbesSpec, description="Startup, readiness and liveness policy.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Model cache and ephemeral storage.")

    @model_validator(mode="after")
    def _one_ephemeral_request(self) -> LLMServiceSpec:
        if self.autoscaling is not None and self.replicas is not None:
            raise FieldError(("replicas",), REPLICAS_WITH_AUTOSCALING)
        for kind in ("request", "limit"):
            in_storage = getattr(self.storage, kind)
            listed = (self.resources.requests if kind == "request" else self.resources.limits).ephemeral_storage
            if in_storage is not None and listed is not None and parse_quantity(in_storage) != parse_quantity(listed):
                raise FieldError(
                    ("storage", kind),
                    f"storage.{kind} ({in_storage}) and resources.{kind}s.ephemeral-storage ({listed}) disagree; "
                    "set one of them",
                )
        seen: set[str] = set()
        for index, var in enumerate(self.env):
            if var.name in RESERVED_ENV_NAMES:
                raise FieldError(("env", index, "name"), f"{var.name} is set by kubellm; {_RESERVED_HINT}")
            if var.name in seen:
                raise FieldError(("env", index, "name"), f"{var.name} is listed twice")
            seen.add(var.name)
        return self

    def fixed_replicas(self) -> int:
        """The replicas before any load is seen: spec.replicas (default 1), or autoscaling.minReplicas."""
        if self.autoscaling is not None:
            return self.autoscaling.min_replicas
        return DEFAULT_REPLICAS if self.replicas is None else self.replicas

    def storage_plan(self) -> StoragePlan:
        """Resolve the storage defaults: the one place the renderer and the pre-flight check read them."""
        storage = self.storage
        cache: int | None = None
        if storage.claim_name is None:
            if storage.cache_size is not None:
                cache = _ceil_bytes(parse_quantity(storage.cache_size))
            elif self.model.size_hint is not None:
                cache = _round_up_gib(parse_quantity(self.model.size_hint) * CACHE_OVER_SIZE_HINT)
            else:
                cache = DEFAULT_CACHE_SIZE
        explicit_request = storage.request or self.resources.requests.ephemeral_storage
        if explicit_request is not None:
            request = _ceil_bytes(parse_quantity(explicit_request))
        else:
            request = cache + POD_OVERHEAD if cache is not None else POD_OVERHEAD_WITH_CLAIM
        explicit_limit = storage.limit or self.resources.limits.ephemeral_storage
        limit = _ceil_bytes(parse_quantity(explicit_limit)) if explicit_limit is not None else request
        min_free = storage.min_node_free
        min_node_free = _ceil_bytes(parse_quantity(min_free)) if min_free is not None else request
        return StoragePlan(cache_size=cache, request=request, limit=limit, min_node_free=min_node_free)

    def gpu_count(self) -> str | None:
        """The nvidia.com/gpu count asked for (the limit, else the request); None when no GPU is wanted."""
        count = self.resources.limits.nvidia_gpu or self.resources.requests.nvidia_gpu
        return count if count is not None and parse_quantity(count) > 0 else None

    def effective_rollout(self) -> tuple[RolloutStrategy, str]:
        """The rollout strategy in effect (never Auto) and why, in words for status.rollout."""
        chosen = self.rollout.strategy
        if chosen != RolloutStrategy.auto:
            return chosen, "set by spec.rollout.strategy"
        if self.storage.claim_name is not None:
            return RolloutStrategy.recreate, (
                f"automatic: storage.claimName {self.storage.claim_name} may be ReadWriteOnce, which a second pod on "
                "another node cannot mount (set spec.rollout.strategy: Surge for a ReadWriteMany claim)"
            )
        if self.gpu_count() is not None:
            return RolloutStrategy.no_surge, (
                "automatic: a GPU request; a surge pod would wait for a spare GPU (set spec.rollout.strategy: Surge "
                "when the pool has one)"
            )
        return RolloutStrategy.surge, "automatic: no GPU and no claim, so one extra pod keeps every replica serving"

    def problems(self, plan: StoragePlan | None = None) -> list[str]:
        """Constraints the schema accepts but that can never work; the operator reports them as InvalidSpec
        (``plan``: the storage plan, when the caller has it)."""
        found: list[str] = []
        plan = plan or self.storage_plan()
        if self.model.size_hint is not None:
            size = parse_quantity(self.model.size_hint)
            if plan.cache_size is not None and plan.cache_size < size:
                found.append(
                    f"storage.cacheSize ({format_bytes(plan.cache_size)}) is smaller than model.sizeHint "
                    f"({self.model.size_hint}): the download cannot fit"
                )
            if plan.cache_size is not None and plan.limit < size:  # an emptyDir cache counts toward it
                found.append(
                    f"storage.limit ({format_bytes(plan.limit)}) is smaller than model.sizeHint "
                    f"({self.model.size_hint}): the pod would be evicted while downloading"
                )
        gpus = {
            kind: listed.nvidia_gpu
            for kind, listed in (("requests", self.resources.requests), ("limits", self.resources.limits))
            if listed.nvidia_gpu is not None
        }
        if any(parse_quantity(count) % 1 for count in gpus.values()):
            found.append("resources nvidia.com/gpu must be a whole number of GPUs")
        elif len(gpus) == 2 and parse_quantity(gpus["requests"]) != parse_quantity(gpus["limits"]):
            found.append("resources.requests and resources.limits of nvidia.com/gpu must be equal (or set only limits)")
        if plan.cache_size is not None and plan.limit < plan.cache_size:
            found.append(
                f"storage.limit ({format_bytes(plan.limit)}) is smaller than the cache "
                f"({format_bytes(plan.cache_size)}): a full cache gets the pod evicted"
            )
        return found


# ---------------------------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------------------------


class Phase(StrEnum):
    pending = "Pending"
    progressing = "Progressing"
    ready = "Ready"
    degraded = "Degraded"
    failed = "Failed"


class ConditionStatus(StrEnum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(_Model):
    """metav1.Condition."""

    type: str
    status: ConditionStatus
    reason: str = Field(..., pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class StorageStatus(_Model):
    """The result of the last storage pre-flight check."""

    required: str | None = Field(None, description="Free node storage needed (request plus headroom).")
    fitting_nodes: int | None = Field(
        None, description="Eligible nodes with enough free storage (shown when none has: the verdict is False)."
    )
    eligible_nodes: int | None = Field(
        None, description="Nodes the pods may schedule on (shown when none has enough free storage)."
    )
    nodes_seen: int = Field(0, description="All nodes the operator sees.")
    best_node: str | None = Field(None, description="The eligible node with the most free storage (when none fits).")
    best_node_free: str | None = Field(None, description="Its free storage, rounded down to whole GiB.")
    basis: str | None = Field(None, description="How free space was counted (the kubelet summary, or requests).")


class RolloutStatus(_Model):
    """The rollout strategy in effect, and why (spec.rollout.strategy Auto resolves to one of the others)."""

    strategy: RolloutStrategy
    reason: str


class ModelStatus(_Model):
    """What the operator resolved model.name to before rolling out; pods load exactly this commit."""

    name: str | None = Field(None, description="The model as named in the spec.")
    endpoint: str | None = Field(None, description="The hub it was resolved on.")
    revision: str | None = Field(None, description="The revision asked for (default main).")
    commit: str | None = Field(None, description="The commit the revision resolved to; pods load this one.")
    files: list[str] = Field(default_factory=list, description="The files the server downloads.")
    bytes: int | None = Field(None, description="Their total size in bytes.")
    size: str | None = Field(None, description="The same, as a quantity (e.g. 14.5Gi).")
    parameters: int | None = Field(None, description="Parameter count from the safetensors metadata.")
    dtype: str | None = Field(None, description="Dtype of the stored weights (the largest share), e.g. BF16.")
    error: str | None = Field(None, description="Why the last resolution failed, if it did.")


class LoadingStatus(_Model):
    """Model download and load progress of the pods that are not ready yet."""

    phase: str | None = Field(None, description="resolving, downloading, converting, loading or warming up.")
    bytes_done: int | None = None
    bytes_total: int | None = None
    bytes_per_second: float | None = None
    message: str | None = Field(None, description="e.g. Downloading 6.2/14.5Gi (43%), 38.0MiB/s")


class AutoscalingStatus(_Model):
    """The autoscaler's last decision (spec.autoscaling)."""

    desired_replicas: int | None = Field(None, description="Replicas the autoscaler asks of the Deployment.")
    demand: float | None = Field(
        None, description="Requests in flight and queued on the pods, plus those the gateways hold."
    )
    held: int | None = Field(None, description="Of the demand: requests the gateways hold for this LLMService.")
    last_scale_time: str | None = Field(None, description="When desiredReplicas last changed.")
    reason: str | None = Field(None, description="Why desiredReplicas is what it is (one CamelCase word).")
    message: str | None = Field(None, description="The same, for people.")


class LLMServiceStatus(_Model):
    """What the operator observed; written by the operator only."""

    observed_generation: int | None = Field(None, description="The metadata.generation this status describes.")
    phase: Phase | None = Field(None, description="A summary for people; the conditions carry the reasons.")
    replicas: int | None = Field(None, description="Pods of the Deployment (the /scale subresource's status).")
    ready_replicas: int | None = Field(None, description="Pods that pass readiness (the model can generate).")
    updated_replicas: int | None = Field(None, description="Pods running the current spec.")
    ready: str | None = Field(None, description="ready/desired, for kubectl get.")
    selector: str | None = Field(None, description="Label selector of the pods (for the /scale subresource).")
    endpoint: str | None = Field(None, description="In-cluster address: <name>.<namespace>.svc.cluster.local:<port>.")
    storage: StorageStatus | None = Field(None, description="The last storage pre-flight check.")
    rollout: RolloutStatus | None = Field(None, description="The Deployment's rollout strategy in effect.")
    model: ModelStatus | None = Field(None, description="The resolved model: commit, files, bytes, parameters.")
    loading: LoadingStatus | None = Field(None, description="Download and load progress while pods start.")
    autoscaling: AutoscalingStatus | None = Field(None, description="The autoscaler's last decision.")
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


# ---------------------------------------------------------------------------------------------------------
# The resource
# ---------------------------------------------------------------------------------------------------------


class ObjectMeta(BaseModel):
    """The parts of metadata kubellm reads; everything else is kept as it is."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(..., min_length=1, max_length=63, pattern=DNS_1035_LABEL)
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class LLMService(_Model):
    """A served LLM: one Deployment of the kubellm inference server and one Service in front of it."""

    api_version: Literal["kubellm.dev/v1alpha1"] = "kubellm.dev/v1alpha1"
    kind: Literal["LLMService"] = "LLMService"
    metadata: ObjectMeta
    spec: LLMServiceSpec
    status: LLMServiceStatus | None = None

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> LLMService:
        """Validate a Kubernetes object (as read from the API or a YAML file)."""
        return cls.model_validate(obj)


# ---------------------------------------------------------------------------------------------------------
# Error messages for people
# ---------------------------------------------------------------------------------------------------------


def _model_at(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class found at `path` (wire names) below LLMService, or None when the path leaves the models."""
    current: Any = LLMService
    for part in path:
        if isinstance(part, int):
            continue
        field = next(
            (info for name, info in current.model_fields.items() if part in (name, info.alias)),
            None,
        )
        if field is None:
            return None
        current = next((t for t in _model_types(field.annotation) if issubclass(t, BaseModel)), None)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _model_types(annotation: Any) -> list[type]:
    args = getattr(annotation, "__args__", None)
    if args:  # Optional[X], list[X], X | None
        return [t for arg in args for t in _model_types(arg)]
    return [annotation] if isinstance(annotation, type) else []


def format_path(path: tuple[str | int, ...]) -> str:
    """("spec", "env", 0, "name") -> "spec.env[0].name"; a map key pydantic marks "[key]" reads "(key)"."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":
            text += " (key)"
        else:
            text += f".{part}" if text else part
    return text


# What a wrong-typed value should have been, in YAML words (pydantic says "instance of NodeAffinity").
_TYPE_WORDS = {
    "model_type": "a mapping (key: value fields)",
    "model_attributes_type": "a mapping (key: value fields)",
    "dict_type": "a mapping (key: value fields)",
    "list_type": "a list",
    "string_type": "a string",
}


def _json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def validation_messages(error: ValidationError) -> list[str]:
    """One ``field.path: what is wrong and what is allowed`` line per error, paths spelled as in the YAML."""
    lines: list[str] = []
    for item in error.errors():
        path = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            path += cause.field
        if item["type"] == "extra_forbidden":
            parent = _model_at(path[:-1])
            allowed = sorted(info.alias or name for name, info in parent.model_fields.items()) if parent else []
            message = "unknown field" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        elif item["type"] == "missing":
            message = "required field is missing"
        elif item["type"] in _TYPE_WORDS:
            given = item.get("input")
            message = f"must be {_TYPE_WORDS[item['type']]}, not {_json_type_name(given)}"
        elif item["type"] == "string_pattern_mismatch":
            pattern = (item.get("ctx") or {}).get("pattern", "")
            message = f"must be {PATTERN_MEANINGS[pattern]}" if pattern in PATTERN_MEANINGS else message
        lines.append(f"{format_path(path) or '(document)'}: {message}")
    return lines
