"""The sandbox with a hub model: `kubellm demo` applies an LLMService naming a repo on a throttled `kubellm hub`,
and the download's progress shows on the LLMService before it is Ready (the issue's "done when")."""

from __future__ import annotations

import pathlib
import re

import pytest
from demo_support import example, run_demo

from kubellm_hub.server import HubServer, Knobs
from kubellm_inference.tinymodel import build_tiny_model
from kubellm_sandbox.processes import free_port
from kubellm_sandbox.supervisor import Layout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_progress_moves_on_the_llmservice_before_ready(
    tmp_path: pathlib.Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECACHEDIR", str(tmp_path / "kubectl-cache"))
    build_tiny_model(tmp_path / "hub" / "acme" / "tiny")
    weights = (tmp_path / "hub" / "acme" / "tiny" / "model.safetensors").stat().st_size
    manifest = example("hub-tiny.yaml")
    with HubServer(tmp_path / "hub", knobs=Knobs(bandwidth=weights // 8)) as hub:  # ~8 s of weights
        manifest["spec"]["model"] = {"name": "acme/tiny", "hub": {"endpoint": hub.endpoint}, "maxNewTokens": 8}
        manifest["spec"]["service"]["port"] = free_port()
        # The sandbox's operator allows the demo hub's port; this test's hub is on a free one.
        monkeypatch.setenv("KUBELLM_OPERATOR_ALLOWED_HUB_ENDPOINTS", hub.endpoint)
        code = run_demo(manifest, tmp_path, timeout_s=150)
        stats = hub.stats()
    out = capfd.readouterr().out
    assert code == 0, out
    progress = [int(p) for p in re.findall(r"Downloading [0-9.]+\w*/[0-9.]+\w+ \((\d+)%\)", out)]
    assert len(progress) >= 2 and progress == sorted(progress), out
    assert out.index("Downloading ") < out.index("MinimumReplicasAvailable")
    # The operator resolved it once, the pod once more (its own pinned plan): two model infos in all.
    assert stats["model_info"] == 2, stats
    assert not Layout(tmp_path / "sandbox").pid_file.exists()
