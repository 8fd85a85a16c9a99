"""`kubellm demo` end to end on the tiny random model (a free service port, a temporary sandbox), and its kind mode's
refusal without Docker and kind."""

from __future__ import annotations

import pathlib
import shutil

import pytest
from demo_support import example, run_demo

from kubellm_sandbox import demo
from kubellm_sandbox.processes import free_port
from kubellm_sandbox.supervisor import Layout
from kubellm_tools.tinymodel import build_tiny_model


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_applies_waits_asks_and_stops(
    tmp_path: pathlib.Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECACHEDIR", str(tmp_path / "kubectl-cache"))  # kubectl's discovery cache, not ~/.kube
    manifest = example("tiny-smollm2.yaml")
    manifest["spec"]["model"]["name"] = str(build_tiny_model(tmp_path / "model"))
    manifest["spec"]["service"]["port"] = port = free_port()
    manifest["spec"]["probes"]["startup"] = {"periodSeconds": 1, "budgetSeconds": 60}
    code = run_demo(manifest, tmp_path, timeout_s=120)
    out = capfd.readouterr().out  # capfd: kubectl writes to the inherited stdout
    assert code == 0, out
    assert "Ready" in out and "1/1" in out
    assert f"Asking the Service tiny on 127.0.0.1:{port}: POST /ask" in out
    answer = next(line for line in out.splitlines() if line.startswith("  A: "))
    assert len(answer) > len("  A: ")
    if shutil.which("kubectl"):
        assert "kubellm.dev/tiny created" in out  # real kubectl applied it
        assert "MinimumReplicasAvailable" in out  # `kubectl get llmservices` printed the Reason column
    assert not Layout(tmp_path / "sandbox").pid_file.exists(), "--down-after must stop the sandbox"


def test_kind_mode_without_docker_says_what_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("docker") and shutil.which("kind"):
        pytest.skip("docker and kind are present: the kind demo would really run")
    assert demo.main(["--cluster", "kind"]) == 2
    err = capsys.readouterr().err
    assert "needs Docker, kind and kubectl; missing:" in err
    assert "make demo" in err


def test_a_missing_manifest_is_a_clear_error(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = demo.main(["--file", str(tmp_path / "nope.yaml"), "--data-dir", str(tmp_path / "sandbox")])
    assert code == 1
    assert "nope.yaml: no such file" in capsys.readouterr().err
    assert not (tmp_path / "sandbox").exists(), "nothing starts for a manifest that is not there"
