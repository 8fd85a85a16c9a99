"""The `kubellm` command: render and crd output, input errors (exit 2, field path, no traceback), dispatch."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_schema import CRD_PATH
from llmservice_cases import REPO, minimal

from kubellm import cli
from kubellm_operator.render import DEFAULT_INFERENCE_IMAGE

KUBELLM = Path(sys.executable).parent / "kubellm"  # the console script installed beside this interpreter


def run_kubellm(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBELLM), *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )


def test_render_seed_example_prints_what_the_issue_promises() -> None:
    result = run_kubellm("render", "-f", "examples/seed-mistral-7b.yaml")
    assert result.returncode == 0, result.stderr
    deployment, service = yaml.safe_load_all(result.stdout)
    main = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= main.keys()
    assert main["resources"]["requests"]["ephemeral-storage"] == "20Gi"
    assert main["resources"]["limits"]["ephemeral-storage"] == "24Gi"
    cache = deployment["spec"]["template"]["spec"]["volumes"][0]
    assert cache["emptyDir"]["sizeLimit"] == "18Gi"
    assert main["image"] == DEFAULT_INFERENCE_IMAGE
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"][0]["port"] == 5000


def test_bad_file_exits_2_with_field_paths_and_no_traceback(tmp_path: Path) -> None:
    bad = minimal(replicas=-1, storage={"request": "20Gi", "limit": "10Gi"})
    bad["spec"]["service"] = {"type": "Ingress"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = run_kubellm("render", "-f", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert f"error: {path}: spec.replicas: Input should be greater than or equal to 0" in result.stderr
    assert "spec.service.type: Input should be 'ClusterIP', 'NodePort' or 'LoadBalancer'" in result.stderr
    assert "spec.storage.limit: storage.limit (10Gi) must be at least storage.request (20Gi)" in result.stderr


def test_crd_prints_the_committed_crd() -> None:
    result = run_kubellm("crd")
    assert result.returncode == 0
    assert result.stdout == CRD_PATH.read_text()


def render_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str, *args: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(["render", "-f", "-", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_render_reads_several_documents_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    second = minimal()
    second["metadata"]["name"] = "second"
    text = yaml.safe_dump_all([minimal(), None, second])
    code, out, _ = render_in_process(monkeypatch, capsys, text, "--image", "img:1", "-n", "team")
    assert code == 0
    docs = list(yaml.safe_load_all(out))
    assert [(d["kind"], d["metadata"]["name"], d["metadata"]["namespace"]) for d in docs] == [
        ("Deployment", "demo", "team"),
        ("Service", "demo", "team"),
        ("Deployment", "second", "team"),
        ("Service", "second", "team"),
    ]
    assert docs[0]["spec"]["template"]["spec"]["containers"][0]["image"] == "img:1"


def _doc(**changes: Any) -> str:
    return yaml.safe_dump({**minimal(), **changes})


@pytest.mark.parametrize(
    ("stdin", "expected"),
    [
        ("spec: [1\n", "<stdin>: not valid YAML (line 2, column 1)"),
        ("", "no LLMService found"),
        ("- a\n- b\n", "(document): must be a mapping"),
        (_doc(kind="Deployment"), "kind: must be LLMService, not 'Deployment'"),
        (_doc(apiVersion="kubellm.dev/v1"), "apiVersion: must be kubellm.dev/v1alpha1, not 'kubellm.dev/v1'"),
        (
            yaml.safe_dump_all(
                [minimal(), minimal(model={"name": "m", "sizeHint": "30Gi"}, storage={"cacheSize": "10Gi"})]
            ),
            "<stdin> (document 2): spec: storage.cacheSize (10Gi) is smaller than model.sizeHint (30Gi)",
        ),
        (
            yaml.safe_dump(minimal(model={"name": "m", "maxNewTokens": "many"})),
            "<stdin>: spec.model.maxNewTokens: Input should be a valid integer",
        ),
    ],
    ids=["yaml-syntax", "empty", "not-a-mapping", "wrong-kind", "wrong-api-version", "problems", "wrong-type"],
)
def test_render_input_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str, expected: str
) -> None:
    code, out, err = render_in_process(monkeypatch, capsys, stdin)
    assert code == 2
    assert out == ""
    assert expected in err, err


def test_render_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["render", "-f", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_delegated_command_gets_its_arguments(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "kubellm_fake_component.py").write_text("def main(argv):\n    print('got', argv)\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.DELEGATES, "serve", cli.Delegate("kubellm_fake_component", "inference", "fake"))
    assert cli.main(["serve", "--port", "1", "--help"]) == 3
    assert capsys.readouterr().out == "got ['--port', '1', '--help']\n"


def test_delegated_command_without_its_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.DELEGATES, "demo", cli.Delegate("kubellm_sandbox.no_such_module", "sandbox", "x"))
    assert cli.main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "kubellm demo: kubellm_sandbox.no_such_module is not part of this installation" in err
    assert "pip install 'kubellm[sandbox]'" in err


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in cli.DELEGATES:
        assert command in out


@pytest.mark.kubectl
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_reads_the_rendered_stream(tmp_path: Path) -> None:
    """kubectl's own decoder (via kustomize, which needs no cluster) accepts every rendered document."""
    paths = [str(path) for path in sorted((REPO / "examples").glob("*.yaml"))]
    stream = "---\n".join(path.read_text() for path in map(Path, paths))
    result = run_kubellm("render", "-f", "-", stdin=stream)
    assert result.returncode == 0, result.stderr
    (tmp_path / "rendered.yaml").write_text(result.stdout)
    (tmp_path / "kustomization.yaml").write_text("resources:\n- rendered.yaml\n")
    built = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stderr
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in yaml.safe_load_all(built.stdout))
    names = sorted(yaml.safe_load(Path(path).read_text())["metadata"]["name"] for path in paths)
    assert kinds == sorted([("Deployment", name) for name in names] + [("Service", name) for name in names])
