"""`kubellm operator` as a process against the emulator, driven with kubectl the way a user would."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import signal
import sys

import aiohttp
import pytest
from operator_support import ROOT, Kube, kubectl

from kubellm_emulator.kubelet import Kubelet
from kubellm_sandbox.processes import free_port

pytestmark = pytest.mark.kubectl
WARNING_LINE = (
    "LLMService default/tiny needs 4Gi of free ephemeral storage (2Gi + 2Gi headroom) on a node, but best node "
    "worker-1 has 3Gi free (1 eligible of 1 nodes): its pods may stay Pending or be evicted"
)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        return response.status, await response.text()


def field(table: str, row: str, column: str) -> str:
    lines = table.splitlines()
    header = lines[0]
    start = header.index(column)
    end = min((header.index(c) for c in header.split() if header.index(c) > start), default=None)
    line = next(line for line in lines[1:] if line.split()[0] == row)
    return line[start:end].strip()


async def test_kubectl_apply_get_scale_with_the_operator_process(kube: Kube, tmp_path: pathlib.Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not found: the kubectl flow needs it (CI installs Debian's kubernetes-client)")
    kube.emulator.seed_node("worker-1", ephemeral_storage="3Gi")
    port = free_port()
    log = tmp_path / "operator.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELLM_OPERATOR_")}
    command = [
        str(pathlib.Path(sys.executable).parent / "kubellm"),
        "operator",
        f"--kubeconfig={kube.operator_kubeconfig}",
    ]
    command += [f"--health-port={port}", "--health-host=127.0.0.1", "--summary-refresh-s=1"]
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(*command, stdout=output, stderr=output, env=env, cwd=ROOT)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            try:
                if (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200:
                    break
            except aiohttp.ClientError:
                pass
            if process.returncode is not None or loop.time() > deadline:
                pytest.fail(f"the operator did not answer /healthz:\n{log.read_text()}")
            await asyncio.sleep(0.1)

        await kubectl(kube, "apply", "-f", str(ROOT / "examples" / "tiny-smollm2.yaml"))
        await kube.wait(lambda: kube.get("Deployment", "tiny"), "the Deployment", timeout=20)
        await kube.wait(lambda: kube.condition("tiny", "StorageReady").get("status") == "False", "StorageReady=False")
        table = await kubectl(kube, "get", "llmservices")
        assert table is not None
        print(f"\n$ kubectl get llmservices\n{table}")
        assert table.split("\n")[0].split() == ["NAME", "MODEL", "READY", "PHASE", "REASON", "PROGRESS", "AGE"]
        assert [field(table, "tiny", c) for c in ("MODEL", "READY", "PHASE", "REASON")] == [
            "embedded:smollm2-135m-instruct",
            "0/1",
            "Pending",
            "InsufficientStorage",
        ]

        async with Kubelet(kube.emulator.api_url) as kubelet:
            await kubelet.reconcile("default", "tiny")
        await kube.wait(
            lambda: (kube.get("LLMService", "tiny") or {}).get("status", {}).get("phase") == "Ready", "Ready"
        )
        table = await kubectl(kube, "get", "llms", "-o", "wide")
        assert table is not None
        print(f"\n$ kubectl get llms -o wide\n{table}")
        assert [field(table, "tiny", c) for c in ("READY", "PHASE", "REASON", "ENDPOINT")] == [
            "1/1",
            "Ready",
            "MinimumReplicasAvailable",
            "tiny.default.svc.cluster.local:5000",
        ]

        await kubectl(kube, "scale", "llms/tiny", "--replicas=3")
        await kube.wait(
            lambda: (kube.get("Deployment", "tiny") or {}).get("spec", {}).get("replicas") == 3,
            "kubectl scale to reach the Deployment",
        )
        status, metrics = await get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert "kubellm_operator_storage_warnings_total 1.0" in metrics
        assert 'kubellm_operator_reconciles_total{outcome="changed"}' in metrics
        assert "kubellm_operator_reconcile_duration_seconds_count" in metrics
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
    output_text = log.read_text()
    assert process.returncode == 0, output_text
    assert output_text.count(WARNING_LINE) == 1, output_text
    print(next(line for line in output_text.splitlines() if WARNING_LINE in line))
