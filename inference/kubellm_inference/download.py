"""Downloading a hub model into the cache, pinned to one commit, resumable, verified, and watched for stalls.

``huggingface_hub`` answers what the commit holds (``model_info`` with file metadata: sizes, git blob sha1s,
LFS sha256s), builds the file URLs and the auth headers, and classifies the hub's errors. The bytes are fetched
here rather than through ``hf_hub_download`` because this loader must own what that function hides: the progress
of every byte (the client reports 10 MiB chunks), a stall limit (no byte for ``stall_timeout_s``) with a bounded
number of restarts instead of the client's built-in retries, and the rule that no file is ever loaded before its
size and hash match the hub's.

Layout under ``cache_dir``: ``ORG--NAME/COMMIT/<files>`` holds verified files only; a file in flight is
``ORG--NAME/.partial/COMMIT/<file>`` (kept across container restarts, so the next attempt resumes with a Range
request); ``ORG--NAME/COMMIT/.kubellm-complete`` lists the files once all are in, and a later start with that
marker for a pinned commit loads without asking the hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from kubellm.contract import ServerSettings
from kubellm.modelfiles import HubFailure, classify_hub_error, has_weights, select_files
from kubellm_inference.progress import LoadProgress, Phase

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".kubellm-complete"
_COMMIT_LENGTH = 40


class HubDownloadError(RuntimeError):
    """The model cannot be fetched; ``reason`` is the condition reason, the message says what to do."""

    def __init__(self, reason: HubFailure, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    git_sha1: str | None
    sha256: str | None  # LFS files: the hub's sha256; others are checked by their git blob sha1


@dataclass(frozen=True)
class DownloadPlan:
    repo_id: str
    commit: str
    files: tuple[HubFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def repo_folder(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / repo_id.replace("/", "--")


def cached_snapshot(cache_dir: Path, repo_id: str, revision: str | None) -> Path | None:
    """The complete, verified folder of a pinned commit, if an earlier start finished it."""
    if revision is None or len(revision) != _COMMIT_LENGTH:
        return None
    folder = repo_folder(cache_dir, repo_id) / revision
    return folder if (folder / COMPLETE_MARKER).is_file() else None


def plan_download(
    repo_id: str, revision: str | None, *, endpoint: str, token: str | None, timeout_s: float = 30.0
) -> DownloadPlan:
    """Ask the hub what ``revision`` of ``repo_id`` is (its commit) and which files to fetch; raises
    HubDownloadError with a classified reason."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint).model_info(
            repo_id, revision=revision, files_metadata=True, token=token or False, timeout=timeout_s
        )
    except Exception as error:  # classified below; anything else is not ours to hide
        classified = classify_hub_error(error, repo_id, endpoint)
        if classified is None:
            raise
        raise HubDownloadError(*classified) from error
    siblings = {s.rfilename: s for s in info.siblings or []}
    chosen = select_files(siblings)
    if not info.sha or not has_weights(chosen):
        raise HubDownloadError(
            HubFailure.NoWeights,
            f"{HubFailure.NoWeights.prefix}: {repo_id}@{info.sha} on {endpoint} has no .safetensors or "
            "pytorch_model*.bin weights at its top level; kubellm serves transformers checkpoints",
        )
    files = []
    for path in chosen:
        sibling = siblings[path]
        files.append(
            HubFile(
                path=path,
                size=int(sibling.size or 0),
                git_sha1=sibling.blob_id,
                sha256=sibling.lfs.sha256 if sibling.lfs else None,
            )
        )
    return DownloadPlan(repo_id=repo_id, commit=info.sha, files=tuple(files))


