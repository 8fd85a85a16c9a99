"""The gateway's own cost per request, without a model: time to first token added, and the gateway's CPU per
relayed token, against the sandbox's Service forwarding (a byte pipe, what kube-proxy does) in one interleaved run.

The pod is a stand-in: a uvicorn server answering ``POST /v1/chat/completions`` with server-sent events the size of
the inference server's, after a fixed "prefill" pause and with a fixed gap between tokens, both sleeps. It takes no
CPU, so what the gateway adds is all there is to see: on a CPU node every cycle the gateway spends relaying is a
cycle the model does not get (the gateway-cost phase of ``kubellm bench elastic`` measures that with real pods).

    python bench/gateway_relay.py --rounds 40 --tokens 48 --json bench/results/gateway-relay.json

The gateway runs as ``kubellm gateway`` (its own process, as deploy/'s ServiceAccount) against the API emulator,
which lists the stand-in as a Ready pod of an LLMService; its CPU time is read from /proc (Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from kubellm_emulator import Emulator
from kubellm_operator.api import GROUP, VERSION
from kubellm_sandbox.forwarding import PortForwarder
from kubellm_tools.bench import free_port, stop_process

ROOT = pathlib.Path(__file__).resolve().parents[1]
GATEWAY_IDENTITY = [
    ROOT / "crds" / "kubellm.dev_llmservices.yaml",
    ROOT / "deploy" / "namespace.yaml",
    ROOT / "deploy" / "components" / "gateway" / "serviceaccount.yaml",
    ROOT / "deploy" / "components" / "gateway" / "rbac.yaml",
]
SERVED = "stand-in"
# One token's event as the inference server sends it (chat.completion.chunk), for a realistic byte count.
EVENT = (
    'data: {"id":"chatcmpl-0123456789abcdef","object":"chat.completion.chunk","created":1765000000,'
    '"model":"stand-in","choices":[{"index":0,"delta":{"content":" token"},"finish_reason":null}]}\n\n'
)

# The stand-in pod, run with `python -c` in a process of its own: argv = port, prefill s, gap s.
POD = """
import asyncio, json, sys, uvicorn
EVENT = json.loads(sys.argv[4]).encode()
PREFILL, GAP = float(sys.argv[2]), float(sys.argv[3])
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    tokens = json.loads(body).get("max_tokens", 16)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await asyncio.sleep(PREFILL)
    for _ in range(tokens):
        await send({"type": "http.response.body", "body": EVENT, "more_body": True})
        await asyncio.sleep(GAP)
    await send({"type": "http.response.body", "body": b"data: [DONE]\\n\\n", "more_body": False})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def cpu_ms(pid: int) -> float:
    """User + system CPU of a process so far, in ms (clock ticks from /proc/PID/stat)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def process(argv: list[str], **kwargs: Any) -> Any:
    child = subprocess.Popen(argv, **kwargs)
    try:
        yield child
    finally:
        stop_process(child, 10)


def publish(emulator: Emulator, pod_port: int) -> None:
    """An LLMService with one Ready pod at 127.0.0.1:pod_port, as the operator and the kubelet would leave them."""
    for manifest in GATEWAY_IDENTITY:
        emulator.apply_manifests(manifest)
    emulator.apply_manifest(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "LLMService",
            "metadata": {"name": SERVED, "namespace": "default"},
            "spec": {"model": {"name": SERVED}, "storage": {"cacheSize": "1Gi"}},
        }
    )
    emulator.apply_manifest(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{SERVED}-a", "namespace": "default", "labels": {"kubellm.dev/llmservice": SERVED}},
            "spec": {
                "containers": [
                    {"name": "inference", "image": "kubellm/inference", "ports": [{"containerPort": pod_port}]}
                ]
            },
        }
    )
    pods = emulator.store.type_for("", "v1", "pods")
    status = {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
    emulator.store.patch(
        pods, "default", f"{SERVED}-a", "application/merge-patch+json", {"status": status}, subresource="status"
    )


async def ask(client: httpx.AsyncClient, url: str, model: str, tokens: int) -> tuple[float, int]:
    """(seconds to the first token's event, events) of one streamed chat completion."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hello " * 40}],
        "max_tokens": tokens,
        "stream": True,
    }
    began = time.perf_counter()
    first, events = 0.0, 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                events += 1
                first = first or time.perf_counter() - began
    return first, events


