"""The kubectl calls the Kubernetes documentation shows, against the emulator: the answers a cluster gives.

Each case runs the real kubectl and checks its exit status and the exact text a v1.32 cluster prints (the
apiserver's Status message, which kubectl shows as `Error from server (<Reason>): ...` or, for 422,
`The <Kind> "<name>" is invalid: ...`), so a regression in the emulator's strictness fails here. Sources: the
kubectl reference (`auth can-i`, `auth whoami`, `--as`, `--chunk-size`), "Using RBAC Authorization",
"Resource Quotas", "Deployments" and "Service" concept pages.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
from test_emulator_kubectl import KUBECTL, Kubectl

from kubellm_emulator import Emulator

ROOT = pathlib.Path(__file__).resolve().parents[2]
OPERATOR = "system:serviceaccount:kubellm-system:kubellm-operator"

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(KUBECTL is None, reason="no kubectl on PATH (CI installs Debian's kubernetes-client)"),
]


@pytest.fixture
def kubectl(emulator: Emulator, emulator_kubeconfig: pathlib.Path, tmp_path: pathlib.Path) -> Kubectl:
    emulator.apply_manifests(ROOT / "crds" / "kubellm.dev_llmservices.yaml")
    for name in ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml"):
        emulator.apply_manifests(ROOT / "deploy" / name)
    return Kubectl(emulator_kubeconfig, tmp_path / "kubectl-cache", tmp_path)


def deployment(name: str, selector: str, labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": selector}},
            "template": {
                "metadata": {"labels": {"app": labels}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
            },
        },
    }


@pytest.mark.parametrize(
    ("args", "code", "out"),
    [
        (("auth", "can-i", "list", "secrets", "--as", OPERATOR), 1, "no"),
        (("auth", "can-i", "patch", "llmservices/status", "--as", OPERATOR), 0, "yes"),
        (("auth", "can-i", "watch", "llmservices", "--as", OPERATOR, "--all-namespaces"), 0, "yes"),
        (("auth", "can-i", "create", "deployments", "--as", OPERATOR, "-n", "kube-system"), 0, "yes"),
        (("auth", "can-i", "delete", "services", "--as", OPERATOR), 1, "no"),
        (("auth", "can-i", "get", "pods", "--as", "bob"), 1, "no"),
        (("auth", "can-i", "get", "pods", "--as", "bob", "--as-group", "system:masters"), 0, "yes"),
        (("auth", "can-i", "get", "/healthz", "--as", OPERATOR), 0, "yes"),
        (("auth", "can-i", "get", "/metrics", "--as", OPERATOR), 1, "no"),
    ],
)
async def test_auth_can_i(kubectl: Kubectl, args: tuple[str, ...], code: int, out: str) -> None:
    result = await kubectl(*args)
    assert (result.code, result.out.strip()) == (code, out), result.err


async def test_auth_whoami_and_can_i_list(kubectl: Kubectl) -> None:
    whoami = await kubectl.ok("auth", "whoami", "--as", OPERATOR, "-o", "jsonpath={.status.userInfo.groups}")
    assert whoami == '["system:serviceaccounts","system:serviceaccounts:kubellm-system","system:authenticated"]'
    listed = await kubectl.ok("auth", "can-i", "--list", "--as", OPERATOR)
    assert "llmservices.kubellm.dev/status" in listed and "secrets" not in listed


async def test_forbidden_as_kubectl_prints_it(kubectl: Kubectl) -> None:
    result = await kubectl("get", "secrets", "--as", OPERATOR)
    assert result.code == 1
    assert result.err.strip() == (
        f'Error from server (Forbidden): secrets is forbidden: User "{OPERATOR}" cannot list resource "secrets" in '
        'API group "" in the namespace "default"'
    )
    result = await kubectl("delete", "llmservice", "tiny", "--as", OPERATOR)
    assert result.err.strip() == (
        f'Error from server (Forbidden): llmservices.kubellm.dev "tiny" is forbidden: User "{OPERATOR}" cannot '
        'delete resource "llmservices" in API group "kubellm.dev" in the namespace "default"'
    )


async def test_the_operators_own_kubeconfig(emulator: Emulator, kubectl: Kubectl, tmp_path: pathlib.Path) -> None:
    """A kubeconfig with the ServiceAccount's token: its own identity, and no impersonation without the verb."""
    config = emulator.write_kubeconfig(tmp_path / "operator", service_account=("kubellm-system", "kubellm-operator"))
    operator = Kubectl(config, tmp_path / "operator-cache", tmp_path)
    assert (await operator.ok("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")) == OPERATOR
    assert (await operator.ok("get", "llmservices", "-A", "-o", "name")) == ""
    result = await operator("get", "pods", "--as", "bob")
    assert result.err.strip() == (
        f'Error from server (Forbidden): users "bob" is forbidden: User "{OPERATOR}" cannot impersonate resource '
        '"users" in API group "" at the cluster scope'
    )


