"""Resolving a hub model before rollout: which commit its revision is, which files the server will load and
how many bytes they are, its parameter count and stored dtype, and its config (for the KV-cache estimate).

Two requests for a hub that reports safetensors metadata in its model info (the Hugging Face Hub does): the
model info with file metadata, and ``config.json`` at the resolved commit, which also proves that the token may
download the files (a gated repo's model info is public; its files are not). Hub refusals and an unreachable
hub come back as a classified :class:`Resolution`, never as an exception, so the reconcile turns them into a
condition. Every request goes through :mod:`kubellm_operator.egress` (one deadline for the whole resolution, 1 MiB
per answer, the operator's address and redirect policy). :class:`ModelResolver` caches results per model, revision, hub and token, so a reconcile that changes
nothing asks the hub nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from kubellm.contract import EMBEDDED_MODEL
from kubellm.modelfiles import HubFailure, has_weights, select_files
from kubellm_operator.egress import (
    EgressError,
    EgressHTTPError,
    EgressPolicy,
    EgressRefused,
    EgressTimeout,
    endpoint_key,
    fetch,
)

log = logging.getLogger("kubellm.operator")

DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$|^[A-Za-z0-9][\w.-]*$")
# Failures that waiting may fix (a hub outage) are retried sooner than a resolved model is refreshed.
RETRY_FAILED_S = 30.0
REFRESH_BRANCH_S = 600.0  # a branch or tag may move; a commit never does
MAX_INFO_BYTES = 1 << 20  # model info, config.json, a safetensors header: a larger answer is refused (issue 19)


def is_hub_id(name: str) -> bool:
    """A hub repo id (``org/name``), not the embedded model or a path inside the image or cache volume."""
    if name == EMBEDDED_MODEL or name.startswith(("/", "./", "../", "~")):
        return False
    return bool(_HUB_ID.match(name))


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    endpoint: str
    revision: str | None
    commit: str
    files: tuple[str, ...]
    bytes: int
    parameters: int | None
    dtype: str | None
    config: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Resolution:
    """The outcome of one resolution: a model, or a failure with its reason and message."""

    model: ResolvedModel | None
    failure: HubFailure | None = None
    message: str | None = None
    requests: int = 0
    seconds: float = 0.0


def _largest_share(parameters: dict[str, int]) -> str | None:
    return max(parameters.items(), key=lambda item: item[1])[0] if parameters else None


class _Refused(Exception):
    """A hub answer that classifies as a failure (the reason and the message for the condition)."""

    def __init__(self, failure: HubFailure, message: str) -> None:
        super().__init__(message)
        self.failure = failure


def _classify(error: EgressError, name: str, endpoint: str) -> tuple[HubFailure, str]:
    """(reason, message) for an egress error, as the Hub's answers mean them (``X-Error-Code``, then the status;
    huggingface_hub's ``hf_raise_for_status`` reads them the same way)."""
    if isinstance(error, EgressRefused):
        return HubFailure.HubEndpointNotAllowed, (
            f"{HubFailure.HubEndpointNotAllowed.prefix}: {endpoint} for {name}: {error}; the operator's egress "
            "settings (--egress-allow-loopback, --egress-allow-private) decide which addresses it may call"
        )
    if isinstance(error, EgressHTTPError):
        code = error.headers.get("X-Error-Code") or error.headers.get("x-error-code") or ""
        message = error.headers.get("X-Error-Message") or error.headers.get("x-error-message") or ""
        if code == "GatedRepo":
            return HubFailure.GatedModel, (
                f"{HubFailure.GatedModel.prefix}: {name} on {endpoint} is gated: accept its terms on the hub and "
                "set spec.model.hubTokenSecretRef to a Secret holding a token that was granted access"
            )
        if code == "RevisionNotFound":
            return HubFailure.RevisionNotFound, (
                f"{HubFailure.RevisionNotFound.prefix}: {name} on {endpoint} has no such revision: check "
                "spec.model.revision (a branch, tag or commit)"
            )
        invalid_token = message == "Invalid credentials in Authorization header"
        if code == "RepoNotFound" or (error.status == 401 and not invalid_token):
            return HubFailure.ModelNotFound, (
                f"{HubFailure.ModelNotFound.prefix}: {name} does not exist on {endpoint}, or it is private: check "
                "spec.model.name, and for a private model set spec.model.hubTokenSecretRef"
            )
        if error.status in (401, 403):
            return HubFailure.HubUnauthorized, (
                f"{HubFailure.HubUnauthorized.prefix}: {endpoint} refused the token for {name} "
                f"(HTTP {error.status}): check the Secret named by spec.model.hubTokenSecretRef"
            )
        if error.status >= 500 or error.status == 429:
            return HubFailure.HubUnreachable, (
                f"{HubFailure.HubUnreachable.prefix}: {endpoint} answered HTTP {error.status} for {name}; retrying"
            )
        return HubFailure.HubUnreachable, (
            f"{HubFailure.HubUnreachable.prefix}: {endpoint} answered HTTP {error.status} for {name}: check the hub "
            "endpoint (spec.model.hub.endpoint or the operator's default)"
        )
    return HubFailure.HubUnreachable, (
        f"{HubFailure.HubUnreachable.prefix}: cannot reach {endpoint} for {name} ({error}): check the hub endpoint "
        "(spec.model.hub.endpoint or the operator's default) and the network, or use a local model path"
    )


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        loaded = json.loads(body)
    except ValueError:
        loaded = None
    if not isinstance(loaded, dict):
        raise _Refused(HubFailure.HubUnreachable, f"{HubFailure.HubUnreachable.prefix}: {what} is not a JSON object")
    return loaded