async def until_served(client: httpx.AsyncClient, gateway: str, pod: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            await ask(client, f"{pod}/v1/chat/completions", SERVED, 1)  # the stand-in answers
            if (await client.get(f"{gateway}/v1/models")).json()["data"]:
                return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the gateway did not list the stand-in within {timeout_s:.0f} s")


@contextlib.asynccontextmanager
async def forwarding(pod_port: int) -> AsyncIterator[int]:
    forwarder = PortForwarder(free_port(), name=SERVED)
    await forwarder.start()
    forwarder.set_backends([("127.0.0.1", pod_port)])
    try:
        yield forwarder.port
    finally:
        await forwarder.stop()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    kubellm = shutil.which("kubellm") or str(pathlib.Path(sys.executable).with_name("kubellm"))
    pod_port, gateway_port = free_port(), free_port()
    pod_argv = [
        sys.executable,
        "-c",
        POD,
        str(pod_port),
        str(args.prefill_ms / 1000),
        str(args.gap_ms / 1000),
        json.dumps(EVENT),
    ]
    with tempfile.TemporaryDirectory(prefix="kubellm-bench-relay-") as workdir:
        return await _measure(args, kubellm, pod_argv, pod_port, gateway_port, pathlib.Path(workdir))


async def _measure(
    args: argparse.Namespace, kubellm: str, pod_argv: list[str], pod_port: int, gateway_port: int, workdir: pathlib.Path
) -> dict[str, Any]:
    async with Emulator() as emulator:
        publish(emulator, pod_port)
        kubeconfig = emulator.write_kubeconfig(
            workdir / "kubeconfig", service_account=("kubellm-system", "kubellm-gateway")
        )
        gateway_argv = [kubellm, "gateway", "--kubeconfig", str(kubeconfig), "--namespaces", "default"]
        gateway_argv += ["--host", "127.0.0.1", "--port", str(gateway_port), "--log-level", "WARNING"]
        with process(pod_argv) as _, process(gateway_argv, stdout=subprocess.DEVNULL) as gateway_process:
            async with forwarding(pod_port) as forward_port, httpx.AsyncClient(timeout=30, trust_env=False) as client:
                gateway = f"http://127.0.0.1:{gateway_port}"
                await until_served(client, gateway, f"http://127.0.0.1:{pod_port}", 60)
                paths = {
                    "gateway": (f"{gateway}/v1/chat/completions", f"default/{SERVED}"),
                    "service": (f"http://127.0.0.1:{forward_port}/v1/chat/completions", SERVED),
                }
                for url, model in paths.values():  # warm: connection pools, first-call costs
                    await ask(client, url, model, 4)
                first: dict[str, list[float]] = {label: [] for label in paths}
                gateway_cpu = 0.0
                for index in range(args.rounds):
                    order = list(paths.items())
                    for label, (url, model) in order if index % 2 == 0 else reversed(order):
                        before = cpu_ms(gateway_process.pid)
                        ttft, events = await ask(client, url, model, args.tokens)
                        if events != args.tokens:
                            raise RuntimeError(f"{label}: {events} events, {args.tokens} asked")
                        first[label].append(ttft * 1000)
                        if label == "gateway":
                            gateway_cpu += cpu_ms(gateway_process.pid) - before
    ttft = {label: statistics.median(values) for label, values in first.items()}
    per_request = gateway_cpu / args.rounds
    return {
        "settings": {
            "rounds": args.rounds,
            "tokens": args.tokens,
            "prefill_ms": args.prefill_ms,
            "gap_ms": args.gap_ms,
        },
        "ttft_ms": {label: round(value, 2) for label, value in ttft.items()},
        "ttft_added_ms": round(ttft["gateway"] - ttft["service"], 2),
        "gateway_cpu_ms_per_request": round(per_request, 2),
        "gateway_cpu_ms_per_token": round(per_request / args.tokens, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="interleaved requests per path")
    parser.add_argument("--tokens", type=int, default=48, help="events (tokens) per answer")
    parser.add_argument("--prefill-ms", type=float, default=60.0, help="the stand-in's pause before the first token")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="the stand-in's pause between tokens")
    parser.add_argument("--json", dest="json_path", help="also write the figures here")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    for label, value in result["ttft_ms"].items():
        print(f"{label:8s} time to first token, median of {args.rounds}: {value:7.2f} ms")
    print(f"gateway adds {result['ttft_added_ms']:.2f} ms to the first token")
    print(
        f"gateway CPU: {result['gateway_cpu_ms_per_request']:.2f} ms per request of {args.tokens} tokens, "
        f"{result['gateway_cpu_ms_per_token']:.3f} ms per token"
    )
    if args.json_path:
        pathlib.Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
