"""The gateway's configuration: one pydantic-settings object, from ``KUBELLM_GATEWAY_<FIELD>`` and flags.

Which LLMServices a gateway serves is explicit: the namespaces it watches (``--namespaces team-a,team-b``, or
``*`` for every namespace), and each LLMService's ``spec.gateway.enabled``. On a shared cluster, tenants share the
gateway: a tenant's LLMService stays off it with ``spec.gateway.enabled: false``.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kubellm.settings import load, settings_parser

ENV_PREFIX = "KUBELLM_GATEWAY_"
ALL_NAMESPACES = "*"
_NAME_PART = re.compile(r"[^A-Za-z0-9_.-]")


def _default_identity() -> str:
    # In a pod, HOSTNAME is the pod's name: one held-requests annotation per gateway replica.
    return os.environ.get("HOSTNAME") or "gateway"


class GatewaySettings(BaseSettings):
    """Everything `kubellm gateway` reads at start (env prefix ``KUBELLM_GATEWAY_``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    namespaces: Annotated[list[str], NoDecode] = Field(
        ..., description="Namespaces whose LLMServices are served, comma-separated; '*' serves every namespace."
    )
    kubeconfig: str | None = Field(
        None, description="Kubeconfig file; default: in-cluster service account, else $KUBECONFIG / ~/.kube/config."
    )
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0: a free one, printed at start).")
    identity: str = Field(
        default_factory=_default_identity,
        description="This replica's name in the held-requests annotation (default: $HOSTNAME, the pod's name).",
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, le=64 << 20, description="Largest request body accepted.")
    max_response_bytes: int = Field(64 << 20, ge=1024, description="Largest upstream answer relayed.")
    connect_timeout_s: float = Field(2.0, gt=0, le=60, description="Connecting to a pod.")
    read_timeout_s: float = Field(600.0, gt=0, le=3600, description="Longest silence from a pod mid-answer.")
    upstream_deadline_s: float = Field(1800.0, gt=0, le=86400, description="Longest answer from a pod, in all.")
    max_attempts: int = Field(3, ge=1, le=10, description="Pods tried per request (connect failure, 503 or 429).")
    max_held: int = Field(64, ge=0, le=10000, description="Requests held per LLMService while it wakes or starts.")
    hold_cap_s: float = Field(
        1800.0, gt=0, le=86400, description="Longest hold (else the LLMService's startup budget plus 30s)."
    )
    progress_interval_s: float = Field(
        5.0, gt=0, le=60, description="How often a held streaming client gets a progress comment."
    )
    api_timeout_s: float = Field(30.0, gt=0, le=600, description="Timeout of every Kubernetes API request.")
    watch_timeout_s: int = Field(300, ge=1, le=3600, description="The apiserver ends each watch after this.")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            names = [str(v).strip() for v in value if str(v).strip()]
            if not names:
                raise ValueError("name the namespaces to serve (comma-separated), or '*' for every namespace")
            return [ALL_NAMESPACES] if ALL_NAMESPACES in names else names
        return value

    @field_validator("identity")
    @classmethod
    def _annotation_name(cls, value: str) -> str:
        # The name part of an annotation key: at most 63 of [A-Za-z0-9-_.], starting and ending alphanumeric.
        cleaned = _NAME_PART.sub("-", value)[:63].strip("-_.")
        if not cleaned:
            raise ValueError("must contain letters or digits")
        return cleaned

    @property
    def clusterwide(self) -> bool:
        return self.namespaces == [ALL_NAMESPACES]


def build_parser() -> argparse.ArgumentParser:
    return settings_parser(
        GatewaySettings,
        prog="kubellm gateway",
        description="Run kubellm's gateway: one OpenAI endpoint for the LLMServices of the namespaces it serves. "
        "Every flag can also be set as KUBELLM_GATEWAY_<FLAG>.",
        env_prefix=ENV_PREFIX,
    )


def load_settings(argv: list[str] | None = None) -> GatewaySettings:
    """Environment plus flags, validated; raises :class:`SettingsError` with a readable message."""
    return load(GatewaySettings, build_parser(), argv, env_prefix=ENV_PREFIX, what="gateway")