@dataclass(frozen=True)
class _Info:
    """The parts of the Hub's model info that resolution reads, validated (the answer is untrusted)."""

    commit: str
    sizes: dict[str, int]
    parameters: dict[str, int]

    @classmethod
    def parse(cls, info: dict[str, Any]) -> _Info:
        sha = info.get("sha")
        commit = sha if isinstance(sha, str) and _COMMIT.match(sha) else ""
        sizes: dict[str, int] = {}
        for sibling in info.get("siblings") or []:
            if not isinstance(sibling, dict) or not isinstance(sibling.get("rfilename"), str):
                continue
            size = sibling.get("size")
            sizes[sibling["rfilename"]] = size if isinstance(size, int) and size >= 0 else 0
        summary = info.get("safetensors")
        counts = summary.get("parameters") if isinstance(summary, dict) else None
        parameters = (
            {str(k): v for k, v in counts.items() if isinstance(v, int) and v >= 0} if isinstance(counts, dict) else {}
        )
        return cls(commit, sizes, parameters)


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _hub_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def resolve_model(
    name: str,
    revision: str | None,
    *,
    endpoint: str,
    token: str | None,
    timeout_s: float = 20.0,
    policy: EgressPolicy | None = None,
) -> Resolution:
    """Ask the hub at ``endpoint`` what ``name`` at ``revision`` is, within ``timeout_s`` in all and
    :data:`MAX_INFO_BYTES` per answer, through :mod:`kubellm_operator.egress`. Never raises for hub answers."""
    started = time.monotonic()
    end = started + timeout_s
    policy = policy or EgressPolicy()
    requests = 0
    headers = _hub_headers(token)

    def get(url: str, extra: dict[str, str] | None = None) -> bytes:
        nonlocal requests
        requests += 1
        left = end - time.monotonic()
        if left <= 0:
            raise EgressTimeout(f"no complete answer within {timeout_s:g}s")
        return fetch(url, deadline_s=left, max_bytes=MAX_INFO_BYTES, policy=policy, headers=headers | (extra or {}))

    base = endpoint.rstrip("/")
    where = f"/revision/{quote(revision, safe='')}" if revision else ""
    try:
        info = _Info.parse(_json_object(get(f"{base}/api/models/{name}{where}?blobs=true"), "the model info"))
        files = select_files(info.sizes)
        if not info.commit or not has_weights(files):
            message = (
                f"{HubFailure.NoWeights.prefix}: {name} on {endpoint} has no .safetensors or pytorch_model*.bin "
                "weights at its top level; kubellm serves transformers checkpoints"
            )
            return Resolution(None, HubFailure.NoWeights, message, requests, time.monotonic() - started)
        config: dict[str, Any] = {}
        if "config.json" in info.sizes:
            body = get(f"{base}/{name}/resolve/{info.commit}/config.json")
            try:
                loaded = json.loads(body)
                config = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                config = {}
        parameters = info.parameters
        if not parameters and any(f.endswith(".safetensors") for f in files):
            # A mirror without the Hub's safetensors summary: read each shard's header (two ranged GETs each).
            parameters = {}
            for shard in (f for f in files if f.endswith(".safetensors")):
                url = f"{base}/{name}/resolve/{info.commit}/{quote(shard)}"
                size = int.from_bytes(get(url, {"Range": "bytes=0-7"})[:8], "little")
                if not 0 < size <= MAX_INFO_BYTES:
                    parameters = {}
                    break
                header = _json_object(get(url, {"Range": f"bytes=8-{7 + size}"}), f"the header of {shard}")
                for tensor, entry in header.items():
                    if tensor == "__metadata__" or not isinstance(entry, dict):
                        continue
                    shape = entry.get("shape")
                    count = 1
                    for dim in shape if isinstance(shape, list) else []:
                        count *= dim if isinstance(dim, int) and dim >= 0 else 0
                    dtype = str(entry.get("dtype"))
                    parameters[dtype] = parameters.get(dtype, 0) + count
    except EgressError as error:
        failure, message = _classify(error, name, endpoint)
        return Resolution(None, failure, message, requests, time.monotonic() - started)
    except _Refused as error:
        return Resolution(None, error.failure, str(error), requests, time.monotonic() - started)
    model = ResolvedModel(
        name=name,
        endpoint=endpoint,
        revision=revision,
        commit=info.commit,
        files=tuple(files),
        bytes=sum(info.sizes[f] for f in files),
        parameters=sum(parameters.values()) if parameters else None,
        dtype=_largest_share(parameters),
        config=config,
    )
    return Resolution(model, requests=requests, seconds=time.monotonic() - started)


