"""The model step of a reconcile: resolve a hub model, derive what the user left unset, and read the pods'
model failures back. The hub is asked in the background (``fetchers.py``: :func:`resolve_hub`); the plan calls
:func:`model_plan` with what the fetcher holds and gets one :class:`ModelPlan`.

A hub that refuses the model (not found, gated without a token, token rejected, no weights) holds the rollout:
pods would only crash-loop on the same answer. A hub the operator cannot reach does not: the pods may have a
route the operator lacks (a node-local proxy), and their own termination message will say if they cannot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kubellm.modelfiles import HubFailure, failure_reason
from kubellm.quantity import format_bytes
from kubellm_operator.api import LLMService, LoadingStatus, ModelStatus, SecretKeyRef
from kubellm_operator.egress import EgressError, EgressPolicy, endpoint_key, fetch
from kubellm_operator.resolve import DEFAULT_HUB_ENDPOINT, ModelResolver, Resolution, is_hub_id
from kubellm_operator.sizing import Derived, effective_llmservice

log = logging.getLogger("kubellm.operator")

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

MAX_TOKEN_BYTES = 4096  # hub tokens are ~40 characters; anything larger is not one (and goes into an HTTP header)

TokenReader = Callable[[SecretKeyRef], str | None]


class TokenUnavailable(Exception):
    """The hub token Secret cannot be read; the message says why and what RBAC it needs."""


@dataclass(frozen=True)
class HubRequest:
    """What resolving one LLMService's hub model takes: the model, the hub, and the token Secret (if any)."""

    namespace: str
    model: str
    revision: str | None
    endpoint: str
    token_secret: tuple[str, str] | None = None  # (Secret name, key)


@dataclass(frozen=True)
class HubAnswer:
    """What a background fetch got for a :class:`HubRequest` (``fetchers.py``)."""

    resolution: Resolution
    token_problem: str | None = None  # why the token Secret could not be used (the hub was asked without it)


@dataclass(frozen=True)
class ModelPlan:
    llms: LLMService  # with the derived values filled in
    derived: list[Derived] = field(default_factory=list)
    status: ModelStatus | None = None
    hold: tuple[HubFailure, str] | None = None  # a hub refusal: no rollout
    pending: str | None = None  # the first resolution is still under way: no rollout yet


def hub_endpoint(llms: LLMService, default_endpoint: str | None) -> str:
    model = llms.spec.model
    endpoint = (model.hub.endpoint if model.hub and model.hub.endpoint else None) or default_endpoint
    return (endpoint or DEFAULT_HUB_ENDPOINT).rstrip("/")


def hub_request(llms: LLMService, default_endpoint: str | None) -> HubRequest | None:
    """The hub resolution the LLMService needs, or None when its model is not on a hub."""
    model = llms.spec.model
    if not is_hub_id(model.name):
        return None
    ref = model.hub_token_secret_ref
    return HubRequest(
        namespace=llms.metadata.namespace or "default",
        model=model.name,
        revision=model.revision,
        endpoint=hub_endpoint(llms, default_endpoint),
        token_secret=(ref.name, ref.key) if ref is not None else None,
    )


def model_plan(
    llms: LLMService, answer: HubAnswer | None, *, default_endpoint: str | None, bandwidth: int, pending: str = ""
) -> ModelPlan:
    """The model step from what the hub answered (None: no answer yet, ``pending`` says why). Pure."""
    model = llms.spec.model
    if not is_hub_id(model.name):
        return ModelPlan(llms)
    endpoint = hub_endpoint(llms, default_endpoint)
    if answer is None:
        status = ModelStatus(name=model.name, endpoint=endpoint, revision=model.revision)
        return ModelPlan(llms, [], status, pending=pending or f"resolving {model.name} on {endpoint}")
    resolution = answer.resolution
    if resolution.model is None:
        message = resolution.message or "unknown"
        if answer.token_problem is not None:
            message = f"{message} ({answer.token_problem})"
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


