"""The operator's configuration: one pydantic-settings object, from the environment and `kubellm operator` flags.

Every field can be set as ``KUBELLM_OPERATOR_<FIELD>`` (e.g. ``KUBELLM_OPERATOR_NAMESPACES=team-a,team-b``) or as
a flag (``--namespaces team-a,team-b``); flags win over the environment. Everything is validated before the
operator connects anywhere, so a typo fails at start with the field named, not in the first reconcile.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kubellm.quantity import format_bytes, parse_quantity
from kubellm.settings import flag, load, settings_parser
from kubellm_operator.api import DNS_LABEL, ServiceType
from kubellm_operator.egress import EgressPolicy, base_url_problem, endpoint_key
from kubellm_operator.leader import LEASE_DURATION_S, RENEW_DEADLINE_S, RETRY_PERIOD_S
from kubellm_operator.policy import TenantPolicy, image_allowed
from kubellm_operator.render import DEFAULT_GPU_INFERENCE_IMAGE, DEFAULT_INFERENCE_IMAGE
from kubellm_operator.resolve import DEFAULT_HUB_ENDPOINT
from kubellm_operator.storage import parse_headroom

ENV_PREFIX = "KUBELLM_OPERATOR_"
FIELD_MANAGER = "kubellm"
ALL_NAMESPACES = "*"
# Where the Hugging Face Hub sends file downloads (a safetensors header read by a mirror-less resolution).
DEFAULT_HUB_REDIRECT_HOSTS = (
    "cdn-lfs.huggingface.co",
    "cdn-lfs.hf.co",
    "cdn-lfs-us-1.huggingface.co",
    "cdn-lfs-us-1.hf.co",
    "cdn-lfs-eu-1.hf.co",
    "cas-bridge.xethub.hf.co",
)


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class LogLevel(StrEnum):
    debug = "DEBUG"
    info = "INFO"
    warning = "WARNING"
    error = "ERROR"


class OperatorSettings(BaseSettings):
    """Everything `kubellm operator` reads at start (env prefix ``KUBELLM_OPERATOR_``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Namespaces to watch, comma-separated; empty or '*' watches all (cluster-wide).",
    )
    kubeconfig: str | None = Field(
        None, description="Kubeconfig file; default: in-cluster service account, else $KUBECONFIG / ~/.kube/config."
    )
    inference_image: str = Field(
        DEFAULT_INFERENCE_IMAGE, min_length=1, description="Image for LLMServices that name none."
    )
    gpu_inference_image: str = Field(
        DEFAULT_GPU_INFERENCE_IMAGE,
        min_length=1,
        description="CUDA image for LLMServices that request a GPU and name no image (the default image is CPU-only).",
    )
    storage_headroom: str = Field("2Gi", description="Free node storage required beyond an LLMService's request.")
    summary_refresh_s: float = Field(
        60.0, ge=0, description="How often kubelet stats summaries are read (nodes/proxy); 0 turns them off."
    )
    storage_retry_s: float = Field(
        60.0, gt=0, description="Retry delay while storage.enforce holds an LLMService at 0 replicas."
    )
    hub_endpoint: str | None = Field(
        None,
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="Hub for LLMServices that name none in spec.model.hub.endpoint (a mirror or proxy); "
        "default https://huggingface.co.",
    )
    allowed_hub_endpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hub endpoints an LLMService may name in spec.model.hub.endpoint, comma-separated base URLs; "
        "empty: https://huggingface.co and --hub-endpoint. Another endpoint: Degraded/HubEndpointNotAllowed, no "
        "request made.",
    )
    hub_redirect_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_HUB_REDIRECT_HOSTS),
        description="Hosts a hub may redirect the operator to besides its own origin (the Hub's file CDNs), "
        "comma-separated.",
    )
    egress_allow_loopback: bool = Field(
        False,
        description="Outbound calls (hub, the pods' /loadz) may reach loopback addresses (127.0.0.0/8, ::1): a hub "
        "on the operator's own host, pods on a single-machine cluster. Link-local and metadata addresses are "
        "refused always.",
    )
    egress_allow_private: bool = Field(
        False,
        description="Hub requests may reach private and cluster-internal ranges (10/8, 172.16/12, 192.168/16, "
        "100.64/10, fc00::/7): an in-cluster mirror. The pods' /loadz may always (pod IPs are there).",
    )
    hub_deadline_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Wall-clock deadline of one hub resolution (token read, model info, config.json), run in the "
        "background; past it the LLMService shows Degraded/HubUnreachable.",
    )
    loadz_deadline_s: float = Field(
        2.0, gt=0, le=60, description="Wall-clock deadline of one read of a loading pod's /loadz (in the background)."
    )
    fetch_workers: int = Field(
        4, ge=1, le=64, description="Threads that run hub resolutions and /loadz reads (one per LLMService at a time)."
    )
    download_bandwidth: str = Field(
        "50Mi", description="Assumed download bandwidth per second (a quantity), for derived startup budgets."
    )
    log_format: LogFormat = Field(LogFormat.text, description="text or json.")
    log_level: LogLevel = Field(LogLevel.info, description="DEBUG, INFO, WARNING or ERROR.")
    health_host: str = Field("0.0.0.0", description="Address of the liveness and metrics endpoint.")
    health_port: int = Field(8080, ge=0, le=65535, description="Port of /healthz and /metrics; 0 turns it off.")
    standalone: bool = Field(
        True, description="Run without Kopf peering (one replica). Turn off to run several replicas with peering."
    )
    peering_name: str = Field("kubellm", min_length=1, description="Kopf peering object when not standalone.")
    priority: int = Field(0, description="Kopf peering priority of this replica (highest one works).")
    leader_election: bool = Field(
        True,
        description="Run as one of several replicas: only the holder of the leader Lease watches and writes; the "
        "others stand by (alive, /readyz 503) and take over when it stops renewing.",
    )
    leader_election_namespace: str = Field(
        "kubellm-system", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Namespace of the leader Lease."
    )
    leader_election_name: str = Field(
        "kubellm-operator", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", description="Name of the leader Lease."
    )
    leader_identity: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="This replica's holderIdentity; default: $POD_NAME if set, else the host name (a pod's host "
        "name is its name).",
    )
    lease_duration_s: float = Field(LEASE_DURATION_S, gt=0, le=300, description="Leader Lease duration.")
    renew_deadline_s: float = Field(
        RENEW_DEADLINE_S,
        gt=0,
        le=300,
        description="The leader stops when it could not renew for this long (< lease duration).",
    )
    retry_period_s: float = Field(RETRY_PERIOD_S, gt=0, le=60, description="How often the Lease is renewed or tried.")
    workers: int = Field(4, ge=1, le=64, description="Threads that run reconciles.")
    api_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Timeout of every API request (watches: the server ends them sooner)."
    )
    retry_max_s: float = Field(
        300.0, ge=1, le=3600, description="Longest wait between retries of a failing LLMService (1s, doubling)."
    )
    stall_after_s: float = Field(
        300.0,
        ge=0,
        description="/healthz fails when the work queue has had a pass due or running this long; 0 turns it off.",
    )
    watch_stall_after_s: float = Field(
        900.0,
        ge=0,
        description="/healthz fails when no watch event arrived this long (kubelets update their Node at least "
        "every 5 minutes); 0 turns it off.",
    )
    # The tenant policy (kubellm_operator.policy): what an LLMService may ask of the operator, which creates its
    # children with its own rights, not the tenant's. Each default keeps what an LLMService could always do.
    allowed_image_prefixes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Images an LLMService may name in spec.image, comma-separated prefixes matched at a name "
        "boundary (ghcr.io/kubellm/ or ghcr.io/kubellm/inference); empty: any image. The default images must match.",
    )
    allowed_service_types: Annotated[list[ServiceType], NoDecode] = Field(
        default_factory=lambda: list(ServiceType),
        min_length=1,
        description="Service types an LLMService may ask for in spec.service.type, comma-separated.",
    )
    allow_public_without_auth: bool = Field(
        True,
        description="A NodePort or LoadBalancer Service without spec.auth is allowed (with a PublicWithoutAuth "
        "Warning); off: refused as NotAllowed.",
    )
    allow_storage_claims: bool = Field(
        True, description="An LLMService may mount a PersistentVolumeClaim of its namespace (spec.storage.claimName)."
    )
    allowed_env_names: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Names an LLMService may set in spec.env, comma-separated shell-style patterns (OMP_*); "
        "empty: any name kubellm does not set itself.",
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            names = [str(v).strip() for v in value if str(v).strip()]
            return [] if ALL_NAMESPACES in names else names
        return value

    @field_validator("namespaces")
    @classmethod
    def _namespace_names(cls, value: list[str]) -> list[str]:
        # Names, not Kopf's patterns: the storage count's pod watches open one watch per namespace (podwatch.py).
        for name in value:
            if len(name) > 63 or not re.fullmatch(DNS_LABEL, name):
                raise ValueError(
                    f"{name!r} is not a namespace name (a DNS label such as team-a; patterns are not "
                    "supported: list the namespaces, or '*' for all)"
                )
        return value

    @field_validator(
        "allowed_hub_endpoints",
        "hub_redirect_hosts",
        "allowed_image_prefixes",
        "allowed_service_types",
        "allowed_env_names",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return [v.strip() if isinstance(v, str) else v for v in value if not isinstance(v, str) or v.strip()]
        return value

    @field_validator("allowed_hub_endpoints")
    @classmethod
    def _bare_endpoints(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            problem = base_url_problem(endpoint)
            if problem is not None:
                raise ValueError(f"{endpoint!r} {problem}")
        return value

    @field_validator("allowed_image_prefixes", "allowed_env_names")
    @classmethod
    def _no_blanks_inside(cls, value: list[str]) -> list[str]:
        for item in value:
            if any(c.isspace() for c in item):
                raise ValueError(f"{item!r} contains whitespace")
        return value

    @model_validator(mode="after")
    def _default_images_allowed(self) -> OperatorSettings:
        # An operator whose own default image is outside the list would refuse every LLMService that names none.
        for field, image in (
            ("inference_image", self.inference_image),
            ("gpu_inference_image", self.gpu_inference_image),
        ):
            if not image_allowed(image, self.allowed_image_prefixes):
                raise ValueError(
                    f"{flag(field)} {image} is outside --allowed-image-prefixes "
                    f"({','.join(self.allowed_image_prefixes)}); add its prefix or change the image"
                )
        return self

    @field_validator("storage_headroom")
    @classmethod
    def _valid_headroom(cls, value: str) -> str:
        parse_headroom(value)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("download_bandwidth")
    @classmethod
    def _valid_bandwidth(cls, value: str) -> str:
        if parse_quantity(value) <= 0:
            raise ValueError(f"{value!r} must be a positive quantity of bytes per second, such as 50Mi")
        return value

    @model_validator(mode="after")
    def _lease_timings(self) -> OperatorSettings:
        if not self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError(
                "leader election needs --retry-period-s < --renew-deadline-s < --lease-duration-s (a leader must "
                "stop before a standby may take its Lease)"
            )
        return self

    @property
    def identity(self) -> str:
        return self.leader_identity or os.environ.get("POD_NAME") or socket.gethostname()

    @property
    def hub_endpoints(self) -> frozenset[str]:
        """The hub endpoints LLMServices may use (compared with :func:`endpoint_key`)."""
        listed = self.allowed_hub_endpoints or [
            DEFAULT_HUB_ENDPOINT,
            *([self.hub_endpoint] if self.hub_endpoint else []),
        ]
        return frozenset(endpoint_key(e) for e in listed)

    @property
    def hub_policy(self) -> EgressPolicy:
        return EgressPolicy(
            allow_loopback=self.egress_allow_loopback,
            allow_private=self.egress_allow_private,
            redirect_hosts=frozenset(h.lower() for h in self.hub_redirect_hosts),
        )

    @property
    def pod_policy(self) -> EgressPolicy:
        # A pod IP is assigned by the cluster, from its pod range, which is private by definition; no redirects.
        return EgressPolicy(allow_loopback=self.egress_allow_loopback, allow_private=True)

    @property
    def bandwidth_bytes(self) -> int:
        return int(parse_quantity(self.download_bandwidth))

    @property
    def headroom_bytes(self) -> int:
        return parse_headroom(self.storage_headroom)

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def describe(self) -> str:
        """One line for the start-up log."""
        where = "all namespaces" if self.clusterwide else "namespaces " + ",".join(self.namespaces)
        peering = "standalone" if self.standalone else f"peering {self.peering_name} priority {self.priority}"
        return (
            f"watching {where}; default image {self.inference_image} (GPU: {self.gpu_inference_image}); storage headroom "
            f"{format_bytes(self.headroom_bytes)}; kubelet summaries every {self.summary_refresh_s:g}s; {peering}; "
            f"tenant policy: {self.describe_policy()}"
        )

    @property
    def tenant_policy(self) -> TenantPolicy:
        return TenantPolicy(
            allowed_image_prefixes=tuple(self.allowed_image_prefixes),
            allowed_service_types=tuple(self.allowed_service_types),
            allow_public_without_auth=self.allow_public_without_auth,
            allow_storage_claims=self.allow_storage_claims,
            allowed_env_names=tuple(self.allowed_env_names),
        )

    def describe_policy(self) -> str:
        """What LLMServices may ask for, in words (the start-up log and docs/operator.md's security model)."""
        images = ",".join(self.allowed_image_prefixes) if self.allowed_image_prefixes else "any"
        types = ",".join(kind.value for kind in self.allowed_service_types)
        public = "warned" if self.allow_public_without_auth else "refused"
        claims = "allowed" if self.allow_storage_claims else "refused"
        env = ",".join(self.allowed_env_names) if self.allowed_env_names else "any"
        return (
            f"images {images}; service types {types}; public without auth {public}; storage claims {claims}; "
            f"env names {env}"
        )


def build_parser() -> argparse.ArgumentParser:
    return settings_parser(
        OperatorSettings,
        prog="kubellm operator",
        description="Run the kubellm operator (Kopf). Every flag can also be set as KUBELLM_OPERATOR_<FLAG>.",
        env_prefix=ENV_PREFIX,
    )


def load_settings(argv: list[str] | None = None) -> OperatorSettings:
    """Environment plus flags, validated; raises :class:`SettingsError` with a readable message."""
    return load(OperatorSettings, build_parser(), argv, env_prefix=ENV_PREFIX, what="operator")
