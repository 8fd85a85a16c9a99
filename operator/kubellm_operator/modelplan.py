"""The model step of a reconcile: resolve a hub model, derive what the user left unset, and read the pods'
model failures back; the reconcile calls :func:`plan_model` once per pass and gets one :class:`ModelPlan`.

A hub that refuses the model (not found, gated without a token, token rejected, no weights) holds the rollout:
pods would only crash-loop on the same answer. A hub the operator cannot reach does not: the pods may have a
route the operator lacks (a node-local proxy), and their own termination message will say if they cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubellm.modelfiles import HubFailure, failure_reason
from kubellm.quantity import format_bytes
from kubellm_operator.api import LLMService, LoadingStatus, ModelStatus, SecretKeyRef
from kubellm_operator.egress import EgressError, EgressPolicy, fetch
from kubellm_operator.resolve import DEFAULT_HUB_ENDPOINT, ModelResolver, is_hub_id
from kubellm_operator.sizing import Derived, effective_llmservice

# Failures that no pod can get past; an unreachable hub is not one of them (see the module docstring).
HOLDING_FAILURES = frozenset(
    {
        HubFailure.ModelNotFound,
        HubFailure.RevisionNotFound,
        HubFailure.GatedModel,
        HubFailure.HubUnauthorized,
        HubFailure.NoWeights,
        HubFailure.HubEndpointNotAllowed,
    }
)
HOLD_RETRY_S = 60.0  # a Secret created or a repo made public later is noticed on this retry

TokenReader = Callable[[SecretKeyRef], str | None]


class TokenUnavailable(Exception):
    """The hub token Secret cannot be read; the message says why and what RBAC it needs."""


@dataclass(frozen=True)
class ModelPlan:
    llms: LLMService  # with the derived values filled in
    derived: list[Derived] = field(default_factory=list)
    status: ModelStatus | None = None
    hold: tuple[HubFailure, str] | None = None  # a hub refusal: no rollout


def plan_model(
    llms: LLMService,
    resolver: ModelResolver,
    *,
    default_endpoint: str | None,
    bandwidth: int,
    read_token: TokenReader,
) -> ModelPlan:
    model = llms.spec.model
    if not is_hub_id(model.name):
        return ModelPlan(llms)
    endpoint = (model.hub.endpoint if model.hub and model.hub.endpoint else None) or default_endpoint
    endpoint = (endpoint or DEFAULT_HUB_ENDPOINT).rstrip("/")
    if not resolver.allows(endpoint):
        # Neither the token nor the hub is touched: the endpoint is the tenant's choice, the list the operator's.
        message = (
            f"{HubFailure.HubEndpointNotAllowed.prefix}: {endpoint} is not one of the hub endpoints this operator "
            f"allows ({', '.join(sorted(resolver.allowed_endpoints or ()))}): set spec.model.hub.endpoint to one of "
            "them, or ask the operator's administrator to add it to --allowed-hub-endpoints"
        )
        status = ModelStatus(name=model.name, endpoint=endpoint, revision=model.revision, error=message)
        effective, derived = effective_llmservice(llms, None, default_endpoint=default_endpoint, bandwidth=bandwidth)
        return ModelPlan(effective, derived, status, (HubFailure.HubEndpointNotAllowed, message))
    token: str | None = None
    token_problem: str | None = None
    if model.hub_token_secret_ref is not None:
        try:
            token = read_token(model.hub_token_secret_ref)
        except TokenUnavailable as error:
            token_problem = str(error)
    resolution = resolver.resolve(model.name, model.revision, endpoint=endpoint, token=token)
    if resolution.model is None:
        message = resolution.message or "unknown"
        if token_problem is not None:
            message = f"{message} ({token_problem})"
        status = ModelStatus(name=model.name, endpoint=endpoint, revision=model.revision, error=message)
        effective, derived = effective_llmservice(llms, None, default_endpoint=default_endpoint, bandwidth=bandwidth)
        failure = resolution.failure or HubFailure.HubUnreachable
        hold = (failure, message) if failure in HOLDING_FAILURES else None
        return ModelPlan(effective, derived, status, hold)
    resolved = resolution.model
    effective, derived = effective_llmservice(llms, resolved, default_endpoint=default_endpoint, bandwidth=bandwidth)
    status = ModelStatus(
        name=model.name,
        endpoint=endpoint,
        revision=model.revision,
        commit=resolved.commit,
        files=list(resolved.files),
        bytes=resolved.bytes,
        size=format_bytes(resolved.bytes),
        parameters=resolved.parameters,
        dtype=resolved.dtype,
    )
    return ModelPlan(effective, derived, status)


def secret_token_reader(read_secret: Callable[[str, str], Mapping[str, Any] | None], namespace: str) -> TokenReader:
    """A TokenReader over ``read_secret(namespace, name)`` (the Secret object, None when absent)."""
    import base64

    from kubernetes.client.exceptions import ApiException

    def read(ref: SecretKeyRef) -> str | None:
        try:
            secret = read_secret(namespace, ref.name)
        except ApiException as error:
            if error.status == 403:
                raise TokenUnavailable(
                    f"the operator may not read Secret {namespace}/{ref.name}: grant its ServiceAccount get on "
                    f"that Secret (a Role with resourceNames: [{ref.name}], see docs/hub.md)"
                ) from error
            raise
        if secret is None:
            raise TokenUnavailable(f"Secret {namespace}/{ref.name} does not exist")
        data = secret.get("data") or {}
        if ref.key not in data:
            raise TokenUnavailable(f"Secret {namespace}/{ref.name} has no key {ref.key}")
        return base64.b64decode(data[ref.key]).decode().strip()

    return read


def hub_failure_problem(where: str, container: Mapping[str, Any]) -> tuple[HubFailure, str] | None:
    """The hub failure a container's last (or current) termination message reports, while it is not ready:
    shown as soon as an attempt ends, not only once the kubelet backs off."""
    if container.get("ready") is True:
        return None
    state = container.get("state") or {}
    for terminated in ((state.get("terminated") or {}), ((container.get("lastState") or {}).get("terminated") or {})):
        message = str(terminated.get("message") or "")
        reason = failure_reason(message)
        if reason is not None:
            restarts = int(container.get("restartCount") or 0)
            said = " ".join(line.strip() for line in message.splitlines() if line.strip())[-600:]
            return reason, f"{where} failed to load the model ({restarts} restarts): {said}"
    return None


LOADZ_DEADLINE_S = 1.0
MAX_LOADZ_BYTES = 64 * 1024  # a /loadz answer is a few hundred bytes; a pod cannot make the operator hold more
LOADING_REFRESH_S = 3.0  # while pods load, the LLMService is re-read this often so its progress moves


def loadz_address(pod: Mapping[str, Any]) -> str | None:
    """host:port of the inference container's HTTP port: the pod IP and the rendered container port, as for any
    client in the cluster."""
    from kubellm.contract import DEFAULT_PORT
    from kubellm_operator.render import CONTAINER_NAME

    containers = (pod.get("spec") or {}).get("containers") or []
    container = next((c for c in containers if c.get("name") == CONTAINER_NAME), None)
    ports = (container or {}).get("ports") or []
    port = ports[0].get("containerPort") if ports else DEFAULT_PORT
    ip = (pod.get("status") or {}).get("podIP")
    if not isinstance(ip, str) or not ip or not isinstance(port, int) or not 0 < port < 65536:
        return None
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def fetch_loadz(pod: Mapping[str, Any], policy: EgressPolicy | None = None) -> Mapping[str, Any] | None:
    """The pod's ``GET /loadz`` answer, or None when it does not answer (yet) within its deadline and byte cap,
    or the egress policy refuses the pod's address (:mod:`kubellm_operator.egress`)."""
    import json

    from kubellm.contract import LOADZ_PATH

    address = loadz_address(pod)
    if address is None:
        return None
    try:
        body = fetch(
            f"http://{address}{LOADZ_PATH}",
            deadline_s=LOADZ_DEADLINE_S,
            max_bytes=MAX_LOADZ_BYTES,
            policy=policy or EgressPolicy(allow_private=True),
        )
        answer = json.loads(body)
    except (EgressError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


DEMAND_DEADLINE_S = 1.0
DEMAND_MAX_BYTES = 1 << 20  # the server's exposition is a few KiB; a pod answering more is cut off


def fetch_demand(pod: Mapping[str, Any], policy: EgressPolicy | None = None) -> float | None:
    """In flight + queued on the pod, from its ``GET /metrics`` (``kubellm_batch_size`` + ``kubellm_queue_depth``),
    or None when it does not answer them within its deadline and byte cap (or the egress policy refuses it)."""
    from kubellm.contract import METRICS_PATH
    from kubellm_operator.autoscale import parse_demand

    address = loadz_address(pod)
    if address is None:
        return None
    try:
        body = fetch(
            f"http://{address}{METRICS_PATH}",
            deadline_s=DEMAND_DEADLINE_S,
            max_bytes=DEMAND_MAX_BYTES,
            policy=policy or EgressPolicy(allow_private=True),
        )
    except EgressError:
        return None
    return parse_demand(body.decode(errors="replace"))


def demand_fetcher(policy: EgressPolicy) -> Callable[[Mapping[str, Any]], float | None]:
    """:func:`fetch_demand` under the operator's policy for pods (``OperatorSettings.pod_policy``)."""
    return lambda pod: fetch_demand(pod, policy)


def loadz_fetcher(policy: EgressPolicy) -> Callable[[Mapping[str, Any]], Mapping[str, Any] | None]:
    """:func:`fetch_loadz` under the operator's policy for pods (``OperatorSettings.pod_policy``)."""
    return lambda pod: fetch_loadz(pod, policy)


def pods_loading(pods: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any pod runs without being ready yet: its load may be moving, though no pod event says so."""
    return any(_loading(pod) for pod in pods)


def _loading(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    return not all(c.get("ready") for c in status.get("containerStatuses") or [{}])


def loading_status(
    pods: Sequence[Mapping[str, Any]], fetch: Callable[[Mapping[str, Any]], Mapping[str, Any] | None]
) -> LoadingStatus | None:
    """The progress of the least advanced pod still loading, as one status and one line for kubectl."""
    answers = [a for a in (fetch(pod) for pod in pods if _loading(pod)) if a and a.get("phase") not in ("ready",)]
    if not answers:
        return None

    def done(answer: Mapping[str, Any]) -> float:
        total = answer.get("bytesTotal") or 0
        return (answer.get("bytesDone") or 0) / total if total else 0.0

    slowest = min(answers, key=done)
    line = str(slowest.get("line") or slowest.get("phase") or "")
    message = line[:1].upper() + line[1:]
    if len(answers) > 1:
        message += f" ({len(answers)} pods loading)"
    return LoadingStatus(
        phase=str(slowest.get("phase")),
        bytes_done=slowest.get("bytesDone"),
        bytes_total=slowest.get("bytesTotal"),
        bytes_per_second=slowest.get("bytesPerSecond"),
        message=message,
    )
