"""spec.autoscaling against the API emulator with the real operator: the wake-up on held requests, the pending-pod
guard, scale to zero after the delay, the missing-signal condition, and replicas refused alongside autoscaling."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import kubernetes.client
import pytest
from operator_support import Kube, llmservice, operator_running

from kubellm_operator.api import GROUP, PLURAL, REPLICAS_WITH_AUTOSCALING, VERSION
from kubellm_operator.autoscale import HELD_ANNOTATION_PREFIX, held_annotation

GATEWAY_KEY = HELD_ANNOTATION_PREFIX + "gateway-test"


def replicas(kube: Kube, name: str = "tiny") -> int | None:
    deployment = kube.get("Deployment", name)
    return None if deployment is None else deployment["spec"]["replicas"]


def autoscaling(kube: Kube, name: str = "tiny") -> dict[str, Any]:
    return dict(((kube.get("LLMService", name) or {}).get("status") or {}).get("autoscaling") or {})


async def hold(kube: Kube, count: int | None, name: str = "tiny") -> None:
    """What a gateway does when it holds ``count`` requests for the LLMService (None: none any more)."""
    value = held_annotation(count, time.time()) if count else None
    await kube.patch_llmservice(name, {"metadata": {"annotations": {GATEWAY_KEY: value}}})


async def test_wakes_on_held_requests_guards_pending_pods_and_returns_to_zero(kube: Kube) -> None:
    spec = {
        "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "targetRequestsPerReplica": 8, "scaleDownDelaySeconds": 2}
    }
    async with operator_running(kube) as metrics:
        await kube.create(llmservice(**spec))
        await kube.wait(lambda: replicas(kube) == 0 and autoscaling(kube).get("reason") == "ScaledToZero", "zero")
        assert kube.condition("tiny", "ScalingActive")["status"] == "True"

        # One held request wakes it (the annotation's watch event queues a pass; the bench measures how fast).
        await hold(kube, 1)
        await kube.wait(
            lambda: replicas(kube) == 1 and autoscaling(kube).get("desiredReplicas") == 1, "the wake-up", timeout=5
        )
        status = autoscaling(kube)
        assert status["reason"] in ("ScaledUp", "ScaleUpPending") and status["held"] == 1 and status["lastScaleTime"]

        # 16 held at 8 per replica: 2. The pods never start here (no kubelet), and passes keep coming every
        # autoscale period: the guard counts the asked-for pods as capacity, so it stays 2 (not 4, 8, ...).
        await hold(kube, 16)
        await kube.wait(lambda: replicas(kube) == 2, "two replicas for 16 held requests")
        await asyncio.sleep(3)
        assert replicas(kube) == 2 and autoscaling(kube)["desiredReplicas"] == 2
        assert (
            metrics.registry.get_sample_value(
                "kubellm_autoscaling_desired_replicas", {"namespace": "default", "name": "tiny"}
            )
            == 2
        )
        await hold(kube, 24)
        await kube.wait(lambda: replicas(kube) == 3, "three for 24 (more demand than the pending capacity)")
        await hold(kube, 1000)
        await asyncio.sleep(2.5)
        assert replicas(kube) == 3, "never above maxReplicas"

        # Nothing held: back to zero once the demand has stayed below for scaleDownDelaySeconds.
        await hold(kube, None)
        await kube.wait(lambda: autoscaling(kube).get("reason") == "ScaleDownDelayed", "the delay to start", timeout=5)
        assert replicas(kube) == 3
        await kube.wait(
            lambda: replicas(kube) == 0 and autoscaling(kube).get("reason") == "ScaledToZero",
            "scale to zero after the delay",
            timeout=15,
        )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_missing_signal_is_a_condition_and_never_scales_down(kube: Kube) -> None:
    spec = {"autoscaling": {"minReplicas": 0, "maxReplicas": 2, "scaleDownDelaySeconds": 0}}
    async with operator_running(kube) as metrics:
        await kube.create(llmservice(**spec))
        await hold(kube, 9)
        await kube.wait(lambda: replicas(kube) == 2, "two replicas for 9 held requests")
        # A Ready pod of it whose /metrics nothing answers (as a pod whose server hangs would be).
        kube.emulator.apply_manifest(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "tiny-x", "namespace": "default", "labels": {"kubellm.dev/llmservice": "tiny"}},
                "spec": {
                    "containers": [{"name": "inference", "image": "i", "ports": [{"containerPort": _closed_port()}]}]
                },
            }
        )
        pod_type = kube.emulator.store.type_for("", "v1", "pods")
        kube.emulator.store.patch(
            pod_type,
            "default",
            "tiny-x",
            "application/merge-patch+json",
            {"status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}},
            subresource="status",
        )
        await kube.wait(
            lambda: kube.condition("tiny", "ScalingActive").get("reason") == "SignalMissing", "the missing signal"
        )
        # The demand falls to nothing known (the held requests answered); the pod's is still not known.
        await hold(kube, None)
        await kube.wait(lambda: autoscaling(kube).get("held") == 0, "the held requests gone from the status")
        condition = kube.condition("tiny", "ScalingActive")
        assert condition["status"] == "False" and "tiny-x" in condition["message"]
        await asyncio.sleep(2.5)
        assert replicas(kube) == 2, "a missing signal never scales down (scaleDownDelaySeconds is 0)"
        assert autoscaling(kube)["reason"] == "SignalMissing"
        assert (
            metrics.registry.get_sample_value(
                "kubellm_autoscaling_signal_missing", {"namespace": "default", "name": "tiny"}
            )
            == 1
        )


async def test_replicas_and_scale_are_refused_with_autoscaling(kube: Kube) -> None:
    custom = kube.custom
    with pytest.raises(kubernetes.client.ApiException) as refused:
        await kube.create(llmservice(replicas=2, autoscaling={"maxReplicas": 2}))
    assert refused.value.status == 422 and REPLICAS_WITH_AUTOSCALING in str(refused.value.body)
    await kube.create(llmservice(autoscaling={"maxReplicas": 2}))
    # kubectl scale and an HPA write spec.replicas through /scale: refused the same way, saying why.
    with pytest.raises(kubernetes.client.ApiException) as scaled:
        await asyncio.to_thread(
            custom.patch_namespaced_custom_object_scale,
            GROUP,
            VERSION,
            "default",
            PLURAL,
            "tiny",
            {"spec": {"replicas": 3}},
            _content_type="application/merge-patch+json",
        )
    assert scaled.value.status == 422 and REPLICAS_WITH_AUTOSCALING in str(scaled.value.body)
