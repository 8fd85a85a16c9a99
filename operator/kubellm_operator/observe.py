"""Observe: one frozen snapshot of everything a pass decides from (the first of observe → plan → execute).

The children and pods come from the watches (``views.py``), the Node facts from the Node book, the answers of
the hub and the pods (``/loadz``, and the demand of ``spec.autoscaling``) from what the background fetchers already
hold (``fetchers.py``), the autoscaler's demand history from the operator's memory, the refusals still within
their backoff from the retry policy (``workqueue.py``). The LLMService itself is the one API read of a pass, made
by the caller after the children are taken (see :meth:`reconcile.Operator.observe`). Nothing here waits on a
tenant's endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubellm_operator import autoscale
from kubellm_operator.children import Refusal
from kubellm_operator.config import OperatorSettings
from kubellm_operator.fetchers import Held, Request
from kubellm_operator.policy import TenantPolicy
from kubellm_operator.storage import NodeFacts
from kubellm_operator.workqueue import Key


@dataclass(frozen=True)
class PlanConfig:
    """The operator settings a plan reads."""

    inference_image: str
    gpu_inference_image: str
    headroom_bytes: int
    hub_endpoint: str | None
    bandwidth_bytes: int
    hub_deadline_s: float = 30.0
    storage_retry_s: float = 60.0
    hub_endpoints: frozenset[str] | None = None  # the hub endpoints allowed (None: any)
    policy: TenantPolicy = field(default_factory=TenantPolicy)  # what an LLMService may ask (policy.py)

    @classmethod
    def from_settings(cls, settings: OperatorSettings) -> PlanConfig:
        return cls(
            inference_image=settings.inference_image,
            gpu_inference_image=settings.gpu_inference_image,
            headroom_bytes=settings.headroom_bytes,
            hub_endpoint=settings.hub_endpoint,
            bandwidth_bytes=settings.bandwidth_bytes,
            hub_deadline_s=settings.hub_deadline_s,
            storage_retry_s=settings.storage_retry_s,
            hub_endpoints=settings.hub_endpoints,
            policy=settings.tenant_policy,
        )


@dataclass(frozen=True)
class Standing:
    """Refusals of writes still within their backoff: the same writes (same fingerprint) are not sent again."""

    fingerprint: str
    refusals: tuple[Refusal, ...]


@dataclass(frozen=True)
class Observation:
    """What one pass over one LLMService knows; :func:`plan.plan` is a pure function of it."""

    key: Key
    llmservice: Mapping[str, Any] | None  # None: gone, or being deleted
    children: Mapping[str, Mapping[str, Any] | None]  # kind -> the live child kubellm's watch holds (None: absent)
    pods: tuple[Mapping[str, Any], ...]
    nodes: tuple[NodeFacts, ...]
    config: PlanConfig
    fetched: Mapping[Request, Held] = field(default_factory=dict)  # the background fetchers' answers
    fetching: frozenset[Request] = frozenset()  # asked and not answered yet
    standing: Standing | None = None
    posted: frozenset[tuple[str, str]] = frozenset()  # (reason, message) of refusal Events already posted
    announce: bool = False  # re-log a standing storage warning (the operator resumed)
    # spec.autoscaling: the demand seen by earlier passes (kept in the operator's memory, oldest first), and the
    # decision this pass already made (the re-plan after its writes keeps it: the Deployment it wrote shows the
    # decision, not the demand).
    scaling_history: tuple[autoscale.Sample, ...] = ()
    scaled: autoscale.Plan | None = None

    def held(self, request: Request) -> Held | None:
        return self.fetched.get(request)
