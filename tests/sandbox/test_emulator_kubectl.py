"""The kubectl matrix against the emulator: the real kubectl binary over HTTP, with its default validation."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
import shutil
from typing import Any

import pytest
import yaml

from kubellm_emulator import Emulator
from kubellm_emulator.kubelet import Kubelet

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "kubellm.dev_llmservices.yaml"
KUBECTL = shutil.which("kubectl")

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(KUBECTL is None, reason="no kubectl on PATH (CI installs Debian's kubernetes-client)"),
]


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str


class Kubectl:
    def __init__(self, kubeconfig: pathlib.Path, cache: pathlib.Path, workdir: pathlib.Path) -> None:
        self.base = [str(KUBECTL), f"--kubeconfig={kubeconfig}", f"--cache-dir={cache}", "--request-timeout=20s"]
        self.workdir = workdir

    async def __call__(self, *args: str, stdin: str | None = None, timeout: float = 30.0) -> Result:
        process = await asyncio.create_subprocess_exec(
            *self.base,
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        return Result(process.returncode or 0, out.decode(), err.decode())

    async def ok(self, *args: str, stdin: str | None = None) -> str:
        result = await self(*args, stdin=stdin)
        assert result.code == 0, f"kubectl {' '.join(args)} failed: {result.err}"
        assert "couldn't get" not in result.err and "error" not in result.err.lower(), result.err
        return result.out

    def write(self, name: str, documents: list[dict[str, Any]] | dict[str, Any]) -> str:
        path = self.workdir / name
        path.write_text(yaml.safe_dump_all(documents if isinstance(documents, list) else [documents]))
        return str(path)


def llmservice(name: str = "tiny", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubellm.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"model": {"name": "embedded:smollm2-135m-instruct"}, **spec},
    }


@pytest.fixture
def kubectl(emulator: Emulator, emulator_kubeconfig: pathlib.Path, tmp_path: pathlib.Path) -> Kubectl:
    return Kubectl(emulator_kubeconfig, tmp_path / "kubectl-cache", tmp_path)


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


async def set_status(emulator: Emulator, name: str, status: dict[str, Any]) -> None:
    rtype = emulator.store.type_for("kubellm.dev", "v1alpha1", "llmservices")
    emulator.store.patch(
        rtype, "default", name, "application/merge-patch+json", {"status": status}, subresource="status"
    )


READY_STATUS = {
    "phase": "Ready",
    "ready": "1/1",
    "endpoint": "tiny.default.svc.cluster.local:5000",
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Serving",
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ],
}


async def test_apply_get_describe_patch_scale_delete(emulator: Emulator, kubectl: Kubectl) -> None:
    assert "created" in await kubectl.ok("apply", "-f", str(CRD))
    manifest = kubectl.write("tiny.yaml", llmservice())
    assert "llmservice.kubellm.dev/tiny created" in await kubectl.ok("apply", "-f", manifest)
    assert "unchanged" in await kubectl.ok("apply", "-f", manifest)

    await set_status(emulator, "tiny", READY_STATUS)
    rows = table(await kubectl.ok("get", "llms"))
    assert rows[0] == ["NAME", "MODEL", "READY", "PHASE", "REASON", "PROGRESS", "AGE"]
    assert rows[1][:5] == ["tiny", "embedded:smollm2-135m-instruct", "1/1", "Ready", "Serving"]
    wide = table(await kubectl.ok("get", "llmservices", "-o", "wide"))
    assert "ENDPOINT" in wide[0] and "tiny.default.svc.cluster.local:5000" in wide[1]

    stored = yaml.safe_load(await kubectl.ok("get", "llms", "tiny", "-o", "yaml"))
    assert "replicas" not in stored["spec"] and stored["spec"]["model"]["dtype"] == "auto"
    assert stored["status"]["phase"] == "Ready"

    described = await kubectl.ok("describe", "llms", "tiny")
    assert "Name:         tiny" in described and "Embedded:Smollm2" not in described
    assert "Kind:         LLMService" in described

    await kubectl.ok("patch", "llms", "tiny", "--type", "merge", "-p", '{"spec": {"model": {"maxNewTokens": 64}}}')
    assert (await kubectl.ok("get", "llms", "tiny", "-o", "jsonpath={.spec.model.maxNewTokens}")) == "64"
    await kubectl.ok("scale", "llms/tiny", "--replicas=3")
    assert (await kubectl.ok("get", "llms", "tiny", "-o", "jsonpath={.spec.replicas}")) == "3"

    assert "deleted" in await kubectl.ok("delete", "llms", "tiny")
    missing = await kubectl("get", "llms", "tiny")
    assert missing.code != 0 and 'llmservices.kubellm.dev "tiny" not found' in missing.err


async def test_invalid_resource_is_rejected_naming_the_field(emulator: Emulator, kubectl: Kubectl) -> None:
    await kubectl.ok("apply", "-f", str(CRD))
    result = await kubectl("apply", "-f", kubectl.write("bad.yaml", llmservice("bad", replicas=-1)))
    assert result.code != 0
    # kubectl rebuilds the sentence from the Status details, as it does with a real apiserver's.
    assert (
        'The LLMService "bad" is invalid: spec.replicas: Invalid value: -1: '
        "spec.replicas in body should be greater than or equal to 0"
    ) in result.err
    unknown = await kubectl("apply", "-f", kubectl.write("unknown.yaml", llmservice("odd", colour="blue")))
    assert unknown.code != 0 and 'unknown field "spec.colour"' in unknown.err


async def test_replace_with_a_stale_version_conflicts(emulator: Emulator, kubectl: Kubectl) -> None:
    await kubectl.ok("apply", "-f", str(CRD))
    await kubectl.ok("apply", "-f", kubectl.write("tiny.yaml", llmservice()))
    stale = json.loads(await kubectl.ok("get", "llms", "tiny", "-o", "json"))
    await kubectl.ok("patch", "llms", "tiny", "--type", "merge", "-p", '{"spec": {"replicas": 2}}')
    stale["spec"]["replicas"] = 5
    result = await kubectl("replace", "-f", "-", stdin=json.dumps(stale))
    assert result.code != 0 and "the object has been modified" in result.err


async def test_server_dry_run_stores_nothing(emulator: Emulator, kubectl: Kubectl) -> None:
    await kubectl.ok("apply", "-f", str(CRD))
    out = await kubectl.ok("apply", "--dry-run=server", "-f", kubectl.write("tiny.yaml", llmservice()))
    assert "(server dry run)" in out
    assert (await kubectl("get", "llms", "tiny")).code != 0


async def test_wait_for_a_condition_and_watch(emulator: Emulator, kubectl: Kubectl) -> None:
    await kubectl.ok("apply", "-f", str(CRD))
    await kubectl.ok("wait", "--for=condition=Established", "crd/llmservices.kubellm.dev", "--timeout=10s")
    await kubectl.ok("apply", "-f", kubectl.write("tiny.yaml", llmservice()))

    waiting = asyncio.create_task(kubectl("wait", "--for=condition=Ready", "llms/tiny", "--timeout=20s"))
    process = await asyncio.create_subprocess_exec(
        *kubectl.base, "get", "llms", "-w", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        header = await asyncio.wait_for(process.stdout.readline(), 10)
        assert header.split()[:3] == [b"NAME", b"MODEL", b"READY"]
        assert (await asyncio.wait_for(process.stdout.readline(), 10)).split()[0] == b"tiny"
        await set_status(emulator, "tiny", READY_STATUS)
        changed = await asyncio.wait_for(process.stdout.readline(), 10)
        assert changed.split()[:4] == [b"tiny", b"embedded:smollm2-135m-instruct", b"1/1", b"Ready"]
    finally:
        process.kill()
        await process.wait()
    result = await asyncio.wait_for(waiting, 25)
    assert result.code == 0, result.err
    assert "condition met" in result.out


async def test_builtin_kinds_apply_merge_and_print(emulator: Emulator, kubectl: Kubectl) -> None:
    emulator.seed_node("node-1")
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {"name": "main", "image": "nginx:1", "env": [{"name": "A", "value": "1"}]},
                        {"name": "sidecar", "image": "busybox:1"},
                    ]
                },
            },
        },
    }
    path = kubectl.write("web.yaml", deployment)
    await kubectl.ok("apply", "-f", path)
    deployment["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "B", "value": "2"})
    deployment["spec"]["template"]["spec"]["containers"][1]["image"] = "busybox:2"
    await kubectl.ok("apply", "-f", kubectl.write("web.yaml", deployment))
    stored = json.loads(await kubectl.ok("get", "deploy", "web", "-o", "json"))
    containers = stored["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [("main", "nginx:1"), ("sidecar", "busybox:2")]
    assert containers[0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert "$setElementOrder" not in json.dumps(stored)

    async with Kubelet(emulator.api_url) as kubelet:
        await kubelet.reconcile("default", "web")
    rows = table(await kubectl.ok("get", "deploy"))
    assert rows[0] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"] and rows[1][:4] == ["web", "1/1", "1", "1"]
    pods = table(await kubectl.ok("get", "pods", "-o", "wide"))
    assert pods[0][:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] and pods[1][1:3] == ["2/2", "Running"]
    assert "node-1" in pods[1]
    described = await kubectl.ok("describe", "deploy", "web")
    assert "ScalingReplicaSet" in described
    await kubectl.ok("wait", "--for=condition=Available", "deploy/web", "--timeout=10s")
    assert "Ready" in await kubectl.ok("get", "nodes")


@pytest.mark.skipif(not (ROOT / "deploy" / "kustomization.yaml").is_file(), reason="no deploy/kustomization.yaml yet")
async def test_install_manifests_apply_with_kustomize(emulator: Emulator, kubectl: Kubectl) -> None:
    out = await kubectl.ok("apply", "-k", str(ROOT / "deploy"))
    assert "namespace/kubellm-system" in out and "deployment.apps/kubellm-operator" in out
    assert "kubellm-operator" in await kubectl.ok("get", "deploy", "-n", "kubellm-system")


async def test_server_side_apply_drops_fields_the_manager_stopped_applying(
    emulator: Emulator, kubectl: Kubectl
) -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "default"}}
    path = kubectl.write("cm.yaml", {**config, "data": {"a": "1", "b": "2"}})
    assert "serverside-applied" in await kubectl.ok("apply", "--server-side", "-f", path)
    await kubectl.ok("apply", "--server-side", "-f", kubectl.write("cm.yaml", {**config, "data": {"a": "1"}}))
    stored = json.loads(await kubectl.ok("get", "cm", "settings", "-o", "json"))
    assert stored["data"] == {"a": "1"}


async def test_create_verbs_that_send_protobuf(emulator: Emulator, kubectl: Kubectl) -> None:
    """kubectl sends the objects of `kubectl create <kind>` as protobuf: the simple kinds are stored as their JSON
    would be; any other kind is a 415 naming the content type and the kind, and nothing is stored."""
    creates = [
        ["create", "namespace", "proto"],
        ["-n", "proto", "create", "configmap", "settings", "--from-literal=mode=fast", "--from-literal=empty="],
        ["-n", "proto", "create", "secret", "generic", "token", "--from-literal=value=s3cret"],
        ["-n", "proto", "create", "serviceaccount", "runner"],
    ]
    for args in creates:
        expected = json.loads(await kubectl.ok(*args, "--dry-run=client", "-o", "json"))
        await kubectl.ok(*args)
        kind, name = expected["kind"], expected["metadata"]["name"]
        in_namespace = args[:2] if args[0] == "-n" else []
        stored = json.loads(await kubectl.ok(*in_namespace, "get", kind, name, "-o", "json"))
        for field in set(expected) - {"metadata", "status"}:
            assert stored[field] == expected[field], (kind, field)
    secrets = emulator.store.type_for("", "v1", "secrets")
    assert emulator.store.get(secrets, "proto", "token")["data"] == {"value": "czNjcmV0"}  # base64, as in JSON

    refused = await kubectl("-n", "proto", "create", "deployment", "web", "--image=nginx")
    assert refused.code != 0
    assert "application/vnd.kubernetes.protobuf: apps/v1/Deployment in protobuf is not decoded" in refused.err
    assert "deployment" not in await kubectl.ok("-n", "proto", "get", "deployments", "-o", "name")
