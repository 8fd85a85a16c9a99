"""What the operator and the server agree on about a hub model: which of its files the server loads, and the
one-word reasons of a failed resolution or download.

Both sides import this module: the operator sizes storage from exactly the files the server will download, and
reads the server's termination message back into a condition reason. It stays light (no huggingface_hub import
at module level): the operator's image and ``kubellm render`` load it.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

# Small files transformers reads next to the weights (config, tokenizer, chat template, generation defaults).
_SIDE_FILE_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken", ".py")
_SKIPPED_SIDE_FILES = frozenset({"README.md", ".gitattributes", "LICENSE", "LICENSE.txt", "USE_POLICY.md"})


def select_files(paths: Iterable[str]) -> list[str]:
    """The repo files the server downloads and loads, sorted: the weights in one format (safetensors over
    PyTorch .bin, with their shard index) and the top-level config and tokenizer files. Subfolders (onnx/,
    original/, gguf variants) and other formats are never fetched."""
    top = [p for p in paths if "/" not in p]
    safetensors = [p for p in top if p.endswith(".safetensors")]
    binaries = [p for p in top if p.endswith(".bin") and p.startswith("pytorch_model")]
    if safetensors:
        weights = [*safetensors, *(p for p in top if p == "model.safetensors.index.json")]
    else:
        weights = [*binaries, *(p for p in top if p == "pytorch_model.bin.index.json")]
    side = [
        p
        for p in top
        if p.endswith(_SIDE_FILE_SUFFIXES) and p not in _SKIPPED_SIDE_FILES and not p.endswith(".index.json")
    ]
    return sorted(set(weights) | set(side))


def has_weights(paths: Iterable[str]) -> bool:
    return any(p.endswith((".safetensors", ".bin")) for p in paths)


class HubFailure(StrEnum):
    """Why a hub model cannot be resolved or downloaded; each value is a condition reason and prefixes the
    message (``<prefix>: ...``) the server writes as its termination message."""

    HubUnreachable = "HubUnreachable"
    ModelNotFound = "ModelNotFound"
    RevisionNotFound = "RevisionNotFound"
    GatedModel = "GatedModel"
    HubUnauthorized = "HubUnauthorized"
    NoWeights = "NoWeights"
    DownloadStalled = "DownloadStalled"
    DownloadCorrupt = "DownloadCorrupt"
    DownloadFailed = "DownloadFailed"
    HubEndpointNotAllowed = "HubEndpointNotAllowed"  # the operator's egress policy refuses the endpoint

    @property
    def prefix(self) -> str:
        return _PREFIXES[self]


_PREFIXES = {
    HubFailure.HubUnreachable: "hub unreachable",
    HubFailure.ModelNotFound: "model not found",
    HubFailure.RevisionNotFound: "revision not found",
    HubFailure.GatedModel: "gated model",
    HubFailure.HubUnauthorized: "hub token rejected",
    HubFailure.NoWeights: "no weights",
    HubFailure.DownloadStalled: "download stalled",
    HubFailure.DownloadCorrupt: "download corrupt",
    HubFailure.DownloadFailed: "download failed",
    HubFailure.HubEndpointNotAllowed: "hub endpoint not allowed",
}

# What transformers itself says when it cannot reach the hub (a pod whose server predates pinned downloads).
_FOREIGN_MARKERS = {"couldn't connect to": HubFailure.HubUnreachable}


def failure_reason(message: str | None) -> HubFailure | None:
    """The reason a termination message (``model load failed: ... download stalled: ...``) carries, if any."""
    if not message:
        return None
    lowered = message.lower()
    for failure in HubFailure:
        if f"{failure.prefix}: " in lowered:
            return failure
    for marker, failure in _FOREIGN_MARKERS.items():
        if marker in lowered:
            return failure
    return None


def classify_hub_error(error: BaseException, repo_id: str, endpoint: str) -> tuple[HubFailure, str] | None:
    """(reason, message naming the model and what to do) for an error of the huggingface_hub client; None for
    an error that is not about the hub."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, GatedRepoError):
        return HubFailure.GatedModel, (
            f"{HubFailure.GatedModel.prefix}: {repo_id} on {endpoint} is gated: accept its terms on the hub and "
            "set spec.model.hubTokenSecretRef to a Secret holding a token that was granted access"
        )
    if isinstance(error, RevisionNotFoundError):
        return HubFailure.RevisionNotFound, (
            f"{HubFailure.RevisionNotFound.prefix}: {repo_id} on {endpoint} has no such revision: check "
            "spec.model.revision (a branch, tag or commit)"
        )
    if isinstance(error, RepositoryNotFoundError):
        return HubFailure.ModelNotFound, (
            f"{HubFailure.ModelNotFound.prefix}: {repo_id} does not exist on {endpoint}, or it is private: check "
            "spec.model.name, and for a private model set spec.model.hubTokenSecretRef"
        )
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status in (401, 403):
            return HubFailure.HubUnauthorized, (
                f"{HubFailure.HubUnauthorized.prefix}: {endpoint} refused the token for {repo_id} "
                f"(HTTP {status}): check the Secret named by spec.model.hubTokenSecretRef"
            )
        if status >= 500 or status == 429:
            return HubFailure.HubUnreachable, (
                f"{HubFailure.HubUnreachable.prefix}: {endpoint} answered HTTP {status} for {repo_id}; retrying"
            )
    if isinstance(error, httpx2.TransportError | OSError | TimeoutError):
        return HubFailure.HubUnreachable, (
            f"{HubFailure.HubUnreachable.prefix}: cannot reach {endpoint} for {repo_id} ({type(error).__name__}: "
            f"{error}): check the hub endpoint (spec.model.hub.endpoint or the operator's default) and the "
            "network, or use a local model path"
        )
    return None