class ModelResolver:
    """Resolutions cached by (model, revision, hub, token digest); thread-safe (reconciles run on workers)."""

    def __init__(
        self,
        *,
        timeout_s: float = 20.0,
        policy: EgressPolicy | None = None,
        allowed_endpoints: frozenset[str] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.policy = policy or EgressPolicy()
        self.allowed_endpoints = allowed_endpoints  # None: any (``kubellm render --resolve``, run by its user)
        self._cache: dict[tuple[str, str | None, str, str], tuple[Resolution, float]] = {}
        self.timeout_s = timeout_s
        self.resolutions = 0  # how many times the hub was asked (for tests and metrics)

    def allows(self, endpoint: str) -> bool:
        return self.allowed_endpoints is None or endpoint_key(endpoint) in self.allowed_endpoints

    def resolve(self, name: str, revision: str | None, *, endpoint: str, token: str | None) -> Resolution:
        digest = hashlib.sha256((token or "").encode()).hexdigest()
        key = (name, revision, endpoint, digest)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            resolution, at = cached
            pinned = revision is not None and resolution.model is not None and resolution.model.commit == revision
            ttl = RETRY_FAILED_S if resolution.model is None else (float("inf") if pinned else REFRESH_BRANCH_S)
            if now - at < ttl:
                return resolution
        resolution = resolve_model(
            name, revision, endpoint=endpoint, token=token, timeout_s=self.timeout_s, policy=self.policy
        )
        with self._lock:
            self._cache[key] = (resolution, now)
            self.resolutions += 1
        if resolution.model is not None:
            log.info(
                "resolved %s@%s on %s to %s: %d files, %d bytes, in %.2fs (%d requests)",
                name,
                revision or "main",
                endpoint,
                resolution.model.commit,
                len(resolution.model.files),
                resolution.model.bytes,
                resolution.seconds,
                resolution.requests,
            )
        else:
            log.warning("cannot resolve %s@%s on %s: %s", name, revision or "main", endpoint, resolution.message)
        return resolution
