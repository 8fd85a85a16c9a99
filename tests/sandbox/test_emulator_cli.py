"""`kubellm emulator` as a process: serves, applies --crd files, seeds --node, writes a kubeconfig, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
import signal
import ssl
import sys

import aiohttp
import pytest
import yaml

from kubellm_emulator.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "kubellm.dev_llmservices.yaml"


async def test_serves_until_sigterm(tmp_path: pathlib.Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kubellm_emulator.cli",
        "--kubeconfig",
        str(kubeconfig),
        "--crd",
        str(CRD),
        "--node",
        "node-1:50Gi",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("kubellm emulator serving http://127.0.0.1:"), line
        config = yaml.safe_load(kubeconfig.read_text())
        server = config["clusters"][0]["cluster"]["server"]
        token = config["users"][0]["user"]["token"]
        authority = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
        trusted = ssl.create_default_context(cadata=authority)  # the kubeconfig's server is the HTTPS listener
        llmservices = f"{server}/apis/kubellm.dev/v1alpha1/llmservices"
        # No token: system:anonymous, refused as on a cluster.
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusted)) as session,
            session.get(llmservices) as response,
        ):
            assert response.status == 403
        authorized = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=authorized, connector=aiohttp.TCPConnector(ssl=trusted)) as session:
            async with session.get(llmservices) as response:
                assert response.status == 200
            async with session.get(f"{server}/api/v1/nodes/node-1/proxy/stats/summary") as response:
                summary = json.loads(await response.text())
        assert summary["node"]["fs"]["capacityBytes"] == 50 * 2**30
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 20)
    assert code == 0


def test_bad_arguments_are_reported(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--crd", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such file" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [")
    assert main(["--crd", str(broken)]) == 2
    assert "broken.yaml: not valid YAML" in capsys.readouterr().err
