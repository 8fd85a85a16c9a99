"""The server's hub downloads (kubellm_inference.download) against `kubellm hub`: pinned to the commit,
resumed after a stall, never loading a corrupt or partial file, and every hub failure classified."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from kubellm.modelfiles import HubFailure, failure_reason
from kubellm_hub.server import HubServer
from kubellm_inference.download import COMPLETE_MARKER, HubDownloadError, fetch_model, repo_folder
from kubellm_inference.progress import LoadProgress, Phase
from kubellm_sandbox.processes import free_port

WEIGHTS = "model.safetensors"


def _fetch(hub: HubServer | str, cache: Path, progress: LoadProgress | None = None, **overrides: object) -> Path:
    options: dict[str, object] = {
        "cache_dir": cache,
        "endpoint": hub if isinstance(hub, str) else hub.endpoint,
        "token": None,
        "progress": progress or LoadProgress(),
        "stall_timeout_s": 0.5,
        "max_restarts": 2,
        "restart_delay_s": 0.05,
    }
    options.update(overrides)
    repo = str(options.pop("repo", "acme/tiny"))
    revision = options.pop("revision", None)
    return fetch_model(repo, revision, **options)  # type: ignore[arg-type]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_downloads_the_selected_files_pinned_to_the_commit(
    hub: HubServer, tiny_repo_source: Path, tmp_path: Path
) -> None:
    folder = _fetch(hub, tmp_path)
    commit = folder.name
    assert len(commit) == 40 and folder.parent == repo_folder(tmp_path, "acme/tiny")
    for source in tiny_repo_source.iterdir():
        assert _digest(folder / source.name) == _digest(source)
    assert (folder / COMPLETE_MARKER).is_file()
    before = hub.stats()
    # A later start with the pinned commit loads from the cache without asking the hub at all.
    assert _fetch(hub, tmp_path, revision=commit) == folder
    assert hub.stats() == before


def test_progress_moves_during_a_throttled_download(hub: HubServer, tiny_repo_source: Path, tmp_path: Path) -> None:
    total = sum(p.stat().st_size for p in tiny_repo_source.iterdir())
    hub.set_knobs(bandwidth=total * 2)  # half a second per file body at least, in many blocks
    progress = LoadProgress()
    seen: list[dict[str, object]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            seen.append(progress.snapshot())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        _fetch(hub, tmp_path, progress)
    finally:
        done.set()
        watcher.join(5)
    moving = [s for s in seen if s["phase"] == Phase.downloading and 0 < s["bytesDone"] < s["bytesTotal"]]  # type: ignore[operator]
    assert moving, seen[:5]
    assert moving[0]["bytesTotal"] == total
    assert any(s["bytesPerSecond"] > 0 for s in moving)  # type: ignore[operator]
    assert progress.snapshot()["bytesDone"] == total


def test_a_stalled_download_is_restarted_and_resumes(hub: HubServer, tiny_repo_source: Path, tmp_path: Path) -> None:
    hub.set_knobs(stall_after_bytes=100_000, stall_count=1)
    progress = LoadProgress()
    folder = _fetch(hub, tmp_path, progress)
    assert _digest(folder / WEIGHTS) == _digest(tiny_repo_source / WEIGHTS)
    assert progress.snapshot()["restarts"] == 1
    # Resumed, not started over: the bytes counted equal the files' sizes, nothing was counted twice.
    assert progress.snapshot()["bytesDone"] == sum(p.stat().st_size for p in tiny_repo_source.iterdir())


def test_a_download_stalled_past_the_limit_fails_and_the_next_attempt_resumes(
    hub: HubServer, tiny_repo_source: Path, tmp_path: Path
) -> None:
    hub.set_knobs(stall_after_bytes=100_000, stall_count=-1)
    with pytest.raises(HubDownloadError) as stalled:
        _fetch(hub, tmp_path, max_restarts=1)
    assert stalled.value.reason is HubFailure.DownloadStalled
    message = str(stalled.value)
    assert message.startswith("download stalled: no data for 0.5s on model.safetensors (200000/"), message
    assert "gave up after 1 restart(s)" in message
    assert failure_reason(f"model load failed: ModelLoadError: {message}") is HubFailure.DownloadStalled
    commit_folders = [p for p in repo_folder(tmp_path, "acme/tiny").iterdir() if not p.name.startswith(".")]
    assert len(commit_folders) == 1
    assert not (commit_folders[0] / WEIGHTS).exists(), "a partial file must never be where the loader looks"
    hub.set_knobs(stall_count=0)
    progress = LoadProgress()
    folder = _fetch(hub, tmp_path, progress)
    assert _digest(folder / WEIGHTS) == _digest(tiny_repo_source / WEIGHTS)
    size = (tiny_repo_source / WEIGHTS).stat().st_size
    assert progress.snapshot()["bytesDone"] == sum(p.stat().st_size for p in tiny_repo_source.iterdir())
    assert size > 100_000  # the resumed attempt asked only for the rest (checked through the byte count above)


def test_a_corrupt_file_is_downloaded_again_and_never_loaded(
    hub: HubServer, tiny_repo_source: Path, tmp_path: Path
) -> None:
    hub.set_knobs(corrupt_count=1)
    folder = _fetch(hub, tmp_path)
    for source in tiny_repo_source.iterdir():
        assert _digest(folder / source.name) == _digest(source)
    hub.set_knobs(corrupt_count=-1)
    with pytest.raises(HubDownloadError) as corrupt:
        _fetch(hub, tmp_path / "second", max_restarts=1)
    assert corrupt.value.reason is HubFailure.DownloadCorrupt
    assert "was not loaded" in str(corrupt.value)
    snapshot = next(p for p in repo_folder(tmp_path / "second", "acme/tiny").iterdir() if not p.name.startswith("."))
    assert not any(snapshot.iterdir()), "no file that failed its hash may be in the snapshot folder"


@pytest.mark.parametrize(
    ("setup", "repo", "revision", "reason", "words"),
    [
        ({}, "acme/typo", None, HubFailure.ModelNotFound, "acme/typo does not exist"),
        ({}, "acme/tiny", "v2", HubFailure.RevisionNotFound, "spec.model.revision"),
        ({"token": "hf_ok", "gated": ["acme/locked"]}, "acme/locked", None, HubFailure.GatedModel, "is gated"),
        ({"token": "hf_ok", "private": ["acme/locked"]}, "acme/locked", None, HubFailure.ModelNotFound, "private"),
    ],
)
def test_hub_refusals_are_classified(
    hub: HubServer,
    tmp_path: Path,
    setup: dict[str, object],
    repo: str,
    revision: str | None,
    reason: HubFailure,
    words: str,
) -> None:
    hub.set_knobs(**setup)
    with pytest.raises(HubDownloadError) as refused:
        _fetch(hub, tmp_path, repo=repo, revision=revision)
    assert refused.value.reason is reason
    assert words in str(refused.value) and str(refused.value).startswith(reason.prefix + ": ")
    if setup.get("token"):  # with the token it loads
        assert _fetch(hub, tmp_path, repo=repo, token="hf_ok").is_dir()


def test_an_unreachable_hub_is_classified(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(HubDownloadError) as unreachable:
        _fetch(endpoint, tmp_path)
    assert unreachable.value.reason is HubFailure.HubUnreachable
    assert str(unreachable.value).startswith(f"hub unreachable: cannot reach {endpoint} for acme/tiny")


def test_failure_reason_reads_termination_messages() -> None:
    assert failure_reason(None) is None
    assert failure_reason("model load failed: ValueError: bad config") is None
    assert failure_reason("model load failed: ModelLoadError: gated model: x is gated") is HubFailure.GatedModel
    transformers_said = "model load failed: OSError: We couldn't connect to 'https://huggingface.co' to load"
    assert failure_reason(transformers_said) is HubFailure.HubUnreachable
