"""Installed in any order, and one active operator: the operator waits for its CRD to be served before it
watches, and of several replicas only the holder of the leader Lease works; a standby takes over when the leader
dies. Against the emulator, as deploy/'s ServiceAccount."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import pathlib
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from operator_support import CRD, ROOT, Kube, llmservice, operator_running, operator_view
from test_operator_emulator import converged

from kubellm_emulator import WRITE_METHODS, Emulator
from kubellm_emulator.server import RecordedRequest
from kubellm_operator.leader import LEASE_DURATION_S, RETRY_PERIOD_S
from kubellm_sandbox.processes import free_port


async def answer(port: int, path: str) -> tuple[int, str]:
    """(status, body) of the operator's health endpoint; (0, why) while it does not answer."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=2)) as response,
        ):
            return response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError) as error:
        return 0, str(error)


async def test_an_operator_started_before_its_crd_waits_then_watches(
    emulator: Emulator, tmp_path: pathlib.Path
) -> None:
    kube = operator_view(emulator, tmp_path, with_crd=False)
    emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    port = free_port()
    try:
        async with operator_running(kube, wait_ready=False, health_port=port, health_host="127.0.0.1"):
            deadline = time.monotonic() + 15
            status, body = 0, ""
            while time.monotonic() < deadline:
                status, body = await answer(port, "/readyz")
                if status == 503 and "llmservices" in body:
                    break
                await asyncio.sleep(0.1)
            assert status == 503, body
            assert "waiting for llmservices.kubellm.dev/v1alpha1 to be served" in body and "crds/" in body
            assert (await answer(port, "/healthz"))[0] == 200, "alive while it waits"
            assert "kubellm_operator_ready 0.0" in (await answer(port, "/metrics"))[1]

            emulator.apply_manifests(CRD)
            await kube.create(llmservice())
            await kube.wait(lambda: converged(kube), "the LLMService to converge once the CRD is served", timeout=30)
            assert (await answer(port, "/readyz"))[0] == 200
            assert "kubellm_operator_ready 1.0" in (await answer(port, "/metrics"))[1]
    finally:
        kube.close()


class OperatorProcess:
    """`kubellm operator` as a process with its own leader identity and health port."""

    def __init__(self, kube: Kube, identity: str, log: pathlib.Path) -> None:
        self.kube, self.identity, self.log = kube, identity, log
        self.port = free_port()
        self.extra: list[str] = []
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELLM_OPERATOR_")}
        command = [
            str(pathlib.Path(sys.executable).parent / "kubellm"),
            "operator",
            f"--kubeconfig={self.kube.operator_kubeconfig}",
            f"--health-port={self.port}",
            "--health-host=127.0.0.1",
            "--summary-refresh-s=0",
            f"--leader-identity={self.identity}",
            *self.extra,
        ]
        with self.log.open("wb") as output:
            self.process = await asyncio.create_subprocess_exec(
                *command, stdout=output, stderr=output, env=env, cwd=ROOT
            )

    async def ready(self, path: str, status: int, words: str = "", timeout: float = 30) -> float:
        """Wait until ``path`` answers ``status`` (with ``words`` in the body); the monotonic time it did."""
        deadline = time.monotonic() + timeout
        body = ""
        while time.monotonic() < deadline:
            code, body = await answer(self.port, path)
            if code == status and words in body:
                return time.monotonic()
            assert self.process is not None and self.process.returncode is None, self.log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        pytest.fail(
            f"{self.identity} {path} did not answer {status} {words!r} in {timeout}s: {body}\n{self.log.read_text()[-3000:]}"
        )

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


def written_child(request: RecordedRequest) -> tuple[str, str] | None:
    """(collection, name) of the Deployment or Service a write request creates or changes, else None."""
    parts = request.path.strip("/").split("/")
    if "deployments" in parts or "services" in parts:
        at = parts.index("deployments" if "deployments" in parts else "services")
        if len(parts) > at + 1:
            return parts[at], parts[at + 1]
        if request.method == "POST":
            name = (json.loads(request.body or b"{}").get("metadata") or {}).get("name")
            return (parts[at], str(name)) if name else None
    return None


@asynccontextmanager
async def operators(kube: Kube, tmp_path: pathlib.Path, *names: str) -> AsyncIterator[list[OperatorProcess]]:
    started = [OperatorProcess(kube, name, tmp_path / f"{name}.log") for name in names]
    try:
        yield started
    finally:
        for process in started:
            await process.stop()