class Downloader:
    """Fetches a plan's files into the cache; one instance per load."""

    def __init__(
        self,
        plan: DownloadPlan,
        *,
        cache_dir: Path,
        endpoint: str,
        token: str | None,
        progress: LoadProgress,
        stall_timeout_s: float,
        max_restarts: int,
        restart_delay_s: float = 1.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.plan = plan
        self.endpoint = endpoint
        self.token = token
        self.progress = progress
        self.stall_timeout_s = stall_timeout_s
        self.max_restarts = max_restarts
        self.restart_delay_s = restart_delay_s
        self.stop = stop or threading.Event()
        self.folder = repo_folder(cache_dir, plan.repo_id) / plan.commit
        self.partial = repo_folder(cache_dir, plan.repo_id) / ".partial" / plan.commit
        self.restarts = 0

    def run(self) -> Path:
        """Download every missing file, verify it and move it into place; returns the snapshot folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.partial.mkdir(parents=True, exist_ok=True)
        already = sum(self._present_bytes(f) for f in self.plan.files)
        self.progress.start_download(self.plan.commit, self.plan.total_bytes, already)
        log.info(
            "downloading %s@%s from %s: %d files, %d bytes (%d already here)",
            self.plan.repo_id,
            self.plan.commit,
            self.endpoint,
            len(self.plan.files),
            self.plan.total_bytes,
            already,
        )
        # Small files first: config and tokenizer problems show before gigabytes of weights arrive.
        for hub_file in sorted(self.plan.files, key=lambda f: (f.size, f.path)):
            if not (self.folder / hub_file.path).is_file():
                self._fetch(hub_file)
        marker = {"repo": self.plan.repo_id, "commit": self.plan.commit, "files": [f.path for f in self.plan.files]}
        (self.folder / COMPLETE_MARKER).write_text(json.dumps(marker))
        return self.folder

    def _present_bytes(self, hub_file: HubFile) -> int:
        final = self.folder / hub_file.path
        if final.is_file():
            return final.stat().st_size
        part = self.partial / hub_file.path
        return min(part.stat().st_size, hub_file.size) if part.is_file() else 0

    def _fetch(self, hub_file: HubFile) -> None:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(self.plan.repo_id, hub_file.path, revision=self.plan.commit, endpoint=self.endpoint)
        part = self.partial / hub_file.path
        part.parent.mkdir(parents=True, exist_ok=True)
        headers = build_hf_headers(token=self.token or False, library_name="kubellm")
        headers["Accept-Encoding"] = "identity"  # the sizes and hashes are of the stored bytes
        while True:
            try:
                self._transfer(url, headers, part, hub_file)
            except (httpx.TransportError, _RetryableStatus) as error:
                stalled = isinstance(error, httpx.ReadTimeout)
                self._restart_or_give_up(hub_file, part, error, stalled=stalled)
                continue
            problem = _verify(part, hub_file)
            if problem is None:
                final = self.folder / hub_file.path
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, final)
                return
            log.warning("%s of %s: %s; downloading it again", hub_file.path, self.plan.repo_id, problem)
            self.progress.discard_bytes(part.stat().st_size)
            part.unlink()
            if self.restarts >= self.max_restarts:
                raise HubDownloadError(
                    HubFailure.DownloadCorrupt,
                    f"{HubFailure.DownloadCorrupt.prefix}: {hub_file.path} of {self.plan.repo_id}@{self.plan.commit} "
                    f"from {self.endpoint}: {problem}, {self.restarts + 1} time(s); the file was not loaded",
                )
            self.restarts += 1
            self.progress.restarted()

    def _transfer(self, url: str, headers: dict[str, str], part: Path, hub_file: HubFile) -> None:
        have = part.stat().st_size if part.is_file() else 0
        if have > hub_file.size:
            self.progress.discard_bytes(have)
            part.unlink()
            have = 0
        if have == hub_file.size:
            return
        request_headers = dict(headers)
        if have:
            request_headers["Range"] = f"bytes={have}-"
        # The read timeout is the stall limit: no byte for that long and the attempt is restarted.
        timeout = httpx.Timeout(30.0, read=self.stall_timeout_s)
        with (
            httpx.Client(follow_redirects=True, timeout=timeout) as client,
            client.stream("GET", url, headers=request_headers) as response,
        ):
            if response.status_code >= 500 or response.status_code == 429:
                raise _RetryableStatus(response.status_code)
            if response.status_code == 416:  # the part does not fit the file any more: start over
                self.progress.discard_bytes(have)
                part.unlink()
                raise _RetryableStatus(416)
            if response.status_code not in (200, 206):
                response.read()
                raise self._http_error(response, hub_file)
            if have and response.status_code == 200:  # the server ignored the range: start over
                self.progress.discard_bytes(have)
                have = 0
            with part.open("ab" if have else "wb") as out:
                for chunk in response.iter_bytes():  # as it arrives: progress and resume point to the byte
                    if self.stop.is_set():
                        raise HubDownloadError(HubFailure.DownloadFailed, "download failed: the server is stopping")
                    out.write(chunk)
                    self.progress.add_bytes(len(chunk), hub_file.path)

    def _http_error(self, response: httpx.Response, hub_file: HubFile) -> HubDownloadError:
        code = response.headers.get("X-Error-Code")
        model = f"{self.plan.repo_id}@{self.plan.commit}"
        if code == "GatedRepo":
            return HubDownloadError(
                HubFailure.GatedModel,
                f"{HubFailure.GatedModel.prefix}: {model} on {self.endpoint} is gated: set "
                "spec.model.hubTokenSecretRef to a token that was granted access",
            )
        if response.status_code in (401, 403):
            return HubDownloadError(
                HubFailure.HubUnauthorized,
                f"{HubFailure.HubUnauthorized.prefix}: {self.endpoint} refused {hub_file.path} of {model} "
                f"(HTTP {response.status_code}): check the hub token",
            )
        if response.status_code == 404:
            return HubDownloadError(
                HubFailure.ModelNotFound,
                f"{HubFailure.ModelNotFound.prefix}: {hub_file.path} of {model} is gone from {self.endpoint} "
                "(HTTP 404): the commit may have been deleted; pin another spec.model.revision",
            )
        return HubDownloadError(
            HubFailure.DownloadFailed,
            f"{HubFailure.DownloadFailed.prefix}: {hub_file.path} of {model}: HTTP {response.status_code} "
            f"from {self.endpoint}",
        )

    def _restart_or_give_up(self, hub_file: HubFile, part: Path, error: Exception, *, stalled: bool) -> None:
        done = part.stat().st_size if part.is_file() else 0
        what = (
            f"no data for {self.stall_timeout_s:g}s on {hub_file.path}"
            if stalled
            else f"{hub_file.path}: {type(error).__name__}: {error}"
        )
        if self.restarts >= self.max_restarts:
            reason = HubFailure.DownloadStalled if stalled else HubFailure.HubUnreachable
            raise HubDownloadError(
                reason,
                f"{reason.prefix}: {what} ({done}/{hub_file.size} bytes) from {self.endpoint}; gave up after "
                f"{self.restarts} restart(s); the next attempt resumes where this one stopped",
            ) from error
        self.restarts += 1
        self.progress.restarted()
        log.warning(
            "download of %s: %s; restarting from byte %d (restart %d of %d)",
            self.plan.repo_id,
            what,
            done,
            self.restarts,
            self.max_restarts,
        )
        if self.stop.wait(self.restart_delay_s):
            raise HubDownloadError(HubFailure.DownloadFailed, "download failed: the server is stopping")


class _RetryableStatus(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def _verify(path: Path, hub_file: HubFile) -> str | None:
    """What is wrong with a downloaded file (size, then hash), or None when it is the hub's file."""
    size = path.stat().st_size
    if size != hub_file.size:
        return f"size {size} != {hub_file.size} bytes"
    if hub_file.sha256:
        digest = hashlib.sha256()
        expected = hub_file.sha256
    elif hub_file.git_sha1:
        digest = hashlib.sha1(f"blob {size}\0".encode())
        expected = hub_file.git_sha1
    else:
        return None
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        return f"hash {digest.hexdigest()[:12]}... != the hub's {expected[:12]}..."
    return None


def hub_endpoint(settings: ServerSettings) -> str:
    """The hub to use: the setting, else huggingface_hub's (``HF_ENDPOINT``, else https://huggingface.co)."""
    from huggingface_hub import constants

    return (settings.hub_endpoint or constants.ENDPOINT).rstrip("/")


def fetch_model(
    repo_id: str,
    revision: str | None,
    *,
    cache_dir: Path,
    endpoint: str,
    token: str | None,
    progress: LoadProgress,
    stall_timeout_s: float,
    max_restarts: int,
    restart_delay_s: float = 1.0,
) -> Path:
    """The local folder of ``repo_id`` at ``revision``: from the cache when a pinned commit is complete there,
    else resolved and downloaded. Raises HubDownloadError."""
    cached = cached_snapshot(cache_dir, repo_id, revision)
    if cached is not None:
        log.info("%s@%s is complete in the cache; not asking the hub", repo_id, revision)
        return cached
    progress.set_phase(Phase.resolving, f"{repo_id}@{revision or 'main'} on {endpoint}")
    started = time.monotonic()
    plan = plan_download(repo_id, revision, endpoint=endpoint, token=token)
    log.info(
        "resolved %s@%s to commit %s in %.2fs", repo_id, revision or "main", plan.commit, time.monotonic() - started
    )
    return Downloader(
        plan,
        cache_dir=cache_dir,
        endpoint=endpoint,
        token=token,
        progress=progress,
        stall_timeout_s=stall_timeout_s,
        max_restarts=max_restarts,
        restart_delay_s=restart_delay_s,
    ).run()
