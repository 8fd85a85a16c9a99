"""Issue 20's walk-through, as a user does it: `kubectl apply` the autoscaled example (minReplicas 0), one
streaming request to the sandbox's gateway with the official `openai` client, the progress comments seen while the
pod starts, the answer, and the LLMService back at zero replicas after its scaleDownDelaySeconds.

The example is applied as shipped but for two fields: its Service port (a free one, never the user's 5001) and its
scaleDownDelaySeconds (5 s instead of 120, to keep the test short). The openai client parses the stream as it
does against any OpenAI server; an httpx transport under it keeps the raw bytes, where the SSE comments are (the
client skips comments, as the SSE spec says). Every wait is bounded; the sandbox is stopped by the fixture.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import kubernetes
import openai
import pytest
import yaml

from kubellm_sandbox import cli
from kubellm_sandbox.processes import free_port
from kubellm_sandbox.supervisor import Layout
from kubellm_sandbox.view import SandboxTimeout, SandboxView

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl on PATH (the walk-through applies with it)"),
]

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "autoscaled-tiny.yaml"
SCALE_DOWN_DELAY_S = 5


class RawRecorder(httpx.BaseTransport):
    """An httpx transport that passes everything through and keeps each response body's bytes as they arrive."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.bodies: list[bytearray] = []
        self.arrivals: list[tuple[float, bytes]] = []  # (monotonic time, chunk) of every chunk of every body

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        body = bytearray()
        self.bodies.append(body)
        recorder, upstream = self, response.stream
        assert isinstance(upstream, httpx.SyncByteStream)

        class Tee(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for chunk in upstream:
                    body.extend(chunk)
                    recorder.arrivals.append((time.monotonic(), bytes(chunk)))
                    yield chunk

            def close(self) -> None:
                upstream.close()

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Tee(), extensions=response.extensions
        )

    def close(self) -> None:
        self._inner.close()


class Walkthrough(SandboxView):
    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            ["kubectl", "--kubeconfig", str(self.layout.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def replicas(self) -> int | None:
        try:
            return self.apps.read_namespaced_deployment("elastic", "default").spec.replicas
        except kubernetes.client.ApiException:
            return None

    def wait(self, predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
        try:
            return super().wait(predicate, timeout=timeout, what=what)
        except SandboxTimeout as timeout_error:
            pytest.fail(str(timeout_error))


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walkthrough]:
    layout = Layout(tmp_path_factory.mktemp("elastic") / "data")
    state = cli.up(layout, api_port=free_port(), quiet=True)
    try:
        yield Walkthrough(layout, state)
    finally:
        cli.down(layout)


def test_openai_client_wakes_the_example_from_zero_sees_progress_and_it_goes_back_to_zero(
    walkthrough: Walkthrough,
) -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    assert example["spec"]["autoscaling"]["minReplicas"] == 0
    example["spec"]["service"]["port"] = free_port()
    example["spec"]["autoscaling"]["scaleDownDelaySeconds"] = SCALE_DOWN_DELAY_S
    walkthrough.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(example))

    # Applied at zero: no pod, and the status says so (desired 0, from the operator's autoscaler).
    walkthrough.wait(
        lambda: (walkthrough.llms("elastic").get("status") or {}).get("autoscaling", {}).get("desiredReplicas") == 0,
        timeout=60,
        what="the LLMService converged at zero replicas",
    )
    assert walkthrough.replicas() == 0 and not walkthrough.pods("elastic")

    recorder = RawRecorder()
    gateway = walkthrough.state["gateway_url"]
    with httpx.Client(transport=recorder, timeout=httpx.Timeout(240.0, connect=5.0)) as http:
        client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", http_client=http, max_retries=0)
        began = time.monotonic()
        stream = client.chat.completions.create(
            model="default/elastic",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            stream=True,
        )
        chunks = list(stream)
        answered = time.monotonic()

    # The answer, parsed by the official client as from any OpenAI server.
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip(), chunks
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert {c.model for c in chunks} == {"embedded:smollm2-135m-instruct"}

    # What the client skipped: the gateway's progress comments, sent while the pod started, before any data.
    raw = bytes(recorder.bodies[-1]).decode()
    comments = [line for line in raw.splitlines() if line.startswith(": kubellm: ")]
    assert comments, raw[:2000]
    assert raw.index(": kubellm: ") < raw.index("data: "), raw[:2000]
    first_data = next(t for t, chunk in recorder.arrivals if b"data: " in chunk)
    first_comment = next(t for t, chunk in recorder.arrivals if b": kubellm: " in chunk)
    assert first_comment - began < first_data - began, "the first comment came only with the answer"
    print(f"woke from zero: first comment after {first_comment - began:.1f}s, answer after {answered - began:.1f}s")
    print("\n".join(comments))

    # The request woke it: one replica (never more for one request), then back to zero after the delay.
    assert walkthrough.llms("elastic")["status"]["autoscaling"]["desiredReplicas"] == 1
    assert walkthrough.replicas() == 1
    walkthrough.wait(
        lambda: walkthrough.replicas() == 0 and not walkthrough.pods("elastic"),
        timeout=SCALE_DOWN_DELAY_S + 90,
        what="the LLMService back at zero replicas with no pod",
    )
    status = walkthrough.llms("elastic")["status"]
    assert status["autoscaling"]["desiredReplicas"] == 0, status
    # As `kubectl get llmservices -o wide` shows it: the CRD's Desired column (priority 1: wide only) at 0.
    header, row = walkthrough.kubectl("get", "llmservices", "elastic", "-o", "wide").splitlines()
    column = header.index("DESIRED")  # kubectl aligns the columns: a value starts where its header does
    assert row.split()[0] == "elastic" and row[column:].split()[0] == "0", (header, row)
    walkthrough.kubectl("delete", "-f", "-", stdin=yaml.safe_dump(example))
    walkthrough.wait(lambda: walkthrough.replicas() is None, timeout=30, what="the Deployment collected")