def endpoint_refusal(
    llms: LLMService,
    endpoint: str,
    allowed_endpoints: frozenset[str] | None,
    *,
    default_endpoint: str | None,
    bandwidth: int,
) -> ModelPlan | None:
    """The held plan (``Degraded/HubEndpointNotAllowed``) of an LLMService whose hub ``endpoint`` is not one the
    operator allows (``OperatorSettings.hub_endpoints``; None allows any), else None. Pure: decide it before any
    fetch is asked for."""
    if allowed_endpoints is None or endpoint_key(endpoint) in allowed_endpoints:
        return None
    model = llms.spec.model
    message = (
        f"{HubFailure.HubEndpointNotAllowed.prefix}: {endpoint} is not one of the hub endpoints this operator "
        f"allows ({', '.join(sorted(allowed_endpoints))}): set spec.model.hub.endpoint to one of them, or ask the "
        "operator's administrator to add it to --allowed-hub-endpoints"
    )
    status = ModelStatus(name=model.name, endpoint=endpoint, revision=model.revision, error=message)
    effective, derived = effective_llmservice(llms, None, default_endpoint=default_endpoint, bandwidth=bandwidth)
    return ModelPlan(effective, derived, status, (HubFailure.HubEndpointNotAllowed, message))


def resolve_hub(request: HubRequest, resolver: ModelResolver, read_token: TokenReader) -> HubAnswer:
    """Read the token (if any) and ask the hub: the blocking part, run by a background fetcher (or by
    ``kubellm render --resolve``), never on a pass."""
    token: str | None = None
    token_problem: str | None = None
    if request.token_secret is not None:
        name, key = request.token_secret
        try:
            token = read_token(SecretKeyRef(name=name, key=key))
        except TokenUnavailable as error:
            token_problem = str(error)
    resolution = resolver.resolve(request.model, request.revision, endpoint=request.endpoint, token=token)
    return HubAnswer(resolution, token_problem)


def plan_model(
    llms: LLMService,
    resolver: ModelResolver,
    *,
    default_endpoint: str | None,
    bandwidth: int,
    read_token: TokenReader,
) -> ModelPlan:
    """The model step with the hub asked now (``kubellm render --resolve``; the operator asks in the background)."""
    request = hub_request(llms, default_endpoint)
    if request is not None:
        refused = endpoint_refusal(
            llms, request.endpoint, resolver.allowed_endpoints, default_endpoint=default_endpoint, bandwidth=bandwidth
        )
        if refused is not None:
            return refused
    answer = resolve_hub(request, resolver, read_token) if request is not None else None
    return model_plan(llms, answer, default_endpoint=default_endpoint, bandwidth=bandwidth)


def secret_token_reader(read_secret: Callable[[str, str], Mapping[str, Any] | None], namespace: str) -> TokenReader:
    """A TokenReader over ``read_secret(namespace, name)`` (the Secret object, None when absent)."""
    import base64
    import binascii

    from kubernetes.client.exceptions import ApiException

    def read(ref: SecretKeyRef) -> str | None:
        where = f"Secret {namespace}/{ref.name}"
        try:
            secret = read_secret(namespace, ref.name)
        except ApiException as error:
            if error.status == 403:
                raise TokenUnavailable(
                    f"the operator may not read {where}: grant its ServiceAccount get on "
                    f"that Secret (a Role with resourceNames: [{ref.name}], see docs/hub.md)"
                ) from error
            raise TokenUnavailable(f"cannot read {where}: {error.status} {error.reason}") from error
        if secret is None:
            raise TokenUnavailable(f"{where} does not exist")
        data = secret.get("data") or {}
        if not isinstance(data, Mapping) or ref.key not in data:
            raise TokenUnavailable(f"{where} has no key {ref.key}")
        value = data[ref.key]
        try:
            raw = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise TokenUnavailable(f"{where} key {ref.key} is not valid base64") from None
        if len(raw) > MAX_TOKEN_BYTES:
            raise TokenUnavailable(
                f"{where} key {ref.key} holds {len(raw)} bytes; a hub token is at most {MAX_TOKEN_BYTES}"
            )
        try:
            token = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise TokenUnavailable(f"{where} key {ref.key} is not UTF-8 text; a hub token is") from None
        if not token or not token.isprintable():
            raise TokenUnavailable(
                f"{where} key {ref.key} is empty or holds control characters; a hub token is one printable line"
            )
        return token

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


