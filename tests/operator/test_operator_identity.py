"""The operator runs as the ServiceAccount deploy/ installs, with only deploy/rbac.yaml's permissions."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from operator_support import OPERATOR_SERVICE_ACCOUNT, Kube, llmservice, operator_running

OPERATOR_USER = "system:serviceaccount:{}:{}".format(*OPERATOR_SERVICE_ACCOUNT)


async def test_the_operator_converges_as_its_service_account(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    marker = kube.emulator.request_marker()
    async with operator_running(kube):
        await kube.create(llmservice())
        await kube.wait(
            lambda: (kube.get("LLMService", "tiny") or {}).get("status", {}).get("observedGeneration") == 1,
            "the operator's status for generation 1",
        )
        await kube.wait(lambda: kube.get("Deployment", "tiny") and kube.get("Service", "tiny"), "the children")
    requests = kube.emulator.requests(since=marker)
    operator_writes = {(r.method, r.path) for r in requests if r.user == OPERATOR_USER and r.is_write}
    assert ("POST", "/apis/apps/v1/namespaces/default/deployments") in operator_writes  # created, never applied over
    assert ("PATCH", "/apis/kubellm.dev/v1alpha1/namespaces/default/llmservices/tiny/status") in operator_writes
    admin_writes = {(r.method, r.path) for r in requests if r.user != OPERATOR_USER and r.is_write}
    assert admin_writes == {("POST", "/apis/kubellm.dev/v1alpha1/namespaces/default/llmservices")}  # the test's


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize(
    ("args", "answer"),
    [
        (("list", "secrets"), "no"),
        # `llmservices/status` is kubectl's resource/NAME form (the check); --subresource asks for /status.
        (("patch", "llmservices/status"), "yes"),
        (("patch", "llmservices", "--subresource=status"), "yes"),
        (("update", "llmservices", "--subresource=status"), "no"),
        (("delete", "deployments"), "no"),  # children go by garbage collection, never by the operator
        (("update", "llmservices", "--subresource=finalizers"), "yes"),  # blockOwnerDeletion on its children
    ],
)
async def test_kubectl_auth_can_i_as_the_operator(kube: Kube, args: tuple[str, ...], answer: str) -> None:
    """`kubectl auth can-i ... --as system:serviceaccount:kubellm-system:kubellm-operator` (exit status 1 is 'no')."""
    binary = shutil.which("kubectl")
    assert binary is not None
    process = await asyncio.create_subprocess_exec(
        binary,
        f"--kubeconfig={kube.kubeconfig}",
        f"--cache-dir={kube.kubeconfig.parent / 'kubectl-cache'}",
        "auth",
        "can-i",
        *args,
        "--as",
        OPERATOR_USER,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert out.decode().strip() == answer, err.decode()
    assert process.returncode == (0 if answer == "yes" else 1)