async def test_invalid_objects_as_kubectl_prints_them(kubectl: Kubectl) -> None:
    bad = kubectl.write("bad.yaml", deployment("web", "web", "other"))
    result = await kubectl("apply", "-f", bad)
    assert result.code == 1
    assert result.err.strip() == (
        'The Deployment "web" is invalid: spec.template.metadata.labels: Invalid value: '
        'map[string]string{"app":"other"}: `selector` does not match template `labels`'
    )
    await kubectl.ok("apply", "-f", kubectl.write("good.yaml", deployment("web", "web", "web")))
    changed = await kubectl("apply", "-f", kubectl.write("changed.yaml", deployment("web", "api", "api")))
    assert changed.err.strip() == (
        'The Deployment "web" is invalid: spec.selector: Invalid value: '
        'v1.LabelSelector{MatchLabels:map[string]string{"app":"api"}, '
        "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "nodePort": 8080}]},
    }
    result = await kubectl("apply", "-f", kubectl.write("svc.yaml", service))
    assert result.err.strip() == (
        'The Service "web" is invalid: spec.ports[0].nodePort: Invalid value: 8080: provided port is not in the '
        "valid range. The range of valid ports is 30000-32767"
    )


async def test_quota_refusal_as_kubectl_prints_it(kubectl: Kubectl) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "storage", "namespace": "default"},
        "spec": {"hard": {"requests.ephemeral-storage": "10Gi"}},
    }
    await kubectl.ok("apply", "-f", kubectl.write("quota.yaml", quota))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "big", "namespace": "default"},
        "spec": {
            "containers": [{"name": "web", "image": "nginx", "resources": {"requests": {"ephemeral-storage": "20Gi"}}}]
        },
    }
    path = kubectl.write("pod.yaml", pod)
    result = await kubectl("apply", "-f", path)
    assert result.code == 1
    assert result.err.strip() == (
        f'Error from server (Forbidden): error when creating "{path}": pods "big" is forbidden: exceeded quota: '
        "storage, requested: requests.ephemeral-storage=20Gi, used: requests.ephemeral-storage=0, limited: "
        "requests.ephemeral-storage=10Gi"
    )
    described = await kubectl.ok("get", "quota", "storage", "-o", "jsonpath={.status.used}")
    assert described == '{"requests.ephemeral-storage":"0"}'


async def test_chunked_lists(kubectl: Kubectl, emulator: Emulator) -> None:
    """`kubectl get --chunk-size=N` pages with limit/continue and shows every object once."""
    for index in range(7):
        emulator.apply_manifest({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{index}"}})
    marker = emulator.request_marker()
    out = await kubectl.ok("get", "configmaps", "--chunk-size=3", "-o", "name")
    assert out.split() == [f"configmap/cm-{index}" for index in range(7)]
    pages = emulator.requests("GET", "/api/v1/namespaces/default/configmaps", since=marker)
    assert [request.query.get("limit") for request in pages] == ["3", "3", "3"]
    assert [bool(request.query.get("continue")) for request in pages] == [False, True, True]
