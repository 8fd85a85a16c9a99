"""Resolving a hub model before rollout: which commit its revision is, which files the server will load and
how many bytes they are, its parameter count and stored dtype, and its config (for the KV-cache estimate).

Two requests for a hub that reports safetensors metadata in its model info (the Hugging Face Hub does): the
model info with file metadata, and ``config.json`` at the resolved commit, which also proves that the token may
download the files (a gated repo's model info is public; its files are not). Hub refusals and an unreachable
hub come back as a classified :class:`Resolution`, never as an exception, so the reconcile turns them into a
condition. :class:`ModelResolver` caches results per model, revision, hub and token, so a reconcile that changes
nothing asks the hub nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from kubellm.contract import EMBEDDED_MODEL
from kubellm.modelfiles import HubFailure, classify_hub_error, has_weights, select_files

log = logging.getLogger("kubellm.operator")

DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$|^[A-Za-z0-9][\w.-]*$")
# Failures that waiting may fix (a hub outage) are retried sooner than a resolved model is refreshed.
RETRY_FAILED_S = 30.0
REFRESH_BRANCH_S = 600.0  # a branch or tag may move; a commit never does


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


def resolve_model(
    name: str, revision: str | None, *, endpoint: str, token: str | None, timeout_s: float = 20.0
) -> Resolution:
    """Ask the hub at ``endpoint`` what ``name`` at ``revision`` is. Never raises for hub answers."""
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    started = time.monotonic()
    requests = 0
    api = HfApi(endpoint=endpoint)
    try:
        requests += 1
        info = api.model_info(name, revision=revision, files_metadata=True, token=token or False, timeout=timeout_s)
        siblings = {s.rfilename: s for s in info.siblings or []}
        files = select_files(siblings)
        if not info.sha or not has_weights(files):
            message = (
                f"{HubFailure.NoWeights.prefix}: {name} on {endpoint} has no .safetensors or pytorch_model*.bin "
                "weights at its top level; kubellm serves transformers checkpoints"
            )
            return Resolution(None, HubFailure.NoWeights, message, requests, time.monotonic() - started)
        config: dict[str, Any] = {}
        if "config.json" in siblings:
            requests += 1
            url = hf_hub_url(name, "config.json", revision=info.sha, endpoint=endpoint)
            response = get_session().get(url, headers=build_hf_headers(token=token or False), timeout=timeout_s)
            hf_raise_for_status(response)
            try:
                loaded = json.loads(response.content)
                config = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                config = {}
        parameters: dict[str, int] = dict(info.safetensors.parameters) if info.safetensors else {}
        if not parameters and any(f.endswith(".safetensors") for f in files):
            # A mirror without the Hub's safetensors summary: read the headers (ranged GETs, one per shard).
            metadata = api.get_safetensors_metadata(name, revision=info.sha, token=token or False)
            requests += 1 + len(metadata.files_metadata)
            parameters = {str(k): int(v) for k, v in metadata.parameter_count.items()}
    except Exception as error:  # classified below; anything else is a bug to see
        classified = classify_hub_error(error, name, endpoint)
        if classified is None:
            raise
        return Resolution(None, classified[0], classified[1], requests, time.monotonic() - started)
    model = ResolvedModel(
        name=name,
        endpoint=endpoint,
        revision=revision,
        commit=info.sha,
        files=tuple(files),
        bytes=sum(int(siblings[f].size or 0) for f in files),
        parameters=sum(parameters.values()) if parameters else None,
        dtype=_largest_share(parameters),
        config=config,
    )
    return Resolution(model, requests=requests, seconds=time.monotonic() - started)


class ModelResolver:
    """Resolutions cached by (model, revision, hub, token digest), at most ``max_entries`` of them (the least
    recently used go first: tenants choose models and hubs, so the cache must not grow with what they ask);
    thread-safe (resolutions run on the background fetchers)."""

    def __init__(self, *, timeout_s: float = 20.0, max_entries: int = 1024) -> None:
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str | None, str, str], tuple[Resolution, float]] = OrderedDict()
        self.max_entries = max_entries
        self.timeout_s = timeout_s
        self.resolutions = 0  # how many times the hub was asked (for tests and metrics)

    def resolve(self, name: str, revision: str | None, *, endpoint: str, token: str | None) -> Resolution:
        digest = hashlib.sha256((token or "").encode()).hexdigest()
        key = (name, revision, endpoint, digest)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        if cached is not None:
            resolution, at = cached
            pinned = revision is not None and resolution.model is not None and resolution.model.commit == revision
            ttl = RETRY_FAILED_S if resolution.model is None else (float("inf") if pinned else REFRESH_BRANCH_S)
            if now - at < ttl:
                return resolution
        resolution = resolve_model(name, revision, endpoint=endpoint, token=token, timeout_s=self.timeout_s)
        with self._lock:
            self._cache[key] = (resolution, now)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
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