async def test_a_standby_takes_over_when_the_leader_dies_mid_convergence(kube: Kube, tmp_path: pathlib.Path) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="1000Gi")
    names = [f"svc-{i:02d}" for i in range(50)]
    async with operators(kube, tmp_path, "op-a", "op-b") as (leader, standby):
        await leader.start()
        await leader.ready("/readyz", 200)
        await standby.start()
        await standby.ready("/healthz", 200)
        await standby.ready("/readyz", 503, "standby")
        marker = kube.emulator.request_marker()

        await asyncio.gather(*(kube.create(llmservice(name)) for name in names))
        await kube.wait(lambda: sum(converged(kube, n) for n in names) >= 5, "some LLMServices to converge", 60)
        assert leader.process is not None
        leader.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await leader.process.wait()
        before = {n for n in names if converged(kube, n)}
        kill_marker = kube.emulator.request_marker()

        took_over = await standby.ready("/readyz", 200, timeout=LEASE_DURATION_S + 4 * RETRY_PERIOD_S + 5) - killed_at
        await kube.wait(lambda: all(converged(kube, n) for n in names), "all 50 LLMServices to converge", 90)
        await kube.quiet(1.0)
        lease = kube.get("Lease", "kubellm-operator", namespace="kubellm-system") or {}
        assert lease["spec"]["holderIdentity"] == "op-b" and lease["spec"]["leaseTransitions"] == 1

    print(f"\nkilled the leader with {len(before)}/50 converged; the standby led {took_over:.1f}s later")
    # client-go's bound: the Lease expires lease-duration after the standby saw its last renewal, and the standby
    # tries every retry period.
    assert took_over <= LEASE_DURATION_S + 2 * RETRY_PERIOD_S + 1
    assert len(before) < 50, "the leader was killed before it converged every LLMService"
    # Every child was written once, by whichever operator got to it; nothing was written twice across the takeover.
    # A child is created by a POST to its collection (the name in the body) and changed by a PATCH of its path.
    writes = collections.Counter(
        child for r in kube.emulator.requests(WRITE_METHODS, since=marker) if (child := written_child(r)) is not None
    )
    for name in names:
        for kind in ("deployments", "services"):
            assert writes[(kind, name)] == 1, (name, kind, writes[(kind, name)])
    after = kube.emulator.requests(WRITE_METHODS, since=kill_marker)
    rewritten = {child for r in after if (child := written_child(r)) is not None and child[1] in before}
    assert not rewritten, f"LLMServices converged before the takeover were written again: {sorted(rewritten)}"
    # Stopped cleanly, the new leader released its Lease for the next one (holder emptied).
    assert (kube.get("Lease", "kubellm-operator", namespace="kubellm-system") or {})["spec"]["holderIdentity"] == ""


async def test_a_leader_that_cannot_renew_stops_before_its_lease_expires(kube: Kube, tmp_path: pathlib.Path) -> None:
    """Fencing: a leader whose renewals fail (an API partition) exits once its renew deadline passes, earlier than
    any standby may take the Lease, and writes nothing after (client-go's renewDeadline < leaseDuration)."""
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    timings = ["--lease-duration-s=6", "--renew-deadline-s=3", "--retry-period-s=0.5"]
    async with operators(kube, tmp_path, "op-a") as (leader,):
        leader.extra = timings
        await leader.start()
        await leader.ready("/readyz", 200)
        await kube.create(llmservice())
        await kube.wait(lambda: converged(kube), "tiny to converge")
        kube.emulator.faults.fail("/apis/coordination.k8s.io/", method="PUT", times=1000, status=503)
        # Past the renew deadline (3 s after the last renewal at most 0.5 s ago), before the lease duration (6 s):
        # the leader has stopped working; a spec change now gets no write from it.
        await asyncio.sleep(4.0)
        marker = kube.emulator.request_marker()
        await kube.patch_llmservice("tiny", {"spec": {"replicas": 2}})
        await kube.quiet(2.0)
        assert leader.process is not None
        code = await asyncio.wait_for(leader.process.wait(), 20)
    log = leader.log.read_text()
    assert code == 1 and "lost Lease kubellm-system/kubellm-operator" in log, log[-2000:]
    assert kube.writes(since=marker) == [("PATCH", "/apis/kubellm.dev/v1alpha1/namespaces/default/llmservices/tiny")]
