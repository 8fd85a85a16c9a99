"""`kubellm hub` against the real huggingface_hub client (through its endpoint setting, no mocks), and its knobs
over plain HTTP where the client would hide the detail (ranges, injected failures, stalls)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from kubellm_hub.server import HubServer
from kubellm_sandbox.processes import free_port


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_model_info_lists_files_sizes_hashes_and_parameters(hub: HubServer, tiny_repo_source: Path) -> None:
    info = HfApi(endpoint=hub.endpoint).model_info("acme/tiny", files_metadata=True)
    assert info.sha is not None and len(info.sha) == 40
    siblings = {s.rfilename: s for s in info.siblings or []}
    on_disk = {p.name: p for p in tiny_repo_source.iterdir()}
    assert set(siblings) == set(on_disk)
    for name, sibling in siblings.items():
        assert sibling.size == on_disk[name].stat().st_size
    weights = siblings["model.safetensors"]
    assert weights.lfs is not None and weights.lfs.sha256 == _sha256(on_disk["model.safetensors"])
    assert siblings["config.json"].lfs is None
    assert info.safetensors is not None and info.safetensors.total == sum(info.safetensors.parameters.values()) > 0
    # The same count as huggingface_hub's own parse of the safetensors header (a ranged GET through the CDN).
    metadata = HfApi(endpoint=hub.endpoint).get_safetensors_metadata("acme/tiny", revision=info.sha)
    assert metadata.parameter_count == info.safetensors.parameters


def test_commit_is_stable_and_follows_the_content(hub: HubServer, hub_root: Path) -> None:
    api = HfApi(endpoint=hub.endpoint)
    first = api.model_info("acme/tiny").sha
    assert api.model_info("acme/tiny").sha == first
    assert api.model_info("acme/tiny", revision=first).sha == first
    (hub_root / "acme" / "tiny" / "README.md").write_text("changed\n")
    second = api.model_info("acme/tiny").sha
    assert second != first
    with pytest.raises(RevisionNotFoundError):
        api.model_info("acme/tiny", revision=first)  # only main and its current commit exist


def test_tree_listing_recursive_and_by_folder(hub: HubServer, hub_root: Path) -> None:
    (hub_root / "acme" / "tiny" / "extra").mkdir()
    (hub_root / "acme" / "tiny" / "extra" / "notes.txt").write_text("x")
    api = HfApi(endpoint=hub.endpoint)
    top = {entry.path: type(entry).__name__ for entry in api.list_repo_tree("acme/tiny")}
    assert top["extra"] == "RepoFolder" and top["config.json"] == "RepoFile" and "extra/notes.txt" not in top
    deep = {entry.path for entry in api.list_repo_tree("acme/tiny", recursive=True)}
    assert {"extra", "extra/notes.txt", "model.safetensors"} <= deep
    assert [e.path for e in api.list_repo_tree("acme/tiny", path_in_repo="extra")] == ["extra/notes.txt"]


def test_snapshot_download_pinned_to_the_commit_is_byte_identical(
    hub: HubServer, tiny_repo_source: Path, tmp_path: Path
) -> None:
    commit = HfApi(endpoint=hub.endpoint).model_info("acme/tiny").sha
    folder = Path(snapshot_download("acme/tiny", revision=commit, cache_dir=tmp_path, endpoint=hub.endpoint))
    assert folder.name == commit
    for source in tiny_repo_source.iterdir():
        assert _sha256(folder / source.name) == _sha256(source), source.name


def test_weights_redirect_to_another_origin_with_the_metadata_on_the_redirect(hub: HubServer) -> None:
    commit = HfApi(endpoint=hub.endpoint).model_info("acme/tiny").sha
    url = hf_hub_url("acme/tiny", "model.safetensors", revision=commit, endpoint=hub.endpoint)
    metadata = get_hf_file_metadata(url)
    assert metadata.commit_hash == commit
    assert metadata.size is not None and metadata.size > 0
    assert metadata.location.startswith("http://127.0.0.1:") and not metadata.location.startswith(hub.endpoint)
    answer = httpx.head(url)
    assert answer.status_code == 302 and answer.headers["X-Linked-Size"] == str(metadata.size)
    small = httpx.head(hf_hub_url("acme/tiny", "config.json", endpoint=hub.endpoint))
    assert small.status_code == 200 and small.headers["X-Repo-Commit"] == commit and small.headers["ETag"]


def test_ranges(hub: HubServer, tiny_repo_source: Path) -> None:
    data = (tiny_repo_source / "model.safetensors").read_bytes()
    url = hf_hub_url("acme/tiny", "model.safetensors", endpoint=hub.endpoint)
    with httpx.Client(follow_redirects=True) as client:
        part = client.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == data[100:200]
        assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
        assert client.get(url, headers={"Range": "bytes=-10"}).content == data[-10:]
        assert client.get(url, headers={"Range": f"bytes={len(data) - 5}-"}).content == data[-5:]
        refused = client.get(url, headers={"Range": f"bytes={len(data)}-"})
        assert refused.status_code == 416 and refused.headers["Content-Range"] == f"bytes */{len(data)}"


def test_errors_carry_the_hub_error_codes(hub: HubServer, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.endpoint)
    with pytest.raises(RepositoryNotFoundError) as anonymous:
        api.model_info("acme/nope")
    assert anonymous.value.response is not None and anonymous.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as authenticated:
        api.model_info("acme/nope", token="any")
    assert authenticated.value.response is not None and authenticated.value.response.status_code == 404
    with pytest.raises(RevisionNotFoundError):
        api.model_info("acme/tiny", revision="v9")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("acme/tiny", "missing.json", cache_dir=tmp_path, endpoint=hub.endpoint)


def test_gated_and_private_repos_and_tokens(hub: HubServer, tmp_path: Path) -> None:
    hub.set_knobs(token="hf_valid", gated=["acme/locked"])
    api = HfApi(endpoint=hub.endpoint)
    assert api.model_info("acme/locked").gated == "manual"  # the Hub shows a gated repo's metadata to anyone
    with pytest.raises(GatedRepoError):
        hf_hub_download("acme/locked", "config.json", cache_dir=tmp_path, endpoint=hub.endpoint, token=False)
    path = hf_hub_download("acme/locked", "config.json", cache_dir=tmp_path, endpoint=hub.endpoint, token="hf_valid")
    assert Path(path).is_file()
    with pytest.raises(HfHubHTTPError) as wrong:
        api.model_info("acme/tiny", token="hf_wrong")
    assert wrong.value.response is not None and wrong.value.response.status_code == 401
    hub.set_knobs(private=["acme/locked"], gated=[])
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("acme/locked", token=False)
    assert api.model_info("acme/locked", token="hf_valid").id == "acme/locked"


def test_failure_corruption_and_stall_knobs(hub: HubServer, tiny_repo_source: Path) -> None:
    data = (tiny_repo_source / "model.safetensors").read_bytes()
    url = hf_hub_url("acme/tiny", "model.safetensors", endpoint=hub.endpoint)
    with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(5.0, read=0.5)) as client:
        hub.set_knobs(fail_count=1, fail_status=500)
        assert client.get(url).status_code == 500
        assert client.get(url).content == data  # only the next one failed
        hub.set_knobs(corrupt_count=1)
        corrupted = client.get(url).content
        assert len(corrupted) == len(data) and corrupted != data
        assert client.get(url).content == data
        hub.set_knobs(stall_after_bytes=1000, stall_count=1)
        received = bytearray()
        with pytest.raises(httpx.ReadTimeout), client.stream("GET", url) as response:
            for chunk in response.iter_bytes():
                received.extend(chunk)
        assert len(received) == 1000
        # Resuming where the stalled one stopped gives the rest, as huggingface_hub's resume does.
        rest = client.get(url, headers={"Range": f"bytes={len(received)}-"}).content
        assert bytes(received) + rest == data
    stats = hub.stats()
    assert stats["cdn"] >= 6 and stats["resolve_get"] >= 6


def test_bandwidth_knob_throttles_bodies(hub: HubServer, tiny_repo_source: Path) -> None:
    size = (tiny_repo_source / "model.safetensors").stat().st_size
    hub.set_knobs(bandwidth=size * 4)  # a quarter of a second at least
    url = hf_hub_url("acme/tiny", "model.safetensors", endpoint=hub.endpoint)
    started = time.monotonic()
    assert len(httpx.get(url, follow_redirects=True, timeout=10).content) == size
    assert time.monotonic() - started >= 0.24


def test_knobs_over_http_refuse_unknown_names(hub: HubServer) -> None:
    answer = httpx.post(f"{hub.endpoint}/_hub/knobs", json={"bandwith": 5})
    assert answer.status_code == 400 and "bandwith" in answer.json()["error"]
    assert httpx.post(f"{hub.endpoint}/_hub/knobs", json={"bandwidth": 5}).json()["bandwidth"] == 5
    assert httpx.get(f"{hub.endpoint}/_hub/knobs").json()["bandwidth"] == 5


def test_kubellm_hub_command_serves_and_stops_on_sigterm(hub_root: Path, tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "kubellm.cli", "hub", "--root", str(hub_root), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert f"http://127.0.0.1:{port}" in banner, banner
        info = HfApi(endpoint=f"http://127.0.0.1:{port}").model_info("acme/tiny")
        assert info.id == "acme/tiny"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_kubellm_hub_refuses_bad_arguments(tmp_path: Path) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "kubellm.cli", "hub", "--root", str(tmp_path / "absent")],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=30,
    )
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "kubellm.cli", "hub", "--root", str(tmp_path), "--bandwidth", "fast"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=30,
    )
    assert bad.returncode == 2 and "not a byte count" in bad.stderr