def fetch_loadz(
    pod: Mapping[str, Any], policy: EgressPolicy | None = None, *, deadline_s: float = LOADZ_DEADLINE_S
) -> Mapping[str, Any] | None:
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
            deadline_s=deadline_s,
            max_bytes=MAX_LOADZ_BYTES,
            policy=policy or EgressPolicy(allow_private=True),
        )
        answer = json.loads(body)
    except (EgressError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


DEMAND_DEADLINE_S = 1.0
DEMAND_MAX_BYTES = 1 << 20  # the server's exposition is a few KiB; a pod answering more is cut off


def fetch_demand(
    pod: Mapping[str, Any], policy: EgressPolicy | None = None, *, deadline_s: float = DEMAND_DEADLINE_S
) -> float | None:
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
            deadline_s=deadline_s,
            max_bytes=DEMAND_MAX_BYTES,
            policy=policy or EgressPolicy(allow_private=True),
        )
    except EgressError:
        return None
    return parse_demand(body.decode(errors="replace"))


def demand_fetcher(
    policy: EgressPolicy, *, deadline_s: float = DEMAND_DEADLINE_S
) -> Callable[[Mapping[str, Any]], float | None]:
    """:func:`fetch_demand` under the operator's policy for pods (``OperatorSettings.pod_policy``)."""
    return lambda pod: fetch_demand(pod, policy, deadline_s=deadline_s)


def loadz_fetcher(
    policy: EgressPolicy, *, deadline_s: float = LOADZ_DEADLINE_S
) -> Callable[[Mapping[str, Any]], Mapping[str, Any] | None]:
    """:func:`fetch_loadz` under the operator's policy for pods (``OperatorSettings.pod_policy``)."""
    return lambda pod: fetch_loadz(pod, policy, deadline_s=deadline_s)


_MAX_BYTES = 2**53  # past any model's size; keeps figures exact in JSON
LINE_MAX_CHARS = 200


class LoadzAnswer(BaseModel):
    """What the operator keeps of a pod's ``/loadz`` answer: a pod is untrusted, so every field is bounded and
    anything else is dropped."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    phase: str | None = Field(None, max_length=32, pattern=r"^[a-z][a-z _-]*$")
    bytes_done: int | None = Field(None, alias="bytesDone", ge=0, le=_MAX_BYTES, strict=True)
    bytes_total: int | None = Field(None, alias="bytesTotal", ge=0, le=_MAX_BYTES, strict=True)
    bytes_per_second: float | None = Field(None, alias="bytesPerSecond", ge=0, le=_MAX_BYTES, allow_inf_nan=False)
    line: str | None = None

    @field_validator("line", mode="before")
    @classmethod
    def _short_line(cls, value: Any) -> Any:
        # Shown in the status and in kubectl: one line, cut to a length a column can hold.
        if isinstance(value, str):
            return " ".join(value.split())[:LINE_MAX_CHARS]
        return value


def parse_loadz(answer: Any, where: str = "a pod") -> LoadzAnswer | None:
    """The bounded answer, or None (with one log line) when the pod answered something else."""
    if answer is None:
        return None
    try:
        return LoadzAnswer.model_validate(answer)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'answer'}: {e['msg']}" for e in error.errors())
        log.info("ignoring the /loadz answer of %s: %s", where, problems[:300])
        return None


def pods_loading(pods: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any pod runs without being ready yet: its load may be moving, though no pod event says so."""
    return any(_loading(pod) for pod in pods)


def _loading(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    return not all(c.get("ready") for c in status.get("containerStatuses") or [{}])


def loading_status(
    pods: Sequence[Mapping[str, Any]], fetch: Callable[[Mapping[str, Any]], LoadzAnswer | Mapping[str, Any] | None]
) -> LoadingStatus | None:
    """The progress of the least advanced pod still loading, as one status and one line for kubectl."""
    answers: list[LoadzAnswer] = []
    for pod in pods:
        if not _loading(pod):
            continue
        got = fetch(pod)
        answer = got if isinstance(got, LoadzAnswer) else parse_loadz(got, str((pod.get("metadata") or {}).get("name")))
        if answer is not None and answer.phase != "ready":
            answers.append(answer)
    if not answers:
        return None

    def done(answer: LoadzAnswer) -> float:
        total = answer.bytes_total or 0
        return (answer.bytes_done or 0) / total if total else 0.0

    slowest = min(answers, key=done)
    line = str(slowest.line or slowest.phase or "")
    message = line[:1].upper() + line[1:]
    if len(answers) > 1:
        message += f" ({len(answers)} pods loading)"
    return LoadingStatus(
        phase=slowest.phase,
        bytes_done=slowest.bytes_done,
        bytes_total=slowest.bytes_total,
        bytes_per_second=slowest.bytes_per_second,
        message=message,
    )
