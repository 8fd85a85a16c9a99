"""Hub models on the emulator: the real operator resolves them on `kubellm hub` before rollout, pins the commit,
derives storage and the startup budget, records status.model, and holds a model the hub refuses as a condition.
Also, pure: a pod's hub failure read from its termination message, and loading progress on the status."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_support import Kube, llmservice, operator_running

from kubellm_hub.server import HubServer
from kubellm_operator.api import GIB
from kubellm_operator.modelplan import loading_status
from kubellm_operator.status import Observed, compute_status, pod_problem

T0 = "2026-01-01T00:00:00Z"
# The stand-in hub and its CDN listen on loopback: the operator is told it may call there, as an admin would.
LOOPBACK_HUB: dict[str, Any] = {"egress_allow_loopback": True, "hub_redirect_hosts": ["127.0.0.1"]}


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kubellm_inference.tinymodel import build_tiny_model

    root = tmp_path_factory.mktemp("hub")
    build_tiny_model(root / "acme" / "tiny")
    shutil.copytree(root / "acme" / "tiny", root / "acme" / "locked")
    return root


@pytest.fixture
def hub(hub_root: Path) -> Iterator[HubServer]:
    with HubServer(hub_root) as server:
        yield server


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in _container(deployment)["env"]}


async def test_a_hub_model_is_resolved_pinned_and_sized_before_rollout(kube: Kube, hub: HubServer) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    async with operator_running(kube, hub_endpoint=hub.endpoint, **LOOPBACK_HUB):
        body = llmservice("hubby", model={"name": "acme/tiny"}, replicas=2)
        body["spec"].pop("storage")  # nothing about sizes: all from the hub
        await kube.create(body)
        deployment = await kube.wait(lambda: kube.get("Deployment", "hubby"), "the Deployment")
        status = await kube.wait(
            lambda: (kube.get("LLMService", "hubby") or {}).get("status", {}).get("model"), "model"
        )
        commit = status["commit"]
        assert len(commit) == 40 and status["bytes"] > 200_000 and status["dtype"] == "F32"
        assert "model.safetensors" in status["files"] and status["parameters"] > 0
        env = _env(deployment)
        # Both replicas run one template: the same pinned commit, from the operator's hub.
        assert env["KUBELLM_REVISION"] == commit and env["KUBELLM_HUB_ENDPOINT"] == hub.endpoint
        resources = _container(deployment)["resources"]
        # 1.2 x 0.24 MB rounds up to a 1Gi cache, + 1Gi: the request; the memory from the parameters (+1Gi).
        assert resources["requests"]["ephemeral-storage"] == "2Gi" and resources["requests"]["memory"] == "2Gi"
        startup = _container(deployment)["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] == 600  # the derived budget's floor
        # Resolution cost: two requests to the hub for this LLMService, and none for reconciles that change nothing.
        assert hub.stats().get("model_info") == 1 and hub.stats().get("resolve_get") == 1


async def test_models_the_hub_refuses_hold_the_rollout_with_a_reason(kube: Kube, hub: HubServer) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    hub.set_knobs(token="hf_ok", gated=["acme/locked"])
    async with operator_running(kube, allowed_hub_endpoints=[hub.endpoint], **LOOPBACK_HUB):
        for name, model in (("typo", "acme/typo"), ("locked", "acme/locked")):
            await kube.create(llmservice(name, model={"name": model, "hub": {"endpoint": hub.endpoint}}))
        for name, reason, words in (
            ("typo", "ModelNotFound", "acme/typo does not exist"),
            ("locked", "GatedModel", "hubTokenSecretRef"),
        ):
            degraded = await kube.wait(
                lambda n=name, r=reason: (
                    kube.condition(n, "Degraded").get("reason") == r and kube.condition(n, "Degraded")
                ),
                f"{name}: Degraded/{reason}",
            )
            assert degraded["status"] == "True" and words in degraded["message"]
            assert kube.condition(name, "Ready")["reason"] == reason
            assert kube.get("Deployment", name) is None, "no pods for a model the hub refuses"
            assert (kube.get("LLMService", name) or {})["status"]["model"]["error"].startswith(
                {"ModelNotFound": "model not found: ", "GatedModel": "gated model: "}[reason]
            )


async def test_a_hub_endpoint_the_operator_does_not_allow_is_never_contacted(kube: Kube, hub: HubServer) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    # The default list: the public hub and --hub-endpoint; and an allowed address (loopback) is not enough.
    async with operator_running(kube, **LOOPBACK_HUB):
        await kube.create(llmservice("aimed", model={"name": "acme/tiny", "hub": {"endpoint": hub.endpoint}}))
        degraded = await kube.wait(
            lambda: (
                kube.condition("aimed", "Degraded").get("reason") == "HubEndpointNotAllowed"
                and kube.condition("aimed", "Degraded")
            ),
            "Degraded/HubEndpointNotAllowed",
        )
        assert hub.endpoint in degraded["message"] and "https://huggingface.co" in degraded["message"]
        assert kube.condition("aimed", "Ready")["reason"] == "HubEndpointNotAllowed"
        assert kube.get("Deployment", "aimed") is None
    assert hub.stats() == {}, "no request reached the hub"


def _pod(container: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "hubby-1"}, "status": {"phase": "Running", "containerStatuses": [container]}}


def test_a_failed_attempt_is_shown_while_the_next_one_runs() -> None:
    said = "model load failed: ModelLoadError: hub unreachable: cannot reach https://huggingface.co for acme/tiny"
    running_again = {
        "name": "inference",
        "ready": False,
        "started": False,
        "restartCount": 1,
        "state": {"running": {"startedAt": T0}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": said}},
    }
    problem = pod_problem(_pod(running_again))
    assert problem is not None and problem.reason == "HubUnreachable"
    assert "hub unreachable: cannot reach https://huggingface.co" in problem.message
    # Once the container is ready, the old failure is history.
    assert pod_problem(_pod(running_again | {"ready": True, "started": True})) is None
    status = compute_status(
        Observed(
            generation=1,
            desired=1,
            deployment=None,
            pods=[_pod(running_again)],
            storage=None,
            selector=None,
            endpoint=None,
        ),
        None,
        T0,
    )
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (status["phase"], degraded["status"], degraded["reason"]) == ("Degraded", "True", "HubUnreachable")


ROLLED_OUT = {
    "metadata": {"name": "hubby", "generation": 1},
    "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 0, "updatedReplicas": 2},
}


def test_loading_progress_of_the_least_advanced_pod() -> None:
    answers = {
        "a": {
            "phase": "downloading",
            "bytesDone": 6 * GIB,
            "bytesTotal": 12 * GIB,
            "bytesPerSecond": 40 * 2**20,
            "line": "downloading 6.0/12.0Gi (50%), 40.0MiB/s",
        },
        "b": {
            "phase": "downloading",
            "bytesDone": 3 * GIB,
            "bytesTotal": 12 * GIB,
            "bytesPerSecond": 30 * 2**20,
            "line": "downloading 3.0/12.0Gi (25%), 30.0MiB/s",
        },
    }
    pods = [
        {"metadata": {"name": n}, "status": {"phase": "Running", "containerStatuses": [{"ready": False}]}}
        for n in answers
    ]
    loading = loading_status(pods, lambda pod: answers[pod["metadata"]["name"]])
    assert loading is not None and loading.bytes_done == 3 * GIB
    assert loading.message == "Downloading 3.0/12.0Gi (25%), 30.0MiB/s (2 pods loading)"
    assert loading_status(pods, lambda pod: None) is None
    status = compute_status(
        Observed(
            generation=1,
            desired=2,
            deployment=ROLLED_OUT,
            pods=pods,
            storage=None,
            selector=None,
            endpoint=None,
            loading=loading,
        ),
        None,
        T0,
    )
    assert status["loading"]["message"].startswith("Downloading 3.0/12.0Gi")
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "ModelLoading" and "Downloading 3.0/12.0Gi (25%)" in progressing["message"]
